#pragma once
/// `ferry::verbs::endpoint_cache<Key, Endpoint>`: the connected endpoints (queue pairs towards one peer NIC),
/// created on first use and bounded in number, since every queue pair costs NIC memory. Eviction follows
/// SIEVE (a FIFO with a visited bit and a moving hand: endpoints used since the hand last passed survive).
/// An evicted endpoint takes no new work but is not destroyed while it has work in flight: it drains first,
/// and `collect()` destroys it once its last request completed.
///
///   ferry::verbs::endpoint_cache<peer_nic_key, endpoint> cache(256);
///   auto ep = cache.get_or_create(key, [&] { return endpoint::make(...); });
///   cache.collect();   // after completions: destroy drained endpoints

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <functional>
#include <iterator>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

namespace ferry::verbs {

/// What the cache needs of an endpoint: how much work it has in flight. `retire()`, when present, is called
/// when it is evicted or erased (stop accepting work, e.g. begin an orderly disconnect).
template<class E>
concept cached_endpoint = requires(const E& e) {
  { e.in_flight() } -> std::convertible_to<std::size_t>;
};

template<class Key, cached_endpoint Endpoint, class Hash = std::hash<Key>>
class endpoint_cache {
  struct node {
    Key key;
    std::unique_ptr<Endpoint> endpoint;
    bool visited = false;
  };
  using list = std::list<node>;

public:
  explicit endpoint_cache(std::size_t capacity) : capacity_(std::max<std::size_t>(capacity, 1)) {}
  endpoint_cache(const endpoint_cache&) = delete;
  endpoint_cache& operator=(const endpoint_cache&) = delete;

  /// The endpoint for `key`, or nullptr; marks it used.
  Endpoint* find(const Key& key) noexcept {
    auto it = index_.find(key);
    if (it == index_.end())
      return nullptr;
    it->second->visited = true;
    return it->second->endpoint.get();
  }

  /// The endpoint for `key`, made by `make()` (returning result<std::unique_ptr<Endpoint>>) when absent; a
  /// full cache evicts one first.
  template<class Make>
  result<Endpoint*> get_or_create(const Key& key, Make&& make) {
    if (Endpoint* e = find(key))
      return e;
    auto made = make();
    if (!made)
      return fail(made.error());
    if (index_.size() >= capacity_)
      evict_one();
    queue_.push_front(node{key, std::move(*made), false});
    index_.emplace(key, queue_.begin());
    return queue_.front().endpoint.get();
  }

  /// Removes `key`'s endpoint (it failed, or its peer changed): it drains like an evicted one.
  void erase(const Key& key) {
    auto it = index_.find(key);
    if (it == index_.end())
      return;
    retire(it->second);
  }

  /// Removes `which` if it is still the endpoint for `key` (it may have been evicted and replaced).
  void erase(const Key& key, const Endpoint* which) {
    auto it = index_.find(key);
    if (it == index_.end() || it->second->endpoint.get() != which)
      return;
    retire(it->second);
  }

  /// Removes every endpoint for which `pred(key)` holds.
  template<class Pred>
  void erase_if(Pred&& pred) {
    for (auto it = queue_.begin(); it != queue_.end();) {
      auto next = std::next(it);
      if (pred(it->key))
        retire(it);
      it = next;
    }
  }

  /// Destroys the retired endpoints with nothing in flight; returns how many went.
  std::size_t collect() {
    auto before = draining_.size();
    std::erase_if(draining_, [](auto& e) { return e->in_flight() == 0; });
    return before - draining_.size();
  }

  /// Endpoints that take work.
  std::size_t size() const noexcept { return index_.size(); }
  /// Retired endpoints still draining.
  std::size_t draining() const noexcept { return draining_.size(); }
  std::size_t capacity() const noexcept { return capacity_; }

  /// Calls `f(key, endpoint)` for every live endpoint.
  template<class F>
  void for_each(F&& f) {
    for (auto& n : queue_)
      f(n.key, *n.endpoint);
  }
  /// Calls `f(endpoint)` for every draining endpoint.
  template<class F>
  void for_each_draining(F&& f) {
    for (auto& e : draining_)
      f(*e);
  }

private:
  void evict_one() {
    // why: SIEVE — the hand walks from the oldest entry towards the newest, sparing (and un-marking) those
    // used since it last passed; the first unmarked one goes. New entries enter at the head, so a burst of
    // one-off peers cannot flush the endpoints in steady use.
    if (queue_.empty())
      return;
    auto hand = hand_valid_ ? hand_ : std::prev(queue_.end());
    for (;;) {
      if (!hand->visited)
        break;
      hand->visited = false;
      hand = hand == queue_.begin() ? std::prev(queue_.end()) : std::prev(hand);
    }
    auto victim = hand;
    if (victim == queue_.begin()) {
      hand_valid_ = false;
    } else {
      hand_ = std::prev(victim);
      hand_valid_ = true;
    }
    retire(victim);
  }

  void retire(typename list::iterator it) {
    if (hand_valid_ && hand_ == it)
      hand_valid_ = false;
    index_.erase(it->key);
    std::unique_ptr<Endpoint> e = std::move(it->endpoint);
    queue_.erase(it);
    if constexpr (requires { e->retire(); })
      e->retire();
    if (e->in_flight() != 0)
      draining_.push_back(std::move(e));
  }

  std::size_t capacity_;
  list queue_; // front: newest
  std::unordered_map<Key, typename list::iterator, Hash> index_;
  typename list::iterator hand_{};
  bool hand_valid_ = false;
  std::vector<std::unique_ptr<Endpoint>> draining_;
};

} // namespace ferry::verbs
