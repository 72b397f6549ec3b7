// libFuzzer target: what metadata servers send and receive — ferry-metad requests (as the server decodes
// them) and replies (as the client does), etcd gateway replies, and base64. The first byte picks the decoder.
// A request that decodes must encode and decode back to the same request; base64 must round-trip.
#include "ferry/metadata/etcd_codec.hpp"
#include "ferry/metadata/metad_protocol.hpp"

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {
bool same(const ferry::metad::request& a, const ferry::metad::request& b) {
  return a.op == b.op && a.key == b.key && a.value == b.value && a.expected == b.expected &&
         a.lease == b.lease && a.ttl_ms == b.ttl_ms;
}
} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2)
    return 0;
  std::string_view in(reinterpret_cast<const char*>(data) + 2, size - 2);
  static constexpr const char* paths[] = {"/v1/get", "/v1/put",   "/v1/remove",     "/v1/list",
                                          "/v1/cas", "/v1/grant", "/v1/keep_alive", "/v1/revoke"};
  switch (data[0] % 4) {
  case 0: {
    auto r = ferry::metad::decode_request(paths[data[1] % 8], in);
    if (r) {
      auto back =
          ferry::metad::decode_request(ferry::metad::path_of(r->op), ferry::metad::encode_request(*r));
      if (!back || !same(*back, *r))
        std::abort();
    }
    break;
  }
  case 1: {
    auto j = ferry::metad::decode_reply(data[1] % 2 ? 200 : 404, in);
    if (j) {
      (void)ferry::metad::decode_get_reply(*j);
      (void)ferry::metad::decode_list_reply(*j);
      (void)ferry::metad::decode_cas_reply(*j);
      (void)ferry::metad::decode_grant_reply(*j);
    }
    break;
  }
  case 2: {
    auto j = ferry::etcd::decode_reply(data[1] % 2 ? 200 : 400, in);
    if (j) {
      (void)ferry::etcd::decode_range(*j);
      (void)ferry::etcd::decode_grant(*j);
      (void)ferry::etcd::decode_keep_alive(*j);
      (void)ferry::etcd::decode_txn_succeeded(*j);
    }
    break;
  }
  default: {
    if (ferry::etcd::base64_decode(ferry::etcd::base64_encode(in)).value_or(std::string("\x01")) != in)
      std::abort();
    (void)ferry::etcd::base64_decode(in);
    break;
  }
  }
  return 0;
}
