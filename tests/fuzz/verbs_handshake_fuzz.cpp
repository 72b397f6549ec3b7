// libFuzzer target: the verbs transport's handshake decoder, fed whatever arrives on the control connection.
// Whatever decodes must be valid (24-bit QPNs and PSNs, sorted regions without overflow) and encode back to
// the same bytes; nothing may crash or read out of bounds.
#include "ferry/transport/verbs/handshake.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto bytes = std::span(reinterpret_cast<const std::byte*>(data), size);
  auto m = ferry::verbs::handshake_message::decode(bytes);
  if (!m)
    return 0;
  for (auto& q : m->qps)
    if (q.qpn == 0 || q.qpn > 0xffffff || q.psn > 0xffffff)
      std::abort();
  for (std::size_t i = 0; i < m->regions.size(); ++i) {
    auto& r = m->regions[i];
    if (r.length == 0 || r.offset + r.length < r.offset)
      std::abort();
    if (i > 0 && m->regions[i - 1].offset + m->regions[i - 1].length > r.offset)
      std::abort();
    if (m->region_for(r.offset, r.length) != &r)
      std::abort();
  }
  auto again = m->encode();
  if (again.size() != size || std::memcmp(again.data(), data, size) != 0)
    std::abort();
  return 0;
}
