#pragma once
// The last ids seen, up to a fixed number: the tcp server remembers the notifications it delivered, so that
// one sent again after its answer was lost is not delivered twice. Not thread-safe (the server's loop owns
// it).

#include <cstddef>
#include <cstdint>
#include <unordered_set>
#include <vector>

namespace ferry::tcp::detail {

class recent_ids {
public:
  /// Remembers at most `capacity` ids; the oldest is forgotten first.
  explicit recent_ids(std::size_t capacity = 4096) : ring_(capacity) { seen_.reserve(capacity); }

  bool contains(std::uint64_t id) const { return seen_.contains(id); }

  void remember(std::uint64_t id) {
    if (ring_.empty() || !seen_.insert(id).second)
      return;
    if (count_ == ring_.size())
      seen_.erase(ring_[next_]);
    else
      ++count_;
    ring_[next_] = id;
    next_ = (next_ + 1) % ring_.size();
  }

private:
  std::vector<std::uint64_t> ring_; // the ids remembered, oldest at next_ once full
  std::unordered_set<std::uint64_t> seen_;
  std::size_t next_ = 0;
  std::size_t count_ = 0;
};

} // namespace ferry::tcp::detail
