#pragma once
/// What ferry sends to and reads from etcd's v3 JSON gateway (/v3/kv/range, /v3/kv/put, /v3/kv/txn,
/// /v3/lease/grant ...): request bodies, and validated decoding of replies (they arrive from the network).
/// Keys and values travel base64-encoded; 64-bit numbers arrive as JSON strings.

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/metadata/detail/bounded_json.hpp"
#include "ferry/metadata/lease_id.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::etcd {

inline std::string base64_encode(std::string_view in) {
  static constexpr char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    std::uint32_t v = std::uint32_t(std::uint8_t(in[i])) << 16 | std::uint32_t(std::uint8_t(in[i + 1])) << 8 |
                      std::uint8_t(in[i + 2]);
    out += digits[v >> 18];
    out += digits[(v >> 12) & 63];
    out += digits[(v >> 6) & 63];
    out += digits[v & 63];
  }
  if (i < in.size()) {
    std::uint32_t v = std::uint32_t(std::uint8_t(in[i])) << 16;
    if (i + 1 < in.size())
      v |= std::uint32_t(std::uint8_t(in[i + 1])) << 8;
    out += digits[v >> 18];
    out += digits[(v >> 12) & 63];
    out += i + 1 < in.size() ? digits[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

inline result<std::string> base64_decode(std::string_view in) {
  static constexpr auto table = [] {
    std::array<std::int8_t, 256> t{};
    t.fill(-1);
    for (int c = 'A'; c <= 'Z'; ++c)
      t[c] = static_cast<std::int8_t>(c - 'A');
    for (int c = 'a'; c <= 'z'; ++c)
      t[c] = static_cast<std::int8_t>(c - 'a' + 26);
    for (int c = '0'; c <= '9'; ++c)
      t[c] = static_cast<std::int8_t>(c - '0' + 52);
    t['+'] = 62;
    t['/'] = 63;
    return t;
  }();
  if (in.size() % 4 != 0)
    return fail(errc::malformed_frame, "etcd: base64 text of a length that is not a multiple of 4");
  std::string out;
  out.reserve(in.size() / 4 * 3);
  for (std::size_t i = 0; i < in.size(); i += 4) {
    int pad = 0;
    std::uint32_t v = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      char c = in[i + k];
      if (c == '=' && i + 4 == in.size() && k >= 2) {
        ++pad;
        v <<= 6;
        continue;
      }
      if (pad > 0 || table[std::uint8_t(c)] < 0)
        return fail(errc::malformed_frame, "etcd: invalid base64");
      v = v << 6 | std::uint32_t(table[std::uint8_t(c)]);
    }
    out += static_cast<char>(v >> 16);
    if (pad < 2)
      out += static_cast<char>((v >> 8) & 0xff);
    if (pad < 1)
      out += static_cast<char>(v & 0xff);
  }
  return out;
}

/// The end of the key range holding every key that starts with `prefix` ("\0" for everything).
inline std::string prefix_end(std::string prefix) {
  while (!prefix.empty()) {
    if (static_cast<unsigned char>(prefix.back()) < 0xff) {
      prefix.back() = static_cast<char>(static_cast<unsigned char>(prefix.back()) + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');
}

inline std::string range_body(std::string_view key) {
  return nlohmann::json{{"key", base64_encode(key)}}.dump();
}
inline std::string prefix_range_body(std::string_view prefix) {
  return nlohmann::json{{"key", base64_encode(prefix.empty() ? std::string_view("\0", 1) : prefix)},
                        {"range_end", base64_encode(prefix_end(std::string(prefix)))}}
      .dump();
}
inline std::string put_body(std::string_view key, std::string_view value, lease_id lease = 0) {
  nlohmann::json j{{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease != 0)
    j["lease"] = std::to_string(lease);
  return j.dump();
}
inline std::string delete_body(std::string_view key) {
  return nlohmann::json{{"key", base64_encode(key)}}.dump();
}
/// A transaction that puts `value` only if the key holds `expected` (nullopt: only if it does not exist).
inline std::string cas_body(std::string_view key, const std::optional<std::string>& expected,
                            std::string_view value) {
  nlohmann::json compare{{"key", base64_encode(key)}, {"result", "EQUAL"}};
  if (expected) {
    compare["target"] = "VALUE";
    compare["value"] = base64_encode(*expected);
  } else {
    compare["target"] = "CREATE";
    compare["create_revision"] = "0";
  }
  nlohmann::json put{{"request_put", {{"key", base64_encode(key)}, {"value", base64_encode(value)}}}};
  return nlohmann::json{{"compare", nlohmann::json::array({compare})},
                        {"success", nlohmann::json::array({put})}}
      .dump();
}
inline std::string grant_body(std::int64_t ttl_seconds) {
  return nlohmann::json{{"TTL", std::to_string(ttl_seconds)}}.dump();
}
inline std::string lease_body(lease_id lease) {
  return nlohmann::json{{"ID", std::to_string(lease)}}.dump();
}

namespace detail {
/// A 64-bit integer that etcd sends as a JSON string (or, from some versions, a number).
inline std::optional<std::int64_t> int64_field(const nlohmann::json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end())
    return std::nullopt;
  if (it->is_number_integer())
    return it->get<std::int64_t>();
  if (!it->is_string())
    return std::nullopt;
  auto& s = it->get_ref<const std::string&>();
  std::int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size())
    return std::nullopt;
  return v;
}
} // namespace detail

/// Decodes a reply: a non-200 status becomes an error carrying etcd's message (a missing lease:
/// errc::not_found); a 200 body must be a JSON object.
inline result<nlohmann::json> decode_reply(int status, std::string_view body) {
  // why: bounded while it is built, as every JSON from the network
  nlohmann::json j;
  std::string bound;
  const bool parsed = ferry::detail::parse_bounded_json(body, j, ferry::detail::service_json_values,
                                                        ferry::detail::service_json_depth, bound);
  if (status != 200) {
    std::string why = "HTTP status " + std::to_string(status);
    if (parsed && j.is_object()) {
      // why: the gateway's streaming calls (lease keep-alive) wrap the error: {"error": {"message": ...}}
      const nlohmann::json* in = &j;
      if (auto e = j.find("error"); e != j.end() && e->is_object())
        in = &*e;
      for (const char* field : {"error", "message"})
        if (auto it = in->find(field); it != in->end() && it->is_string()) {
          why = it->get<std::string>();
          break;
        }
    }
    bool missing = why.find("not found") != std::string::npos;
    return fail(missing ? errc::not_found : errc::invalid_state, "etcd: " + why);
  }
  if (!parsed || !j.is_object())
    return fail(errc::malformed_frame, "etcd: the reply is not a JSON object" +
                                           (bound.empty() ? std::string() : " (" + bound + ")"));
  return j;
}

/// The (key, value) pairs of a range reply, in key order.
inline result<std::vector<std::pair<std::string, std::string>>> decode_range(const nlohmann::json& j) {
  std::vector<std::pair<std::string, std::string>> out;
  auto it = j.find("kvs");
  if (it == j.end())
    return out; // no match: etcd leaves the field out
  if (!it->is_array())
    return fail(errc::malformed_frame, "etcd: 'kvs' is not an array");
  for (auto& kv : *it) {
    if (!kv.is_object())
      return fail(errc::malformed_frame, "etcd: a kv is not an object");
    auto k = kv.find("key");
    if (k == kv.end() || !k->is_string())
      return fail(errc::malformed_frame, "etcd: a kv without a key");
    auto key = base64_decode(k->get_ref<const std::string&>());
    if (!key)
      return fail(key.error());
    std::string value;
    if (auto v = kv.find("value"); v != kv.end()) { // an empty value is left out
      if (!v->is_string())
        return fail(errc::malformed_frame, "etcd: a kv's value is not a string");
      auto decoded = base64_decode(v->get_ref<const std::string&>());
      if (!decoded)
        return fail(decoded.error());
      value = std::move(*decoded);
    }
    out.emplace_back(std::move(*key), std::move(value));
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// Whether a transaction's compare held.
inline bool decode_txn_succeeded(const nlohmann::json& j) {
  auto it = j.find("succeeded");
  return it != j.end() && it->is_boolean() && it->get<bool>();
}

/// The ID of a lease grant reply.
inline result<lease_id> decode_grant(const nlohmann::json& j) {
  auto id = detail::int64_field(j, "ID");
  if (!id || *id == 0) {
    if (auto e = j.find("error"); e != j.end() && e->is_string())
      return fail(errc::invalid_state, "etcd: lease grant: " + e->get<std::string>());
    return fail(errc::malformed_frame, "etcd: a lease grant reply without an ID");
  }
  return *id;
}

/// Whether a keep-alive reply says the lease still lives (etcd answers TTL 0 or leaves it out once expired).
inline result<bool> decode_keep_alive(const nlohmann::json& j) {
  auto it = j.find("result");
  const nlohmann::json& r = it != j.end() && it->is_object() ? *it : j;
  if (!r.is_object())
    return fail(errc::malformed_frame, "etcd: a keep-alive reply is not an object");
  auto ttl = detail::int64_field(r, "TTL");
  return ttl.has_value() && *ttl > 0;
}

} // namespace ferry::etcd
