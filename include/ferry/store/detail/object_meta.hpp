#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace ferry::detail {

/// One allocated piece as the master keeps it: the range plus the allocator's handle for an O(1) free.
struct stored_piece {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::uint32_t segment = 0;
  std::uint32_t node = 0;
};

/// The pieces of an object; one piece (the common case) lives inline.
class piece_list {
public:
  /// Replaces the pieces; running out of memory leaves them as they were.
  void assign(std::span<const stored_piece> pieces) {
    std::unique_ptr<stored_piece[]> rest;
    if (pieces.size() > 1) { // why: made before anything changes
      rest = std::make_unique<stored_piece[]>(pieces.size());
      std::copy(pieces.begin(), pieces.end(), rest.get());
    }
    rest_ = std::move(rest);
    size_ = static_cast<std::uint32_t>(pieces.size());
    if (size_ == 1)
      first_ = pieces[0];
  }
  std::span<const stored_piece> view() const noexcept { return {size_ > 1 ? rest_.get() : &first_, size_}; }
  std::uint32_t size() const noexcept { return size_; }

private:
  stored_piece first_{};
  std::unique_ptr<stored_piece[]> rest_;
  std::uint32_t size_ = 0;
};

enum class object_state : std::uint8_t { free, pending, complete };

/// The master's record of one object.
// why: the two time fields change meaning at commit instead of growing the record: while pending,
// `lease_until` is the reclaim deadline (a pending object cannot be leased) and `deadline` holds the soft
// pin's length; once complete they are the read lease's end and the soft pin's end.
struct object_meta {
  using time_point = std::chrono::steady_clock::time_point;

  const std::string* key = nullptr;
  std::uint64_t size = 0;
  piece_list pieces;
  time_point lease_until{};
  time_point deadline{};
  std::uint64_t owner = 0;
  std::uint32_t parent = 0xFFFFFFFFu;
  std::uint32_t depth = 0;
  object_state state = object_state::free;
  std::uint8_t stripes = 1;
  bool hard_pin = false;
  bool soft_pin = false;
  bool partial_tail = false;
};

} // namespace ferry::detail
