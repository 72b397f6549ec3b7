#include "backends.hpp"

#include "ferry/core/task.hpp"
#include "ferry/core/when_all.hpp"
#include "ferry/io/aligned_buffer.hpp"
#include "ferry/io/file.hpp"
#include "ferry/io/io_context.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <string>
#include <sys/uio.h>
#include <unistd.h>
#include <vector>

using ferry::io::aligned_buffer;
using ferry::io::file;
using ferry::io::io_context;

namespace {

/// A temporary directory on a disk-backed filesystem (O_DIRECT needs one), removed afterwards.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ferry-file-test-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
  std::string operator/(const char* name) const { return (path / name).string(); }
};

void fill(std::span<std::byte> s, unsigned seed) {
  for (std::size_t i = 0; i < s.size(); ++i)
    s[i] = static_cast<std::byte>((i * 7 + seed) & 0xff);
}

} // namespace

TEST_SUITE("file") {
  TEST_CASE("bytes written at an offset read back the same") {
    ferry_test::for_each_backend([](io_context& ctx) {
      temp_dir dir;
      auto f = file::open(ctx, dir / "a.bin", O_RDWR | O_CREAT | O_TRUNC);
      REQUIRE(f);
      std::vector<std::byte> data(100000), back(100000);
      fill(data, 5);
      ctx.run_until([&]() -> ferry::task<> {
        REQUIRE(co_await f->write_all_at(4096 + 3, data));
        auto n = co_await f->read_all_at(4096 + 3, back);
        REQUIRE(n);
        CHECK(*n == data.size());
      }());
      CHECK(back == data);
      CHECK(*f->size() == 4096 + 3 + data.size());
    });
  }

  TEST_CASE("reads past the end yield what exists, then nothing") {
    ferry_test::for_each_backend([](io_context& ctx) {
      temp_dir dir;
      auto f = file::open(ctx, dir / "short.bin", O_RDWR | O_CREAT | O_TRUNC);
      REQUIRE(f);
      std::vector<std::byte> data(100);
      fill(data, 1);
      std::vector<std::byte> buf(1000);
      ctx.run_until([&]() -> ferry::task<> {
        REQUIRE(co_await f->write_all_at(0, data));
        auto n = co_await f->read_all_at(0, buf);
        REQUIRE(n);
        CHECK(*n == 100);
        auto past = co_await f->read_at(5000, buf);
        REQUIRE(past);
        CHECK(*past == 0);
      }());
    });
  }

  TEST_CASE("O_DIRECT moves aligned buffers and reports misaligned ones as invalid") {
    ferry_test::for_each_backend([](io_context& ctx) {
      temp_dir dir;
      auto f = file::open(ctx, dir / "direct.bin", O_RDWR | O_CREAT | O_TRUNC | O_DIRECT);
      REQUIRE_MESSAGE(f, "the test directory's filesystem must support O_DIRECT: ", f.error().message());
      aligned_buffer out(1 << 20), in(1 << 20);
      fill(out.bytes(), 9);
      ctx.run_until([&]() -> ferry::task<> {
        REQUIRE(co_await f->write_all_at(0, out.bytes()));
        auto n = co_await f->read_all_at(0, in.bytes());
        REQUIRE(n);
        CHECK(*n == in.size());
        auto bad = co_await f->read_at(1, in.bytes().subspan(0, 4096)); // offset not block-aligned
        REQUIRE_FALSE(bad);
        CHECK(bad.error() == std::errc::invalid_argument);
        CHECK(bad.error().message().rfind("read: ", 0) == 0);
      }());
      CHECK(std::equal(out.data(), out.data() + out.size(), in.data()));
    });
  }

  TEST_CASE("registered buffers serve fixed reads and writes while others are refused") {
    ferry_test::for_each_backend([](io_context& ctx) {
      temp_dir dir;
      auto f = file::open(ctx, dir / "fixed.bin", O_RDWR | O_CREAT | O_TRUNC);
      REQUIRE(f);
      aligned_buffer a(64 * 1024), b(64 * 1024), stray(4096);
      fill(a.bytes(), 3);
      std::vector<::iovec> regs{{a.data(), a.size()}, {b.data(), b.size()}};
      REQUIRE(ctx.register_buffers(regs));
      ctx.run_until([&]() -> ferry::task<> {
        auto w = co_await f->write_fixed_at(0, a.bytes(), 0);
        REQUIRE(w);
        CHECK(*w == a.size());
        auto r = co_await f->read_fixed_at(0, b.bytes(), 1);
        REQUIRE(r);
        CHECK(*r == b.size());
        auto refused = co_await f->read_fixed_at(0, stray.bytes(), 1);
        REQUIRE_FALSE(refused);
        CHECK(refused.error() == ferry::errc::invalid_argument);
        auto bad_index = co_await f->read_fixed_at(0, b.bytes(), 7);
        CHECK(bad_index.error() == ferry::errc::invalid_argument);
      }());
      CHECK(std::equal(a.data(), a.data() + a.size(), b.data()));
      if (ctx.backend() == ferry::io::io_backend::uring) {
        // a registration the kernel refuses leaves none: fixed I/O is then refused with a clear error, not
        // sent with an index the kernel no longer has
        std::vector<::iovec> unmapped{{nullptr, 4096}};
        REQUIRE_FALSE(ctx.register_buffers(unmapped));
        CHECK(ctx.registered_buffers().empty());
        auto after = ctx.run_until(f->read_fixed_at(0, b.bytes(), 1));
        REQUIRE_FALSE(after);
        CHECK(after.error() == ferry::errc::invalid_argument);
      }
      REQUIRE(ctx.register_buffers({}));
    });
  }

  TEST_CASE("a read-only file refuses writes and a closed descriptor gives EBADF") {
    ferry_test::for_each_backend([](io_context& ctx) {
      temp_dir dir;
      {
        auto w = file::open(ctx, dir / "ro.bin", O_WRONLY | O_CREAT);
        REQUIRE(w);
      }
      auto f = file::open(ctx, dir / "ro.bin", O_RDONLY);
      REQUIRE(f);
      std::vector<std::byte> data(16);
      auto r = ctx.run_until(f->write_at(0, data));
      REQUIRE_FALSE(r);
      CHECK(r.error() == std::errc::bad_file_descriptor);
      CHECK(r.error().message().rfind("write: ", 0) == 0);
      auto missing = file::open(ctx, (dir.path / "nope" / "x.bin").string(), O_RDONLY);
      REQUIRE_FALSE(missing);
      CHECK(missing.error() == std::errc::no_such_file_or_directory);
    });
  }

  TEST_CASE("many concurrent reads of one file all complete with the right bytes") {
    ferry_test::for_each_backend([](io_context& ctx) {
      temp_dir dir;
      auto f = file::open(ctx, dir / "many.bin", O_RDWR | O_CREAT | O_TRUNC);
      REQUIRE(f);
      std::vector<std::byte> data(2000 * 512);
      fill(data, 11);
      REQUIRE(ctx.run_until(f->write_all_at(0, data)));
      std::vector<std::vector<std::byte>> chunks(2000, std::vector<std::byte>(512));
      std::vector<ferry::task<ferry::result<std::size_t>>> reads;
      for (std::size_t i = 0; i < chunks.size(); ++i)
        reads.push_back(f->read_all_at(i * 512, chunks[i]));
      auto results = ctx.run_until(ferry::when_all(std::move(reads)));
      for (std::size_t i = 0; i < chunks.size(); ++i) {
        REQUIRE(results[i]);
        REQUIRE(std::equal(chunks[i].begin(), chunks[i].end(), data.begin() + static_cast<long>(i * 512)));
      }
    });
  }
}
