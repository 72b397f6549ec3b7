#pragma once
/// `ferry::io::file`: a file or block device read and written at offsets through an io_context. With O_DIRECT
/// the buffer, offset and length must be aligned to the device's logical block size (use aligned_buffer);
/// the kernel's EINVAL is reported as such. `read_fixed_at` / `write_fixed_at` use buffers registered with
/// `io_context::register_buffers`.
///
///   auto f = ferry::io::file::open(ctx, "/tmp/kv.bin", O_RDWR | O_CREAT);
///   auto n = co_await f->write_at(0, data);

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/io/operation.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <fcntl.h>
#include <span>
#include <stop_token>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>

namespace ferry::io {

class file {
public:
  file() = default;
  file(file&& o) noexcept : ctx_(o.ctx_), fd_(std::exchange(o.fd_, -1)) {}
  file& operator=(file&& o) noexcept {
    if (this != &o) {
      close();
      ctx_ = o.ctx_;
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~file() { close(); }

  /// Opens `path` with open(2) flags (O_CLOEXEC is added).
  static result<file> open(io_context& ctx, const std::string& path, int flags, ::mode_t mode = 0644) {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    if (fd < 0)
      return fail_errno(-errno, "open");
    file f;
    f.ctx_ = &ctx;
    f.fd_ = fd;
    return f;
  }

  /// Reads up to `buffer.size()` bytes at `offset`; fewer at the end of the file, 0 past it.
  operation<std::size_t> read_at(std::uint64_t offset, std::span<std::byte> buffer,
                                 std::stop_token stop = {}) {
    return make(detail::op_code::read, offset, buffer.data(), buffer.size(), 0, "read", std::move(stop));
  }
  /// Writes up to `data.size()` bytes at `offset`; yields how many were written.
  operation<std::size_t> write_at(std::uint64_t offset, std::span<const std::byte> data,
                                  std::stop_token stop = {}) {
    return make(detail::op_code::write, offset, const_cast<std::byte*>(data.data()), data.size(), 0, "write",
                std::move(stop));
  }
  /// Like read_at, into a buffer that lies inside registered buffer `index` (else errc::invalid_argument).
  operation<std::size_t> read_fixed_at(std::uint64_t offset, std::span<std::byte> buffer, unsigned index,
                                       std::stop_token stop = {}) {
    if (!inside_registered(buffer.data(), buffer.size(), index))
      return operation<std::size_t>::failed(*ctx_, errc::invalid_argument,
                                            "read_fixed: buffer not registered");
    return make(detail::op_code::read_fixed, offset, buffer.data(), buffer.size(), index, "read_fixed",
                std::move(stop));
  }
  /// Like write_at, from a buffer that lies inside registered buffer `index` (else errc::invalid_argument).
  operation<std::size_t> write_fixed_at(std::uint64_t offset, std::span<const std::byte> data, unsigned index,
                                        std::stop_token stop = {}) {
    if (!inside_registered(data.data(), data.size(), index))
      return operation<std::size_t>::failed(*ctx_, errc::invalid_argument,
                                            "write_fixed: buffer not registered");
    return make(detail::op_code::write_fixed, offset, const_cast<std::byte*>(data.data()), data.size(), index,
                "write_fixed", std::move(stop));
  }

  /// Reads until `buffer` is full or the file ends; yields the bytes read.
  task<result<std::size_t>> read_all_at(std::uint64_t offset, std::span<std::byte> buffer,
                                        std::stop_token stop = {}) {
    std::size_t total = 0;
    while (total < buffer.size()) {
      auto n = co_await read_at(offset + total, buffer.subspan(total), stop);
      if (!n)
        co_return fail(n.error());
      if (*n == 0)
        break;
      total += *n;
    }
    co_return total;
  }
  /// Writes all of `data` (short writes are continued).
  task<result<void>> write_all_at(std::uint64_t offset, std::span<const std::byte> data,
                                  std::stop_token stop = {}) {
    std::size_t total = 0;
    while (total < data.size()) {
      auto n = co_await write_at(offset + total, data.subspan(total), stop);
      if (!n)
        co_return fail(n.error());
      if (*n == 0)
        co_return fail(errc::short_transfer, "write");
      total += *n;
    }
    co_return result<void>{};
  }

  /// The file's size in bytes (of a block device: its capacity).
  result<std::uint64_t> size() const {
    struct ::stat st {};
    if (::fstat(fd_, &st) < 0)
      return fail_errno(-errno, "fstat");
    return static_cast<std::uint64_t>(st.st_size);
  }
  result<void> truncate(std::uint64_t size) noexcept {
    if (::ftruncate(fd_, static_cast<off_t>(size)) < 0)
      return fail_errno(-errno, "ftruncate");
    return {};
  }
  /// Flushes written data to the device (fdatasync).
  result<void> sync() noexcept {
    if (::fdatasync(fd_) < 0)
      return fail_errno(-errno, "fdatasync");
    return {};
  }
  void close() noexcept {
    if (fd_ < 0)
      return;
    ctx_->release_fd(fd_);
    ::close(std::exchange(fd_, -1));
  }
  bool is_open() const noexcept { return fd_ >= 0; }
  int native_handle() const noexcept { return fd_; }

private:
  operation<std::size_t> make(detail::op_code code, std::uint64_t offset, std::byte* buf, std::size_t len,
                              unsigned index, const char* what, std::stop_token stop) {
    detail::io_op d;
    d.code_ = code;
    d.fd_ = fd_;
    d.buf_ = buf;
    // why: one call moves at most 1 GiB; read_all_at / write_all_at continue past it.
    d.len_ = static_cast<std::uint32_t>(len < (std::size_t{1} << 30) ? len : (std::size_t{1} << 30));
    d.offset_ = offset;
    d.buf_index_ = static_cast<std::uint16_t>(index);
    return operation<std::size_t>(*ctx_, d, what, std::move(stop));
  }
  bool inside_registered(const std::byte* p, std::size_t len, unsigned index) const noexcept {
    auto regs = ctx_->registered_buffers();
    if (index >= regs.size())
      return false;
    auto* base = static_cast<const std::byte*>(regs[index].iov_base);
    return p >= base && p + len <= base + regs[index].iov_len;
  }

  io_context* ctx_ = nullptr;
  int fd_ = -1;
};

} // namespace ferry::io
