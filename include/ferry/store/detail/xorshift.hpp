#pragma once
#include <cstdint>

namespace ferry::detail {

/// A tiny deterministic generator for sampling in policies (not for anything security related).
struct xorshift {
  std::uint64_t state = 0x9E3779B97F4A7C15ull;
  std::uint64_t operator()() noexcept {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  }
};

} // namespace ferry::detail
