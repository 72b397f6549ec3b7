#pragma once
/// `ferry::uring_file`: a file or block device opened for a segment's file region. Reads and writes go
/// through the io_context's ring (io_uring; epoll contexts run them as plain pread/pwrite) with O_DIRECT:
/// aligned buffers, offsets and lengths go straight to the device; anything unaligned goes through an aligned
/// bounce buffer (a partial block written is read, modified and written back, never racing another such write
/// of the same block). At most `queue_depth` operations are in flight on the file; short reads and writes are
/// continued; a file that ends before the range asked for is an error (errc::out_of_bounds), never data.
/// A filesystem that refuses O_DIRECT (tmpfs before Linux 6.6, ramfs) gets buffered I/O, said once on stderr
/// and in note(). Buffers inside the io_context's registered buffers (io_context::register_buffers) move with
/// io_uring's fixed-buffer operations. A stop_token given to read() or write() ends the call with
/// errc::cancelled before its next piece starts, also one waiting for a queue slot (when the slot comes to
/// it, without starting its I/O). Use it from the loop's thread only, and let it go before its io_context.
///
///   auto f = ferry::uring_file::open(ctx, "/nvme/kv.bin", {.permissions = ferry::access::read_write});
///   auto at = engine.registry().add_file(*f, ferry::access::read_write);   // a region of this segment

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/io/aligned_buffer.hpp"
#include "ferry/io/detail/resume_op.hpp"
#include "ferry/io/file.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/memory/access.hpp"
#include "ferry/memory/file_backing.hpp"
#include "ferry/transport/uring/detail/io_slots.hpp"

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <linux/fs.h>
#include <memory>
#include <span>
#include <stop_token>
#include <string>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <utility>
#include <vector>

namespace ferry {

/// How a file is opened for a file region.
struct uring_file_options {
  /// `read`: opened read-only (writes fail with errc::permission_denied); `write`/`read_write`: read-write.
  access permissions = access::read_write;
  /// Bytes the region covers; 0: the file's size. A writable file shorter than this is extended.
  std::uint64_t length = 0;
  /// Create the file if it does not exist (writable files only).
  bool create = false;
  /// O_DIRECT (bypass the page cache); where the filesystem refuses it, buffered I/O is used instead.
  bool direct = true;
  /// Operations in flight on this file at most.
  unsigned queue_depth = 64;
  /// Largest piece of an unaligned request staged in one bounce buffer.
  std::size_t bounce_size = std::size_t{1} << 20;
};

class uring_file final : public file_backing {
  struct private_tag {};

public:
  /// Opens `path`. Fails with the kernel's reason (ENOENT, EACCES ...) or errc::invalid_argument for an
  /// empty region.
  static result<std::shared_ptr<uring_file>> open(io::io_context& ctx, const std::string& path,
                                                  uring_file_options options = {}) {
    bool writable = allows(options.permissions, access::write);
    if (options.create && !writable)
      return fail(errc::invalid_argument, "uring_file: create needs a writable file");
    int flags = (writable ? O_RDWR : O_RDONLY) | (options.create ? O_CREAT : 0);
    auto f = std::make_shared<uring_file>(private_tag{}, ctx, path, options);
    bool direct = options.direct;
    auto opened = io::file::open(ctx, path, flags | (direct ? O_DIRECT : 0));
    if (!opened && direct && opened.error() == std::errc::invalid_argument) {
      // why: tmpfs before Linux 6.6, ramfs and some FUSE filesystems refuse O_DIRECT; the data is in memory
      // there anyway
      direct = false;
      opened = io::file::open(ctx, path, flags);
      if (opened) {
        f->note_ = "uring_file: " + path + ": the filesystem refuses O_DIRECT; using buffered I/O";
        std::fprintf(stderr, "ferry: %s\n", f->note_.c_str());
      }
    }
    if (!opened)
      return fail(opened.error());
    f->file_ = std::move(*opened);
    f->direct_ = direct;
    auto size = f->device_size();
    if (!size)
      return fail(size.error());
    f->length_ = options.length ? options.length : *size;
    if (f->length_ == 0)
      return fail(errc::invalid_argument, "uring_file: the file is empty (give a length to extend it)");
    if (f->length_ > *size) {
      if (!writable)
        return fail(errc::out_of_bounds, "uring_file: the file is shorter than the length asked for");
      if (auto t = f->file_.truncate(f->length_); !t)
        return fail(t.error());
    }
    return f;
  }

