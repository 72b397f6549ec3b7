#pragma once
/// The wire protocol of ferry-metad, the small HTTP metadata server: one POST per operation to
/// /v1/<operation> with a JSON body, a JSON reply. Both sides decode what the other sends through these
/// functions; everything is validated (they read network input).
///
///   POST /v1/get        {"key": K}                                  -> {"value": V | null}
///   POST /v1/put        {"key": K, "value": V [, "lease": L]}       -> {}            (404: no such lease)
///   POST /v1/remove     {"key": K}                                  -> {}
///   POST /v1/list       {"prefix": P}                               -> {"entries": [[K, V], ...]}
///   POST /v1/cas        {"key": K, "expected": V | null, "value": V} -> {"swapped": true | false}
///   POST /v1/grant      {"ttl_ms": N}                               -> {"lease": L}
///   POST /v1/keep_alive {"lease": L}                                -> {}            (404: expired)
///   POST /v1/revoke     {"lease": L}                                -> {}
/// Errors: status 400 (malformed request) or 404, body {"error": "why"}.

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/metadata/detail/bounded_json.hpp"
#include "ferry/metadata/lease_id.hpp"

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::metad {

enum class operation { get, put, remove, list, cas, grant, keep_alive, revoke };

/// One decoded request.
struct request {
  operation op = operation::get;
  std::string key;                     ///< get, put, remove, cas; list: the prefix
  std::optional<std::string> value;    ///< put, cas
  std::optional<std::string> expected; ///< cas
  lease_id lease = 0;                  ///< put (0: none), keep_alive, revoke
  std::int64_t ttl_ms = 0;             ///< grant
};

inline constexpr std::size_t max_key_length = 4096;
inline constexpr std::int64_t max_ttl_ms = 24ll * 3600 * 1000;

namespace detail {
inline result<std::string> string_field(const nlohmann::json& j, const char* name, std::size_t limit) {
  auto it = j.find(name);
  if (it == j.end() || !it->is_string())
    return fail(errc::malformed_frame, std::string("metad: field '") + name + "' must be a string");
  if (it->get_ref<const std::string&>().size() > limit)
    return fail(errc::malformed_frame, std::string("metad: field '") + name + "' is too long");
  return it->get<std::string>();
}
inline result<std::int64_t> integer_field(const nlohmann::json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || !it->is_number_integer())
    return fail(errc::malformed_frame, std::string("metad: field '") + name + "' must be an integer");
  return it->get<std::int64_t>();
}
inline result<nlohmann::json> parse_object(std::string_view body) {
  // why: bounded while it is built: a body of many small values grows many times over in memory
  nlohmann::json j;
  std::string why;
  if (!ferry::detail::parse_bounded_json(body, j, ferry::detail::service_json_values,
                                         ferry::detail::service_json_depth, why) ||
      !j.is_object())
    return fail(errc::malformed_frame,
                "metad: the body is not a JSON object" + (why.empty() ? std::string() : " (" + why + ")"));
  return j;
}
} // namespace detail

/// The path of an operation ("/v1/get" ...).
inline const char* path_of(operation op) noexcept {
  switch (op) {
  case operation::get:
    return "/v1/get";
  case operation::put:
    return "/v1/put";
  case operation::remove:
    return "/v1/remove";
  case operation::list:
    return "/v1/list";
  case operation::cas:
    return "/v1/cas";
  case operation::grant:
    return "/v1/grant";
  case operation::keep_alive:
    return "/v1/keep_alive";
  case operation::revoke:
    return "/v1/revoke";
  }
  return "/v1/get";
}

/// The body that asks for `r`.
inline std::string encode_request(const request& r) {
  nlohmann::json j = nlohmann::json::object();
  switch (r.op) {
  case operation::get:
  case operation::remove:
    j["key"] = r.key;
    break;
  case operation::list:
    j["prefix"] = r.key;
    break;
  case operation::put:
    j["key"] = r.key;
    j["value"] = r.value.value_or("");
    if (r.lease != 0)
      j["lease"] = r.lease;
    break;
  case operation::cas:
    j["key"] = r.key;
    j["value"] = r.value.value_or("");
    j["expected"] = r.expected ? nlohmann::json(*r.expected) : nlohmann::json(nullptr);
    break;
  case operation::grant:
    j["ttl_ms"] = r.ttl_ms;
    break;
  case operation::keep_alive:
  case operation::revoke:
    j["lease"] = r.lease;
    break;
  }
  return j.dump();
}

