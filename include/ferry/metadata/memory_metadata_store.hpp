#pragma once
/// `ferry::memory_metadata_store`: the embedded metadata store — a map in this process, shared by every
/// engine that holds a reference to it. The default when all peers live in one process; nothing to start.
/// Leases expire on the steady clock like a server's would; compare-and-set is atomic.
///
///   ferry::memory_metadata_store meta;
///   co_await meta.put("ferry/segments/decode-0", descriptor.to_json());

#include "ferry/core/detail/time_after.hpp"
#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/metadata/lease_id.hpp"

#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry {

class memory_metadata_store {
  using clock = std::chrono::steady_clock;

public:
  task<result<std::optional<std::string>>> get(std::string key) {
    std::lock_guard lock(mutex_);
    expire();
    auto it = map_.find(key);
    co_return it == map_.end() ? std::optional<std::string>() : std::optional<std::string>(it->second.value);
  }
  task<result<void>> put(std::string key, std::string value) {
    {
      std::lock_guard lock(mutex_);
      map_[std::move(key)] = entry{std::move(value), 0};
    }
    co_return result<void>{};
  }
  task<result<void>> put(std::string key, std::string value, lease_id lease) {
    std::lock_guard lock(mutex_);
    expire();
    if (!leases_.contains(lease))
      co_return fail(errc::not_found, "memory metadata: put: no such lease (expired?)");
    map_[std::move(key)] = entry{std::move(value), lease};
    co_return result<void>{};
  }
  task<result<void>> remove(std::string key) {
    {
      std::lock_guard lock(mutex_);
      map_.erase(key);
    }
    co_return result<void>{};
  }
  task<result<std::vector<std::pair<std::string, std::string>>>> list(std::string prefix) {
    std::vector<std::pair<std::string, std::string>> out;
    {
      std::lock_guard lock(mutex_);
      expire();
      for (auto it = map_.lower_bound(prefix); it != map_.end() && it->first.starts_with(prefix); ++it)
        out.emplace_back(it->first, it->second.value);
    }
    co_return out;
  }
  task<result<bool>> compare_and_set(std::string key, std::optional<std::string> expected,
                                     std::string value) {
    std::lock_guard lock(mutex_);
    expire();
    auto it = map_.find(key);
    bool matches = it == map_.end() ? !expected : (expected && *expected == it->second.value);
    if (!matches)
      co_return false;
    map_[std::move(key)] = entry{std::move(value), 0};
    co_return true;
  }
  task<result<lease_id>> grant(std::chrono::milliseconds ttl) {
    std::lock_guard lock(mutex_);
    expire();
    if (ttl.count() <= 0)
      co_return fail(errc::invalid_argument, "memory metadata: grant: the TTL must be positive");
    lease_id id = ++last_lease_;
    leases_[id] = lease_state{ttl, detail::time_after<clock>(clock::now(), ttl)};
    co_return id;
  }
  task<result<void>> keep_alive(lease_id lease) {
    std::lock_guard lock(mutex_);
    expire();
    auto it = leases_.find(lease);
    if (it == leases_.end())
      co_return fail(errc::not_found, "memory metadata: keep_alive: the lease has expired");
    it->second.deadline = detail::time_after<clock>(clock::now(), it->second.ttl);
    co_return result<void>{};
  }
  task<result<void>> revoke(lease_id lease) {
    std::lock_guard lock(mutex_);
    drop(lease);
    co_return result<void>{};
  }

private:
  struct entry {
    std::string value;
    lease_id lease = 0;
  };
  struct lease_state {
    std::chrono::milliseconds ttl;
    clock::time_point deadline;
  };

  void expire() {
    auto now = clock::now();
    for (auto it = leases_.begin(); it != leases_.end();) {
      auto next = std::next(it);
      if (it->second.deadline <= now)
        drop(it->first);
      it = next;
    }
  }
  void drop(lease_id lease) {
    if (leases_.erase(lease) == 0)
      return;
    std::erase_if(map_, [&](const auto& kv) { return kv.second.lease == lease; });
  }

  std::mutex mutex_;
  std::map<std::string, entry> map_;
  std::unordered_map<lease_id, lease_state> leases_;
  lease_id last_lease_ = 0;
};

} // namespace ferry