  uring_file(private_tag, io::io_context& ctx, std::string path, const uring_file_options& o)
      : ctx_(ctx), path_(std::move(path)), options_(o), slots_(ctx, o.queue_depth),
        bounce_size_(std::max<std::size_t>(o.bounce_size, alignment)) {}
  uring_file(const uring_file&) = delete;
  uring_file& operator=(const uring_file&) = delete;

  /// O_DIRECT requires buffers, offsets and lengths aligned to this (a multiple of every logical block size
  /// in use: 512 or 4096).
  static constexpr std::uint64_t alignment = 4096;

  std::uint64_t length() const noexcept override { return length_; }
  result<std::uint64_t> size_now() const override { return device_size(); }
  const std::string& path() const noexcept { return path_; }
  /// Whether O_DIRECT is in use.
  bool direct() const noexcept { return direct_; }
  /// Why I/O is buffered although O_DIRECT was asked for ("" when it is not).
  const std::string& note() const noexcept { return note_; }
  int native_handle() const noexcept { return file_.native_handle(); }
  /// Operations so far that used a registered buffer (io_uring's read_fixed / write_fixed).
  std::uint64_t fixed_operations() const noexcept { return fixed_operations_; }
  /// Operations in flight now (at most the queue depth).
  std::size_t in_flight() const noexcept { return slots_.in_use(); }

  task<result<void>> read(std::uint64_t offset, std::span<std::byte> into,
                          std::stop_token stop = {}) override {
    if (offset > length_ || into.size() > length_ - offset)
      co_return fail(errc::out_of_bounds, "uring_file read: range past the end of the file region");
    std::size_t done = 0;
    while (done < into.size()) {
      if (stop.stop_requested())
        co_return fail(cancelled());
      std::uint64_t at = offset + done;
      auto rest = into.subspan(done);
      if (!direct_ || is_aligned(at, rest.data(), rest.size())) {
        // why: the hot path (aligned, O_DIRECT) awaits the operation here, without a coroutine of its own
        if (bool held = co_await slots_.acquire(stop); !held)
          co_return fail(cancelled());
        held_slot hold{slots_};
        auto n = co_await direct_io(false, at, rest.data(), std::min(rest.size(), max_io));
        if (!n)
          co_return fail(n.error());
        if (*n == 0)
          co_return fail(errc::out_of_bounds, "uring_file read: the file ends before the range (it shrank)");
        done += *n;
        continue;
      }
      // Unaligned: read the aligned window around the next piece into a bounce buffer and copy it out.
      std::uint64_t lo = at / alignment * alignment;
      std::uint64_t end = std::min<std::uint64_t>(at + rest.size(), lo + bounce_size_);
      std::uint64_t hi = round_up(end);
      auto buf = take_bounce();
      auto n = co_await io_read(lo, std::span(buf.data(), static_cast<std::size_t>(hi - lo)), stop);
      if (!n) {
        give_back(std::move(buf));
        co_return fail(n.error());
      }
      std::uint64_t got_end = lo + *n;
      if (got_end <= at) {
        give_back(std::move(buf));
        co_return fail(errc::out_of_bounds, "uring_file read: the file ends before the range (it shrank)");
      }
      std::uint64_t take = std::min(end, got_end) - at;
      std::memcpy(rest.data(), buf.data() + (at - lo), static_cast<std::size_t>(take));
      give_back(std::move(buf));
      done += static_cast<std::size_t>(take);
    }
    co_return result<void>{};
  }

