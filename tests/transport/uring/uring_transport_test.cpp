#include "uring_test_util.hpp"

#include "../../support/raw_frames.hpp"

#include "ferry/core/task.hpp"
#include "ferry/io/aligned_buffer.hpp"
#include "ferry/io/deadline.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/tcp_socket.hpp"
#include "ferry/transfer.hpp"
#include "ferry/transport/uring/file_engine.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <sys/mount.h>
#include <unistd.h>
#include <vector>

using ferry::access;
using ferry::errc;
using ferry::file_engine;
using ferry::transfer_batch;
using ferry::uring_file;
using ferry::io::aligned_buffer;
using ferry::io::io_context;
using namespace ferry_test;

namespace {

/// Writes then reads back through `engine` to `target` (a file region at `base`), with aligned and unaligned
/// requests in one batch each; the caller's code is the same whether the file is local or remote.
ferry::task<> round_trip(file_engine& engine, ferry::segment_id target, std::uint64_t base,
                         aligned_buffer& src, aligned_buffer& back) {
  transfer_batch w;
  w.write(src.data(), target, base, 1 << 20)                                     // aligned: direct
      .write(src.data() + (1 << 20) + 5, target, base + (1 << 20) + 777, 300001) // unaligned: bounced
      .write(src.data() + (2 << 20), target, base + (2 << 20), 3 * 4096);        // many slices per batch
  auto wr = co_await engine.transfer(w);
  REQUIRE_MESSAGE(wr.ok(), wr.first_error().message());
  CHECK(wr.bytes() == (1 << 20) + 300001 + 3 * 4096);
  transfer_batch r;
  r.read(back.data(), target, base, 1 << 20)
      .read(back.data() + (1 << 20) + 5, target, base + (1 << 20) + 777, 300001)
      .read(back.data() + (2 << 20), target, base + (2 << 20), 3 * 4096);
  auto rr = co_await engine.transfer(r);
  REQUIRE_MESSAGE(rr.ok(), rr.first_error().message());
  CHECK(std::memcmp(back.data(), src.data(), 1 << 20) == 0);
  CHECK(std::memcmp(back.data() + (1 << 20) + 5, src.data() + (1 << 20) + 5, 300001) == 0);
  CHECK(std::memcmp(back.data() + (2 << 20), src.data() + (2 << 20), 3 * 4096) == 0);
}

/// A real file region whose size, as the server sees it before a read, stays what it was registered with,
/// as a block device's capacity does whatever its sectors hold: a read that starts well can fail in a later
/// piece (here, once the file has really been truncated).
class fixed_size_file final : public ferry::file_backing {
public:
  explicit fixed_size_file(std::shared_ptr<uring_file> file) : file_(std::move(file)) {}
  std::uint64_t length() const noexcept override { return file_->length(); }
  ferry::task<ferry::result<void>> read(std::uint64_t offset, std::span<std::byte> into,
                                        std::stop_token stop) override {
    co_return co_await file_->read(offset, into, stop);
  }
  ferry::task<ferry::result<void>> write(std::uint64_t offset, std::span<const std::byte> from,
                                         std::stop_token stop) override {
    co_return co_await file_->write(offset, from, stop);
  }

private:
  std::shared_ptr<uring_file> file_;
};

} // namespace

