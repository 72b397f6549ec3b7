#pragma once
#include "ferry/core/result.hpp"
#include "ferry/store/concepts.hpp"
#include "ferry/store/detail/chunked_array.hpp"
#include "ferry/store/detail/object_meta.hpp"
#include "ferry/store/least_loaded_placement.hpp"
#include "ferry/store/maintenance_report.hpp"
#include "ferry/store/master_config.hpp"
#include "ferry/store/master_stats.hpp"
#include "ferry/store/offset_allocator.hpp"
#include "ferry/store/prefix_aware_policy.hpp"
#include "ferry/store/put_options.hpp"
#include "ferry/store/replica_set.hpp"
#include "ferry/store/segment_spec.hpp"
#include "ferry/store/steady_clock.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace ferry::detail {

struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

/// The part of a key that picks its shard: the text inside the first `{...}` if any, else the whole key.
inline std::string_view hash_tag(std::string_view key) noexcept {
  auto open = key.find('{');
  if (open == std::string_view::npos)
    return key;
  auto close = key.find('}', open + 1);
  if (close == std::string_view::npos || close == open + 1)
    return key;
  return key.substr(open + 1, close - open - 1);
}

} // namespace ferry::detail

namespace ferry::store {

/// One put of a batch.
struct put_request {
  std::string_view key;
  std::uint64_t size = 0;
  put_options options{};
};

/// The store's metadata service: which object lives where, in how many replicas. It allocates ranges of
/// the segments clients mount, grants read leases, evicts under memory pressure and forgets dead clients;
/// the bytes themselves move between clients. Every operation is synchronous and safe from many threads:
/// objects are spread over `config.shards` independently locked shards. One that runs out of memory throws
/// std::bad_alloc and leaves the master whole: a put that throws did not start, a commit that throws leaves
/// its put pending, a removal that throws removed nothing (what a put evicted before it threw stays evicted).
///
/// Policies are template arguments: `Eviction` (lru_policy, lease_lru_policy, s3fifo_policy,
/// prefix_aware_policy), `Placement` (random_placement, least_loaded_placement, preferred_placement,
/// spread_placement), `Allocator` (offset_allocator) and `Clock` (steady_clock, manual_clock in tests).
///
///   store::master<> m;
///   auto seg = m.mount_segment({.name = "a/dram", .host = "a", .capacity = 1 << 30, .owner = 1});
///   auto where = m.put_start("k", 4096);   // write the bytes to *where, then:
///   m.put_end("k");
///   auto read = m.get_replicas("k");       // leased for config.lease_ttl
template<eviction_policy Eviction = prefix_aware_policy,
         placement_policy Placement = least_loaded_placement<>,
         segment_allocator Allocator = offset_allocator, clock_source Clock = steady_clock>
class master {
public:
  using time_point = std::chrono::steady_clock::time_point;

  explicit master(master_config config = {}) : config_(config) {
    if (config_.shards == 0)
      throw std::invalid_argument("master: config.shards must be at least 1");
    shards_.reserve(config_.shards);
    for (std::size_t i = 0; i < config_.shards; ++i)
      shards_.push_back(std::make_unique<shard>());
  }

  master(const master&) = delete;
  master& operator=(const master&) = delete;

  /// The clock (a test advances a manual_clock through it).
  Clock& clock() noexcept { return clock_; }
  const master_config& config() const noexcept { return config_; }

  // ---- segments and clients ----

  /// Adds a segment to the pool; its owner counts as alive from now on.
  result<segment_id> mount_segment(const segment_spec& spec) {
    if (spec.capacity == 0 || spec.capacity >= offset_allocator::max_capacity || spec.name.empty())
      return fail(errc::invalid_argument, "mount_segment: give a name and a capacity in (0, 2^62) bytes");
    // why: first, so that running out of memory cannot leave a segment mounted whose owner never expires
    heartbeat(spec.owner);
    {
      std::unique_lock lock(segments_mutex_);
      for (auto& s : segments_)
        if (s && s->spec.name == spec.name)
          return fail(errc::already_exists, "mount_segment: a segment of that name is mounted");
      auto id = static_cast<segment_id>(segments_.size());
      segments_.push_back(std::make_unique<segment_state>(spec, id));
      capacity_.fetch_add(spec.capacity, std::memory_order_relaxed);
      return id;
    }
  }