  task<result<void>> write(std::uint64_t offset, std::span<const std::byte> from,
                           std::stop_token stop = {}) override {
    if (!allows(options_.permissions, access::write))
      co_return fail(errc::permission_denied, "uring_file write: the file was opened read-only");
    if (offset > length_ || from.size() > length_ - offset)
      co_return fail(errc::out_of_bounds, "uring_file write: range past the end of the file region");
    std::size_t done = 0;
    while (done < from.size()) {
      if (stop.stop_requested())
        co_return fail(cancelled());
      std::uint64_t at = offset + done;
      auto rest = from.subspan(done);
      if (!direct_ || is_aligned(at, rest.data(), rest.size())) {
        if (bool held = co_await slots_.acquire(stop); !held)
          co_return fail(cancelled());
        held_slot hold{slots_};
        auto n =
            co_await direct_io(true, at, const_cast<std::byte*>(rest.data()), std::min(rest.size(), max_io));
        if (!n)
          co_return fail(n.error());
        if (*n == 0)
          co_return fail(errc::short_transfer, "uring_file write: the device accepted no bytes");
        done += *n;
        continue;
      }
      std::uint64_t lo = at / alignment * alignment;
      std::uint64_t end = std::min<std::uint64_t>(at + rest.size(), lo + bounce_size_);
      std::uint64_t hi = round_up(end);
      bool tail = hi > file_end();
      if (tail) {
        if (!buffered_.is_open()) {
          // why: a partial last block would be written whole with O_DIRECT and grow the file; a second,
          // buffered descriptor writes exactly the bytes asked for (the kernel keeps it coherent with
          // O_DIRECT). It reopens the open file itself, not its path: the path may name another file by now
          // (a rename, a new file in its place, another working directory)
          auto b = io::file::open(ctx_, "/proc/self/fd/" + std::to_string(file_.native_handle()), O_RDWR);
          if (!b)
            co_return fail(error(b.error().code(),
                                 "uring_file write: cannot reopen " + path_ +
                                     " without O_DIRECT for its last partial block through /proc/self/fd: " +
                                     b.error().what()));
          buffered_ = std::move(*b);
        }
        end = at + std::min<std::uint64_t>(rest.size(), max_io);
        hi = round_up(end);
      }
      auto piece = rest.first(static_cast<std::size_t>(end - at));
      // An unaligned buffer over whole blocks only needs staging; partial blocks need read-modify-write.
      result<std::size_t> n;
      if (!tail && lo == at && hi == end)
        n = co_await patch(lo, hi, at, piece, stop);
      else
        n = co_await locked_write(lo, hi, at, piece, tail, stop);
      if (!n)
        co_return fail(n.error());
      done += *n;
    }
    co_return result<void>{};
  }

private:
  static constexpr std::size_t max_io = std::size_t{1} << 30; // one operation moves at most 1 GiB

  static constexpr std::uint64_t round_up(std::uint64_t x) noexcept {
    return (x + alignment - 1) / alignment * alignment;
  }
  static error cancelled() { return error(errc::cancelled, "uring_file: stopped before the I/O started"); }
  static bool is_aligned(std::uint64_t at, const void* p, std::size_t len) noexcept {
    return at % alignment == 0 && reinterpret_cast<std::uintptr_t>(p) % alignment == 0 &&
           len % alignment == 0;
  }

  // One operation of the hot path (an aligned buffer, or buffered I/O): io_uring's fixed-buffer form where
  // the buffer lies in a registered one. Not a coroutine: the caller awaits the operation itself.
  io::operation<std::size_t> direct_io(bool is_write, std::uint64_t at, std::byte* p, std::size_t len) {
    if (int fixed = registered_index(p, len); fixed >= 0) {
      ++fixed_operations_;
      auto index = static_cast<unsigned>(fixed);
      return is_write ? file_.write_fixed_at(at, std::span<const std::byte>(p, len), index)
                      : file_.read_fixed_at(at, std::span(p, len), index);
    }
    return is_write ? file_.write_at(at, std::span<const std::byte>(p, len))
                    : file_.read_at(at, std::span(p, len));
  }

