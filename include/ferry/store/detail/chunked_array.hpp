#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace ferry::detail {

/// A growable array of T indexed by dense u32 ids, stored in fixed-size chunks so that growth neither
/// moves elements nor leaves half of a doubled buffer unused.
///
///   chunked_array<node> nodes; nodes.resize(10); nodes[3].size = 7;
template<class T, std::size_t ChunkSize = 4096>
class chunked_array {
public:
  T& operator[](std::uint32_t i) noexcept { return chunks_[i / ChunkSize][i % ChunkSize]; }
  const T& operator[](std::uint32_t i) const noexcept { return chunks_[i / ChunkSize][i % ChunkSize]; }
  std::uint32_t size() const noexcept { return size_; }

  /// Grows to at least n elements (new ones value-initialized); never shrinks.
  void resize(std::uint32_t n) {
    while (chunks_.size() * ChunkSize < n)
      chunks_.push_back(std::make_unique<T[]>(ChunkSize));
    if (n > size_)
      size_ = n;
  }

private:
  std::vector<std::unique_ptr<T[]>> chunks_;
  std::uint32_t size_ = 0;
};

} // namespace ferry::detail
