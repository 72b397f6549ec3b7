#pragma once
// p2p::store: a peer-to-peer payload store on ferry's public API. A payload (a checkpoint, a set of weights)
// is published once, cut into shards; each fetcher pulls every shard from some peer that already holds it,
// checks it against the shard's checksum, and then becomes a holder itself, so that the number of sources
// grows as the payload spreads and no single link carries it to everyone.
//
// What lives in the metadata service (keys under the store's prefix, "p2p/" by default):
//   payloads/<name>           the manifest: size, shard size, each shard's size and XXH3 checksum, the origin
//   replicas/<name>/<segment> where the payload lies in that holder's segment ([[offset, length], ...])
//   holders/<name>/<shard>    the segments that hold the shard: a JSON list, changed only by compare-and-set,
//                             so that concurrent fetchers never lose each other's entries
//
//   p2p::store<ferry::transfer_engine<ferry::tcp_transport>> s(engine, meta);
//   co_await s.publish("llama-70b", {weights}, 64 << 20);
//   auto report = co_await s.fetch("llama-70b", {into});   // from any peers, verified
#include <ferry/core.hpp>
#include <ferry/io.hpp>
#include <ferry/metadata/metadata_client.hpp>
#include <ferry/transfer.hpp>

#include <nlohmann/json.hpp>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace p2p {

using ferry::errc;
using ferry::fail;
using ferry::result;
using ferry::task;

/// A payload as the metadata service describes it.
struct manifest {
  std::string name;
  std::uint64_t size = 0;
  std::uint64_t shard_size = 0;
  std::vector<std::uint64_t> checksums; ///< XXH3-64 of each shard
  std::string origin;                   ///< the segment that published it

  std::size_t shard_count() const noexcept { return checksums.size(); }
  std::uint64_t shard_length(std::size_t i) const noexcept {
    return std::min(shard_size, size - i * shard_size);
  }

  std::string to_json() const {
    return nlohmann::json{{"name", name},
                          {"size", size},
                          {"shard_size", shard_size},
                          {"checksums", checksums},
                          {"origin", origin}}
        .dump();
  }
  static result<manifest> parse(const std::string& text) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    manifest m;
    try {
      if (j.is_discarded() || !j.is_object())
        throw std::invalid_argument("not an object");
      m.name = j.at("name").template get<std::string>();
      m.size = j.at("size").template get<std::uint64_t>();
      m.shard_size = j.at("shard_size").template get<std::uint64_t>();
      m.checksums = j.at("checksums").template get<std::vector<std::uint64_t>>();
      m.origin = j.at("origin").template get<std::string>();
    } catch (const std::exception&) {
      return fail(errc::malformed_frame, "p2p: a malformed manifest in the metadata service");
    }
    if (m.shard_size == 0 || m.checksums.size() != (m.size + m.shard_size - 1) / m.shard_size)
      return fail(errc::malformed_frame, "p2p: a manifest whose shards do not add up to its size");
    return m;
  }
};

/// What one fetch did.
struct fetch_report {
  std::uint64_t bytes = 0;
  double seconds = 0;
  unsigned retries = 0;                             ///< shard pulls that failed and were made again elsewhere
  std::map<std::string, std::uint64_t> pulled_from; ///< bytes per holder segment
};

struct fetch_options {
  unsigned parallel_shards = 8;                  ///< shards in flight at once
  std::chrono::milliseconds shard_timeout{5000}; ///< a holder that takes longer is given up for this shard
  unsigned max_attempts = 16;                    ///< per shard, over all holders
  /// Called on the engine's loop thread after each verified shard (progress reporting).
  std::function<void(std::size_t done, std::size_t total)> on_shard;
};

template<class Engine>
class store {
public:
  /// Keys go under `prefix` in `meta`; the engine must have published its segment through the same service
  /// (engine.use_metadata(meta)), since fetchers open holders by segment name.
  store(Engine& engine, ferry::metadata_client& meta, std::string prefix = "p2p/")
      : engine_(engine), meta_(meta), prefix_(std::move(prefix)), rng_(std::random_device{}()) {}