  /// Removes a segment. Replicas on it are dropped; objects left without a replica disappear. Refused with
  /// `busy` if it holds the only replica of a leased object, unless `force` (a dead client's memory).
  result<void> unmount_segment(segment_id id, bool force = false) {
    auto locks = lock_all_shards();
    {
      std::shared_lock table(segments_mutex_);
      if (id >= segments_.size() || !segments_[id])
        return fail(errc::unknown_segment, "unmount_segment: no such segment is mounted");
    }
    auto now = clock_.now();
    if (!force)
      for (auto& sh : shards_)
        for (auto& [key, slot] : sh->index) {
          auto& meta = sh->objects[slot];
          if (meta.state == detail::object_state::complete && meta.lease_until > now &&
              lost_replicas(meta, id) == meta.pieces.size() / meta.stripes)
            return fail(errc::busy, "unmount_segment: it holds the only replica of a leased object; retry "
                                    "after the lease ends");
        }
    for (auto& sh : shards_) {
      std::vector<std::uint32_t> affected;
      for (auto& [key, slot] : sh->index)
        if (lost_replicas(sh->objects[slot], id) > 0)
          affected.push_back(slot);
      for (auto slot : affected)
        drop_replicas_on(*sh, slot, id);
    }
    std::unique_lock table(segments_mutex_);
    capacity_.fetch_sub(segments_[id]->spec.capacity, std::memory_order_relaxed);
    used_.fetch_sub(segments_[id]->allocator.used(), std::memory_order_relaxed);
    segments_[id].reset();
    return {};
  }

  /// Records that a client is alive. Client 0 stands for none and never expires, nor do the segments and
  /// pending puts it owns (a pending put still ends after `put_timeout`).
  void heartbeat(client_id client) {
    if (client == 0)
      return;
    std::lock_guard lock(clients_mutex_);
    clients_[client] = clock_.now();
  }

  /// Utilization and fragmentation of one segment.
  result<allocator_report> segment_report(segment_id id) const {
    std::shared_lock table(segments_mutex_);
    if (id >= segments_.size() || !segments_[id])
      return fail(errc::unknown_segment, "segment_report: no such segment is mounted");
    std::lock_guard lock(segments_[id]->mutex);
    return segments_[id]->allocator.report();
  }

  // ---- objects ----

  /// Allocates `options.replicas` replicas (fewer if segments run out, at least one) for a new object,
  /// evicting if space is short. The object is pending until `put_end`. An object smaller than
  /// `options.stripes` pieces is striped over the pieces it fills (`replica_set::stripes` says how many). A
  /// piece larger than every mounted segment is refused with `out_of_space` before anything is evicted.
  result<replica_set> put_start(std::string_view key, std::uint64_t size, const put_options& options = {}) {
    if (key.empty() || size == 0 || options.replicas == 0 || options.stripes == 0 || options.stripes > 255)
      return fail(errc::invalid_argument,
                  "put_start: need a key, a size > 0, replicas >= 1, 1 <= stripes <= 255");
    put_options placed = options;
    // why: pieces are size/stripes rounded up, so an object smaller than that many pieces fills fewer
    // stripes (4 bytes over 3 stripes: 2 + 2); it is stored over those, with no empty piece
    std::uint64_t piece = divided_up(size, placed.stripes);
    placed.stripes = static_cast<std::uint32_t>(divided_up(size, piece));
    // why: eviction cannot make a piece fit a segment smaller than the piece, so such a put is refused
    // before anything is evicted for it
    if (std::size_t large = segments_holding(piece); large < placed.stripes)
      return fail(errc::out_of_space, "put_start: " + std::to_string(large) +
                                          " mounted segment(s) could ever hold a piece of " +
                                          std::to_string(piece) + " bytes, and " +
                                          std::to_string(placed.stripes) + " are needed (stripes)");
    shard& sh = shard_of(key);
    for (;;) {
      std::optional<replica_set> set;
      {
        std::lock_guard lock(sh.mutex);
        if (sh.index.find(key) != sh.index.end())
          return fail(errc::already_exists, "put_start: the key exists; remove it first or use another key");
        std::vector<detail::stored_piece> pieces;
        try {
          allocate_pieces(sh, size, placed, pieces);
        } catch (...) { // out of memory: the pieces taken so far go back
          std::shared_lock table(segments_mutex_);
          free_pieces(pieces);
          throw;
        }
        if (!pieces.empty()) {
          try {
            set = insert_pending(sh, key, size, placed, pieces);
          } catch (...) { // out of memory: the space goes back, and the put never started
            std::shared_lock table(segments_mutex_);
            free_pieces(pieces);
            throw;
          }
        }
      }
      if (set) {
        // why: the put has started; eviction towards the watermark is best effort here (tick() does it too),
        // and running out of memory in it must not report a started put as failed
        try {
          relieve_pressure();
        } catch (const std::bad_alloc&) {
        }
        return std::move(*set);
      }
      if (segment_count() < placed.stripes)
        return fail(errc::out_of_space, "put_start: fewer segments are mounted than the stripes asked for");
      if (evict_bytes(size) == 0)
        return fail(errc::out_of_space, "put_start: every segment is full and nothing can be evicted");
    }
  }

