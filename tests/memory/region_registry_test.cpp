#include "ferry/memory/region_registry.hpp"
#include "ferry/memory/shared_buffer.hpp"

#include <doctest/doctest.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
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
    CHECK(regs.size() == 1);                                              // the covered one keeps the region
    CHECK(regs.exposed().size() == 1);
    CHECK(regs.remove(a.data()).error() == ferry::errc::not_found);
    REQUIRE(regs.remove(a.data() + 8192)); // the last registration takes the region with it
    CHECK(regs.size() == 0);
    CHECK(regs.exposed().empty());
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
