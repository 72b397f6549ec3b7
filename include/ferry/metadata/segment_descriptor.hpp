#pragma once
/// `ferry::segment_descriptor`: everything a peer needs to reach a segment — its name, the incarnation of the
/// process serving it (new on every start, so a restart is noticed), the host it lives on (same-host peers
/// use shared memory), its endpoints per transport, and its exposed regions. It travels as JSON
/// (nlohmann-json); `parse` validates everything, since descriptors arrive from the network and from metadata
/// stores.
///
///   std::string text = to_json(desc);
///   ferry::result<ferry::segment_descriptor> back = ferry::segment_descriptor::parse(text);

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/memory/access.hpp"
#include "ferry/memory/detail/region_holding.hpp"
#include "ferry/memory/memory_kind.hpp"
#include "ferry/memory/region_descriptor.hpp"
#include "ferry/metadata/detail/bounded_json.hpp"

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {

/// A way to reach a segment: a transport name ("tcp") and its address ("127.0.0.2:7000").
struct transport_endpoint {
  std::string transport;
  std::string address;
  friend bool operator==(const transport_endpoint&, const transport_endpoint&) = default;
};

struct segment_descriptor {
  static constexpr std::size_t max_name_length = 255;
  static constexpr std::size_t max_regions = max_exposed_regions;
  static constexpr std::size_t max_endpoints = 64;
  /// The most JSON values a descriptor's text may hold (each region is an object of at most 12 members, an
  /// endpoint one of 2; room is left for members a later version adds), and how deep they may nest.
  static constexpr std::size_t max_json_values = 16 * max_regions + 4 * max_endpoints + 64;
  static constexpr std::size_t max_json_depth = 8;

  std::string name;
  std::uint64_t incarnation = 0;
  std::string host;      ///< identifies the machine (its boot id); equal hosts can share memory
  std::uint64_t pid = 0; ///< the serving process on that host (0: unknown); lets same-host peers see it end
  /// When that process started (clock ticks after the host booted; 0: unknown): tells it from a later process
  /// that the kernel gave the same pid after it ended.
  std::uint64_t pid_start = 0;
  /// The owner's network namespace on that host (the inode of its /proc/self/ns/net; 0: unknown): loopback
  /// reaches it only from the same one.
  std::uint64_t net_namespace = 0;
  std::vector<transport_endpoint> endpoints;
  std::vector<region_descriptor> regions; ///< sorted by offset, not overlapping
  std::string shm_gates; ///< the owner's shm_gates table, which same-host peers copy through; empty: none

  /// The endpoint of `transport`, or nullptr.
  const transport_endpoint* endpoint_for(std::string_view transport) const noexcept {
    for (auto& e : endpoints)
      if (e.transport == transport)
        return &e;
    return nullptr;
  }
  /// The region holding [offset, offset + length), or nullptr.
  const region_descriptor* region_for(std::uint64_t offset, std::uint64_t length) const noexcept {
    return detail::region_holding(regions, offset, length);
  }

  /// Why `name` cannot name a segment (empty, longer than max_name_length, not UTF-8, or holding a control
  /// character such as the newline that ends a notification's sender), or nullptr when it can.
  static const char* name_problem(std::string_view name) noexcept {
    if (name.empty() || name.size() > max_name_length)
      return "a segment name is 1 to 255 bytes";
    for (std::size_t i = 0; i < name.size();) {
      auto c = static_cast<unsigned char>(name[i]);
      if (c < 0x20 || c == 0x7f)
        return "a segment name holds no control characters";
      // RFC 3629: no overlong forms, no surrogates (ED A0..BF), nothing past U+10FFFF
      std::size_t n = c < 0x80                 ? 1
                      : c >= 0xc2 && c <= 0xdf ? 2
                      : c >= 0xe0 && c <= 0xef ? 3
                      : c >= 0xf0 && c <= 0xf4 ? 4
                                               : 0;
      if (n == 0 || i + n > name.size())
        return "a segment name is UTF-8";
      if (n > 1) {
        auto second = static_cast<unsigned char>(name[i + 1]);
        unsigned char lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
        unsigned char hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
        if (second < lo || second > hi)
          return "a segment name is UTF-8";
      }
      for (std::size_t k = 2; k < n; ++k)
        if ((static_cast<unsigned char>(name[i + k]) & 0xc0) != 0x80)
          return "a segment name is UTF-8";
      i += n;
    }
    return nullptr;
  }

  /// The descriptor as JSON. Never throws: text that is not UTF-8 (which parse() then refuses) is written
  /// with replacement characters.
  std::string to_json() const {
    nlohmann::json j;
    j["name"] = name;
    j["incarnation"] = incarnation;
    j["host"] = host;
    if (pid != 0)
      j["pid"] = pid;
    if (pid_start != 0)
      j["pid_start"] = pid_start;
    if (net_namespace != 0)
      j["net_namespace"] = net_namespace;
    auto& eps = j["endpoints"] = nlohmann::json::array();
    for (auto& e : endpoints)
      eps.push_back({{"transport", e.transport}, {"address", e.address}});
    if (!shm_gates.empty())
      j["shm_gates"] = shm_gates;
    auto& regs = j["regions"] = nlohmann::json::array();
    for (auto& r : regions) {
      nlohmann::json rj{{"offset", r.offset},
                        {"length", r.length},
                        {"access", std::string(ferry::to_string(r.permissions))}};
      if (!r.shm_name.empty()) {
        rj["shm_name"] = r.shm_name;
        rj["shm_offset"] = r.shm_offset;
      }
      if (r.shm_gate != region_descriptor::no_gate) { // shared memory, or GPU memory with an IPC handle
        rj["shm_gate"] = r.shm_gate;
        rj["shm_epoch"] = r.shm_epoch;
      }
      if (r.location.kind != memory_kind::host) {
        rj["memory"] = std::string(ferry::to_string(r.location.kind));
        rj["device"] = r.location.device;
        if (!r.location.ipc_handle.empty()) {
          rj["ipc_handle"] = r.location.ipc_handle;
          rj["ipc_offset"] = r.location.ipc_offset;
        }
      }
      regs.push_back(std::move(rj));
    }
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }

  /// Parses and validates a descriptor; errc::malformed_frame with the reason when anything is off.
  static result<segment_descriptor> parse(std::string_view text) {
    auto bad = [](const char* why) { return fail(errc::malformed_frame, why); };
    nlohmann::json j;
    std::string why;
    // why: bounded while it is built, not after: text of many small values would grow many times over in
    // memory before any check below could refuse it
    if (!detail::parse_bounded_json(text, j, max_json_values, max_json_depth, why))
      return fail(errc::malformed_frame,
                  "segment descriptor: " + (why.empty() ? std::string("not JSON") : why));
    if (!j.is_object())
      return bad("segment descriptor: not a JSON object");
    segment_descriptor d;
    auto name = j.find("name");
    if (name == j.end() || !name->is_string())
      return bad("segment descriptor: name missing");
    d.name = name->get<std::string>();
    if (name_problem(d.name))
      return bad("segment descriptor: name empty, too long or holding control characters");
    auto inc = j.find("incarnation");
    if (inc == j.end() || !inc->is_number_unsigned())
      return bad("segment descriptor: incarnation missing");
    d.incarnation = inc->get<std::uint64_t>();
    auto host = j.find("host");
    if (host == j.end() || !host->is_string() || host->get_ref<const std::string&>().size() > 256)
      return bad("segment descriptor: host missing");
    d.host = host->get<std::string>();
    if (auto pid = j.find("pid"); pid != j.end()) {
      if (!pid->is_number_unsigned() || pid->get<std::uint64_t>() > 0x7fffffff)
        return bad("segment descriptor: pid must be a process id");
      d.pid = pid->get<std::uint64_t>();
    }
    if (auto start = j.find("pid_start"); start != j.end()) {
      if (!start->is_number_unsigned())
        return bad("segment descriptor: pid_start must be a number of clock ticks");
      d.pid_start = start->get<std::uint64_t>();
    }
    if (auto ns = j.find("net_namespace"); ns != j.end()) {
      if (!ns->is_number_unsigned())
        return bad("segment descriptor: net_namespace must be a number");
      d.net_namespace = ns->get<std::uint64_t>();
    }
    if (auto gates = j.find("shm_gates"); gates != j.end()) {
      if (!gates->is_string() || gates->get_ref<const std::string&>().empty() ||
          gates->get_ref<const std::string&>().size() > 255)
        return bad("segment descriptor: shm_gates must be a short string");
      d.shm_gates = gates->get<std::string>();
    }
    auto eps = j.find("endpoints");
    if (eps == j.end() || !eps->is_array() || eps->size() > max_endpoints)
      return bad("segment descriptor: endpoints missing or too many");
    for (auto& e : *eps) {
      if (!e.is_object() || !e.contains("transport") || !e.contains("address") ||
          !e["transport"].is_string() || !e["address"].is_string())
        return bad("segment descriptor: endpoint needs transport and address strings");
      d.endpoints.push_back({e["transport"].get<std::string>(), e["address"].get<std::string>()});
    }
    auto regs = j.find("regions");
    if (regs == j.end() || !regs->is_array() || regs->size() > max_regions)
      return bad("segment descriptor: regions missing or too many");
    for (auto& r : *regs) {
      if (!r.is_object())
        return bad("segment descriptor: region is not an object");
      auto off = r.find("offset"), len = r.find("length"), acc = r.find("access");
      if (off == r.end() || len == r.end() || acc == r.end() || !off->is_number_unsigned() ||
          !len->is_number_unsigned() || !acc->is_string())
        return bad("segment descriptor: region needs offset, length and access");
      region_descriptor rd;
      rd.offset = off->get<std::uint64_t>();
      rd.length = len->get<std::uint64_t>();
      if (rd.length == 0 || rd.offset > std::numeric_limits<std::uint64_t>::max() - rd.length)
        return bad("segment descriptor: region length is zero or overflows");
      if (!parse_access(acc->get_ref<const std::string&>(), rd.permissions) || rd.permissions == access::none)
        return bad("segment descriptor: region access must be read, write or read_write");
      if (auto shm = r.find("shm_name"); shm != r.end()) {
        if (!shm->is_string() || shm->get_ref<const std::string&>().empty() ||
            shm->get_ref<const std::string&>().size() > 255)
          return bad("segment descriptor: shm_name must be a short string");
        rd.shm_name = shm->get<std::string>();
        auto so = r.find("shm_offset");
        if (so == r.end() || !so->is_number_unsigned())
          return bad("segment descriptor: shm_offset missing");
        rd.shm_offset = so->get<std::uint64_t>();
        if (rd.shm_offset > std::numeric_limits<std::uint64_t>::max() - rd.length)
          return bad("segment descriptor: shm_offset + length overflows");
      }
      if (auto gate = r.find("shm_gate"); gate != r.end()) {
        auto epoch = r.find("shm_epoch");
        if (!gate->is_number_unsigned() || gate->get<std::uint64_t>() >= region_descriptor::no_gate ||
            epoch == r.end() || !epoch->is_number_unsigned())
          return bad("segment descriptor: shm_gate must be a gate number with its shm_epoch");
        rd.shm_gate = static_cast<std::uint32_t>(gate->get<std::uint64_t>());
        rd.shm_epoch = epoch->get<std::uint64_t>();
      }
      if (auto mem = r.find("memory"); mem != r.end()) {
        if (!mem->is_string() || !parse_memory_kind(mem->get_ref<const std::string&>(), rd.location.kind))
          return bad("segment descriptor: memory must be host, cuda_device or cuda_host");
        auto dev = r.find("device");
        if (dev == r.end() || !dev->is_number_integer() || dev->get<std::int64_t>() < -1 ||
            dev->get<std::int64_t>() > 1023)
          return bad("segment descriptor: device must be a device ordinal");
        rd.location.device = static_cast<std::int32_t>(dev->get<std::int64_t>());
        // why: host memory has neither (to_json writes nothing for it): one that claims them is malformed
        if (rd.location.kind == memory_kind::host && (rd.location.device != -1 || r.contains("ipc_handle")))
          return bad("segment descriptor: host memory has no device or IPC handle");
        if (auto ipc = r.find("ipc_handle"); ipc != r.end()) {
          if (!ipc->is_string() || ipc->get_ref<const std::string&>().size() > 512)
            return bad("segment descriptor: ipc_handle must be a short string");
          rd.location.ipc_handle = ipc->get<std::string>();
          auto io = r.find("ipc_offset");
          if (io == r.end() || !io->is_number_unsigned())
            return bad("segment descriptor: ipc_offset missing");
          rd.location.ipc_offset = io->get<std::uint64_t>();
          if (rd.location.ipc_offset > std::numeric_limits<std::uint64_t>::max() - rd.length)
            return bad("segment descriptor: ipc_offset + length overflows");
        }
      }
      if (const char* why = rd.problem())
        return fail(errc::malformed_frame, std::string("segment descriptor: ") + why);
      if (!d.regions.empty() && d.regions.back().offset + d.regions.back().length > rd.offset)
        return bad("segment descriptor: regions unsorted or overlapping");
      d.regions.push_back(std::move(rd));
    }
    return d;
  }

  friend bool operator==(const segment_descriptor&, const segment_descriptor&) = default;
};

} // namespace ferry