  /// Commits a pending object: it becomes readable, immutable and evictable.
  result<void> put_end(std::string_view key) {
    shard& sh = shard_of(key);
    std::lock_guard lock(sh.mutex);
    auto it = sh.index.find(key);
    if (it == sh.index.end())
      return fail(errc::not_found,
                  "put_end: no pending put of that key (never started, revoked or reclaimed)");
    auto slot = it->second;
    auto& meta = sh.objects[slot];
    if (meta.state != detail::object_state::pending)
      return fail(errc::invalid_state, "put_end: the object is already committed");
    entry_hint hint{hash_of(*meta.key), entry_hint::no_parent, meta.depth, meta.partial_tail};
    if (meta.parent != entry_hint::no_parent && meta.parent < sh.objects.size() &&
        sh.objects[meta.parent].state == detail::object_state::complete)
      hint.parent = meta.parent;
    // why: first, the one step that may run out of memory: a throw leaves the put pending (put_end may be
    // called again), never committed without the policy knowing it
    sh.policy.insert(slot, hint);
    meta.state = detail::object_state::complete;
    meta.deadline = meta.soft_pin ? clock_.now() + meta.deadline.time_since_epoch() : time_point{};
    meta.lease_until = {};
    return {};
  }

  /// Abandons a pending put and frees its space.
  result<void> put_revoke(std::string_view key) {
    shard& sh = shard_of(key);
    std::lock_guard lock(sh.mutex);
    auto it = sh.index.find(key);
    if (it == sh.index.end())
      return fail(errc::not_found, "put_revoke: no pending put of that key");
    if (sh.objects[it->second].state != detail::object_state::pending)
      return fail(errc::invalid_state, "put_revoke: the object is committed; use remove");
    drop_object(sh, it->second, false);
    return {};
  }

  /// Where a committed object lives; grants a read lease (no eviction or removal until it ends).
  result<replica_set> get_replicas(std::string_view key) {
    shard& sh = shard_of(key);
    std::lock_guard lock(sh.mutex);
    auto it = sh.index.find(key);
    if (it == sh.index.end())
      return fail(errc::not_found, "get_replicas: no object of that key");
    auto& meta = sh.objects[it->second];
    if (meta.state != detail::object_state::complete)
      return fail(errc::not_ready, "get_replicas: the object is still being written; retry after put_end");
    auto set = make_set(meta); // why: first, so that running out of memory grants no lease to nobody
    meta.lease_until = std::max(meta.lease_until, clock_.now() + config_.lease_ttl);
    sh.policy.touch(it->second);
    return set;
  }

