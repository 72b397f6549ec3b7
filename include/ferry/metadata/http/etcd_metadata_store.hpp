#pragma once
/// `ferry::etcd_metadata_store`: etcd v3 as a metadata store, through its JSON gateway (HTTP), with leases
/// (etcd leases: a key put under one vanishes when its owner stops renewing it) and compare-and-set (an etcd
/// transaction). Several endpoints of one cluster may be given; one that cannot be reached is skipped.
/// Operations run on a worker thread of the store's own and resume there.
///
///   ferry::etcd_metadata_store etcd({"127.0.0.1:2379"});
///   auto lease = co_await etcd.grant(10s);
///   co_await etcd.put("ferry/segments/decode-0", json, *lease);

#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/metadata/etcd_codec.hpp"
#include "ferry/metadata/http/http_exchange.hpp"
#include "ferry/metadata/lease_id.hpp"
#include "ferry/metadata/metadata_options.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ferry {

class etcd_metadata_store {
public:
  explicit etcd_metadata_store(std::vector<std::string> hosts, metadata_options options = {})
      : http_("etcd", std::move(hosts), options) {}

  task<result<std::optional<std::string>>> get(std::string key) {
    auto j = co_await call("/v3/kv/range", etcd::range_body(key));
    if (!j)
      co_return fail(j.error());
    auto kvs = etcd::decode_range(*j);
    if (!kvs)
      co_return fail(kvs.error());
    for (auto& [k, v] : *kvs)
      if (k == key)
        co_return std::optional<std::string>(std::move(v));
    co_return std::optional<std::string>();
  }
  task<result<void>> put(std::string key, std::string value) {
    co_return co_await put(std::move(key), std::move(value), 0);
  }
  task<result<void>> put(std::string key, std::string value, lease_id lease) {
    co_return co_await done("/v3/kv/put", etcd::put_body(key, value, lease));
  }
  task<result<void>> remove(std::string key) {
    co_return co_await done("/v3/kv/deleterange", etcd::delete_body(key));
  }
  task<result<std::vector<std::pair<std::string, std::string>>>> list(std::string prefix) {
    auto j = co_await call("/v3/kv/range", etcd::prefix_range_body(prefix));
    if (!j)
      co_return fail(j.error());
    co_return etcd::decode_range(*j);
  }
  task<result<bool>> compare_and_set(std::string key, std::optional<std::string> expected,
                                     std::string value) {
    auto j = co_await call("/v3/kv/txn", etcd::cas_body(key, expected, value));
    if (!j)
      co_return fail(j.error());
    co_return etcd::decode_txn_succeeded(*j);
  }
  task<result<lease_id>> grant(std::chrono::milliseconds ttl) {
    if (ttl.count() <= 0)
      co_return fail(errc::invalid_argument, "etcd: grant: the TTL must be positive");
    // why: etcd counts lease time in whole seconds; round up so a lease never lives shorter than asked,
    // without wrapping near the duration's end (milliseconds::max() for "as long as can be"), and no longer
    // than etcd grants (its longest lease: 9,000,000,000 s)
    std::int64_t seconds = ttl.count() / 1000 + (ttl.count() % 1000 != 0);
    seconds = std::min<std::int64_t>(seconds, 9'000'000'000);
    auto j = co_await call("/v3/lease/grant", etcd::grant_body(seconds));
    if (!j)
      co_return fail(j.error());
    co_return etcd::decode_grant(*j);
  }
  task<result<void>> keep_alive(lease_id lease) {
    auto j = co_await call("/v3/lease/keepalive", etcd::lease_body(lease));
    if (!j)
      co_return fail(j.error());
    auto alive = etcd::decode_keep_alive(*j);
    if (!alive)
      co_return fail(alive.error());
    if (!*alive)
      co_return fail(errc::not_found, "etcd: keep_alive: lease " + std::to_string(lease) + " has expired");
    co_return result<void>{};
  }
  task<result<void>> revoke(lease_id lease) {
    auto j = co_await call("/v3/lease/revoke", etcd::lease_body(lease));
    if (!j && j.error() != errc::not_found)
      co_return fail(j.error());
    co_return result<void>{};
  }

private:
  /// A request whose reply carries nothing but success.
  task<result<void>> done(const char* path, std::string body) {
    auto j = co_await call(path, std::move(body));
    if (!j)
      co_return fail(j.error());
    co_return result<void>{};
  }

  task<result<nlohmann::json>> call(const char* path, std::string body) {
    auto reply = co_await http_.post(path, std::move(body));
    if (!reply)
      co_return fail(reply.error());
    co_return etcd::decode_reply(reply->status, reply->body);
  }

  http_exchange http_;
};

} // namespace ferry
