// A same-host peer copies straight into the owner's shared memory; the owner's unregistering must still hold
// (and a descriptor that is not the owner's must not send copies there otherwise than the owner exposed it):
// once a shared region is unregistered no peer writes or reads it (even with a descriptor that still lists
// it and a mapping that is still open), memory registered again in its place is reached only as its new
// registration permits, and unregistering is refused while a peer's copy is in progress.

#include "ferry/core/sync_wait.hpp"
#include "ferry/core/task.hpp"
#include "ferry/memory/shm_gates.hpp"
#include "ferry/metadata/memory_metadata_store.hpp"
#include "ferry/transfer.hpp"

#include "../support/give_away.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <fcntl.h>
#include <string>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

using ferry::access;
using ferry::errc;
using ferry::transfer_batch;

namespace {

bool all_of(std::span<const std::byte> s, std::byte v) {
  return std::all_of(s.begin(), s.end(), [v](std::byte b) { return b == v; });
}

/// An owner that exposes a shared region (`access` given), not yet started, and a same-host peer with a
/// local buffer to copy from.
struct shared_region_pair {
  ferry::io::io_context ctx;
  ferry::default_engine owner{ctx, {.name = "owner", .listen = "127.0.0.2:0"}};
  ferry::default_engine peer{ctx, {.name = "peer"}};
  ferry::result<ferry::shared_buffer> shared = ferry::shared_buffer::create(1 << 20);
  std::vector<std::byte> local = std::vector<std::byte>(64 << 10, std::byte{0x11});
  std::uint64_t at = 0; // the region's segment offset

  explicit shared_region_pair(ferry::access permissions) {
    REQUIRE(shared);
    REQUIRE(peer.registry().add(local.data(), local.size(), access::none));
    auto where = owner.registry().add(shared->data(), shared->size(), permissions, shared->name());
    REQUIRE(where);
    at = *where;
  }

  /// The peer writes all of its local buffer to the region, in the segment it opens at `locator` (an address
  /// or a name in its metadata store).
  ferry::batch_result write_local_to(const std::string& locator) {
    return ctx.run_until([&]() -> ferry::task<ferry::batch_result> {
      auto seg = co_await peer.open_segment(locator);
      REQUIRE(seg);
      transfer_batch w;
      w.write(local.data(), *seg, at, local.size());
      co_return co_await peer.transfer(w);
    }());
  }
};

} // namespace

