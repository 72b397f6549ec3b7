#pragma once
// Frames of the tcp transport's wire format, made by hand: what tests send to a serving engine to drive it
// step by step.

#include "ferry/transport/tcp/frame.hpp"

#include <array>
#include <cstddef>
#include <cstdint>

namespace ferry_test {

using raw_header = std::array<std::byte, ferry::tcp::frame_header::size>;

/// The encoded header of a frame of `type`.
inline raw_header header(ferry::tcp::frame_type type, std::uint64_t id, std::uint64_t offset,
                         std::uint64_t length) {
  ferry::tcp::frame_header h;
  h.type = type;
  h.request_id = id;
  h.offset = offset;
  h.length = length;
  raw_header raw;
  ferry::tcp::encode(h, raw);
  return raw;
}

} // namespace ferry_test
