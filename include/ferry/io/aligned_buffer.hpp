#pragma once
/// `ferry::io::aligned_buffer`: heap memory aligned for O_DIRECT I/O (4 KiB by default), size rounded up to
/// the alignment, zero-filled.
///
///   ferry::io::aligned_buffer buf(1 << 20);
///   co_await f.read_at(0, buf.bytes());

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <span>
#include <utility>

namespace ferry::io {

class aligned_buffer {
public:
  aligned_buffer() = default;
  explicit aligned_buffer(std::size_t size, std::size_t alignment = 4096)
      : size_((size + alignment - 1) / alignment * alignment), alignment_(alignment) {
    if (size_ == 0)
      return;
    data_ = static_cast<std::byte*>(std::aligned_alloc(alignment, size_));
    if (!data_)
      throw std::bad_alloc();
    std::memset(data_, 0, size_);
  }
  aligned_buffer(aligned_buffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), alignment_(o.alignment_) {}
  aligned_buffer& operator=(aligned_buffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(alignment_, o.alignment_);
    return *this;
  }
  ~aligned_buffer() { std::free(data_); }

  std::byte* data() noexcept { return data_; }
  const std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::size_t alignment() const noexcept { return alignment_; }
  std::span<std::byte> bytes() noexcept { return {data_, size_}; }
  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }

private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t alignment_ = 4096;
};

} // namespace ferry::io
