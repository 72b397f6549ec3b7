// libFuzzer target: segment descriptors as they arrive in handshakes and from metadata stores.
// A descriptor that parses must serialize and parse back to an equal descriptor, with valid regions.
#include "ferry/metadata/segment_descriptor.hpp"

#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto d = ferry::segment_descriptor::parse(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!d)
    return 0;
  for (std::size_t i = 0; i < d->regions.size(); ++i) {
    const auto& r = d->regions[i];
    if (r.length == 0 || r.permissions == ferry::access::none)
      std::abort();
    if (i > 0 && d->regions[i - 1].offset + d->regions[i - 1].length > r.offset)
      std::abort();
    if (d->region_for(r.offset, r.length) != &r)
      std::abort();
  }
  auto back = ferry::segment_descriptor::parse(d->to_json());
  if (!back || !(*back == *d))
    std::abort();
  return 0;
}
