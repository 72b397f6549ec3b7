#pragma once
// Copies large buffers with non-temporal stores: the destination is written straight to memory instead of
// being pulled into the cache first (and evicting everything else). For the megabyte-sized slices of a
// transfer into a large segment this is faster than memcpy, whose own non-temporal path starts only at
// several megabytes; small copies keep using memcpy, whose destination the caller is likely to read soon.

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace ferry::detail {

/// Copies below this size use memcpy.
inline constexpr std::size_t stream_copy_threshold = 256 * 1024;

inline void stream_copy(void* dst, const void* src, std::size_t n) noexcept {
#if defined(__SSE2__)
  if (n >= stream_copy_threshold) {
    auto* d = static_cast<unsigned char*>(dst);
    auto* s = static_cast<const unsigned char*>(src);
    std::size_t head = (16 - (reinterpret_cast<std::uintptr_t>(d) & 15)) & 15;
    std::memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    std::size_t blocks = n / 64;
    for (std::size_t i = 0; i < blocks; ++i, d += 64, s += 64) {
      __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
      __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16));
      __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 32));
      __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(d), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + 48), e);
    }
    // why: non-temporal stores are weakly ordered; fence before anyone is told that the bytes are there
    _mm_sfence();
    std::memcpy(d, s, n - blocks * 64);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

} // namespace ferry::detail
