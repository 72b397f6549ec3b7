// Shared memory that is asked for but cannot be had is refused when it is made, not met with SIGBUS at its
// first use; and a registry that goes while a peer holds a gate open closes that gate anyway.
#include "ferry/memory/region_registry.hpp"
#include "ferry/memory/shared_buffer.hpp"
#include "ferry/memory/shm_gates.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <sys/statvfs.h>
#include <unistd.h>

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
    std::optional<ferry::shm_gates::pass> held;
    auto t0 = std::chrono::steady_clock::now();
    {
      ferry::region_registry registry;
      REQUIRE(registry.add(buf->data(), buf->size(), access::read_write, buf->name(), 0));
      auto exposed = registry.exposed();
      REQUIRE(exposed.size() == 1);
      gate = exposed[0].shm_gate;
      epoch = exposed[0].shm_epoch;
      auto attached = ferry::shm_gates::attach(registry.shm_gates_name());
      REQUIRE(attached);
      peer.emplace(std::move(*attached));
      auto pass = peer->enter(gate, epoch);
      REQUIRE(pass);
      held.emplace(std::move(*pass)); // a copy that does not end while the registry goes
      t0 = std::chrono::steady_clock::now();
    }
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5)); // it waited, then gave up
    auto again = peer->enter(gate, epoch);
    REQUIRE_FALSE(again);
    CHECK(again.error() == errc::out_of_bounds);
    held.reset();
  }
}
