#include "ferry/memory/region_registry.hpp"
#include "ferry/memory/shared_buffer.hpp"

#include "../support/give_away.hpp"

#include <doctest/doctest.h>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <fcntl.h>
#include <filesystem>
#include <string>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <utility>
#include <vector>

using ferry::access;
using ferry::region_registry;

TEST_SUITE("region_registry") {
  TEST_CASE("exposed regions get page-aligned offsets in registration order") {
    region_registry regs;
    std::vector<std::byte> a(5000), b(100), local(64);
    CHECK(regs.add(a.data(), a.size(), access::read_write).value() == 0);
    CHECK(regs.add(local.data(), local.size(), access::none).value() == 0); // local only: no place
    CHECK(regs.add(b.data(), b.size(), access::read).value() == 8192);
    auto ex = regs.exposed();
    REQUIRE(ex.size() == 2);
    CHECK(ex[0].length == 5000);
    CHECK(ex[1].offset == 8192);
    CHECK(ex[1].permissions == access::read);
  }

  TEST_CASE("registering a covered range only adds a reference") {
    region_registry regs;
    std::vector<std::byte> a(1 << 20);
    REQUIRE(regs.add(a.data(), a.size(), access::read_write));
    auto gen = regs.generation();
    auto inner = regs.add(a.data() + 4096, 8192, access::read_write);
    REQUIRE(inner);
    CHECK(*inner == 4096);
    CHECK(regs.size() == 1);
    CHECK(regs.generation() == gen);
    CHECK(regs.add(a.data() + 4096, 8192, access::read).error() == ferry::errc::already_exists);
    REQUIRE(regs.remove(a.data() + 4096)); // the covered registration
    REQUIRE(regs.remove(a.data()));
    CHECK(regs.size() == 0);
  }

  TEST_CASE("only an address where a registration starts can be unregistered, in any order") {
    region_registry regs;
    std::vector<std::byte> a(1 << 16);
    REQUIRE(regs.add(a.data(), a.size(), access::read_write));
    REQUIRE(regs.add(a.data() + 8192, 4096, access::read_write));
    CHECK(regs.remove(a.data() + 100).error() == ferry::errc::not_found); // inside, but nothing starts there
    REQUIRE(regs.remove(a.data()));                                       // the outer registration first
    CHECK(regs.size() == 1); // the covered one keeps what it covers
    REQUIRE(regs.exposed().size() == 1);
    CHECK(regs.exposed().front().offset == 8192);
    CHECK(regs.exposed().front().length == 4096);
    CHECK(regs.remove(a.data()).error() == ferry::errc::not_found);
    REQUIRE(regs.remove(a.data() + 8192)); // the last registration takes the region with it
    CHECK(regs.size() == 0);
    CHECK(regs.exposed().empty());
  }

  TEST_CASE("without its own registration a region shrinks to the ranges still registered inside it, at "
            "their offsets") {
    region_registry regs;
    std::vector<std::byte> a(1 << 20);
    auto outer = regs.add(a.data(), a.size(), access::read_write);
    REQUIRE(outer);
    const std::uint64_t at = *outer;
    REQUIRE(regs.add(a.data() + 8192, 4096, access::read_write));
    REQUIRE(regs.add(a.data() + 65536, 8192, access::read_write));
    REQUIRE(regs.add(a.data() + 65536 + 4096, 8192, access::read_write)); // overlaps the one before
    {
      auto use = regs.pin_local(a.data() + 500000, 100); // a transfer in the part that would go
      REQUIRE(use);
      auto refused = regs.remove(a.data());
      REQUIRE_FALSE(refused);
      CHECK(refused.error() == ferry::errc::busy);
    }
    auto gen = regs.generation();
    REQUIRE(regs.remove(a.data()));
    CHECK(regs.generation() != gen);
    auto regions = regs.exposed();
    REQUIRE(regions.size() == 2);
    CHECK(regions[0].offset == at + 8192);
    CHECK(regions[0].length == 4096);
    CHECK(regions[1].offset == at + 65536);
    CHECK(regions[1].length == 12288);
    auto refusal = [](auto r) { return r ? ferry::errc{} : ferry::errc(r.error().code().value()); };
    // what is no longer registered is reached neither by peers nor by this process's transfers
    CHECK(refusal(regs.pin_exposed(at, 16, access::read)) == ferry::errc::out_of_bounds);
    CHECK(refusal(regs.pin_exposed(at + 500000, 16, access::write)) == ferry::errc::out_of_bounds);
    CHECK(refusal(regs.pin_exposed(at + 8192, 4097, access::read)) == ferry::errc::out_of_bounds);
    CHECK(refusal(regs.pin_local(a.data() + 500000, 100)) == ferry::errc::out_of_bounds);
    {
      auto kept = regs.pin_exposed(at + 65536 + 100, 12000, access::write);
      REQUIRE(kept);
      CHECK(kept->data() == a.data() + 65536 + 100);
    }
    auto extent = regs.local_extent(a.data() + 65536 + 5000, 10);
    REQUIRE(extent);
    CHECK(extent->first == a.data() + 65536);
    CHECK(extent->second == 12288);
    // a part shrinks again when one of the ranges that make it goes
    REQUIRE(regs.remove(a.data() + 65536));
    regions = regs.exposed();
    REQUIRE(regions.size() == 2);
    CHECK(regions[1].offset == at + 65536 + 4096);
    CHECK(regions[1].length == 8192);
    REQUIRE(regs.remove(a.data() + 65536 + 4096));
    REQUIRE(regs.remove(a.data() + 8192));
    CHECK(regs.size() == 0);
    CHECK(regs.exposed().empty());
  }

  TEST_CASE("withdrawal observers hear of each region that goes or shrinks, before remove returns") {
    region_registry regs;
    struct heard_range {
      std::uintptr_t start;
      std::uint64_t length;
      bool exposed;
      bool operator==(const heard_range&) const = default;
    };
    std::vector<heard_range> heard;
    auto watch = regs.on_withdrawal([&](region_registry::withdrawn_range g) {
      heard.push_back({g.start, g.length, g.exposed});
    });
    std::vector<std::byte> a(1 << 20), b(4096);
    auto start = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p); };
    REQUIRE(regs.add(a.data(), a.size(), access::read_write));
    REQUIRE(regs.add(a.data() + 8192, 4096, access::read_write));
    REQUIRE(regs.remove(a.data() + 8192)); // the region stays as it was: nothing withdrawn
    CHECK(heard.empty());
    REQUIRE(regs.add(a.data() + 8192, 4096, access::read_write));
    REQUIRE(regs.remove(a.data())); // shrinks: the whole region as it was is withdrawn
    REQUIRE(heard.size() == 1);
    CHECK(heard[0] == heard_range{start(a.data()), std::uint64_t{1} << 20, true});
    REQUIRE(regs.remove(a.data() + 8192)); // goes
    REQUIRE(heard.size() == 2);
    CHECK(heard[1] == heard_range{start(a.data() + 8192), 4096, true});
    REQUIRE(regs.add(b.data(), b.size(), access::none)); // local only: withdrawn too, as not exposed
    REQUIRE(regs.remove(b.data()));
    REQUIRE(heard.size() == 3);
    CHECK(heard[2] == heard_range{start(b.data()), 4096, false});
    watch.reset();
    REQUIRE(regs.add(a.data(), a.size(), access::read));
    REQUIRE(regs.remove(a.data()));
    CHECK(heard.size() == 3);
  }

  TEST_CASE("of registrations that start at one address, one is removed by its length") {
    region_registry regs;
    std::vector<std::byte> a(1 << 20);
    auto at = regs.add(a.data(), a.size(), access::read_write); // a pool
    REQUIRE(at);
    REQUIRE(regs.add(a.data(), 4096, access::read_write)); // its first block
    auto code = [](auto r) { return r ? ferry::errc{} : ferry::errc(r.error().code().value()); };
    CHECK(code(regs.remove(a.data(), 8192)) == ferry::errc::not_found);
    REQUIRE(regs.remove(a.data(), a.size())); // the pool goes: the block is what is left
    auto regions = regs.exposed();
    REQUIRE(regions.size() == 1);
    CHECK(regions[0].offset == *at);
    CHECK(regions[0].length == 4096);
    CHECK(code(regs.remove(a.data(), a.size())) == ferry::errc::not_found);
    REQUIRE(regs.remove(a.data(), 4096));
    CHECK(regs.size() == 0);
  }

  TEST_CASE("a shared region cut down to the ranges left in it puts each behind a new gate, at its place in "
            "the object") {
    auto buf = ferry::shared_buffer::create(1 << 20);
    REQUIRE(buf);
    region_registry regs;
    REQUIRE(regs.add(buf->data(), buf->size(), access::read_write, buf->name()));
    const auto before = regs.exposed().front();
    REQUIRE(before.shm_gate != ferry::region_descriptor::no_gate);
    REQUIRE(regs.add(buf->data() + 8192, 4096, access::read_write, buf->name(), 8192));
    REQUIRE(regs.remove(buf->data()));
    auto regions = regs.exposed();
    REQUIRE(regions.size() == 1);
    CHECK(regions[0].shm_name == buf->name());
    CHECK(regions[0].shm_offset == 8192);
    CHECK(regions[0].offset == before.offset + 8192);
    CHECK(regions[0].shm_gate != ferry::region_descriptor::no_gate);
    CHECK((regions[0].shm_gate != before.shm_gate || regions[0].shm_epoch != before.shm_epoch));
    // a peer that holds the old descriptor is kept out: its gate is closed
    auto gates = ferry::shm_gates::attach(regs.shm_gates_name());
    REQUIRE(gates);
    auto old_pass = gates->enter(before.shm_gate, before.shm_epoch, ferry::gate_claim::of(before));
    REQUIRE_FALSE(old_pass);
    CHECK(old_pass.error() == ferry::errc::out_of_bounds);
    CHECK(gates->enter(regions[0].shm_gate, regions[0].shm_epoch, ferry::gate_claim::of(regions[0])));
  }

  TEST_CASE("a shared object of another user is exposed as private memory") {
    auto buf = ferry::shared_buffer::create(1 << 16);
    REQUIRE(buf);
    if (!ferry_test::give_to_another_user(buf->name())) {
      MESSAGE("skipped: giving the object to another user needs root (CAP_CHOWN)");
      return;
    }
    region_registry regs;
    REQUIRE(regs.add(buf->data(), buf->size(), access::read_write, buf->name()));
    auto regions = regs.exposed();
    REQUIRE(regions.size() == 1);
    // peers map objects only of the gate table's user: this one they reach over tcp
    CHECK(regions[0].shm_name.empty());
    CHECK(regions[0].shm_gate == ferry::region_descriptor::no_gate);
  }

  TEST_CASE("a covered range that names other memory than its region is refused, not counted") {
    auto buf = ferry::shared_buffer::create(1 << 16);
    REQUIRE(buf);
    region_registry regs;
    REQUIRE(regs.add(buf->data(), buf->size(), access::read_write, buf->name()));
    auto code = [](auto r) { return r ? ferry::errc{} : ferry::errc(r.error().code().value()); };
    // another object, or the right one at the wrong place in it
    CHECK(code(regs.add(buf->data() + 4096, 4096, access::read_write, "/ferry-other", 4096)) ==
          ferry::errc::already_exists);
    CHECK(code(regs.add(buf->data() + 4096, 4096, access::read_write, buf->name(), 0)) ==
          ferry::errc::already_exists);
    // another kind of memory
    ferry::memory_location pinned;
    pinned.kind = ferry::memory_kind::cuda_host;
    CHECK(code(regs.add(buf->data() + 4096, 4096, access::read_write, pinned)) ==
          ferry::errc::already_exists);
    // the same memory, named or not, only counts
    CHECK(regs.add(buf->data() + 4096, 4096, access::read_write, buf->name(), 4096));
    CHECK(regs.add(buf->data() + 8192, 4096, access::read_write));
    CHECK(regs.size() == 1);
  }

  TEST_CASE("a registration that a descriptor could not carry is refused, and the segment stays readable") {
    region_registry regs;
    std::vector<std::byte> a(8192);
    auto code = [](auto r) { return r ? ferry::errc{} : ferry::errc(r.error().code().value()); };
    CHECK(code(regs.add(a.data(), 4096, access::read, "/x", ~std::uint64_t{0} - 10)) ==
          ferry::errc::invalid_argument); // shm_offset + length wraps
    CHECK(code(regs.add(a.data(), 4096, access::read, std::string(300, 'x'))) ==
          ferry::errc::invalid_argument);
    ferry::memory_location odd;
    odd.kind = ferry::memory_kind::cuda_device;
    odd.device = 5000;
    CHECK(code(regs.add(a.data(), 4096, access::read, odd)) == ferry::errc::invalid_argument);
    odd.kind = ferry::memory_kind::host;
    odd.device = 0;
    CHECK(code(regs.add(a.data(), 4096, access::read, odd)) == ferry::errc::invalid_argument);
    odd.kind = ferry::memory_kind::cuda_device;
    odd.device = 0;
    odd.ipc_handle = std::string(600, 'a');
    CHECK(code(regs.add(a.data(), 4096, access::read, odd)) == ferry::errc::invalid_argument);
    CHECK(regs.size() == 0);
  }

  TEST_CASE("partial overlaps and empty regions are refused") {
    region_registry regs;
    std::vector<std::byte> a(8192);
    REQUIRE(regs.add(a.data() + 1000, 4000, access::read));
    CHECK(regs.add(a.data(), 2000, access::read).error() == ferry::errc::already_exists);
    CHECK(regs.add(a.data() + 4000, 4000, access::read).error() == ferry::errc::already_exists);
    CHECK(regs.add(a.data(), 0, access::read).error() == ferry::errc::invalid_argument);
    CHECK(regs.remove(a.data() + 7000).error() == ferry::errc::not_found);
  }

  TEST_CASE("a region in use cannot be removed until the transfer lets go") {
    region_registry regs;
    std::vector<std::byte> a(4096);
    REQUIRE(regs.add(a.data(), a.size(), access::read_write));
    {
      auto use = regs.pin_local(a.data() + 10, 100);
      REQUIRE(use);
      CHECK(use->data() == a.data() + 10);
      auto r = regs.remove(a.data());
      REQUIRE_FALSE(r);
      CHECK(r.error() == ferry::errc::busy);
    }
    CHECK(regs.remove(a.data()).has_value());
  }

  TEST_CASE("remote access is checked against bounds and permissions") {
    region_registry regs;
    std::vector<std::byte> rw(5000), ro(4096);
    REQUIRE(regs.add(rw.data(), rw.size(), access::read_write));
    REQUIRE(regs.add(ro.data(), ro.size(), access::read));
    // why: the error of a result that succeeded would be garbage; map success to an empty code
    auto refusal = [](const auto& r) { return r ? std::error_code{} : r.error().code(); };
    CHECK(regs.pin_exposed(0, 5000, access::write).has_value());
    CHECK(refusal(regs.pin_exposed(4000, 1001, access::read)) == ferry::errc::out_of_bounds);
    CHECK(refusal(regs.pin_exposed(6000, 1, access::read)) == ferry::errc::out_of_bounds); // the gap
    CHECK(regs.pin_exposed(8192, 4096, access::read).has_value());
    CHECK(refusal(regs.pin_exposed(8192, 10, access::write)) == ferry::errc::permission_denied);
    CHECK(refusal(regs.pin_exposed(~0ull - 5, 10, access::read)) == ferry::errc::out_of_bounds);
    CHECK(refusal(regs.pin_local(rw.data() + 4900, 200)) == ferry::errc::out_of_bounds);
  }

  TEST_CASE("a shared buffer is mappable by name and registered with it") {
    auto buf = ferry::shared_buffer::create(10000);
    REQUIRE(buf);
    CHECK(buf->size() % 4096 == 0);
    CHECK(buf->name().rfind("/ferry-", 0) == 0);
    region_registry regs;
    REQUIRE(regs.add(buf->data(), buf->size(), access::read_write, buf->name()));
    CHECK(regs.exposed().front().shm_name == buf->name());
  }
}

