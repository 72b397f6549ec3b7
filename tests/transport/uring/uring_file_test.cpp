#include "../../io/backends.hpp"
#include "uring_test_util.hpp"

#include "ferry/core/task.hpp"
#include "ferry/core/when_all.hpp"
#include "ferry/io/aligned_buffer.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/transport/uring/uring_file.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <optional>
#include <stop_token>
#include <string>
#include <sys/mount.h>
#include <vector>

using ferry::access;
using ferry::errc;
using ferry::uring_file;
using ferry::uring_file_options;
using ferry::io::aligned_buffer;
using ferry::io::io_context;
using namespace ferry_test;

// why: one test makes an allocation fail on purpose (2^60 bytes, more than any address space); under
// AddressSanitizer such an allocation returns null, as it does without it, instead of ending the process
#if defined(__SANITIZE_ADDRESS__)
#define FERRY_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FERRY_TEST_ASAN 1
#endif
#endif
#ifdef FERRY_TEST_ASAN
extern "C" const char* __asan_default_options() {
  return "allocator_may_return_null=1";
}
#endif

TEST_SUITE("uring_file") {
  TEST_CASE("aligned and unaligned reads and writes round-trip every byte, on io_uring and on epoll") {
    ferry_test::for_each_backend([](io_context& ctx) {
      temp_dir dir;
      const std::string path = dir / "data.bin";
      constexpr std::size_t size = (4 << 20) + 1000; // the last block is partial
      make_file(path, size, 1);
      auto f = uring_file::open(ctx, path, {.queue_depth = 8});
      REQUIRE(f);
      if (!(*f)->direct())
        MESSAGE("O_DIRECT is refused under ", dir.path.string(), " (", (*f)->note(),
                "): the round trips run buffered");
      CHECK((*f)->length() == size);

      aligned_buffer aligned(1 << 20);
      std::vector<std::byte> odd(300000 + 7);
      ctx.run_until([&]() -> ferry::task<> {
        // Aligned: straight to the device.
        fill(aligned.bytes(), 2, 8192);
        auto w1 = co_await (*f)->write(8192, aligned.bytes());
        REQUIRE_MESSAGE(w1, w1.error().message());
        // Unaligned buffer, offset and length: bounced, with the partial end blocks read and patched.
        fill(odd, 3, 2 * (1 << 20) + 123);
        auto w2 = co_await (*f)->write(2 * (1 << 20) + 123, std::span(odd).subspan(0, odd.size()));
        REQUIRE_MESSAGE(w2, w2.error().message());
        // Into the partial last block of the file: the file must not grow.
        std::vector<std::byte> tail(1500);
        fill(tail, 4, size - 1500);
        auto w3 = co_await (*f)->write(size - 1500, tail);
        REQUIRE_MESSAGE(w3, w3.error().message());

        // Reads of every shape give back exactly what is on disk.
        std::vector<std::byte> back(odd.size());
        auto r1 = co_await (*f)->read(2 * (1 << 20) + 123, back);
        REQUIRE_MESSAGE(r1, r1.error().message());
        CHECK(back == odd);
        aligned_buffer ab(1 << 20);
        auto r2 = co_await (*f)->read(8192, ab.bytes());
        REQUIRE_MESSAGE(r2, r2.error().message());
        CHECK(std::memcmp(ab.data(), aligned.data(), ab.size()) == 0);
        std::vector<std::byte> last(1500 + 17);
        auto r3 = co_await (*f)->read(size - last.size(), last);
        REQUIRE_MESSAGE(r3, r3.error().message());
        CHECK(std::equal(tail.begin(), tail.end(), last.end() - 1500));
      }());
      CHECK(std::filesystem::file_size(path) == size);
      auto disk = file_bytes(path, 0, size);
      std::vector<std::byte> expect(size);
      fill(expect, 1);
      fill(std::span(expect).subspan(8192, 1 << 20), 2, 8192);
      fill(std::span(expect).subspan(2 * (1 << 20) + 123, odd.size()), 3, 2 * (1 << 20) + 123);
      fill(std::span(expect).subspan(size - 1500), 4, size - 1500);
      CHECK(disk == expect);
      CHECK((*f)->in_flight() == 0);
    });
  }

  TEST_CASE("buffers registered with the io_context move through fixed-buffer operations, byte for byte") {
    ferry_test::for_each_backend([](io_context& ctx) {
      temp_dir dir;
      const std::string path = dir / "fixed.bin";
      make_file(path, 4 << 20, 5);
      auto f = uring_file::open(ctx, path, {.queue_depth = 8});
      REQUIRE(f);
      aligned_buffer out(1 << 20), in(1 << 20), plain(64 << 10);
      const ::iovec regs[] = {{out.data(), out.size()}, {in.data(), in.size()}};
      auto registered = ctx.register_buffers(regs);
      REQUIRE_MESSAGE(registered, registered.error().message());
      fill(out.bytes(), 6, 1 << 20);
      ctx.run_until([&]() -> ferry::task<> {
        // A whole registered buffer and a piece inside one: both fixed.
        auto w = co_await (*f)->write(1 << 20, out.bytes());
        REQUIRE_MESSAGE(w, w.error().message());
        auto r = co_await (*f)->read(1 << 20, in.bytes());
        REQUIRE_MESSAGE(r, r.error().message());
        auto piece = co_await (*f)->read((1 << 20) + 8192, in.bytes().subspan(8192, 64 << 10));
        REQUIRE_MESSAGE(piece, piece.error().message());
        CHECK((*f)->fixed_operations() == 3);
        // A buffer outside every registered one: an ordinary operation.
        auto p = co_await (*f)->read(0, plain.bytes());
        REQUIRE_MESSAGE(p, p.error().message());
        CHECK((*f)->fixed_operations() == 3);
      }());
      CHECK(std::memcmp(in.data(), out.data(), in.size()) == 0);
      CHECK(file_bytes(path, 1 << 20, 1 << 20) ==
            std::vector<std::byte>(out.data(), out.data() + out.size()));
      std::vector<std::byte> head(64 << 10);
      fill(head, 5);
      CHECK(std::memcmp(plain.data(), head.data(), head.size()) == 0);
    });
  }

  TEST_CASE("unaligned writes that share a block, issued together, all land") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir / "shared-blocks.bin";
    make_file(path, 1 << 16, 9);
    auto f = uring_file::open(ctx, path);
    REQUIRE(f);
    // 64 writes of 100 bytes side by side: many of them share a 4 KiB block.
    std::vector<std::vector<std::byte>> pieces(64, std::vector<std::byte>(100));
    for (std::size_t i = 0; i < pieces.size(); ++i)
      fill(pieces[i], 5, 1000 + i * 100);
    std::vector<ferry::task<ferry::result<void>>> writes;
    for (std::size_t i = 0; i < pieces.size(); ++i)
      writes.push_back((*f)->write(1000 + i * 100, pieces[i]));
    auto results = ctx.run_until(ferry::when_all(std::move(writes)));
    for (auto& r : results)
      CHECK_MESSAGE(r, r.error().message());
    auto disk = file_bytes(path, 0, 1 << 16);
    std::vector<std::byte> expect(1 << 16);
    fill(expect, 9);
    fill(std::span(expect).subspan(1000, 6400), 5, 1000);
    CHECK(disk == expect);
  }

  TEST_CASE("calls stopped while they wait for the file's queue slot end as cancelled, moving nothing") {
    io_context ctx;
    if (ctx.backend() != ferry::io::io_backend::uring) {
      // why: epoll runs file I/O at once on the loop's thread, so no call ever waits for a slot there
      MESSAGE("skipped: io_uring is not usable here: ", ctx.backend_note());
      return;
    }
    temp_dir dir;
    const std::string path = dir / "one-slot.bin";
    make_file(path, 1 << 20, 3);
    auto f = uring_file::open(ctx, path, {.queue_depth = 1});
    REQUIRE(f);
    constexpr std::size_t calls = 16;
    aligned_buffer into(calls * 4096);
    std::fill(into.bytes().begin(), into.bytes().end(), std::byte{0x5a});
    std::vector<std::byte> from(calls * 100, std::byte{0x77});
    std::stop_source stop;
    // The first read takes the one slot and goes to the kernel; the other reads, and unaligned writes that
    // would read, patch and write their block, queue behind it; then the stop comes.
    std::vector<ferry::task<ferry::result<void>>> work;
    for (std::size_t i = 0; i < calls; ++i)
      work.push_back((*f)->read(i * 4096, std::span(into.data() + i * 4096, 4096), stop.get_token()));
    for (std::size_t i = 0; i < calls; ++i)
      work.push_back((*f)->write(200000 + i * 8192, std::span(from).subspan(i * 100, 100), stop.get_token()));
    work.push_back([](std::stop_source& s) -> ferry::task<ferry::result<void>> {
      s.request_stop();
      co_return ferry::result<void>{};
    }(stop));
    auto results = ctx.run_until(ferry::when_all(std::move(work)));
    CHECK_MESSAGE(results[0], (results[0] ? std::string()
                                          : results[0].error().message())); // it was in the kernel already
    for (std::size_t i = 1; i < 2 * calls; ++i) {
      CAPTURE(i);
      REQUIRE_FALSE(results[i]);
      CHECK(results[i].error() == errc::cancelled);
    }
    MESSAGE("a call stopped while it waited for a slot: ", results[1].error().message());
    CHECK(f->get()->in_flight() == 0);
    std::vector<std::byte> expect(1 << 20);
    fill(expect, 3);
    CHECK(std::memcmp(into.data(), expect.data(), 4096) == 0);
    CHECK(std::all_of(into.bytes().begin() + 4096, into.bytes().end(),
                      [](std::byte b) { return b == std::byte{0x5a}; }));
    CHECK(file_bytes(path, 0, 1 << 20) == expect); // no write started
    // the file still serves calls that are not stopped
    auto again = ctx.run_until((*f)->read(4096, std::span(into.data() + 4096, 4096)));
    CHECK_MESSAGE(again, (again ? std::string() : again.error().message()));
    CHECK(std::memcmp(into.data() + 4096, expect.data() + 4096, 4096) == 0);
  }

  TEST_CASE("a read past the end of the file region fails and fills nothing") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir / "short.bin";
    make_file(path, 10000, 1);
    auto f = uring_file::open(ctx, path, {.permissions = access::read});
    REQUIRE(f);
    std::vector<std::byte> buf(8192, std::byte{0x5a});
    auto r = ctx.run_until((*f)->read(4096, buf));
    REQUIRE_FALSE(r);
    CHECK(r.error() == errc::out_of_bounds);
    MESSAGE("read past the end: ", r.error().message());
    CHECK(std::all_of(buf.begin(), buf.end(), [](std::byte b) { return b == std::byte{0x5a}; }));
  }

  TEST_CASE("a file that shrinks under its reader gives an error, never stale or zero bytes as data") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir / "shrinking.bin";
    make_file(path, 1 << 20, 1);
    auto f = uring_file::open(ctx, path, {.permissions = access::read});
    REQUIRE(f);
    REQUIRE(::truncate(path.c_str(), 100000) == 0);
    aligned_buffer whole(1 << 20);
    auto aligned_read = ctx.run_until((*f)->read(0, whole.bytes()));
    REQUIRE_FALSE(aligned_read);
    CHECK(aligned_read.error() == errc::out_of_bounds);
    MESSAGE("shrunk file, aligned read: ", aligned_read.error().message());
    std::vector<std::byte> odd(5000);
    auto unaligned_read = ctx.run_until((*f)->read(99000, odd));
    REQUIRE_FALSE(unaligned_read);
    CHECK(unaligned_read.error() == errc::out_of_bounds);
    // What is still there reads fine.
    std::vector<std::byte> head(1000);
    auto ok = ctx.run_until((*f)->read(98000, head));
    REQUIRE_MESSAGE(ok, ok.error().message());
    std::vector<std::byte> expect(1000);
    fill(expect, 1, 98000);
    CHECK(head == expect);
  }

  TEST_CASE("a write into the last partial block lands in the file opened, though its path names another") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir / "kv.bin";
    constexpr std::size_t size = (1 << 16) + 100; // the last block is partial
    make_file(path, size, 1);
    auto f = uring_file::open(ctx, path);
    REQUIRE(f);
    if (!(*f)->direct()) { // why: buffered, the write goes through the descriptor opened, fix or no fix
      MESSAGE("skipped: O_DIRECT is refused under ", dir.path.string(), " (", (*f)->note(),
              "), so there is no second descriptor to test");
      return;
    }
    // the path now names a new file; the one opened lives on under another name
    REQUIRE(::rename(path.c_str(), (dir / "kv.old").c_str()) == 0);
    make_file(path, size, 9);
    std::vector<std::byte> tail(50);
    fill(tail, 4, size - 60);
    auto w = ctx.run_until((*f)->write(size - 60, tail));
    REQUIRE_MESSAGE(w, w.error().message());
    CHECK(file_bytes(dir / "kv.old", size - 60, 50) == tail);
    std::vector<std::byte> untouched(size);
    fill(untouched, 9);
    CHECK(file_bytes(path, 0, size) == untouched);
  }

  TEST_CASE("a write that throws while it holds its read-modify-write window lets the window go") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir / "window.bin";
    constexpr std::size_t size = 4096 + 100; // the second block is partial
    make_file(path, size, 1);
    // why: a bounce buffer larger than any address space (2^60 bytes) cannot be allocated: the
    // read-modify-write of a partial block throws std::bad_alloc after it took its window, as running out of
    // memory would there
    auto f = uring_file::open(ctx, path, {.bounce_size = std::size_t{1} << 60});
    REQUIRE(f);
    if (!(*f)->direct()) { // why: buffered I/O writes any range as it is: no block is read, patched or locked
      MESSAGE("skipped: O_DIRECT is refused under ", dir.path.string(), " (", (*f)->note(),
              "), so no write takes a window");
      return;
    }
    std::vector<std::byte> inside(200), across(150);
    fill(inside, 4, 100);
    fill(across, 6, 4000);
    bool threw = false;
    ctx.run_until([&]() -> ferry::task<> {
      try {
        (void)co_await (*f)->write(100, inside); // within the first block: read, patched, written whole
      } catch (const std::bad_alloc&) {
        threw = true;
      }
    }());
    REQUIRE(threw);
    CHECK((*f)->in_flight() == 0);
    // A write whose window overlaps the first one's (the first block and the partial last one, written
    // through the buffered descriptor, with no bounce buffer) would wait for ever for a window never let go
    // (the suite's time limit then fails the test).
    auto w = ctx.run_until((*f)->write(4000, across));
    REQUIRE_MESSAGE(w, w.error().message());
    std::vector<std::byte> expect(size);
    fill(expect, 1);
    std::copy(across.begin(), across.end(), expect.begin() + 4000);
    CHECK(file_bytes(path, 0, size) == expect);
  }

  TEST_CASE("a file opened read-only refuses writes and stays unchanged") {
    io_context ctx;
    temp_dir dir;
    const std::string path = dir / "ro.bin";
    make_file(path, 1 << 16, 1);
    auto f = uring_file::open(ctx, path, {.permissions = access::read});
    REQUIRE(f);
    aligned_buffer buf(4096);
    auto w = ctx.run_until((*f)->write(0, buf.bytes()));
    REQUIRE_FALSE(w);
    CHECK(w.error() == errc::permission_denied);
    std::vector<std::byte> expect(1 << 16);
    fill(expect, 1);
    CHECK(file_bytes(path, 0, 1 << 16) == expect);
  }

  TEST_CASE("on a filesystem that refuses O_DIRECT (tmpfs before Linux 6.6, ramfs), buffered I/O is used") {
    // why: tmpfs accepts O_DIRECT since Linux 6.6; ramfs still refuses it, and mounting one needs root
    std::optional<temp_dir> dir;
    bool mounted = false;
    if (is_tmpfs("/dev/shm") && refuses_direct("/dev/shm")) {
      dir.emplace("/dev/shm");
    } else {
      dir.emplace();
      if (::mount("ramfs", dir->path.c_str(), "ramfs", 0, nullptr) != 0) {
        MESSAGE("skipped: tmpfs here accepts O_DIRECT and a ramfs cannot be mounted (", std::strerror(errno),
                "; needs root)");
        return;
      }
      mounted = true;
    }
    struct unmount {
      std::string at;
      bool active;
      ~unmount() {
        if (active)
          ::umount2(at.c_str(), MNT_DETACH);
      }
    } unmount_later{dir->path.string(), mounted};
    MESSAGE("testing the fallback on ", mounted ? "a ramfs" : "tmpfs /dev/shm");
    io_context ctx;
    const std::string path = *dir / "mem.bin";
    make_file(path, 100000, 1);
    auto f = uring_file::open(ctx, path);
    REQUIRE(f);
    CHECK_FALSE((*f)->direct());
    CHECK((*f)->note().find("O_DIRECT") != std::string::npos);
    MESSAGE("note: ", (*f)->note());
    std::vector<std::byte> data(777), back(777);
    fill(data, 6);
    ctx.run_until([&]() -> ferry::task<> {
      auto w = co_await (*f)->write(12345, data);
      REQUIRE_MESSAGE(w, w.error().message());
      auto r = co_await (*f)->read(12345, back);
      REQUIRE_MESSAGE(r, r.error().message());
    }());
    CHECK(back == data);
  }

  TEST_CASE("a missing file is reported with the kernel's reason") {
    io_context ctx;
    temp_dir dir;
    auto f = uring_file::open(ctx, dir / "absent.bin", {.permissions = access::read});
    REQUIRE_FALSE(f);
    CHECK(f.error() == std::errc::no_such_file_or_directory);
    auto created = uring_file::open(ctx, dir / "new.bin", {.length = 1 << 20, .create = true});
    REQUIRE(created);
    CHECK(std::filesystem::file_size(dir / "new.bin") == (1u << 20));
  }
}