/// Decodes a request that arrived at `path` with `body` (the server's side).
inline result<request> decode_request(std::string_view path, std::string_view body) {
  request r;
  static constexpr std::pair<std::string_view, operation> ops[] = {{"/v1/get", operation::get},
                                                                   {"/v1/put", operation::put},
                                                                   {"/v1/remove", operation::remove},
                                                                   {"/v1/list", operation::list},
                                                                   {"/v1/cas", operation::cas},
                                                                   {"/v1/grant", operation::grant},
                                                                   {"/v1/keep_alive", operation::keep_alive},
                                                                   {"/v1/revoke", operation::revoke}};
  bool known = false;
  for (auto& [p, op] : ops)
    if (p == path) {
      r.op = op;
      known = true;
    }
  if (!known)
    return fail(errc::malformed_frame, "metad: unknown operation '" + std::string(path.substr(0, 64)) + "'");
  auto j = detail::parse_object(body);
  if (!j)
    return fail(j.error());
  switch (r.op) {
  case operation::get:
  case operation::remove:
  case operation::list:
  case operation::put:
  case operation::cas: {
    auto key = detail::string_field(*j, r.op == operation::list ? "prefix" : "key", max_key_length);
    if (!key)
      return fail(key.error());
    if (key->empty() && r.op != operation::list)
      return fail(errc::malformed_frame, "metad: the key is empty");
    r.key = std::move(*key);
    break;
  }
  default:
    break;
  }
  if (r.op == operation::put || r.op == operation::cas) {
    auto value = detail::string_field(*j, "value", std::size_t(64) << 20);
    if (!value)
      return fail(value.error());
    r.value = std::move(*value);
  }
  if (r.op == operation::cas) {
    auto it = j->find("expected");
    if (it == j->end() || !(it->is_null() || it->is_string()))
      return fail(errc::malformed_frame, "metad: field 'expected' must be a string or null");
    if (it->is_string())
      r.expected = it->get<std::string>();
  }
  if (r.op == operation::put && j->contains("lease")) {
    auto lease = detail::integer_field(*j, "lease");
    if (!lease)
      return fail(lease.error());
    r.lease = *lease;
  }
  if (r.op == operation::keep_alive || r.op == operation::revoke) {
    auto lease = detail::integer_field(*j, "lease");
    if (!lease)
      return fail(lease.error());
    r.lease = *lease;
  }
  if (r.op == operation::grant) {
    auto ttl = detail::integer_field(*j, "ttl_ms");
    if (!ttl)
      return fail(ttl.error());
    if (*ttl <= 0 || *ttl > max_ttl_ms)
      return fail(errc::malformed_frame, "metad: ttl_ms must be in (0, 24 h]");
    r.ttl_ms = *ttl;
  }
  return r;
}

/// The server's error body.
inline std::string encode_error(std::string_view why) {
  return nlohmann::json{{"error", why}}.dump();
}

/// Decodes a reply (the client's side): `status` and `body` as received. 404 becomes errc::not_found,
/// other failures errc::invalid_state with the server's reason; a malformed body errc::malformed_frame.
inline result<nlohmann::json> decode_reply(int status, std::string_view body) {
  auto j = detail::parse_object(body);
  if (status != 200) {
    std::string why = j && j->contains("error") && (*j)["error"].is_string()
                          ? (*j)["error"].get<std::string>()
                          : "HTTP status " + std::to_string(status);
    return fail(status == 404 ? errc::not_found : errc::invalid_state, "metad: " + why);
  }
  return j;
}

/// The value of a get reply.
inline result<std::optional<std::string>> decode_get_reply(const nlohmann::json& j) {
  auto it = j.find("value");
  if (it == j.end() || !(it->is_null() || it->is_string()))
    return fail(errc::malformed_frame, "metad: a get reply needs 'value' (string or null)");
  if (it->is_null())
    return std::optional<std::string>();
  return std::optional<std::string>(it->get<std::string>());
}

/// The entries of a list reply.
inline result<std::vector<std::pair<std::string, std::string>>> decode_list_reply(const nlohmann::json& j) {
  auto it = j.find("entries");
  if (it == j.end() || !it->is_array())
    return fail(errc::malformed_frame, "metad: a list reply needs 'entries'");
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(it->size());
  for (auto& e : *it) {
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_string())
      return fail(errc::malformed_frame, "metad: a list entry must be [key, value]");
    out.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
  }
  return out;
}

/// The outcome of a cas reply.
inline result<bool> decode_cas_reply(const nlohmann::json& j) {
  auto it = j.find("swapped");
  if (it == j.end() || !it->is_boolean())
    return fail(errc::malformed_frame, "metad: a cas reply needs 'swapped'");
  return it->get<bool>();
}

/// The lease of a grant reply.
inline result<lease_id> decode_grant_reply(const nlohmann::json& j) {
  auto lease = detail::integer_field(j, "lease");
  if (!lease)
    return fail(lease.error());
  if (*lease == 0)
    return fail(errc::malformed_frame, "metad: lease 0 is not a lease");
  return *lease;
}

} // namespace ferry::metad