  /// Publishes `buffers` (one payload: their concatenation) as `name`, in shards of `shard_size` bytes. The
  /// buffers must stay valid until unpublish() or drop_replica(); peers read them while they do.
  task<result<manifest>> publish(std::string name, std::vector<std::span<const std::byte>> buffers,
                                 std::uint64_t shard_size) {
    co_await engine_.context().schedule();
    if (shard_size == 0)
      co_return fail(errc::invalid_argument, "p2p: publish: the shard size must be positive");
    if (name.empty() || name.find('/') != std::string::npos)
      co_return fail(errc::invalid_argument, "p2p: publish: a payload name is not empty and has no '/'");
    manifest m;
    m.name = name;
    m.shard_size = shard_size;
    m.origin = engine_.options().name;
    std::vector<std::span<std::byte>> writable;
    for (auto b : buffers) {
      writable.emplace_back(const_cast<std::byte*>(b.data()), b.size()); // why: exposed read-only below
      m.size += b.size();
    }
    if (m.size == 0)
      co_return fail(errc::invalid_argument, "p2p: publish: the payload is empty");
    // why: nothing of an existing payload may be touched, so look before writing anything; the first holder
    // list, created only if absent, settles a race between two publishers of one name
    auto existing = co_await meta(meta_.get(payload_key(name)));
    if (!existing)
      co_return fail(existing.error());
    const std::string only_origin = "[" + nlohmann::json(m.origin).dump() + "]";
    result<bool> claimed = false;
    if (!*existing)
      claimed = co_await meta(meta_.compare_and_set(holders_key(name, 0), std::nullopt, only_origin));
    if (!claimed)
      co_return fail(claimed.error());
    if (!*claimed)
      co_return fail(errc::already_exists,
                     "p2p: publish: a payload of that name exists (unpublish it first)");
    auto extents = co_await expose(name, writable);
    if (!extents) {
      (void)co_await meta(meta_.remove(holders_key(name, 0)));
      co_return fail(extents.error());
    }
    for (std::uint64_t off = 0; off < m.size; off += shard_size) {
      XXH3_state_t* st = XXH3_createState();
      XXH3_64bits_reset(st);
      for_pieces(writable, off, std::min(shard_size, m.size - off),
                 [&](std::byte* p, std::uint64_t, std::uint64_t n) { XXH3_64bits_update(st, p, n); });
      m.checksums.push_back(XXH3_64bits_digest(st));
      XXH3_freeState(st);
    }
    result<void> written = co_await meta(meta_.put(replica_key(name, m.origin), extents_json(*extents)));
    for (std::size_t i = 1; written && i < m.shard_count(); ++i)
      written = co_await meta(meta_.put(holders_key(name, i), only_origin));
    result<bool> created = false;
    if (written)
      created = co_await meta(meta_.compare_and_set(payload_key(name), std::nullopt, m.to_json()));
    if (!written || !created || !*created) {
      // why: a publish that failed leaves nothing behind: no holder list, no replica, no registration
      (void)co_await withdraw(name, m);
      for (std::size_t i = 0; i < m.shard_count(); ++i)
        (void)co_await meta(meta_.remove(holders_key(name, i)));
      if (!written)
        co_return fail(written.error());
      if (!created)
        co_return fail(created.error());
      co_return fail(errc::already_exists,
                     "p2p: publish: a payload of that name exists (unpublish it first)");
    }
    co_return m;
  }

  /// Pulls payload `name` into `into` (whose sizes must add up to the payload's), every shard from a holder
  /// chosen to spread load, verified against its checksum, then registers this segment as a holder. A holder
  /// that fails (died, timed out, sent bytes that do not match) is given up and the shard pulled elsewhere.
  task<result<fetch_report>> fetch(std::string name, std::vector<std::span<std::byte>> into,
                                   fetch_options opts = {}) {
    co_await engine_.context().schedule();
    auto t0 = std::chrono::steady_clock::now();
    auto text = co_await meta(meta_.get(payload_key(name)));
    if (!text)
      co_return fail(text.error());
    if (!*text)
      co_return fail(errc::not_found, "p2p: fetch: no payload '" + name + "'");
    auto m = manifest::parse(**text);
    if (!m)
      co_return fail(m.error());
    std::uint64_t total = 0;
    for (auto b : into)
      total += b.size();
    if (total != m->size)
      co_return fail(errc::invalid_argument, "p2p: fetch: the buffers hold " + std::to_string(total) +
                                                 " bytes, the payload " + std::to_string(m->size));
    auto extents = co_await expose(name, into);
    if (!extents)
      co_return fail(extents.error());
    auto me = engine_.options().name;
    auto announced = co_await meta(meta_.put(replica_key(name, me), extents_json(*extents)));
    if (!announced) {
      (void)co_await withdraw(name, *m);
      co_return fail(announced.error());
    }

    fetch_state st{*m, into, opts, {}, {}, 0, 0, {}, {}};
    std::vector<task<result<void>>> workers;
    for (unsigned w = 0; w < std::max(1u, opts.parallel_shards); ++w)
      workers.push_back(pull_shards(st));
    auto results = co_await ferry::when_all(std::move(workers));
    co_await engine_.context().schedule();
    for (auto& r : results)
      if (!r) {
        // why: the caller may free `into` after an error; nobody may be sent to it any more
        (void)co_await withdraw(name, *m);
        co_return fail(r.error());
      }
    st.report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    co_return std::move(st.report);
  }