TEST_SUITE("shared_buffer") {
  TEST_CASE("shared objects left by processes that ended are removed") {
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      auto b = ferry::shared_buffer::create(4096);
      if (!b)
        ::_exit(1);
      ::kill(::getpid(), SIGKILL); // dies without cleaning up
    }
    int status;
    ::waitpid(child, &status, 0);
    auto left_by_child = [&] {
      int n = 0;
      std::string prefix = "ferry-" + std::to_string(child) + ".";
      for (auto& e : std::filesystem::directory_iterator("/dev/shm"))
        n += e.path().filename().string().rfind(prefix, 0) == 0;
      return n;
    };
    CHECK(left_by_child() == 1);
    ferry::shared_buffer::remove_orphans();
    CHECK(left_by_child() == 0);
  }
}

TEST_SUITE("region_registry extent") {
  TEST_CASE("local_extent reports the whole region holding a range") {
    ferry::region_registry regs;
    std::vector<std::byte> a(8192), b(4096);
    REQUIRE(regs.add(a.data(), a.size(), ferry::access::none));
    REQUIRE(regs.add(b.data(), b.size(), ferry::access::read));
    auto e = regs.local_extent(a.data() + 100, 50);
    REQUIRE(e);
    CHECK(e->first == a.data());
    CHECK(e->second == a.size());
    auto f = regs.local_extent(b.data() + 4095, 1);
    REQUIRE(f);
    CHECK(f->first == b.data());
    auto out = regs.local_extent(a.data() + 8000, 500);
    REQUIRE_FALSE(out);
    CHECK(out.error() == ferry::errc::out_of_bounds);
  }
}
