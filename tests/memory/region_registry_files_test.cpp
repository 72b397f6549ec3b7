#include "ferry/memory/file_backing.hpp"
#include "ferry/memory/region_registry.hpp"

#include <doctest/doctest.h>

#include <memory>
#include <stop_token>
#include <vector>

using ferry::access;
using ferry::errc;
using ferry::region_registry;

namespace {

/// A file region that is never read: the registry only needs its length.
class fake_file final : public ferry::file_backing {
public:
  explicit fake_file(std::uint64_t n) : n_(n) {}
  std::uint64_t length() const noexcept override { return n_; }
  ferry::task<ferry::result<void>> read(std::uint64_t, std::span<std::byte>, std::stop_token) override {
    co_return ferry::fail(errc::unsupported, "fake");
  }
  ferry::task<ferry::result<void>> write(std::uint64_t, std::span<const std::byte>,
                                         std::stop_token) override {
    co_return ferry::fail(errc::unsupported, "fake");
  }

private:
  std::uint64_t n_;
};

} // namespace

TEST_SUITE("region_registry") {
  TEST_CASE("file regions take their place in the segment and are pinned only by callers that handle files") {
    region_registry regs;
    std::vector<std::byte> mem(5000);
    REQUIRE(regs.add(mem.data(), mem.size(), access::read_write).value() == 0);
    auto file = std::make_shared<fake_file>(10000);
    auto at = regs.add_file(file, access::read);
    REQUIRE(at);
    CHECK(*at == 8192);
    CHECK(regs.size() == 2);
    auto ex = regs.exposed();
    REQUIRE(ex.size() == 2);
    CHECK(ex[1].offset == 8192);
    CHECK(ex[1].length == 10000);
    CHECK(ex[1].shm_name.empty());
    CHECK(regs.is_file(8192 + 100, 9000));
    CHECK_FALSE(regs.is_file(8192 + 100, 10000)); // past its end
    CHECK_FALSE(regs.is_file(0, 100));            // memory

    auto refused = regs.pin_exposed(8192, 4096, access::read);
    REQUIRE_FALSE(refused);
    CHECK(refused.error() == errc::unsupported);
    auto denied = regs.pin_exposed(8192, 4096, access::write, true);
    REQUIRE_FALSE(denied);
    CHECK(denied.error() == errc::permission_denied);
    auto out = regs.pin_exposed(8192 + 9000, 2000, access::read, true);
    REQUIRE_FALSE(out);
    CHECK(out.error() == errc::out_of_bounds);
    {
      auto lease = regs.pin_exposed(8192 + 300, 4096, access::read, true);
      REQUIRE(lease);
      CHECK(lease->file() == file.get());
      CHECK(lease->file_offset() == 300);
      CHECK(lease->data() == nullptr);
      CHECK(regs.remove_file(*at).error() == errc::busy);
    }
    auto mem_lease = regs.pin_exposed(0, 100, access::read, true);
    REQUIRE(mem_lease);
    CHECK(mem_lease->file() == nullptr);
    CHECK(regs.remove_file(0).error() == errc::not_found);
    CHECK(regs.remove_file(*at));
    CHECK(regs.exposed().size() == 1);
    CHECK(regs.add_file(file, access::none).error() == errc::invalid_argument);
    CHECK(regs.add_file(std::make_shared<fake_file>(0), access::read).error() == errc::invalid_argument);
  }

  TEST_CASE("a region that would wrap the segment's offset space or the address space is refused, and none "
            "gets another's offset") {
    region_registry regs;
    auto huge = regs.add_file(std::make_shared<fake_file>(~0ull - 8192), access::read);
    REQUIRE(huge);
    auto next = regs.add_file(std::make_shared<fake_file>(1 << 20), access::read_write);
    REQUIRE_FALSE(next);
    CHECK(next.error() == errc::out_of_space);
    CHECK(regs.exposed().size() == 1);
    auto all = regs.add_file(std::make_shared<fake_file>(~0ull), access::read);
    REQUIRE_FALSE(all);
    CHECK(all.error() == errc::out_of_space);
    // memory whose end would lie past the address space, which would then "cover" every later registration
    std::vector<std::byte> bytes(64);
    region_registry mem;
    auto wrapped = mem.add(bytes.data(), SIZE_MAX, access::read_write);
    REQUIRE_FALSE(wrapped);
    CHECK(wrapped.error() == errc::invalid_argument);
    CHECK(mem.add(bytes.data(), bytes.size(), access::read_write).has_value());
  }

  TEST_CASE("a segment exposes at most as many regions as a descriptor carries") {
    region_registry regs;
    std::vector<std::byte> bytes(ferry::max_exposed_regions + 1);
    for (std::size_t i = 0; i < ferry::max_exposed_regions; ++i)
      REQUIRE(regs.add(bytes.data() + i, 1, access::read));
    auto one_more = regs.add(bytes.data() + ferry::max_exposed_regions, 1, access::read);
    REQUIRE_FALSE(one_more);
    CHECK(one_more.error() == errc::out_of_space);
    // memory that is not exposed is still registered (it is not in the descriptor)
    CHECK(regs.add(bytes.data() + ferry::max_exposed_regions, 1, access::none).has_value());
    CHECK(regs.exposed().size() == ferry::max_exposed_regions);
  }
}