TEST_SUITE("transfer_engine: shared memory the owner unregisters") {
  TEST_CASE("a same-host peer cannot reach a shared region after its owner unregistered it") {
    shared_region_pair p(access::read_write);
    REQUIRE(p.owner.start());
    p.ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await p.peer.open_segment(p.owner.endpoint()->to_string());
      REQUIRE(seg);
      transfer_batch w;
      w.write(p.local.data(), *seg, p.at, p.local.size());
      auto r = co_await p.peer.transfer(w);
      REQUIRE_MESSAGE(r.ok(), r.first_error().message());
      CHECK(p.peer.routed_bytes("shm") == p.local.size()); // a memory copy, not tcp
      CHECK(all_of(p.shared->bytes().first(p.local.size()), std::byte{0x11}));

      // The owner unregisters the region and registers the same memory again, read-only.
      REQUIRE(p.owner.registry().remove(p.shared->data()));
      std::fill(p.shared->bytes().begin(), p.shared->bytes().end(), std::byte{0});
      auto again_at =
          p.owner.registry().add(p.shared->data(), p.shared->size(), access::read, p.shared->name());
      REQUIRE(again_at);
      // The peer's descriptor still lists the old region; its write is refused, not copied.
      std::fill(p.local.begin(), p.local.end(), std::byte{0x22});
      auto refused = co_await p.peer.transfer(w);
      REQUIRE_FALSE(refused.ok());
      CHECK(refused.requests[0].error() == errc::out_of_bounds);
      MESSAGE("write to an unregistered shared region: ", refused.first_error().message());
      // Through the new registration: reads pass, writes are refused.
      transfer_batch w2, r2;
      w2.write(p.local.data(), *seg, *again_at, p.local.size());
      auto denied = co_await p.peer.transfer(w2);
      REQUIRE_FALSE(denied.ok());
      CHECK(denied.requests[0].error() == errc::permission_denied);
      std::fill(p.shared->bytes().begin(), p.shared->bytes().begin() + 4096, std::byte{0x33});
      r2.read(p.local.data(), *seg, *again_at, 4096);
      auto read = co_await p.peer.transfer(r2);
      REQUIRE_MESSAGE(read.ok(), read.first_error().message());
      CHECK(all_of(std::span(p.local).first(4096), std::byte{0x33}));
    }());
    // nothing the peer sent after the removal landed
    CHECK(all_of(p.shared->bytes().subspan(4096), std::byte{0}));
  }

  TEST_CASE("a forged descriptor cannot send a same-host peer's copies into shared memory otherwise than its "
            "owner exposed it") {
    shared_region_pair p(access::read); // read-only
    ferry::memory_metadata_store meta;
    p.peer.use_metadata(meta);
    REQUIRE(p.owner.start());
    // A forger takes the owner's descriptor (anyone may ask for it), publishes it as its own segment's and
    // marks the region writable: the peer, writing to "the forger", would write into the owner's memory.
    auto forged = p.owner.descriptor();
    forged.name = "forger";
    REQUIRE(forged.regions.size() == 1);
    forged.regions.front().permissions = access::read_write;
    REQUIRE(ferry::sync_wait(meta.put("ferry/segments/forger", forged.to_json())));
    auto r = p.write_local_to("forger");
    REQUIRE_FALSE(r.ok());
    CHECK(r.requests[0].error() == errc::permission_denied);
    MESSAGE("write through a forged descriptor: ", r.first_error().message());
    CHECK(all_of(p.shared->bytes(), std::byte{0})); // nothing landed
  }

  TEST_CASE("a shared object of another user than its table of gates is not mapped") {
    // A table of gates vouches for its own user's memory only: a descriptor that names one user's table
    // beside another user's object (a table anyone can make) gets no copy there.
    shared_region_pair p(access::read_write);
    REQUIRE(p.owner.start());
    if (!ferry_test::give_to_another_user(p.shared->name())) {
      MESSAGE("skipped: giving the object to another user needs root (CAP_CHOWN)");
      return;
    }
    auto r = p.write_local_to(p.owner.endpoint()->to_string());
    REQUIRE_FALSE(r.ok());
    CHECK(r.requests[0].error() == errc::permission_denied);
    MESSAGE("write to another user's object: ", r.first_error().message());
    CHECK(all_of(p.shared->bytes(), std::byte{0})); // nothing landed
  }

  TEST_CASE("unregistering a shared region is refused while a same-host peer copies into it") {
    ferry::io::io_context ctx;
    ferry::default_engine owner(ctx, {.name = "owner", .listen = "127.0.0.2:0"});
    auto shared = ferry::shared_buffer::create(1 << 20);
    REQUIRE(shared);
    auto at = owner.registry().add(shared->data(), shared->size(), access::read_write, shared->name());
    REQUIRE(at);
    REQUIRE(owner.start());
    // What a peer's copy thread holds while it copies, taken as a peer takes it: from the descriptor.
    auto d = owner.descriptor();
    REQUIRE(d.regions.size() == 1);
    auto gates = ferry::shm_gates::attach(d.shm_gates);
    REQUIRE(gates);
    {
      auto copying =
          gates->enter(d.regions[0].shm_gate, d.regions[0].shm_epoch, ferry::gate_claim::of(d.regions[0]));
      REQUIRE(copying);
      auto busy = owner.registry().remove(shared->data());
      REQUIRE_FALSE(busy);
      CHECK(busy.error() == errc::busy);
      MESSAGE("unregistering while a peer copies: ", busy.error().message());
    }
    CHECK(owner.registry().remove(shared->data()).has_value());
  }
}
