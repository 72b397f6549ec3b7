#pragma once
/// `ferry::memory_metadata_store`: the embedded metadata store — a map in this process, shared by every
/// engine that holds a reference to it. The default when all peers live in one process; nothing to start.
///
///   ferry::memory_metadata_store meta;
///   co_await meta.put("ferry/segments/decode-0", descriptor.to_json());

#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ferry {

class memory_metadata_store {
public:
  task<result<std::optional<std::string>>> get(std::string key) {
    std::lock_guard lock(mutex_);
    auto it = map_.find(key);
    co_return it == map_.end() ? std::optional<std::string>() : std::optional<std::string>(it->second);
  }
  task<result<void>> put(std::string key, std::string value) {
    {
      std::lock_guard lock(mutex_);
      map_[std::move(key)] = std::move(value);
    }
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
      for (auto it = map_.lower_bound(prefix); it != map_.end() && it->first.starts_with(prefix); ++it)
        out.emplace_back(it->first, it->second);
    }
    co_return out;
  }

private:
  std::mutex mutex_;
  std::map<std::string, std::string> map_;
};

} // namespace ferry
