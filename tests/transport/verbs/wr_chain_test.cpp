#include "ferry/transport/verbs/wr_chain.hpp"

#include <doctest/doctest.h>

#include <array>
#include <vector>

using namespace ferry::verbs;
using ferry::transfer_op;

namespace {
remote_region region_rw() {
  return {1 << 20, 1 << 20, 0x10000000, 0x77, ferry::access::read_write};
}
} // namespace

TEST_SUITE("verbs wr_chain") {
  TEST_CASE("a write is built with its remote address, rkey and scatter list") {
    std::array<std::byte, 8192> buf{};
    wr_chain chain({.max_sge = 2, .max_inline = 0, .signal_every = 4, .max_wr = 8});
    std::array<local_sge, 2> pieces{{{buf.data(), 4096, 5}, {buf.data() + 4096, 100, 6}}};
    REQUIRE(chain.add(transfer_op::write, pieces, region_rw(), (1 << 20) + 64, 42));
    auto* head = chain.finish();
    REQUIRE(head);
    CHECK(head->opcode == IBV_WR_RDMA_WRITE);
    CHECK(head->wr_id == 42);
    CHECK(head->wr.rdma.remote_addr == 0x10000000 + 64);
    CHECK(head->wr.rdma.rkey == 0x77);
    REQUIRE(head->num_sge == 2);
    CHECK(head->sg_list[0].addr == reinterpret_cast<std::uint64_t>(buf.data()));
    CHECK(head->sg_list[0].lkey == 5);
    CHECK(head->sg_list[1].length == 100);
    CHECK(head->next == nullptr);
    CHECK((head->send_flags & IBV_SEND_SIGNALED) != 0); // the last one always is
    CHECK((head->send_flags & IBV_SEND_INLINE) == 0);
  }

  TEST_CASE("every Nth request and the last are signaled and requests are linked in order") {
    std::array<std::byte, 64> buf{};
    wr_chain chain({.max_sge = 1, .max_inline = 0, .signal_every = 4, .max_wr = 16});
    local_sge one{buf.data(), 64, 1};
    for (std::uint64_t i = 0; i < 10; ++i)
      REQUIRE(chain.add(transfer_op::read, std::span(&one, 1), region_rw(), (1 << 20) + i * 64, i));
    auto* w = chain.finish();
    std::vector<std::uint64_t> signaled;
    std::size_t n = 0;
    for (; w; w = w->next, ++n) {
      CHECK(w->wr_id == n);
      CHECK(w->opcode == IBV_WR_RDMA_READ);
      if (w->send_flags & IBV_SEND_SIGNALED)
        signaled.push_back(w->wr_id);
    }
    CHECK(n == 10);
    CHECK(signaled == std::vector<std::uint64_t>{3, 7, 9});
    CHECK(chain.signaled() == 3);
  }

  TEST_CASE("small writes go inline, reads and large writes never do") {
    std::array<std::byte, 1024> buf{};
    wr_chain chain({.max_sge = 1, .max_inline = 128, .signal_every = 16, .max_wr = 8});
    local_sge small{buf.data(), 128, 1}, large{buf.data(), 129, 1};
    REQUIRE(chain.add(transfer_op::write, std::span(&small, 1), region_rw(), 1 << 20, 1));
    REQUIRE(chain.add(transfer_op::write, std::span(&large, 1), region_rw(), 1 << 20, 2));
    REQUIRE(chain.add(transfer_op::read, std::span(&small, 1), region_rw(), 1 << 20, 3));
    auto r = chain.requests();
    CHECK((r[0].send_flags & IBV_SEND_INLINE) != 0);
    CHECK((r[1].send_flags & IBV_SEND_INLINE) == 0);
    CHECK((r[2].send_flags & IBV_SEND_INLINE) == 0);
  }

  TEST_CASE("out-of-bounds, forbidden and oversized requests are refused before anything is built") {
    std::array<std::byte, 4096> buf{};
    wr_chain chain({.max_sge = 2, .max_inline = 0, .signal_every = 16, .max_wr = 2, .max_message = 2048});
    local_sge one{buf.data(), 1024, 1};
    auto span1 = std::span(&one, 1);
    auto r = region_rw();
    auto e1 = chain.add(transfer_op::write, span1, r, r.offset + r.length - 1000, 1);
    REQUIRE_FALSE(e1);
    CHECK(e1.error() == ferry::errc::out_of_bounds);
    auto e2 = chain.add(transfer_op::read, span1, r, r.offset - 1, 1);
    REQUIRE_FALSE(e2);
    CHECK(e2.error() == ferry::errc::out_of_bounds);
    auto ro = r;
    ro.permissions = ferry::access::read;
    auto e3 = chain.add(transfer_op::write, span1, ro, r.offset, 1);
    REQUIRE_FALSE(e3);
    CHECK(e3.error() == ferry::errc::permission_denied);
    std::array<local_sge, 3> three{{{buf.data(), 1, 1}, {buf.data(), 1, 1}, {buf.data(), 1, 1}}};
    auto e4 = chain.add(transfer_op::write, three, r, r.offset, 1);
    REQUIRE_FALSE(e4);
    CHECK(e4.error().message().find("SGE limit") != std::string::npos);
    std::array<local_sge, 2> big{{{buf.data(), 2048, 1}, {buf.data(), 1, 1}}};
    CHECK_FALSE(chain.add(transfer_op::write, big, r, r.offset, 1));
    local_sge empty{buf.data(), 0, 1};
    CHECK_FALSE(chain.add(transfer_op::write, std::span(&empty, 1), r, r.offset, 1));
    CHECK(chain.empty());
    CHECK(chain.finish() == nullptr);
    REQUIRE(chain.add(transfer_op::write, span1, r, r.offset, 1));
    REQUIRE(chain.add(transfer_op::write, span1, r, r.offset, 2));
    auto full = chain.add(transfer_op::write, span1, r, r.offset, 3);
    REQUIRE_FALSE(full);
    CHECK(full.error() == ferry::errc::busy);
    CHECK(chain.size() == 2);
  }

  TEST_CASE("an offset near 2^64 cannot wrap the bounds check") {
    std::array<std::byte, 16> buf{};
    wr_chain chain({});
    local_sge one{buf.data(), 16, 1};
    remote_region r{~0ull - 100, 100, 0x1000, 1, ferry::access::read_write};
    CHECK_FALSE(chain.add(transfer_op::read, std::span(&one, 1), r, ~0ull - 8, 1));
    CHECK(chain.add(transfer_op::read, std::span(&one, 1), r, ~0ull - 17, 1));
  }
}