  /// The manifests of payloads whose names start with `prefix`.
  task<result<std::vector<manifest>>> list(std::string prefix = {}) {
    auto entries = co_await meta(meta_.list(prefix_ + "payloads/" + prefix));
    if (!entries)
      co_return fail(entries.error());
    std::vector<manifest> out;
    for (auto& [k, v] : *entries) {
      auto m = manifest::parse(v);
      if (!m)
        co_return fail(m.error());
      out.push_back(std::move(*m));
    }
    co_return out;
  }

  /// Removes the payload from the metadata service (holders keep their copies; nobody finds them any more).
  task<result<void>> unpublish(std::string name) {
    if (auto r = co_await meta(meta_.remove(payload_key(name))); !r)
      co_return fail(r.error());
    static constexpr const char* kinds[] = {"holders/", "replicas/"};
    for (const char* kind : kinds) {
      auto keys = co_await meta(meta_.list(prefix_ + kind + name + "/"));
      if (!keys)
        co_return fail(keys.error());
      for (auto& [k, v] : *keys)
        if (auto r = co_await meta(meta_.remove(k)); !r)
          co_return fail(r.error());
    }
    co_await engine_.context().schedule();
    unexpose(name);
    co_return result<void>{};
  }

  /// Leaves every holder list of `m`, removes this segment's replica entry and releases its buffers.
  task<result<void>> withdraw(std::string name, const manifest& m) {
    auto me = engine_.options().name;
    result<void> out;
    for (std::size_t i = 0; i < m.shard_count(); ++i)
      if (auto r = co_await change_holders(name, i, me, false); !r && r.error() != errc::not_found && out)
        out = r;
    auto removed = co_await meta(meta_.remove(replica_key(name, me)));
    if (!removed && out)
      out = removed;
    co_await engine_.context().schedule();
    unexpose(name);
    co_return out;
  }

  /// Stops serving this segment's copy of `name`: leaves every holder list, then releases the buffers.
  task<result<void>> drop_replica(std::string name) {
    auto text = co_await meta(meta_.get(payload_key(name)));
    if (!text)
      co_return fail(text.error());
    auto me = engine_.options().name;
    if (*text) {
      auto m = manifest::parse(**text);
      if (!m)
        co_return fail(m.error());
      for (std::size_t i = 0; i < m->shard_count(); ++i)
        if (auto r = co_await change_holders(name, i, me, false); !r)
          co_return fail(r.error());
    }
    if (auto r = co_await meta(meta_.remove(replica_key(name, me))); !r)
      co_return fail(r.error());
    co_await engine_.context().schedule();
    unexpose(name);
    co_return result<void>{};
  }

private:
  using extent = std::pair<std::uint64_t, std::uint64_t>; // (segment offset, length)

  struct fetch_state {
    const manifest& m;
    std::vector<std::span<std::byte>>& into;
    const fetch_options& opts;
    fetch_report report;
    std::set<std::string> given_up; // holders that failed this fetch
    std::size_t next = 0;
    std::size_t done = 0;
    std::map<std::string, std::vector<extent>> layouts;
    std::map<std::string, ferry::segment_id> segments;
  };

  /// Awaits a metadata operation, then continues on the engine's loop (remote stores answer on a thread of
  /// their own; the store's state belongs to the loop).
  template<class T>
  task<T> meta(task<T> op) {
    T r = co_await std::move(op);
    co_await engine_.context().schedule();
    co_return r;
  }

  std::string payload_key(const std::string& name) const { return prefix_ + "payloads/" + name; }
  std::string holders_key(const std::string& name, std::size_t shard) const {
    return prefix_ + "holders/" + name + "/" + std::to_string(shard);
  }
  std::string replica_key(const std::string& name, const std::string& segment) const {
    return prefix_ + "replicas/" + name + "/" + segment;
  }
  static std::string extents_json(const std::vector<extent>& e) { return nlohmann::json(e).dump(); }