  /// Removes a committed object; refused with `busy` while it is leased.
  result<void> remove(std::string_view key) {
    shard& sh = shard_of(key);
    std::lock_guard lock(sh.mutex);
    auto it = sh.index.find(key);
    if (it == sh.index.end())
      return fail(errc::not_found, "remove: no object of that key");
    auto& meta = sh.objects[it->second];
    if (meta.state != detail::object_state::complete)
      return fail(errc::invalid_state, "remove: the object is pending; use put_revoke");
    if (meta.lease_until > clock_.now())
      return fail(errc::busy, "remove: the object is leased to a reader; retry after the lease ends");
    drop_object(sh, it->second, false);
    return {};
  }

  /// True if a committed object of that key exists.
  bool exists(std::string_view key) {
    shard& sh = shard_of(key);
    std::lock_guard lock(sh.mutex);
    auto it = sh.index.find(key);
    return it != sh.index.end() && sh.objects[it->second].state == detail::object_state::complete;
  }

  // ---- batch forms: one result per element, in order ----

  std::vector<result<replica_set>> batch_put_start(std::span<const put_request> requests) {
    return map(requests, [&](const put_request& r) { return put_start(r.key, r.size, r.options); });
  }
  std::vector<result<void>> batch_put_end(std::span<const std::string_view> keys) {
    return map(keys, [&](std::string_view k) { return put_end(k); });
  }
  std::vector<result<void>> batch_put_revoke(std::span<const std::string_view> keys) {
    return map(keys, [&](std::string_view k) { return put_revoke(k); });
  }
  std::vector<result<replica_set>> batch_get_replicas(std::span<const std::string_view> keys) {
    return map(keys, [&](std::string_view k) { return get_replicas(k); });
  }
  std::vector<result<void>> batch_remove(std::span<const std::string_view> keys) {
    return map(keys, [&](std::string_view k) { return remove(k); });
  }
  std::vector<bool> batch_exists(std::span<const std::string_view> keys) {
    std::vector<bool> out;
    out.reserve(keys.size());
    for (auto k : keys)
      out.push_back(exists(k));
    return out;
  }

  // ---- maintenance ----

  /// Expires silent clients (their segments leave the pool, forcibly), reclaims puts not committed within
  /// `put_timeout` (and those of expired clients), and evicts down to the low watermark if above the high
  /// one. Call it periodically (e.g. every 100 ms).
  maintenance_report tick() {
    maintenance_report report;
    auto now = clock_.now();
    std::vector<std::pair<client_id, time_point>> dead; // and the last heartbeat that found it alive
    {
      std::lock_guard lock(clients_mutex_);
      for (auto& [client, seen] : clients_)
        if (now - seen > config_.client_ttl)
          dead.emplace_back(client, seen);
    }
    // why: a client is forgotten only once its segments are gone, so that running out of memory on the way
    // leaves it for the next pass to expire again, never a dead client's segment in the pool for ever
    std::vector<client_id> expired;
    expired.reserve(dead.size());
    for (auto [client, seen] : dead) {
      std::vector<segment_id> owned;
      {
        std::shared_lock table(segments_mutex_);
        for (auto& s : segments_)
          if (s && s->spec.owner == client)
            owned.push_back(s->id);
      }
      for (auto id : owned)
        (void)unmount_segment(id, true);
      std::lock_guard lock(clients_mutex_);
      if (auto it = clients_.find(client); it != clients_.end() && it->second == seen) {
        clients_.erase(it);
        expired.push_back(client);
      }
    }
    report.clients_expired = expired.size();
    for (auto& sh : shards_) {
      std::lock_guard lock(sh->mutex);
      // why: dropped at once, so that a second entry of the same slot (a put revoked, its slot taken again
      // with the same deadline) finds it ended
      auto reclaim = [&](std::uint32_t slot) {
        drop_object(*sh, slot, false);
        ++report.puts_reclaimed;
      };
      // why: puts are reclaimed in the order they started (their deadline is the start plus the one
      // put_timeout), so a pass looks at the puts that are due and no further: its cost is that of the work,
      // not of the pool's size (a scan of 1 M objects took about 190 ms)
      auto& due = sh->pending_order;
      std::size_t& first = sh->pending_first;
      for (; first < due.size() && due[first].until <= now; ++first)
        if (is_pending_since(*sh, due[first].slot, due[first].until))
          reclaim(due[first].slot);
      if (!expired.empty()) // rare: a client expired; its puts that are not due yet go too
        for (std::size_t i = first; i < due.size(); ++i)
          if (is_pending_since(*sh, due[i].slot, due[i].until) &&
              std::find(expired.begin(), expired.end(), sh->objects[due[i].slot].owner) != expired.end())
            reclaim(due[i].slot);
      if (first == due.size()) {
        due.clear();
        first = 0;
      }
    }
    report.evicted = relieve_pressure();
    return report;
  }

