#pragma once
/// The policy concepts of the store: the master is a template over a clock, a placement policy, an
/// eviction policy and a segment allocator, each replaceable by any type that satisfies these.

#include "ferry/store/allocation.hpp"
#include "ferry/store/allocator_report.hpp"
#include "ferry/store/entry_hint.hpp"
#include "ferry/store/placement_request.hpp"
#include "ferry/store/segment_view.hpp"

#include <chrono>
#include <concepts>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace ferry::store {

/// A source of time for leases, heartbeats and timeouts (tests use `manual_clock`).
template<class C>
concept clock_source = requires(const C c) {
  { c.now() } -> std::same_as<std::chrono::steady_clock::time_point>;
};

/// Hands out ranges of one segment: `A(capacity)`, `allocate(n)`, `free(a)`, `can_allocate(n)`, a report.
template<class A>
concept segment_allocator = std::constructible_from<A, std::uint64_t> && std::movable<A> &&
    requires(A a, const A ca, std::uint64_t n, const allocation& r) {
  { a.allocate(n) } -> std::same_as<std::optional<allocation>>;
  a.free(r);
  { ca.can_allocate(n) } -> std::same_as<bool>;
  { ca.used() } -> std::same_as<std::uint64_t>;
  { ca.capacity() } -> std::same_as<std::uint64_t>;
  { ca.report() } -> std::same_as<allocator_report>;
};

/// Chooses segments for pieces: appends up to `req.count` distinct ids from `candidates` (all of which
/// can hold one piece) to `out`, best first.
template<class P>
concept placement_policy = std::default_initializable<P> &&
    requires(P p, const placement_request& req, std::span<const segment_view> candidates,
             std::vector<segment_id>& out) {
  p.place(req, candidates, out);
};

/// Orders committed objects for eviction. Ids are dense slots of one master shard; `victim` returns the
/// best id that `evictable(id)` accepts, or `entry_hint::no_parent` (no_index) when there is none.
template<class P>
concept eviction_policy = std::default_initializable<P> &&
    requires(P p, std::uint32_t id, const entry_hint& hint, std::uint64_t key_hash,
             bool (*evictable)(std::uint32_t)) {
  p.insert(id, hint);
  p.touch(id);
  p.erase(id, key_hash, true);
  { p.victim(evictable) } -> std::same_as<std::uint32_t>;
  { p.size() } -> std::convertible_to<std::size_t>;
};

} // namespace ferry::store