  /// Calls f(pointer, payload offset, length) for each piece of [off, off + len) over `buffers`.
  template<class F>
  static void for_pieces(const std::vector<std::span<std::byte>>& buffers, std::uint64_t off,
                         std::uint64_t len, F f) {
    std::uint64_t base = 0;
    for (auto b : buffers) {
      std::uint64_t end = base + b.size();
      if (end > off && base < off + len) {
        std::uint64_t from = std::max(off, base), to = std::min(off + len, end);
        f(b.data() + (from - base), from, to - from);
      }
      base = end;
    }
  }

  /// Registers the buffers (readable by peers), republishes this segment, and says where they lie in it.
  task<result<std::vector<extent>>> expose(const std::string& name,
                                           const std::vector<std::span<std::byte>>& buffers) {
    std::vector<extent> out;
    for (auto b : buffers) {
      auto off = engine_.registry().add(b.data(), b.size(), ferry::access::read);
      if (!off) {
        unexpose(name);
        co_return fail(off.error());
      }
      exposed_[name].push_back(b.data());
      out.emplace_back(*off, b.size());
    }
    // why: peers that open this segment from now on must see the new regions
    auto published = co_await engine_.publish();
    co_await engine_.context().schedule();
    if (!published) {
      unexpose(name);
      co_return fail(published.error());
    }
    co_return out;
  }
  void unexpose(const std::string& name) {
    for (void* p : exposed_[name])
      (void)engine_.registry().remove(p);
    exposed_.erase(name);
  }

  /// Adds (or removes) `segment` in the holder list of a shard, by compare-and-set until it sticks.
  task<result<void>> change_holders(const std::string& name, std::size_t shard, const std::string& segment,
                                    bool add) {
    for (int attempt = 0; attempt < 64; ++attempt) {
      auto key = holders_key(name, shard);
      auto current = co_await meta(meta_.get(key));
      if (!current)
        co_return fail(current.error());
      if (!*current)
        co_return fail(errc::not_found, "p2p: the payload was unpublished");
      auto list = nlohmann::json::parse(**current, nullptr, false);
      if (!list.is_array())
        co_return fail(errc::malformed_frame, "p2p: a malformed holder list");
      std::vector<std::string> holders;
      for (auto& h : list)
        if (h.is_string())
          holders.push_back(h.template get<std::string>());
      bool present = std::find(holders.begin(), holders.end(), segment) != holders.end();
      if (present == add)
        co_return result<void>{};
      if (add)
        holders.push_back(segment);
      else
        std::erase(holders, segment);
      auto swapped = co_await meta(meta_.compare_and_set(key, *current, nlohmann::json(holders).dump()));
      if (!swapped)
        co_return fail(swapped.error());
      if (*swapped)
        co_return result<void>{};
    }
    co_return fail(errc::busy, "p2p: the holder list kept changing under compare-and-set");
  }

  /// One of several workers: takes the next shard until none is left.
  task<result<void>> pull_shards(fetch_state& st) {
    for (;;) {
      co_await engine_.context().schedule();
      if (st.next >= st.m.shard_count())
        co_return result<void>{};
      std::size_t shard = st.next++;
      auto r = co_await pull_shard(st, shard);
      if (!r)
        co_return r;
      ++st.done;
      if (st.opts.on_shard)
        st.opts.on_shard(st.done, st.m.shard_count());
    }
  }