  /// Evicts until used space is at most `target_bytes` (or nothing evictable is left); the number evicted.
  std::size_t evict_to(std::uint64_t target_bytes) {
    auto used = used_.load(std::memory_order_relaxed);
    if (used <= target_bytes)
      return 0;
    auto before = evicted_.load(std::memory_order_relaxed);
    evict_bytes(used - target_bytes);
    return static_cast<std::size_t>(evicted_.load(std::memory_order_relaxed) - before);
  }

  master_stats stats() const {
    master_stats s;
    for (auto& sh : shards_) {
      std::lock_guard lock(sh->mutex);
      s.objects += sh->index.size();
      s.pending += sh->index.size() - sh->policy.size();
    }
    {
      std::shared_lock table(segments_mutex_);
      for (auto& seg : segments_)
        s.segments += seg != nullptr;
    }
    s.capacity = capacity_.load(std::memory_order_relaxed);
    s.used = used_.load(std::memory_order_relaxed);
    s.evicted = evicted_.load(std::memory_order_relaxed);
    return s;
  }

private:
  /// A put in the order of reclaim: its slot, and the deadline it had when it started.
  struct pending_put {
    time_point until;
    std::uint32_t slot;
  };

  struct shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::uint32_t, detail::string_hash, std::equal_to<>> index;
    detail::chunked_array<detail::object_meta> objects;
    std::vector<std::uint32_t> free_slots;
    /// From `pending_first` on: every pending put, oldest first, and entries of puts that have ended since
    /// (committed, revoked, dropped); an entry counts only while its slot is pending with the same deadline.
    std::vector<pending_put> pending_order;
    std::size_t pending_first = 0;
    Eviction policy;
    Placement placement;
  };

  struct segment_state {
    segment_state(const segment_spec& s, segment_id i) : spec(s), id(i), allocator(s.capacity) {}
    segment_spec spec;
    segment_id id;
    std::mutex mutex;
    Allocator allocator;
    std::atomic<std::uint64_t> used{0};
  };

  static std::uint64_t hash_of(std::string_view key) noexcept { return detail::string_hash{}(key); }

  shard& shard_of(std::string_view key) noexcept {
    return *shards_[hash_of(detail::hash_tag(key)) % shards_.size()];
  }

  std::size_t segment_count() const {
    std::shared_lock table(segments_mutex_);
    return static_cast<std::size_t>(
        std::count_if(segments_.begin(), segments_.end(), [](auto& s) { return s != nullptr; }));
  }

  std::vector<std::unique_lock<std::mutex>> lock_all_shards() {
    // why: every other path holds at most one shard lock at a time, so taking all in index order cannot
    // deadlock.
    std::vector<std::unique_lock<std::mutex>> locks;
    locks.reserve(shards_.size());
    for (auto& sh : shards_)
      locks.emplace_back(sh->mutex);
    return locks;
  }

  /// `a / b` rounded up: the length of each piece but the last of `a` bytes cut into `b` pieces, and how
  /// many pieces of `b` bytes hold `a`.
  static std::uint64_t divided_up(std::uint64_t a, std::uint64_t b) noexcept {
    return a / b + (a % b != 0); // why: (a + b - 1) / b would wrap near 2^64
  }

  /// How many mounted segments are at least `bytes` large (empty or not).
  std::size_t segments_holding(std::uint64_t bytes) const {
    std::shared_lock table(segments_mutex_);
    return static_cast<std::size_t>(std::count_if(segments_.begin(), segments_.end(),
                                                  [&](auto& s) { return s && s->spec.capacity >= bytes; }));
  }

