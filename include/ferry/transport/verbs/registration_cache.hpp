#pragma once
/// `ferry::verbs::registration_cache<Registrar>`: memory registrations kept for reuse. Registering memory
/// with an RDMA NIC pins pages and programs its translation tables — often the largest part of a small read —
/// so a range that lies inside an earlier registration is a hit and costs nothing. A range that only overlaps
/// earlier ones is registered once as their union; the registrations it replaces retire and are deregistered
/// as soon as nobody uses them. Used from one thread (the engine's loop).
///
///   ferry::verbs::registration_cache<ferry::verbs::mr_registrar> cache(mr_registrar{pd});
///   auto r = cache.acquire(buf, len);         // r->lkey(), r->rkey(); released when r goes

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <utility>
#include <vector>

namespace ferry::verbs {

/// One registered range as the NIC knows it.
struct registration {
  void* handle = nullptr; ///< the registrar's own (an ibv_mr*)
  std::uint32_t lkey = 0;
  std::uint32_t rkey = 0;
};

/// Registers and deregisters ranges (ibv_reg_mr / ibv_dereg_mr on hardware; a recorder in tests).
template<class R>
concept registrar = requires(R& r, std::byte* p, std::size_t n, registration g) {
  { r.register_range(p, n) } -> std::same_as<result<registration>>;
  r.deregister(g);
};

struct registration_stats {
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t registered = 0; ///< calls to the registrar that succeeded
  std::uint64_t deregistered = 0;
};

template<registrar Registrar>
class registration_cache {
  struct entry {
    std::uintptr_t base = 0;
    std::size_t length = 0;
    registration reg;
    std::uint32_t users = 0;
    bool retired = false;
    std::uint64_t last_use = 0;
  };

public:
  /// A registration held in use; it is never deregistered while a ref to it lives.
  class ref {
  public:
    ref() = default;
    ref(ref&& o) noexcept : cache_(std::exchange(o.cache_, nullptr)), entry_(o.entry_) {}
    ref& operator=(ref&& o) noexcept {
      if (this != &o) {
        reset();
        cache_ = std::exchange(o.cache_, nullptr);
        entry_ = o.entry_;
      }
      return *this;
    }
    ~ref() { reset(); }
    std::uint32_t lkey() const noexcept { return entry_->reg.lkey; }
    std::uint32_t rkey() const noexcept { return entry_->reg.rkey; }
    /// The whole registered range (it may be larger than what was asked for).
    std::byte* base() const noexcept { return reinterpret_cast<std::byte*>(entry_->base); }
    std::size_t length() const noexcept { return entry_->length; }
    explicit operator bool() const noexcept { return cache_ != nullptr; }
    void reset() noexcept {
      if (auto* c = std::exchange(cache_, nullptr))
        c->release(entry_);
    }

  private:
    friend class registration_cache;
    ref(registration_cache* c, entry* e) noexcept : cache_(c), entry_(e) { ++e->users; }
    registration_cache* cache_ = nullptr;
    entry* entry_ = nullptr;
  };

  /// `max_entries` bounds the live registrations; beyond it the least recently used unused one goes.
  explicit registration_cache(Registrar registrar, std::size_t max_entries = 1024)
      : registrar_(std::move(registrar)), max_entries_(std::max<std::size_t>(max_entries, 1)) {}
  registration_cache(const registration_cache&) = delete;
  registration_cache& operator=(const registration_cache&) = delete;
  /// Every ref must have been released (they point into the cache).
  ~registration_cache() {
    for (auto& [base, e] : live_)
      drop(*e);
    for (auto& e : retired_)
      drop(*e);
  }

