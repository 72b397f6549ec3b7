#pragma once
/// `ferry::verbs::verbs_options`: how the verbs transport uses the host's RDMA NICs. Defaults suit most
/// hosts; the environment overrides them (FERRY_VERBS_DEVICES=mlx5_0,mlx5_1, FERRY_VERBS_GID_INDEX=3,
/// FERRY_VERBS_SPIN_US=20, FERRY_VERBS_DISABLE=1).
///
///   auto o = ferry::verbs::verbs_options::from_environment();

#include "ferry/transport/verbs/nic_context.hpp"
#include "ferry/transport/verbs/path_health.hpp"
#include "ferry/transport/verbs/rc_queue_pair.hpp"

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::verbs {

struct verbs_options {
  /// Devices to use, by name; empty: every device with an active port.
  std::vector<std::string> devices;
  /// Off: the transport reaches nobody (as if there were no device).
  bool enabled = true;
  nic_options nic{};
  qp_caps caps{};
  /// Queue pairs per peer endpoint (one endpoint per local NIC and peer); slices alternate between them.
  unsigned qps_per_endpoint = 2;
  /// Connected endpoints kept at once; beyond it the least useful one drains and goes.
  std::size_t max_endpoints = 256;
  health_options health{};
  /// Per NUMA node, a rank per NIC (lower first; negative: never). Empty: ranked by topology.
  std::vector<std::vector<int>> priority;
  /// Busy-polling after the last completion before sleeping on the completion channel (latency vs CPU).
  std::chrono::microseconds spin{0};
  std::chrono::milliseconds connect_timeout{3000};
  /// A peer whose handshake failed is left to the other transports for this long.
  std::chrono::milliseconds peer_cooldown{5000};
  /// Local registrations kept per NIC.
  std::size_t max_registrations = 1024;

  static verbs_options from_environment() {
    verbs_options o;
    if (const char* d = std::getenv("FERRY_VERBS_DEVICES"); d && *d) {
      std::string_view rest(d);
      while (!rest.empty()) {
        auto comma = rest.find(',');
        auto name = rest.substr(0, comma);
        if (!name.empty())
          o.devices.emplace_back(name);
        rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      }
    }
    if (const char* s = std::getenv("FERRY_VERBS_SPIN_US"); s && *s)
      o.spin = std::chrono::microseconds(std::strtol(s, nullptr, 10));
    if (const char* off = std::getenv("FERRY_VERBS_DISABLE"); off && *off && std::string_view(off) != "0")
      o.enabled = false;
    o.nic.gid_index = gid_index_from_environment();
    return o;
  }
};

} // namespace ferry::verbs