  /// Allocates replicas (each `stripes` pieces on distinct segments) into `out`; empty when none fit.
  void allocate_pieces(shard& sh, std::uint64_t size, const put_options& options,
                       std::vector<detail::stored_piece>& out) {
    std::uint32_t stripes = options.stripes;
    std::uint64_t piece_size = divided_up(size, stripes);
    std::shared_lock table(segments_mutex_);
    std::vector<segment_view> candidates;
    for (auto& s : segments_)
      if (s && s->spec.capacity - s->used.load(std::memory_order_relaxed) >= piece_size)
        candidates.push_back({s->id, s->spec.host, s->spec.capacity,
                              s->spec.capacity - s->used.load(std::memory_order_relaxed)});
    if (candidates.size() < stripes)
      return;
    std::vector<segment_id> order;
    placement_request req{piece_size, candidates.size(), options.preferred_segment, options.preferred_host};
    req.count = std::min<std::size_t>(candidates.size(), std::size_t{options.replicas} * stripes);
    sh.placement.place(req, candidates, order);
    // why: placement ranks its favourites; the other candidates follow so that a segment too fragmented
    // for the piece does not cost a replica.
    for (auto& c : candidates)
      if (std::find(order.begin(), order.end(), c.id) == order.end())
        order.push_back(c.id);
    // why: room for every piece first, so that no piece is taken from a segment and then lost to a throw
    out.reserve(out.size() + std::min<std::size_t>(order.size(), std::size_t{options.replicas} * stripes));
    std::size_t next = 0;
    for (std::uint32_t r = 0; r < options.replicas; ++r) {
      std::size_t start = out.size();
      std::uint64_t left = size;
      for (std::uint32_t j = 0; j < stripes && next < order.size();) {
        std::uint64_t len = std::min(piece_size, left);
        auto& seg = *segments_[order[next++]];
        std::lock_guard lock(seg.mutex);
        if (auto a = seg.allocator.allocate(len)) {
          seg.used.fetch_add(len, std::memory_order_relaxed);
          used_.fetch_add(len, std::memory_order_relaxed);
          out.push_back({a->offset, a->size, seg.id, a->node});
          left -= len;
          ++j;
        }
      }
      if (out.size() - start < stripes) {
        free_pieces(std::span(out).subspan(start));
        out.resize(start);
        break;
      }
    }
  }

  /// Frees pieces; the caller holds `segments_mutex_` (shared or exclusive).
  void free_pieces(std::span<const detail::stored_piece> pieces) {
    for (auto& p : pieces) {
      auto& seg = *segments_[p.segment];
      std::lock_guard lock(seg.mutex);
      seg.allocator.free(allocation{p.offset, p.length, p.node});
      seg.used.fetch_sub(p.length, std::memory_order_relaxed);
      used_.fetch_sub(p.length, std::memory_order_relaxed);
    }
  }

  replica_set insert_pending(shard& sh, std::string_view key, std::uint64_t size, const put_options& options,
                             std::span<const detail::stored_piece> pieces) {
    replica_set set{size, options.stripes, {}}; // what make_set would say of the object
    set.pieces.reserve(pieces.size());
    for (auto& p : pieces)
      set.pieces.push_back({p.segment, p.offset, p.length});
    const time_point until = clock_.now() + config_.put_timeout;
    make_room_for_a_free_slot(sh); // why: to give the slot back on a throw below, without an allocation then
    const std::uint32_t slot =
        sh.free_slots.empty() ? static_cast<std::uint32_t>(sh.objects.size()) : sh.free_slots.back();
    // why: queued before the slot and the key are taken, so that a throw (out of memory) leaves no pending
    // put that no pass would reclaim; an entry whose put never started counts as one that ended
    remember_pending(sh, slot, until);
    if (!sh.free_slots.empty())
      sh.free_slots.pop_back();
    else
      sh.objects.resize(slot + 1);
    auto& meta = sh.objects[slot];
    try {
      auto [it, inserted] = sh.index.emplace(std::string(key), slot);
      meta.key = &it->first;
      try {
        meta.pieces.assign(pieces);
      } catch (...) {
        sh.index.erase(it);
        throw;
      }
    } catch (...) { // the key and the slot are free again; the caller gives the space back
      meta = detail::object_meta{};
      sh.free_slots.push_back(slot);
      throw;
    }
    meta.size = size;
    meta.lease_until = until;
    meta.deadline = time_point(options.soft_pin);
    meta.owner = options.owner;
    meta.parent = entry_hint::no_parent;
    if (!options.parent.empty())
      if (auto p = sh.index.find(options.parent); p != sh.index.end())
        meta.parent = p->second;
    meta.depth = options.depth;
    meta.state = detail::object_state::pending;
    meta.stripes = static_cast<std::uint8_t>(options.stripes);
    meta.hard_pin = options.hard_pin;
    meta.soft_pin = options.soft_pin.count() > 0;
    meta.partial_tail = options.partial_tail;
    return set; // why: built first, so that nothing can throw once the put is pending
  }