  /// The registration covering [p, p + length): a hit when one already does, else a new one (the union with
  /// every registration it overlaps).
  result<ref> acquire(const void* p, std::size_t length) {
    if (!p || length == 0)
      return fail(errc::invalid_argument, "verbs: registering an empty range");
    auto lo = reinterpret_cast<std::uintptr_t>(p);
    if (lo + length < lo)
      return fail(errc::invalid_argument, "verbs: registered range wraps around");
    std::uintptr_t hi = lo + length;
    if (entry* e = covering(lo, hi)) {
      ++stats_.hits;
      e->last_use = ++clock_;
      return ref(this, e);
    }
    ++stats_.misses;
    // The union of [lo, hi) and every live registration overlapping it.
    std::vector<typename std::map<std::uintptr_t, std::unique_ptr<entry>>::iterator> overlapped;
    auto it = live_.lower_bound(lo);
    if (it != live_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second->length > lo)
        it = prev;
    }
    std::uintptr_t ulo = lo, uhi = hi;
    for (; it != live_.end() && it->first < hi; ++it) {
      overlapped.push_back(it);
      ulo = std::min(ulo, it->first);
      uhi = std::max<std::uintptr_t>(uhi, it->first + it->second->length);
    }
    auto made = registrar_.register_range(reinterpret_cast<std::byte*>(ulo), uhi - ulo);
    if (!made)
      return fail(made.error());
    ++stats_.registered;
    for (auto o : overlapped) {
      std::unique_ptr<entry> old = std::move(o->second);
      live_.erase(o);
      old->retired = true;
      if (old->users == 0)
        drop(*old);
      else
        retired_.push_back(std::move(old));
    }
    auto e = std::make_unique<entry>();
    e->base = ulo;
    e->length = uhi - ulo;
    e->reg = *made;
    e->last_use = ++clock_;
    entry* stored = e.get();
    live_.emplace(ulo, std::move(e));
    ref held(this, stored); // why: held before trimming, so the bound never evicts what was just made
    trim();
    return held;
  }

  /// The memory of [p, p + length) is going away: registrations touching it are retired (deregistered once
  /// unused) so that no later hit hands out a stale key.
  void invalidate(const void* p, std::size_t length) {
    auto lo = reinterpret_cast<std::uintptr_t>(p);
    std::uintptr_t hi = lo + length;
    for (auto it = live_.begin(); it != live_.end();) {
      if (it->first < hi && it->first + it->second->length > lo) {
        std::unique_ptr<entry> old = std::move(it->second);
        it = live_.erase(it);
        old->retired = true;
        if (old->users == 0)
          drop(*old);
        else
          retired_.push_back(std::move(old));
      } else {
        ++it;
      }
    }
  }

  /// Live registrations (retired ones still in use are not counted).
  std::size_t size() const noexcept { return live_.size(); }
  /// Retired registrations still held by a ref.
  std::size_t retired() const noexcept { return retired_.size(); }
  const registration_stats& stats() const noexcept { return stats_; }
  Registrar& registrar() noexcept { return registrar_; }

private:
  entry* covering(std::uintptr_t lo, std::uintptr_t hi) {
    auto it = live_.upper_bound(lo);
    if (it == live_.begin())
      return nullptr;
    entry* e = std::prev(it)->second.get();
    return hi <= e->base + e->length ? e : nullptr;
  }

  void release(entry* e) noexcept {
    if (--e->users != 0 || !e->retired)
      return;
    auto it = std::find_if(retired_.begin(), retired_.end(), [&](auto& r) { return r.get() == e; });
    if (it == retired_.end())
      return;
    drop(**it);
    retired_.erase(it);
  }

  void drop(entry& e) noexcept {
    registrar_.deregister(e.reg);
    ++stats_.deregistered;
  }

  // Deregisters the least recently used unused registrations beyond the bound.
  void trim() {
    while (live_.size() > max_entries_) {
      auto victim = live_.end();
      for (auto it = live_.begin(); it != live_.end(); ++it)
        if (it->second->users == 0 &&
            (victim == live_.end() || it->second->last_use < victim->second->last_use))
          victim = it;
      if (victim == live_.end())
        return; // everything is in use: the bound is exceeded until refs are released
      drop(*victim->second);
      live_.erase(victim);
    }
  }

  Registrar registrar_;
  std::size_t max_entries_;
  std::map<std::uintptr_t, std::unique_ptr<entry>> live_; // not overlapping
  std::vector<std::unique_ptr<entry>> retired_;
  registration_stats stats_;
  std::uint64_t clock_ = 0;
};

} // namespace ferry::verbs
