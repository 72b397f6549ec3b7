// Shared memory that is asked for but cannot be had is refused when it is made, not met with SIGBUS at its
// first use; and a registry that goes while a peer holds a gate open closes that gate anyway.
#include "ferry/memory/region_registry.hpp"
#include "ferry/memory/shared_buffer.hpp"
#include "ferry/memory/shm_gates.hpp"
#include "ferry/metadata/segment_descriptor.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <sys/statvfs.h>
#include <unistd.h>
#include <vector>

using ferry::access;
using ferry::errc;

namespace {

/// The shared objects of this process in /dev/shm.
std::size_t own_objects() {
  std::size_t n = 0;
  const std::string prefix = "ferry-" + std::to_string(::getpid()) + ".";
  for (auto& e : std::filesystem::directory_iterator("/dev/shm"))
    if (e.path().filename().string().rfind(prefix, 0) == 0)
      ++n;
  return n;
}

} // namespace

TEST_SUITE("shared_buffer") {
  TEST_CASE("a shared buffer larger than /dev/shm has room for is refused when made, and leaves nothing") {
    struct ::statvfs fs {};
    REQUIRE(::statvfs("/dev/shm", &fs) == 0);
    const std::size_t whole = static_cast<std::size_t>(fs.f_blocks) * fs.f_frsize;
    REQUIRE(whole > 0);
    const std::size_t before = own_objects();
    // why: more than the whole of /dev/shm: the allocation fails at once, without taking the memory first
    auto b = ferry::shared_buffer::create(whole + (std::size_t{1} << 30));
    REQUIRE_FALSE(b);
    CHECK(b.error() == errc::out_of_space);
    CHECK(b.error().message().find("/dev/shm") != std::string::npos);
    CHECK(own_objects() == before);
    auto fits = ferry::shared_buffer::create(1 << 20); // what fits is made, zero-filled
    REQUIRE(fits);
    CHECK(fits->bytes()[(1 << 20) - 1] == std::byte{0});
  }

  TEST_CASE("a registry that goes while a peer holds a region's gate closes the gate anyway") {
    auto buf = ferry::shared_buffer::create(1 << 20);
    REQUIRE(buf);
    std::optional<ferry::shm_gates> peer;
    std::uint32_t gate = 0;
    std::uint64_t epoch = 0;
    ferry::gate_claim claim;
    std::optional<ferry::shm_gates::pass> held;
    auto t0 = std::chrono::steady_clock::now();
    {
      ferry::region_registry registry;
      REQUIRE(registry.add(buf->data(), buf->size(), access::read_write, buf->name(), 0));
      auto exposed = registry.exposed();
      REQUIRE(exposed.size() == 1);
      gate = exposed[0].shm_gate;
      epoch = exposed[0].shm_epoch;
      claim = ferry::gate_claim::of(exposed[0]);
      auto attached = ferry::shm_gates::attach(registry.shm_gates_name());
      REQUIRE(attached);
      peer.emplace(std::move(*attached));
      auto pass = peer->enter(gate, epoch, claim);
      REQUIRE(pass);
      held.emplace(std::move(*pass)); // a copy that does not end while the registry goes
      t0 = std::chrono::steady_clock::now();
    }
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5)); // it waited, then gave up
    auto again = peer->enter(gate, epoch, claim);
    REQUIRE_FALSE(again);
    CHECK(again.error() == errc::out_of_bounds);
    held.reset();
  }

  TEST_CASE(
      "GPU memory that peers map through CUDA IPC is gated as shared memory: unregistering it waits for "
      "no peer copying, and keeps peers out after") {
    // why: the registry does not look at the memory behind a location; host memory stands in for the GPU's
    std::vector<std::byte> gpu(1 << 20);
    ferry::memory_location where;
    where.kind = ferry::memory_kind::cuda_device;
    where.device = 0;
    where.ipc_handle = std::string(128, 'a');
    ferry::region_registry registry;
    REQUIRE(registry.add(gpu.data(), gpu.size(), access::read_write, where));
    auto exposed = registry.exposed();
    REQUIRE(exposed.size() == 1);
    REQUIRE(exposed[0].shm_gate != ferry::region_descriptor::no_gate);
    CHECK(exposed[0].shm_name.empty());
    // peers learn the gate from the descriptor
    ferry::segment_descriptor d;
    d.name = "gpu-owner";
    d.incarnation = 1;
    d.host = "h";
    d.shm_gates = registry.shm_gates_name();
    d.regions = exposed;
    auto parsed = ferry::segment_descriptor::parse(d.to_json());
    REQUIRE(parsed);
    CHECK(parsed->regions[0].shm_gate == exposed[0].shm_gate);
    CHECK(parsed->regions[0].shm_epoch == exposed[0].shm_epoch);
    // a peer in the middle of a copy holds a pass: the owner may not unregister (and free) the memory
    auto peer = ferry::shm_gates::attach(registry.shm_gates_name());
    REQUIRE(peer);
    auto pass = peer->enter(exposed[0].shm_gate, exposed[0].shm_epoch, ferry::gate_claim::of(exposed[0]));
    REQUIRE(pass);
    auto refused = registry.remove(gpu.data());
    REQUIRE_FALSE(refused);
    CHECK(refused.error() == errc::busy);
    *pass = {};
    REQUIRE(registry.remove(gpu.data()));
    auto after = peer->enter(exposed[0].shm_gate, exposed[0].shm_epoch, ferry::gate_claim::of(exposed[0]));
    REQUIRE_FALSE(after);
    CHECK(after.error() == errc::out_of_bounds);
  }
}
