#pragma once
/// `ferry::metadata_client`: any metadata store behind one type, chosen at run time (see
/// `ferry::connect_metadata`), with the cluster prefix applied to every key. It satisfies every metadata
/// concept; a backend without leases or compare-and-set answers those with errc::unsupported.
///
///   ferry::metadata_client meta =
///   ferry::metadata_client::wrap(std::make_shared<ferry::memory_metadata_store>());
///   engine.use_metadata(meta);

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/metadata/concepts.hpp"
#include "ferry/metadata/lease_id.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ferry {

/// The operations a metadata backend offers, as virtual calls (lookups are rare next to transfers).
class metadata_backend {
public:
  using entries = std::vector<std::pair<std::string, std::string>>;
  virtual ~metadata_backend() = default;
  virtual task<result<std::optional<std::string>>> get(std::string key) = 0;
  virtual task<result<void>> put(std::string key, std::string value) = 0;
  virtual task<result<void>> put(std::string key, std::string value, lease_id lease) = 0;
  virtual task<result<void>> remove(std::string key) = 0;
  virtual task<result<entries>> list(std::string prefix) = 0;
  virtual task<result<bool>> compare_and_set(std::string key, std::optional<std::string> expected,
                                             std::string value) = 0;
  virtual task<result<lease_id>> grant(std::chrono::milliseconds ttl) = 0;
  virtual task<result<void>> keep_alive(lease_id lease) = 0;
  virtual task<result<void>> revoke(lease_id lease) = 0;
};

namespace detail {
/// Adapts any metadata_store to metadata_backend (what it lacks answers errc::unsupported).
template<metadata_store Store>
class metadata_adapter final : public metadata_backend {
public:
  explicit metadata_adapter(std::shared_ptr<Store> store) : store_(std::move(store)) {}
  task<result<std::optional<std::string>>> get(std::string key) override {
    co_return co_await store_->get(std::move(key));
  }
  task<result<void>> put(std::string key, std::string value) override {
    co_return co_await store_->put(std::move(key), std::move(value));
  }
  task<result<void>> put(std::string key, std::string value, lease_id lease) override {
    if constexpr (leasing_metadata_store<Store>)
      co_return co_await store_->put(std::move(key), std::move(value), lease);
    else
      co_return fail(errc::unsupported, "metadata: this backend has no leases");
  }
  task<result<void>> remove(std::string key) override { co_return co_await store_->remove(std::move(key)); }
  task<result<entries>> list(std::string prefix) override {
    co_return co_await store_->list(std::move(prefix));
  }
  task<result<bool>> compare_and_set(std::string key, std::optional<std::string> expected,
                                     std::string value) override {
    if constexpr (cas_metadata_store<Store>)
      co_return co_await store_->compare_and_set(std::move(key), std::move(expected), std::move(value));
    else
      co_return fail(errc::unsupported, "metadata: this backend has no compare-and-set");
  }
  task<result<lease_id>> grant(std::chrono::milliseconds ttl) override {
    if constexpr (leasing_metadata_store<Store>)
      co_return co_await store_->grant(ttl);
    else
      co_return fail(errc::unsupported, "metadata: this backend has no leases");
  }
  task<result<void>> keep_alive(lease_id lease) override {
    if constexpr (leasing_metadata_store<Store>)
      co_return co_await store_->keep_alive(lease);
    else
      co_return fail(errc::unsupported, "metadata: this backend has no leases");
  }
  task<result<void>> revoke(lease_id lease) override {
    if constexpr (leasing_metadata_store<Store>)
      co_return co_await store_->revoke(lease);
    else
      co_return fail(errc::unsupported, "metadata: this backend has no leases");
  }

private:
  std::shared_ptr<Store> store_;
};
} // namespace detail

class metadata_client {
public:
  using entries = metadata_backend::entries;

  /// A client with no backend: `direct()` is true and segments are opened by HOST:PORT (connection "p2p").
  metadata_client() = default;

  /// Wraps a store; every key is stored as `prefix + key`.
  template<metadata_store Store>
  static metadata_client wrap(std::shared_ptr<Store> store, std::string prefix = {},
                              std::string description = {}) {
    metadata_client c;
    c.backend_ = std::make_shared<detail::metadata_adapter<Store>>(std::move(store));
    c.prefix_ = std::move(prefix);
    c.description_ = std::move(description);
    return c;
  }

  /// True when there is no store: peers are reached by address (the p2p handshake).
  bool direct() const noexcept { return !backend_; }
  /// The cluster prefix in front of every key ("" for none).
  const std::string& prefix() const noexcept { return prefix_; }
  /// The connection this client was made from (for messages).
  const std::string& description() const noexcept { return description_; }

  task<result<std::optional<std::string>>> get(std::string key) {
    if (!backend_)
      co_return no_store();
    co_return co_await backend_->get(prefix_ + key);
  }
  task<result<void>> put(std::string key, std::string value) {
    if (!backend_)
      co_return no_store();
    co_return co_await backend_->put(prefix_ + key, std::move(value));
  }
  task<result<void>> put(std::string key, std::string value, lease_id lease) {
    if (!backend_)
      co_return no_store();
    co_return co_await backend_->put(prefix_ + key, std::move(value), lease);
  }
  task<result<void>> remove(std::string key) {
    if (!backend_)
      co_return no_store();
    co_return co_await backend_->remove(prefix_ + key);
  }
  task<result<entries>> list(std::string prefix) {
    if (!backend_)
      co_return no_store();
    auto got = co_await backend_->list(prefix_ + prefix);
    if (!got)
      co_return fail(got.error());
    for (auto& [k, v] : *got)
      k.erase(0, prefix_.size());
    co_return std::move(*got);
  }
  task<result<bool>> compare_and_set(std::string key, std::optional<std::string> expected,
                                     std::string value) {
    if (!backend_)
      co_return no_store();
    co_return co_await backend_->compare_and_set(prefix_ + key, std::move(expected), std::move(value));
  }
  task<result<lease_id>> grant(std::chrono::milliseconds ttl) {
    if (!backend_)
      co_return no_store();
    co_return co_await backend_->grant(ttl);
  }
  task<result<void>> keep_alive(lease_id lease) {
    if (!backend_)
      co_return no_store();
    co_return co_await backend_->keep_alive(lease);
  }
  task<result<void>> revoke(lease_id lease) {
    if (!backend_)
      co_return no_store();
    co_return co_await backend_->revoke(lease);
  }

private:
  static tl::unexpected<error> no_store() { return fail(errc::unsupported, "metadata: p2p has no store"); }

  std::shared_ptr<metadata_backend> backend_;
  std::string prefix_;
  std::string description_;
};

} // namespace ferry
