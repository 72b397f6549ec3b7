#pragma once
/// `ferry::http_metadata_store`: the client of ferry-metad (the small HTTP metadata server; see
/// `ferry::metadata_service`), with leases and compare-and-set. Operations run on a worker thread of the
/// store's own and resume there.
///
///   ferry::http_metadata_store meta({"127.0.0.1:7100"});
///   auto value = co_await meta.get("ferry/segments/decode-0");

#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/metadata/http/http_exchange.hpp"
#include "ferry/metadata/lease_id.hpp"
#include "ferry/metadata/metad_protocol.hpp"
#include "ferry/metadata/metadata_options.hpp"

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ferry {

class http_metadata_store {
public:
  explicit http_metadata_store(std::vector<std::string> hosts, metadata_options options = {})
      : http_("ferry-metad", std::move(hosts), options) {}

  task<result<std::optional<std::string>>> get(std::string key) {
    metad::request r;
    r.op = metad::operation::get;
    r.key = std::move(key);
    auto j = co_await call(std::move(r));
    if (!j)
      co_return fail(j.error());
    co_return metad::decode_get_reply(*j);
  }
  task<result<void>> put(std::string key, std::string value) {
    co_return co_await put(std::move(key), std::move(value), 0);
  }
  task<result<void>> put(std::string key, std::string value, lease_id lease) {
    metad::request r;
    r.op = metad::operation::put;
    r.key = std::move(key);
    r.value = std::move(value);
    r.lease = lease;
    co_return co_await done(std::move(r));
  }
  task<result<void>> remove(std::string key) {
    metad::request r;
    r.op = metad::operation::remove;
    r.key = std::move(key);
    co_return co_await done(std::move(r));
  }
  task<result<std::vector<std::pair<std::string, std::string>>>> list(std::string prefix) {
    metad::request r;
    r.op = metad::operation::list;
    r.key = std::move(prefix);
    auto j = co_await call(std::move(r));
    if (!j)
      co_return fail(j.error());
    co_return metad::decode_list_reply(*j);
  }
  task<result<bool>> compare_and_set(std::string key, std::optional<std::string> expected,
                                     std::string value) {
    metad::request r;
    r.op = metad::operation::cas;
    r.key = std::move(key);
    r.expected = std::move(expected);
    r.value = std::move(value);
    auto j = co_await call(std::move(r));
    if (!j)
      co_return fail(j.error());
    co_return metad::decode_cas_reply(*j);
  }
  task<result<lease_id>> grant(std::chrono::milliseconds ttl) {
    metad::request r;
    r.op = metad::operation::grant;
    r.ttl_ms = ttl.count();
    auto j = co_await call(std::move(r));
    if (!j)
      co_return fail(j.error());
    co_return metad::decode_grant_reply(*j);
  }
  task<result<void>> keep_alive(lease_id lease) {
    metad::request r;
    r.op = metad::operation::keep_alive;
    r.lease = lease;
    co_return co_await done(std::move(r));
  }
  task<result<void>> revoke(lease_id lease) {
    metad::request r;
    r.op = metad::operation::revoke;
    r.lease = lease;
    co_return co_await done(std::move(r));
  }

private:
  /// An operation whose reply carries nothing but success.
  task<result<void>> done(metad::request r) {
    auto j = co_await call(std::move(r));
    if (!j)
      co_return fail(j.error());
    co_return result<void>{};
  }

  task<result<nlohmann::json>> call(metad::request r) {
    std::string body;
    try {
      body = metad::encode_request(r);
    } catch (const nlohmann::json::exception&) {
      // why: the protocol is JSON, whose strings are UTF-8; refuse rather than alter the bytes
      co_return fail(errc::invalid_argument, "ferry-metad: keys and values must be UTF-8 text");
    }
    auto reply = co_await http_.post(metad::path_of(r.op), std::move(body));
    if (!reply)
      co_return fail(reply.error());
    co_return metad::decode_reply(reply->status, reply->body);
  }

  http_exchange http_;
};

} // namespace ferry