  // The io_context's registered buffer (io_context::register_buffers) that holds [p, p + n), or -1.
  // why: a registered buffer is pinned once; an ordinary one is pinned and unpinned by the kernel on every
  // O_DIRECT operation, which shows at hundreds of thousands of small reads per second
  int registered_index(const std::byte* p, std::size_t n) noexcept {
    auto regs = ctx_.registered_buffers();
    if (regs.empty())
      return -1;
    auto inside = [&](std::size_t i) {
      auto* base = static_cast<const std::byte*>(regs[i].iov_base);
      return p >= base && n <= regs[i].iov_len && static_cast<std::size_t>(p - base) <= regs[i].iov_len - n;
    };
    if (last_fixed_ < regs.size() && inside(last_fixed_))
      return static_cast<int>(last_fixed_);
    for (std::size_t i = 0; i < regs.size(); ++i)
      if (inside(i)) {
        last_fixed_ = i;
        return static_cast<int>(i);
      }
    return -1;
  }

  result<std::uint64_t> device_size() const {
    struct ::stat st {};
    if (::fstat(file_.native_handle(), &st) < 0)
      return fail_errno(-errno, "uring_file: fstat");
    if (S_ISBLK(st.st_mode)) {
      std::uint64_t bytes = 0;
      if (::ioctl(file_.native_handle(), BLKGETSIZE64, &bytes) < 0)
        return fail_errno(-errno, "uring_file: BLKGETSIZE64");
      return bytes;
    }
    return static_cast<std::uint64_t>(st.st_size);
  }
  // The end of the file as it is now (a block device: its capacity).
  std::uint64_t file_end() const {
    auto s = device_size();
    return s ? *s : 0;
  }

  io::aligned_buffer take_bounce() {
    if (!bounce_pool_.empty()) {
      auto b = std::move(bounce_pool_.back());
      bounce_pool_.pop_back();
      return b;
    }
    return io::aligned_buffer(bounce_size_ + alignment, alignment);
  }
  void give_back(io::aligned_buffer b) {
    if (bounce_pool_.size() < options_.queue_depth)
      bounce_pool_.push_back(std::move(b));
  }

  // One read or write of `f`, holding one of the file's queue slots.
  task<result<std::size_t>> run_io(io::file& f, bool is_write, std::uint64_t at, std::byte* p,
                                   std::size_t len, const std::stop_token& stop) {
    if (bool held = co_await slots_.acquire(stop); !held)
      co_return fail(cancelled());
    held_slot hold{slots_};
    if (is_write)
      co_return co_await f.write_at(at, std::span<const std::byte>(p, len));
    co_return co_await f.read_at(at, std::span(p, len));
  }
  task<result<std::size_t>> io_read(std::uint64_t at, std::span<std::byte> into,
                                    const std::stop_token& stop) {
    return run_io(file_, false, at, into.data(), into.size(), stop);
  }
  task<result<std::size_t>> io_write(std::uint64_t at, std::span<const std::byte> from,
                                     const std::stop_token& stop) {
    return run_io(file_, true, at, const_cast<std::byte*>(from.data()), from.size(), stop);
  }

  // Writes `data` (at `at`, inside the aligned window [lo, hi)) while no other such write touches the window:
  // through the buffered descriptor (the file's partial last block), or by reading the window's partial end
  // blocks, patching them and writing the window whole. Yields the bytes of `data` written.
  task<result<std::size_t>> locked_write(std::uint64_t lo, std::uint64_t hi, std::uint64_t at,
                                         std::span<const std::byte> data, bool buffered,
                                         const std::stop_token& stop) {
    // why: two writes that share a block must not both read it, patch and write it back: the second would
    // undo the first. Windows in flight are serialized.
    while (std::any_of(windows_.begin(), windows_.end(),
                       [&](const window& w) { return w.lo < hi && lo < w.hi; })) {
      window_waiter w;
      window_waiters_.push_back(&w);
      co_await w;
      if (stop.stop_requested())
        co_return fail(cancelled());
    }
    windows_.push_back({lo, hi});
    held_window hold{*this, lo, hi}; // why: let go on every way out, an exception's too
    result<std::size_t> out;
    if (buffered) {
      out = co_await run_io(buffered_, true, at, const_cast<std::byte*>(data.data()), data.size(), stop);
      if (out && *out == 0)
        out = fail(errc::short_transfer, "uring_file write: the device accepted no bytes");
    } else {
      out = co_await patch(lo, hi, at, data, stop);
    }
    co_return out;
  }