  /// Whether `slot` holds a put still pending that started with deadline `until`.
  static bool is_pending_since(shard& sh, std::uint32_t slot, time_point until) {
    if (slot >= sh.objects.size())
      return false;
    auto& meta = sh.objects[slot];
    return meta.state == detail::object_state::pending && meta.lease_until == until;
  }

  /// Queues a put about to start for reclaim; drops the entries of ended puts once they are most of the
  /// queue.
  // why: entries of committed puts are not taken out one by one (that would cost a search per put_end); the
  // queue is rebuilt when they outnumber the live ones by 1,024, which keeps it within twice the pending
  // puts plus 1,024 entries, and costs each put a constant amount on average. A rebuilt queue holds one
  // entry per pending put: entries of ended puts whose slot was taken again with the same deadline (a clock
  // that did not move) match the new put too, and only the first is kept.
  static void remember_pending(shard& sh, std::uint32_t slot, time_point until) {
    auto& q = sh.pending_order;
    const std::size_t live = sh.index.size() - sh.policy.size(); // pending puts, not counting this one
    if (q.size() - sh.pending_first >= 2 * (live + 1) + 1024) {
      // why: rebuilt aside and swapped in, so that running out of memory meanwhile leaves the queue as it was
      std::vector<pending_put> rebuilt;
      rebuilt.reserve(live + 1);
      std::unordered_set<std::uint32_t> kept;
      kept.reserve(live);
      for (std::size_t i = sh.pending_first; i < q.size(); ++i)
        if (is_pending_since(sh, q[i].slot, q[i].until) && kept.insert(q[i].slot).second)
          rebuilt.push_back(q[i]);
      q.swap(rebuilt);
      sh.pending_first = 0;
    }
    q.push_back({until, slot});
  }

  static replica_set make_set(const detail::object_meta& meta) {
    replica_set set{meta.size, meta.stripes, {}};
    auto v = meta.pieces.view();
    set.pieces.reserve(v.size());
    for (auto& p : v)
      set.pieces.push_back({p.segment, p.offset, p.length});
    return set;
  }

  /// How many replicas of `meta` have a piece on `segment`.
  static std::size_t lost_replicas(const detail::object_meta& meta, segment_id segment) noexcept {
    auto v = meta.pieces.view();
    std::size_t lost = 0;
    for (std::size_t r = 0; r + meta.stripes <= v.size(); r += meta.stripes)
      lost += std::any_of(v.begin() + r, v.begin() + r + meta.stripes,
                          [&](const detail::stored_piece& p) { return p.segment == segment; });
    return lost;
  }

  /// Drops the replicas of one object that touch `segment`; the object goes when none is left.
  void drop_replicas_on(shard& sh, std::uint32_t slot, segment_id segment) {
    auto& meta = sh.objects[slot];
    auto v = meta.pieces.view();
    std::vector<detail::stored_piece> keep;
    std::vector<detail::stored_piece> gone;
    for (std::size_t r = 0; r + meta.stripes <= v.size(); r += meta.stripes) {
      auto rep = v.subspan(r, meta.stripes);
      bool hit = std::any_of(rep.begin(), rep.end(),
                             [&](const detail::stored_piece& p) { return p.segment == segment; });
      (hit ? gone : keep).insert((hit ? gone : keep).end(), rep.begin(), rep.end());
    }
    if (keep.empty()) {
      drop_object(sh, slot, false);
      return;
    }
    // why: the kept pieces' list is made before the others go, so that running out of memory loses nothing
    detail::piece_list kept;
    kept.assign(keep);
    {
      std::shared_lock table(segments_mutex_);
      free_pieces(gone);
    }
    meta.pieces = std::move(kept);
  }

