#include "ferry/memory/detail/stream_copy.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <vector>

TEST_SUITE("stream_copy") {
  TEST_CASE("copies every byte for any size and alignment, below and above the streaming threshold") {
    const std::size_t big = ferry::detail::stream_copy_threshold;
    std::vector<unsigned char> src(3 * big + 200), dst(src.size());
    for (std::size_t i = 0; i < src.size(); ++i)
      src[i] = static_cast<unsigned char>(i * 37 + 11);
    for (std::size_t size :
         {std::size_t{0}, std::size_t{1}, std::size_t{63}, big - 1, big, big + 17, 2 * big + 65}) {
      for (std::size_t dst_off : {0, 1, 15}) {
        for (std::size_t src_off : {0, 3}) {
          CAPTURE(size);
          CAPTURE(dst_off);
          CAPTURE(src_off);
          std::fill(dst.begin(), dst.end(), 0xee);
          ferry::detail::stream_copy(dst.data() + dst_off, src.data() + src_off, size);
          REQUIRE(std::equal(src.begin() + src_off, src.begin() + src_off + size, dst.begin() + dst_off));
          CHECK(dst[dst_off + size] == 0xee); // nothing written past the end
          if (dst_off > 0)
            CHECK(dst[dst_off - 1] == 0xee);
        }
      }
    }
  }
}