  task<result<std::size_t>> patch(std::uint64_t lo, std::uint64_t hi, std::uint64_t at,
                                  std::span<const std::byte> data, const std::stop_token& stop) {
    auto buf = take_bounce();
    std::uint64_t end = at + data.size();
    // The first and last blocks keep bytes that are not ours: read them.
    std::uint64_t heads[2] = {lo, hi - alignment};
    int count = 0;
    if (at != lo)
      heads[count++] = lo;
    if (end != hi && !(at != lo && hi - alignment == lo)) // the same block is read once
      heads[count++] = hi - alignment;
    for (int i = 0; i < count; ++i) {
      auto n = co_await io_read(heads[i], std::span(buf.data() + (heads[i] - lo), alignment), stop);
      if (!n) {
        give_back(std::move(buf));
        co_return fail(n.error());
      }
      if (*n < alignment) // past the end of the file: those bytes read as zeros
        std::memset(buf.data() + (heads[i] - lo) + *n, 0, alignment - *n);
    }
    std::memcpy(buf.data() + (at - lo), data.data(), data.size());
    std::size_t done = 0;
    std::size_t window = static_cast<std::size_t>(hi - lo);
    while (done < window) {
      auto n =
          co_await io_write(lo + done, std::span<const std::byte>(buf.data() + done, window - done), stop);
      if (!n) {
        give_back(std::move(buf));
        co_return fail(n.error());
      }
      if (*n == 0 || *n % alignment != 0) {
        give_back(std::move(buf));
        co_return fail(errc::short_transfer, "uring_file write: the device took part of a block");
      }
      done += *n;
    }
    give_back(std::move(buf));
    co_return static_cast<std::size_t>(end - at);
  }

  struct window {
    std::uint64_t lo, hi;
  };
  // A window of `locked_write` in flight; its end wakes the writes that wait for it.
  struct held_window {
    uring_file& file;
    std::uint64_t lo, hi;
    held_window(uring_file& f, std::uint64_t l, std::uint64_t h) noexcept : file(f), lo(l), hi(h) {}
    held_window(const held_window&) = delete;
    held_window& operator=(const held_window&) = delete;
    ~held_window() {
      auto& ws = file.windows_;
      ws.erase(std::find_if(ws.begin(), ws.end(), [&](const window& w) { return w.lo == lo && w.hi == hi; }));
      for (auto* waiter : std::exchange(file.window_waiters_, {}))
        file.ctx_.post(&waiter->op);
    }
  };
  // One of the file's queue slots, held until the scope ends (an exception's way out included).
  struct held_slot {
    detail::io_slots& slots;
    explicit held_slot(detail::io_slots& s) noexcept : slots(s) {}
    held_slot(const held_slot&) = delete;
    held_slot& operator=(const held_slot&) = delete;
    ~held_slot() { slots.release(); }
  };
  struct window_waiter {
    io::detail::resume_op op;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) noexcept { op.handle = h; }
    void await_resume() const noexcept {}
  };

  io::io_context& ctx_;
  std::string path_;
  uring_file_options options_;
  detail::io_slots slots_;
  std::size_t bounce_size_;
  io::file file_;
  io::file buffered_; // opened on the first unaligned write that reaches the file's last partial block
  bool direct_ = false;
  std::uint64_t length_ = 0;
  std::string note_;
  std::vector<io::aligned_buffer> bounce_pool_;
  std::size_t last_fixed_ = 0; // the registered buffer the last fixed operation used
  std::uint64_t fixed_operations_ = 0;
  std::vector<window> windows_;
  std::vector<window_waiter*> window_waiters_;
};

} // namespace ferry