  /// Grows `sh.free_slots` (geometrically) if it is full, so that the next push_back cannot throw.
  static void make_room_for_a_free_slot(shard& sh) {
    if (sh.free_slots.size() == sh.free_slots.capacity())
      sh.free_slots.reserve(std::max<std::size_t>(16, 2 * sh.free_slots.capacity()));
  }

  /// Frees an object's space and forgets it; the caller holds the shard lock. Returns its bytes.
  std::uint64_t drop_object(shard& sh, std::uint32_t slot, bool evicted) {
    // why: the one step that may run out of memory goes first, so that a throw leaves the object whole
    make_room_for_a_free_slot(sh);
    auto& meta = sh.objects[slot];
    std::uint64_t bytes = 0;
    {
      std::shared_lock table(segments_mutex_);
      auto v = meta.pieces.view();
      for (auto& p : v)
        bytes += p.length;
      free_pieces(v);
    }
    if (meta.state == detail::object_state::complete)
      sh.policy.erase(slot, hash_of(*meta.key), evicted);
    sh.index.erase(*meta.key);
    meta = detail::object_meta{};
    sh.free_slots.push_back(slot);
    if (evicted)
      evicted_.fetch_add(1, std::memory_order_relaxed);
    return bytes;
  }

  /// Evicts at least `goal` bytes if possible, one object per shard visit so that shards age evenly.
  std::uint64_t evict_bytes(std::uint64_t goal) {
    std::uint64_t freed = 0;
    for (bool allow_soft : {false, true}) {
      if (allow_soft && !config_.evict_soft_pinned)
        break;
      std::vector<bool> exhausted(shards_.size(), false);
      std::size_t active = shards_.size();
      while (freed < goal && active > 0) {
        auto i = cursor_.fetch_add(1, std::memory_order_relaxed) % shards_.size();
        if (exhausted[i])
          continue;
        shard& sh = *shards_[i];
        std::lock_guard lock(sh.mutex);
        auto now = clock_.now();
        auto id = sh.policy.victim([&](std::uint32_t slot) {
          auto& m = sh.objects[slot];
          return m.state == detail::object_state::complete && m.lease_until <= now && !m.hard_pin &&
                 (allow_soft || !m.soft_pin || m.deadline <= now);
        });
        if (id == detail::no_index) {
          exhausted[i] = true;
          --active;
          continue;
        }
        freed += drop_object(sh, id, true);
      }
      if (freed >= goal)
        break;
    }
    return freed;
  }

  /// Evicts down to the low watermark when above the high one; the number evicted.
  std::size_t relieve_pressure() {
    auto capacity = static_cast<double>(capacity_.load(std::memory_order_relaxed));
    if (static_cast<double>(used_.load(std::memory_order_relaxed)) <= config_.high_watermark * capacity)
      return 0;
    return evict_to(static_cast<std::uint64_t>(config_.low_watermark * capacity));
  }

  template<class Range, class F>
  static auto map(const Range& in, F&& f) {
    std::vector<decltype(f(*std::begin(in)))> out;
    out.reserve(std::size(in));
    for (auto& x : in)
      out.push_back(f(x));
    return out;
  }

  master_config config_;
  Clock clock_;
  std::vector<std::unique_ptr<shard>> shards_;
  mutable std::shared_mutex segments_mutex_;
  std::vector<std::unique_ptr<segment_state>> segments_;
  std::mutex clients_mutex_;
  std::unordered_map<client_id, time_point> clients_;
  std::atomic<std::uint64_t> capacity_{0};
  std::atomic<std::uint64_t> used_{0};
  std::atomic<std::uint64_t> evicted_{0};
  std::atomic<std::size_t> cursor_{0};
};

} // namespace ferry::store
