#pragma once
/// The metadata store concept: a key-value service through which processes publish and find segment
/// descriptors. Every operation is awaitable (remote backends talk to a server); keys are plain strings,
/// values opaque text.
///
///   static_assert(ferry::metadata_store<ferry::memory_metadata_store>);

#include "ferry/core/concepts.hpp"
#include "ferry/core/result.hpp"

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

} // namespace ferry
