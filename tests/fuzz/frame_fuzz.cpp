// libFuzzer target: the TCP transport's frame header decoder, fed whatever arrives from the network.
// Whatever decodes must encode back to the same bytes; nothing may crash or read out of bounds.
#include "ferry/transport/tcp/frame.hpp"

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < ferry::tcp::frame_header::size)
    return 0;
  std::array<std::byte, ferry::tcp::frame_header::size> raw;
  std::memcpy(raw.data(), data, raw.size());
  auto h = ferry::tcp::decode_header(raw);
  if (!h)
    return 0;
  if (h->payload_length() > ferry::tcp::frame_header::max_data_payload)
    std::abort();
  std::array<std::byte, ferry::tcp::frame_header::size> again;
  ferry::tcp::encode(*h, again);
  if (again != raw)
    std::abort();
  return 0;
}