TEST_SUITE("uring_transport") {
  TEST_CASE("the engine reads and writes its own file region through io_uring") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir / "segment.bin";
    make_file(path, 8 << 20, 1);
    file_engine engine(ctx, {.name = "local", .slice_size = 256 * 1024});
    auto f = uring_file::open(ctx, path);
    REQUIRE(f);
    auto at = engine.registry().add_file(*f, access::read_write);
    REQUIRE(at);
    aligned_buffer src(3 << 20), back(3 << 20);
    fill(src.bytes(), 7);
    REQUIRE(engine.registry().add(src.data(), src.size(), access::none));
    REQUIRE(engine.registry().add(back.data(), back.size(), access::none));
    ctx.run_until(round_trip(engine, engine.self, *at + 4096, src, back));
    CHECK(engine.routed_bytes("uring") == 2 * ((1 << 20) + 300001 + 3 * 4096));
    CHECK(engine.routed_bytes("shm") == 0);
    auto disk = file_bytes(path, 4096, 1 << 20);
    CHECK(std::memcmp(disk.data(), src.data(), 1 << 20) == 0);
    CHECK(engine.registry().remove_file(*at));
  }

  TEST_CASE("a remote file segment is served over tcp: the caller's code is the same as for a local file") {
    // why: with io threads the target's connections run on loops of their own; file I/O stays on its loop
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      io_context ctx;
      temp_dir dir;
      const std::string path = dir / "remote.bin";
      make_file(path, 8 << 20, 1);
      file_engine target(ctx, {.name = "target", .listen = "127.0.0.2:0", .tcp = {.io_threads = io_threads}});
      file_engine initiator(
          ctx, {.name = "initiator", .slice_size = 256 * 1024, .tcp = {.io_threads = io_threads}});
      std::vector<std::byte> memory(1 << 16); // a memory region first: the file's offset is not 0
      REQUIRE(target.registry().add(memory.data(), memory.size(), access::read_write));
      auto f = uring_file::open(ctx, path);
      REQUIRE(f);
      auto at = target.registry().add_file(*f, access::read_write);
      REQUIRE(at);
      CHECK(*at == memory.size());
      REQUIRE(target.start());
      aligned_buffer src(3 << 20), back(3 << 20);
      fill(src.bytes(), 8);
      REQUIRE(initiator.registry().add(src.data(), src.size(), access::none));
      REQUIRE(initiator.registry().add(back.data(), back.size(), access::none));
      ctx.run_until([&]() -> ferry::task<> {
        auto seg = co_await initiator.open_segment(target.endpoint()->to_string());
        REQUIRE(seg);
        co_await round_trip(initiator, *seg, *at, src, back);
        // Bounds and permissions of the file region are checked by its owner.
        transfer_batch bad;
        bad.read(back.data(), *seg, *at + (8 << 20) - 100, 4096);
        auto br = co_await initiator.transfer(bad);
        CHECK_FALSE(br.ok());
        CHECK(br.requests[0].error() == errc::out_of_bounds);
      }());
      CHECK(initiator.routed_bytes("tcp") == 2 * ((1 << 20) + 300001 + 3 * 4096));
      CHECK(initiator.routed_bytes("uring") == 0);
      auto disk = file_bytes(path, 0, 1 << 20);
      CHECK(std::memcmp(disk.data(), src.data(), 1 << 20) == 0);
    }
  }

  TEST_CASE("a read-only file registration refuses writes, locally and from peers") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir / "ro.bin";
    make_file(path, 1 << 20, 1);
    file_engine target(ctx, {.name = "target", .listen = "127.0.0.2:0"});
    ferry::default_engine initiator(ctx, {.name = "initiator"});
    auto f = uring_file::open(ctx, path, {.permissions = access::read});
    REQUIRE(f);
    auto at = target.registry().add_file(*f, access::read);
    REQUIRE(at);
    REQUIRE(target.start());
    aligned_buffer local(1 << 16);
    fill(local.bytes(), 3);
    REQUIRE(target.registry().add(local.data(), local.size(), access::none));
    REQUIRE(initiator.registry().add(local.data(), local.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      transfer_batch own;
      own.write(local.data(), target.self, *at, 4096).read(local.data(), target.self, *at + 4096, 4096);
      auto r = co_await target.transfer(own);
      CHECK(r.requests[0].error() == errc::permission_denied);
      CHECK(r.requests[1].value() == 4096);
      auto seg = co_await initiator.open_segment(target.endpoint()->to_string());
      REQUIRE(seg);
      transfer_batch remote;
      remote.write(local.data(), *seg, *at, 4096);
      auto rr = co_await initiator.transfer(remote);
      CHECK(rr.requests[0].error() == errc::permission_denied);
    }());
    std::vector<std::byte> expect(1 << 20);
    fill(expect, 1);
    CHECK(file_bytes(path, 0, 1 << 20) == expect);
  }

  TEST_CASE("an engine without the uring transport refuses its own file region clearly") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir / "plain.bin";
    make_file(path, 1 << 16, 1);
    ferry::default_engine engine(ctx, {.name = "plain"});
    auto f = uring_file::open(ctx, path);
    REQUIRE(f);
    auto at = engine.registry().add_file(*f, access::read_write);
    REQUIRE(at);
    std::vector<std::byte> local(4096);
    REQUIRE(engine.registry().add(local.data(), local.size(), access::none));
    transfer_batch b;
    b.read(local.data(), engine.self, *at, 4096);
    auto r = ctx.run_until(engine.transfer(b));
    REQUIRE_FALSE(r.ok());
    CHECK(r.requests[0].error() == errc::unsupported);
    MESSAGE("without uring_transport: ", r.first_error().message());
  }

  TEST_CASE(
      "a remote file segment moves requests larger than its staging piece in pieces, unaligned ends too") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir / "remote.bin";
    make_file(path, 16 << 20, 1);
    file_engine target(ctx, {.name = "target", .listen = "127.0.0.2:0"});
    // why: one slice per request, over one data connection: the target's staging is that connection's
    file_engine initiator(ctx,
                          {.name = "initiator", .slice_size = 16 << 20, .tcp = {.connections_per_peer = 1}});
    auto f = uring_file::open(ctx, path);
    REQUIRE(f);
    auto at = target.registry().add_file(*f, access::read_write);
    REQUIRE(at);
    REQUIRE(target.start());
    constexpr std::uint64_t piece = ferry::tcp_server::file_piece;
    const std::uint64_t length = 5 * piece + 777, from = 3 * 4096 + 5; // six pieces, unaligned at both ends
    aligned_buffer src(length), back(length);
    fill(src.bytes(), 9);
    REQUIRE(initiator.registry().add(src.data(), src.size(), access::none));
    REQUIRE(initiator.registry().add(back.data(), back.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      auto seg = co_await initiator.open_segment(target.endpoint()->to_string());
      REQUIRE(seg);
      transfer_batch w;
      w.write(src.data(), *seg, *at + from, length);
      auto wr = co_await initiator.transfer(w);
      REQUIRE_MESSAGE(wr.ok(), wr.first_error().message());
      transfer_batch r;
      r.read(back.data(), *seg, *at + from, length);
      auto rr = co_await initiator.transfer(r);
      REQUIRE_MESSAGE(rr.ok(), rr.first_error().message());
      CHECK(std::memcmp(back.data(), src.data(), length) == 0);
      auto disk = file_bytes(path, from, length);
      CHECK(std::memcmp(disk.data(), src.data(), length) == 0);
      // the connection held one piece, not the request's length
      REQUIRE(target.server());
      CHECK(target.server()->staging_bytes() == piece);

      // The file shrinks under its registration: a read past its new end is refused by the owner, as out of
      // bounds, before any of it is sent; it is never reported done with the bytes it lacks.
      REQUIRE(::truncate(path.c_str(), static_cast<off_t>(piece + piece / 2)) == 0);
      transfer_batch past;
      past.read(back.data(), *seg, *at, 3 * piece);
      auto pr =
          co_await initiator.transfer(past, ferry::transfer_options().with_timeout(std::chrono::seconds(20)));
      REQUIRE_FALSE(pr.ok());
      CHECK(pr.requests[0].error() == errc::out_of_bounds);
      MESSAGE("a read of a file that shrank: ", pr.first_error().message());
      // the target still serves: a read within what is left succeeds
      transfer_batch within;
      within.read(back.data(), *seg, *at + from, piece);
      auto wi = co_await initiator.transfer(within);
      CHECK_MESSAGE(wi.ok(), wi.first_error().message());
    }());
  }

  TEST_CASE("a remote file read whose later piece cannot be read fails with the owner's error and its "
            "connection carries on") {
    for (unsigned io_threads : {0u, 2u}) {
      CAPTURE(io_threads);
      io_context ctx;
      temp_dir dir;
      const std::string path = dir / "tail.bin";
      constexpr std::uint64_t piece = ferry::tcp_server::file_piece;
      make_file(path, 3 * piece, 1);
      file_engine target(ctx, {.name = "target", .listen = "127.0.0.2:0", .tcp = {.io_threads = io_threads}});
      // why: one slice per request, over one data connection
      file_engine initiator(ctx, {.name = "initiator",
                                  .slice_size = 16 << 20,
                                  .tcp = {.connections_per_peer = 1, .io_threads = io_threads}});
      auto opened = uring_file::open(ctx, path);
      REQUIRE(opened);
      auto at = target.registry().add_file(std::make_shared<fixed_size_file>(*opened), access::read_write);
      REQUIRE(at);
      REQUIRE(target.start());
      aligned_buffer back(3 * piece);
      REQUIRE(initiator.registry().add(back.data(), back.size(), access::none));
      std::vector<std::byte> expect(piece);
      fill(expect, 1);
      ctx.run_until([&]() -> ferry::task<> {
        auto seg = co_await initiator.open_segment(target.endpoint()->to_string());
        REQUIRE(seg);
        // The file loses its tail: a read of three pieces starts well, its reply and first piece go, and its
        // second piece cannot be read. The read fails with the owner's reason, not as a broken connection
        // (nor after retries that each meet the same).
        REQUIRE(::truncate(path.c_str(), static_cast<off_t>(piece + piece / 2)) == 0);
        transfer_batch r;
        r.read(back.data(), *seg, *at, 3 * piece);
        auto rr =
            co_await initiator.transfer(r, ferry::transfer_options().with_timeout(std::chrono::seconds(20)));
        REQUIRE_FALSE(rr.ok());
        CHECK(rr.requests[0].error() == errc::out_of_bounds);
        MESSAGE("a file that lost its tail under a read in pieces: ", rr.first_error().message());
        transfer_batch again;
        again.read(back.data(), *seg, *at, piece);
        auto ar = co_await initiator.transfer(again);
        CHECK_MESSAGE(ar.ok(), ar.first_error().message());
        CHECK(std::memcmp(back.data(), expect.data(), piece) == 0);

        // The same on the wire: the reply says that the read's status follows its payload; the bytes after
        // the piece that failed are zeros, the status that follows is the owner's error, and the same
        // connection then answers a ping.
        auto raw = co_await ferry::io::tcp_socket::connect(ctx, *target.endpoint());
        REQUIRE(raw);
        REQUIRE(co_await raw->send_all(ferry_test::header(ferry::tcp::frame_type::read, 5, *at, 3 * piece)));
        ferry::io::deadline within(ctx, std::chrono::seconds(20));
        auto next = [&]() -> ferry::task<ferry::result<ferry::tcp::frame_header>> {
          ferry_test::raw_header h;
          if (auto got = co_await raw->recv_all(h, within.token()); !got)
            co_return ferry::fail(got.error());
          co_return ferry::tcp::decode_header(h);
        };
        auto reply = co_await next();
        REQUIRE(reply);
        CHECK(reply->type == ferry::tcp::frame_type::read_reply);
        CHECK(reply->request_id == 5);
        CHECK(reply->status == 0);
        CHECK(reply->flags == ferry::tcp::frame_header::status_follows);
        REQUIRE(reply->length == 3 * piece);
        std::vector<std::byte> payload(3 * piece);
        REQUIRE(co_await raw->recv_all(payload, within.token()));
        CHECK(std::memcmp(payload.data(), expect.data(), piece) == 0);
        CHECK(std::all_of(payload.begin() + piece, payload.end(),
                          [](std::byte b) { return b == std::byte{0}; }));
        auto outcome = co_await next();
        REQUIRE(outcome);
        CHECK(outcome->type == ferry::tcp::frame_type::read_reply);
        CHECK(outcome->request_id == 5);
        CHECK(outcome->flags == 0);
        CHECK(outcome->length == 0);
        CHECK(outcome->error() == errc::out_of_bounds);
        REQUIRE(co_await raw->send_all(ferry_test::header(ferry::tcp::frame_type::ping, 6, 0, 0)));
        auto pong = co_await next();
        REQUIRE(pong);
        CHECK(pong->type == ferry::tcp::frame_type::pong);
        CHECK(pong->request_id == 6);
        // and a read of one piece needs no status after it
        REQUIRE(co_await raw->send_all(ferry_test::header(ferry::tcp::frame_type::read, 7, *at, piece)));
        auto whole = co_await next();
        REQUIRE(whole);
        CHECK(whole->status == 0);
        CHECK(whole->flags == 0);
        REQUIRE(whole->length == piece);
        std::vector<std::byte> one(piece);
        REQUIRE(co_await raw->recv_all(one, within.token()));
        CHECK(one == expect);
        CHECK_FALSE(within.expired());
      }());
    }
  }

  TEST_CASE("file slices still waiting for a queue slot when the batch's deadline passes are not started") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir / "deadline.bin";
    constexpr std::size_t bytes = 64 << 20;
    make_file(path, bytes, 6);
    // why: 4 KiB slices through one queue slot: 16384 file operations one after another, far more than 2 ms
    file_engine engine(ctx, {.name = "local", .slice_size = 4096});
    auto f = uring_file::open(ctx, path, {.queue_depth = 1});
    REQUIRE(f);
    auto at = engine.registry().add_file(*f, access::read_write);
    REQUIRE(at);
    aligned_buffer src(bytes);
    std::fill(src.bytes().begin(), src.bytes().end(), std::byte{0x3c});
    REQUIRE(engine.registry().add(src.data(), src.size(), access::none));
    transfer_batch b;
    b.write(src.data(), engine.self, *at, bytes);
    auto t0 = std::chrono::steady_clock::now();
    auto r = ctx.run_until(
        engine.transfer(b, ferry::transfer_options().with_timeout(std::chrono::milliseconds(2))));
    auto took = std::chrono::steady_clock::now() - t0;
    REQUIRE_FALSE(r.ok());
    CHECK(r.requests[0].error() == errc::timed_out);
    MESSAGE("the batch ended after ", std::chrono::duration<double, std::milli>(took).count(), " ms");
    CHECK((*f)->in_flight() == 0);
    // the slices queued after the deadline did not run: the last quarter of the file is as it was
    std::vector<std::byte> expect(bytes);
    fill(expect, 6);
    auto tail = file_bytes(path, bytes - bytes / 4, bytes / 4);
    CHECK(std::memcmp(tail.data(), expect.data() + (bytes - bytes / 4), bytes / 4) == 0);
    // and the region still takes a batch that is not stopped
    transfer_batch small;
    small.write(src.data(), engine.self, *at, 1 << 20);
    auto ok = ctx.run_until(engine.transfer(small));
    CHECK_MESSAGE(ok.ok(), ok.first_error().message());
  }

  TEST_CASE("ENOSPC fails the write that hit it while the rest of the batch succeeds") {
    temp_dir dir;
    if (::mount("tmpfs", dir.path.c_str(), "tmpfs", 0, "size=1m") != 0) {
      MESSAGE("skipped: cannot mount a small tmpfs here (", std::strerror(errno), "); needs root");
      return;
    }
    struct unmount {
      std::string at;
      ~unmount() { ::umount2(at.c_str(), MNT_DETACH); }
    } unmount_later{dir.path.string()};
    io_context ctx;
    const std::string path = dir / "full.bin";
    file_engine engine(ctx, {.name = "full", .listen = "127.0.0.2:0"});
    ferry::default_engine peer(ctx, {.name = "peer"});
    // A sparse 8 MiB file on a 1 MiB filesystem: its first blocks are written, later ones find no space.
    auto f = uring_file::open(ctx, path, {.length = 8 << 20, .create = true});
    REQUIRE(f);
    auto at = engine.registry().add_file(*f, access::read_write);
    REQUIRE(at);
    aligned_buffer local(4 << 20), back(256 * 1024);
    fill(local.bytes(), 4);
    REQUIRE(engine.registry().add(local.data(), local.size(), access::none));
    REQUIRE(engine.registry().add(back.data(), back.size(), access::none));
    ctx.run_until([&]() -> ferry::task<> {
      transfer_batch first;
      first.write(local.data(), engine.self, *at, 256 * 1024);
      auto r1 = co_await engine.transfer(first);
      REQUIRE_MESSAGE(r1.ok(), r1.first_error().message());
      transfer_batch mixed;
      mixed
          .write(local.data() + 4096, engine.self, *at + 4096, 128 * 1024) // rewrites blocks it owns: fits
          .write(local.data(), engine.self, *at + (2 << 20), 3 << 20)      // 3 MiB more: no space
          .read(back.data(), engine.self, *at, 256 * 1024);
      auto r2 = co_await engine.transfer(mixed);
      CHECK_FALSE(r2.ok());
      CHECK(r2.requests[0].value() == 128 * 1024);
      REQUIRE_FALSE(r2.requests[1]);
      CHECK(r2.requests[1].error() == std::errc::no_space_on_device);
      MESSAGE("the full filesystem's write: ", r2.requests[1].error().message());
      CHECK(r2.requests[2].value() == 256 * 1024);

      // A peer writing to the full disk over tcp learns that it is full; its other requests succeed. The
      // write's first piece (4 KiB, up to the next piece's boundary in the file) fits, the next ones do not.
      REQUIRE(engine.start());
      REQUIRE(peer.registry().add(local.data(), local.size(), access::none));
      auto seg = co_await peer.open_segment(engine.endpoint()->to_string());
      REQUIRE(seg);
      static_assert((5 << 20) % ferry::tcp_server::file_piece == 0); // a piece boundary in the file
      transfer_batch remote;
      remote.write(local.data(), *seg, *at + (5 << 20) - 4096, 2 << 20)
          .read(local.data() + (3 << 20), *seg, *at, 4096);
      auto r3 = co_await peer.transfer(remote);
      CHECK_FALSE(r3.ok());
      REQUIRE_FALSE(r3.requests[0]);
      CHECK(r3.requests[0].error() == errc::out_of_space);
      CHECK(r3.requests[1].value() == 4096);
    }());
    CHECK(std::memcmp(back.data(), local.data(), 256 * 1024) == 0);
  }
}
