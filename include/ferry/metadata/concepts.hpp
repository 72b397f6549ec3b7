#pragma once
/// The metadata store concepts: a key-value service through which processes publish and find segment
/// descriptors. Every operation is awaitable (remote backends talk to a server); keys are plain strings,
/// values opaque text. `leasing_metadata_store` adds leases (keys that vanish when their owner stops
/// renewing them) and `cas_metadata_store` an atomic compare-and-set.
///
///   static_assert(ferry::metadata_store<ferry::memory_metadata_store>);
///   static_assert(ferry::leasing_metadata_store<ferry::metadata_client>);

#include "ferry/core/concepts.hpp"
#include "ferry/core/result.hpp"
#include "ferry/metadata/lease_id.hpp"

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ferry {

template<class S>
concept metadata_store = requires(S& s, const std::string& key, const std::string& value) {
  /// The value under `key`, or nullopt when there is none.
  { s.get(key) } -> awaitable;
  requires std::same_as<std::remove_cvref_t<await_result_t<decltype(s.get(key))>>,
                        result<std::optional<std::string>>>;
  /// Stores `value` under `key`, replacing what was there.
  { s.put(key, value) } -> awaitable;
  requires std::same_as<std::remove_cvref_t<await_result_t<decltype(s.put(key, value))>>, result<void>>;
  /// Removes `key` (no error if absent).
  { s.remove(key) } -> awaitable;
  requires std::same_as<std::remove_cvref_t<await_result_t<decltype(s.remove(key))>>, result<void>>;
  /// Every (key, value) whose key starts with `prefix`, in key order.
  { s.list(key) } -> awaitable;
  requires std::same_as<std::remove_cvref_t<await_result_t<decltype(s.list(key))>>,
                        result<std::vector<std::pair<std::string, std::string>>>>;
};

template<class S>
concept leasing_metadata_store = metadata_store<S> &&
    requires(S& s, const std::string& key, const std::string& value, lease_id lease,
             std::chrono::milliseconds ttl) {
  /// A new lease that expires `ttl` after its last renewal.
  { s.grant(ttl) } -> awaitable;
  requires std::same_as<std::remove_cvref_t<await_result_t<decltype(s.grant(ttl))>>, result<lease_id>>;
  /// Renews the lease; errc::not_found once it has expired (its keys are gone: grant and put again).
  { s.keep_alive(lease) } -> awaitable;
  requires std::same_as<std::remove_cvref_t<await_result_t<decltype(s.keep_alive(lease))>>, result<void>>;
  /// Ends the lease now; its keys vanish.
  { s.revoke(lease) } -> awaitable;
  requires std::same_as<std::remove_cvref_t<await_result_t<decltype(s.revoke(lease))>>, result<void>>;
  /// Stores `value` under `key`, attached to `lease`.
  { s.put(key, value, lease) } -> awaitable;
  requires std::same_as<std::remove_cvref_t<await_result_t<decltype(s.put(key, value, lease))>>,
                        result<void>>;
};

template<class S>
concept cas_metadata_store = metadata_store<S> &&
    requires(S& s, const std::string& key, const std::optional<std::string>& expected,
             const std::string& value) {
  /// Stores `value` under `key` only if the current value equals `expected` (nullopt: only if absent).
  /// true when stored, false when the value was something else (nothing changed).
  { s.compare_and_set(key, expected, value) } -> awaitable;
  requires std::same_as<
      std::remove_cvref_t<await_result_t<decltype(s.compare_and_set(key, expected, value))>>, result<bool>>;
};

} // namespace ferry