  task<result<void>> pull_shard(fetch_state& st, std::size_t shard) {
    const std::string me = engine_.options().name;
    const std::uint64_t off = shard * st.m.shard_size, len = st.m.shard_length(shard);
    std::string last_failure = "no holder";
    for (unsigned attempt = 0; attempt < st.opts.max_attempts; ++attempt) {
      auto current = co_await meta(meta_.get(holders_key(st.m.name, shard)));
      if (!current)
        co_return fail(current.error());
      if (!*current)
        co_return fail(errc::not_found, "p2p: fetch: the payload was unpublished");
      auto list = nlohmann::json::parse(**current, nullptr, false);
      std::vector<std::string> candidates;
      if (list.is_array())
        for (auto& h : list)
          if (h.is_string() && h.template get<std::string>() != me &&
              !st.given_up.contains(h.template get<std::string>()))
            candidates.push_back(h.template get<std::string>());
      if (candidates.empty())
        co_return fail(errc::not_found, "p2p: fetch: no live holder of shard " + std::to_string(shard) +
                                            " is left (last failure: " + last_failure + ")");
      std::string holder = choose(st, candidates);
      auto pulled = co_await pull_from(st, holder, off, len);
      co_await engine_.context().schedule();
      if (pulled) {
        XXH3_state_t* h = XXH3_createState();
        XXH3_64bits_reset(h);
        for_pieces(st.into, off, len,
                   [&](std::byte* p, std::uint64_t, std::uint64_t n) { XXH3_64bits_update(h, p, n); });
        bool good = XXH3_64bits_digest(h) == st.m.checksums[shard];
        XXH3_freeState(h);
        if (good) {
          st.report.bytes += len;
          st.report.pulled_from[holder] += len;
          co_return co_await change_holders(st.m.name, shard, me, true);
        }
        pulled = fail(errc::malformed_frame, "the shard's checksum does not match");
      }
      // why: a holder that failed once is not asked again in this fetch; one that is gone leaves the lists,
      // so that other fetchers stop trying it too
      last_failure = holder + ": " + pulled.error().message();
      ++st.report.retries;
      st.given_up.insert(holder);
      auto e = pulled.error();
      // why: only evidence that the holder is gone (unreachable, connection refused or reset) removes it for
      // everyone; anything else (a timeout, a dropped connection, bad bytes) gives it up in this fetch only
      if (e == errc::peer_unreachable || e.code().category() == std::system_category())
        (void)co_await change_holders(st.m.name, shard, holder, false);
    }
    co_return fail(errc::peer_unreachable, "p2p: fetch: shard " + std::to_string(shard) + " failed " +
                                               std::to_string(st.opts.max_attempts) +
                                               " times (last: " + last_failure + ")");
  }

  /// The holder this fetcher has pulled least from (the origin last: its link is the one to spare).
  std::string choose(fetch_state& st, const std::vector<std::string>& candidates) {
    std::vector<std::string> best;
    std::uint64_t least = ~0ull;
    for (auto& c : candidates) {
      std::uint64_t load = (st.report.pulled_from.contains(c) ? st.report.pulled_from.at(c) : 0) +
                           (c == st.m.origin && candidates.size() > 1 ? st.m.shard_size * 4 : 0);
      if (load < least) {
        least = load;
        best.clear();
      }
      if (load == least)
        best.push_back(c);
    }
    return best[std::uniform_int_distribution<std::size_t>(0, best.size() - 1)(rng_)];
  }

  /// Reads payload range [off, off + len) from `holder` into the fetch's buffers.
  task<result<void>> pull_from(fetch_state& st, const std::string& holder, std::uint64_t off,
                               std::uint64_t len) {
    if (!st.layouts.contains(holder)) {
      auto text = co_await meta(meta_.get(replica_key(st.m.name, holder)));
      if (!text)
        co_return fail(text.error());
      if (!*text)
        co_return fail(errc::not_found, "the holder left");
      auto j = nlohmann::json::parse(**text, nullptr, false);
      std::vector<extent> layout;
      try {
        layout = j.template get<std::vector<extent>>();
      } catch (const std::exception&) {
        co_return fail(errc::malformed_frame, "a malformed replica layout");
      }
      st.layouts[holder] = std::move(layout);
    }
    if (!st.segments.contains(holder)) {
      auto seg = co_await engine_.open_segment(holder);
      co_await engine_.context().schedule();
      if (!seg)
        co_return fail(seg.error());
      st.segments[holder] = *seg;
    }
    ferry::segment_id seg = st.segments[holder];
    // Local pieces x remote extents -> read requests.
    ferry::transfer_batch batch;
    const auto& layout = st.layouts[holder];
    for_pieces(st.into, off, len, [&](std::byte* local, std::uint64_t at, std::uint64_t n) {
      std::uint64_t base = 0;
      for (auto [remote, size] : layout) {
        std::uint64_t end = base + size;
        if (end > at && base < at + n) {
          std::uint64_t from = std::max(at, base), to = std::min(at + n, end);
          batch.read(local + (from - at), seg, remote + (from - base), to - from);
        }
        base = end;
      }
    });
    auto how = ferry::transfer_options().with_timeout(st.opts.shard_timeout);
    auto r = co_await engine_.transfer(batch, how);
    if (!r.ok() && r.first_error() == errc::out_of_bounds) {
      // why: the descriptor cached for the holder predates the buffers it registered for this payload
      auto refreshed = co_await engine_.refresh(seg);
      if (refreshed)
        r = co_await engine_.transfer(std::move(batch), how);
    }
    if (!r.ok())
      co_return fail(r.first_error());
    co_return result<void>{};
  }

  Engine& engine_;
  ferry::metadata_client& meta_;
  std::string prefix_;
  std::mt19937_64 rng_;
  std::map<std::string, std::vector<void*>> exposed_;
};

} // namespace p2p
