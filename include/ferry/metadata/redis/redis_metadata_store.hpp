#pragma once
/// `ferry::redis_metadata_store`: Redis as a metadata store (hiredis). Leases are kept the Redis way: a key
/// put under a lease carries the lease's TTL (PX), next to an owner key holding the lease's token, and
/// keep_alive renews both (PEXPIRE) on every key of the lease, atomically and only while the token is still
/// the owner's. A key that expired ends the lease (errc::not_found: grant and put again); a key that another
/// writer put since is that writer's, and the lease lives on without it (as in etcd), never renewing or
/// deleting it. Compare-and-set runs as a Lua script, atomically on the server. Operations run on a worker
/// thread of the store's own and resume there; each reply must come whole within the options' timeout.
///
///   ferry::redis_metadata_store redis("127.0.0.1:6379");
///   co_await redis.put("ferry/segments/decode-0", json);

#include "ferry/core/detail/time_after.hpp"
#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/thread_pool.hpp"
#include "ferry/metadata/detail/resolver.hpp"
#include "ferry/metadata/host_port.hpp"
#include "ferry/metadata/lease_id.hpp"
#include "ferry/metadata/metadata_options.hpp"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <poll.h>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <sys/socket.h>
#include <sys/time.h>
#include <utility>
#include <vector>

namespace ferry {

class redis_metadata_store {
public:
  /// A listing's walk of the key space (SCAN) may take this many times the options' timeout in all.
  static constexpr int scan_rounds_per_timeout = 16;
  /// A listing gathers at most this many keys.
  static constexpr std::size_t max_scanned_keys = std::size_t{1} << 22;

  /// `host` is "host:port".
  explicit redis_metadata_store(std::string host, metadata_options options = {})
      : host_(std::move(host)), options_(options), worker_(1) {}
  redis_metadata_store(const redis_metadata_store&) = delete;
  redis_metadata_store& operator=(const redis_metadata_store&) = delete;

  task<result<std::optional<std::string>>> get(std::string key) {
    co_await worker_.schedule();
    std::lock_guard lock(mutex_);
    auto r = command({"GET", key});
    if (!r)
      co_return fail(r.error());
    if (r->get()->type == REDIS_REPLY_NIL)
      co_return std::optional<std::string>();
    if (r->get()->type != REDIS_REPLY_STRING)
      co_return fail(errc::malformed_frame, "redis: GET answered something other than a string");
    co_return std::optional<std::string>(std::string(r->get()->str, r->get()->len));
  }
  task<result<void>> put(std::string key, std::string value) {
    co_await worker_.schedule();
    std::lock_guard lock(mutex_);
    // why: a plain put ends any lease's claim on the key (as in etcd), so its owner key goes too
    auto r = command({"EVAL", "redis.call('SET', KEYS[1], ARGV[1]) redis.call('DEL', KEYS[2]) return 1", "2",
                      key, owner_key(key), value});
    if (!r)
      co_return fail(r.error());
    forget_key(key);
    co_return result<void>{};
  }
  task<result<void>> put(std::string key, std::string value, lease_id lease) {
    co_await worker_.schedule();
    std::lock_guard lock(mutex_);
    auto it = leases_.find(lease);
    if (it == leases_.end())
      co_return fail(errc::not_found,
                     "redis: put: lease " + std::to_string(lease) + " has expired or never was");
    // why: the owner key (the lease's token, same TTL) says whose lease the key is under, so that renewing or
    // revoking never touches a key that another writer has put since
    auto r =
        command({"EVAL",
                 "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) "
                 "redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) return 1",
                 "2", key, owner_key(key), value, it->second.token, std::to_string(it->second.ttl.count())});
    if (!r)
      co_return fail(r.error());
    forget_key(key);
    it->second.keys.insert(key);
    co_return result<void>{};
  }
  task<result<void>> remove(std::string key) {
    co_await worker_.schedule();
    std::lock_guard lock(mutex_);
    auto r = command({"DEL", key, owner_key(key)});
    if (!r)
      co_return fail(r.error());
    forget_key(key);
    co_return result<void>{};
  }
  task<result<std::vector<std::pair<std::string, std::string>>>> list(std::string prefix) {
    co_await worker_.schedule();
    std::lock_guard lock(mutex_);
    std::string pattern;
    for (char c : prefix) {
      if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\')
        pattern += '\\';
      pattern += c;
    }
    pattern += '*';
    std::vector<std::string> keys;
    std::string cursor = "0";
    // why: each SCAN reply is bounded, the walk is not: a server whose cursor never comes back to 0 would
    // hold the store's one thread (and every lease renewal behind it) for ever. The walk gets
    // scan_rounds_per_timeout rounds of the timeout and gathers at most max_scanned_keys keys.
    using clock = std::chrono::steady_clock;
    const auto scan_by = detail::time_after<clock>(
        clock::now(), std::chrono::duration<double>(options_.timeout) * scan_rounds_per_timeout);
    do {
      if (clock::now() >= scan_by)
        co_return fail(errc::timed_out, "redis " + host_ + ": SCAN did not come back to cursor 0 within " +
                                            std::to_string(scan_rounds_per_timeout) + " times the timeout");
      if (keys.size() > max_scanned_keys)
        co_return fail(errc::out_of_space, "redis " + host_ + ": SCAN gave more than " +
                                               std::to_string(max_scanned_keys) + " keys");
      auto r = command({"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"});
      if (!r)
        co_return fail(r.error());
      redisReply* reply = r->get();
      if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
          reply->element[0]->type != REDIS_REPLY_STRING || reply->element[1]->type != REDIS_REPLY_ARRAY)
        co_return fail(errc::malformed_frame, "redis: SCAN answered an unexpected shape");
      cursor.assign(reply->element[0]->str, reply->element[0]->len);
      for (std::size_t i = 0; i < reply->element[1]->elements; ++i) {
        redisReply* k = reply->element[1]->element[i];
        if (k->type == REDIS_REPLY_STRING && !std::string_view(k->str, k->len).starts_with(owner_prefix))
          keys.emplace_back(k->str, k->len);
      }
    } while (cursor != "0");
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    std::vector<std::pair<std::string, std::string>> out;
    for (std::size_t first = 0; first < keys.size(); first += 512) {
      std::vector<std::string> args{"MGET"};
      std::size_t last = std::min(keys.size(), first + 512);
      args.insert(args.end(), keys.begin() + static_cast<std::ptrdiff_t>(first),
                  keys.begin() + static_cast<std::ptrdiff_t>(last));
      auto r = command(args);
      if (!r)
        co_return fail(r.error());
      redisReply* reply = r->get();
      if (reply->type != REDIS_REPLY_ARRAY || reply->elements != last - first)
        co_return fail(errc::malformed_frame, "redis: MGET answered an unexpected shape");
      for (std::size_t i = 0; i < reply->elements; ++i)
        if (reply->element[i]->type == REDIS_REPLY_STRING) // nil: expired between SCAN and MGET
          out.emplace_back(keys[first + i], std::string(reply->element[i]->str, reply->element[i]->len));
    }
    co_return out;
  }
  task<result<bool>> compare_and_set(std::string key, std::optional<std::string> expected,
                                     std::string value) {
    static constexpr const char* script = R"lua(
local v = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and v == false) or (ARGV[1] == '1' and v == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0)lua";
    co_await worker_.schedule();
    std::lock_guard lock(mutex_);
    auto r = command(
        {"EVAL", script, "2", key, owner_key(key), expected ? "1" : "0", expected.value_or(""), value});
    if (!r)
      co_return fail(r.error());
    if (r->get()->type != REDIS_REPLY_INTEGER)
      co_return fail(errc::malformed_frame,
                     "redis: compare-and-set answered something other than an integer");
    if (r->get()->integer == 1)
      forget_key(key);
    co_return r->get()->integer == 1;
  }
  task<result<lease_id>> grant(std::chrono::milliseconds ttl) {
    co_await worker_.schedule();
    std::lock_guard lock(mutex_);
    if (ttl.count() <= 0)
      co_return fail(errc::invalid_argument, "redis: grant: the TTL must be positive");
    lease_id id = ++last_lease_;
    leases_[id] = lease_state{ttl, token_ + ":" + std::to_string(id), {}};
    co_return id;
  }
  task<result<void>> keep_alive(lease_id lease) {
    co_await worker_.schedule();
    std::lock_guard lock(mutex_);
    auto it = leases_.find(lease);
    if (it == leases_.end())
      co_return fail(errc::not_found, "redis: keep_alive: lease " + std::to_string(lease) + " has expired");
    std::vector<std::string> taken;
    for (auto& key : it->second.keys) {
      // 1: renewed; 2: the key is another writer's now (put again, under a lease of its own or none);
      // 0: the key is gone (it expired: we were cut off for longer than the TTL)
      auto r = command({"EVAL",
                        "if redis.call('GET', KEYS[2]) == ARGV[1] then "
                        "  if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 1 then "
                        "    redis.call('PEXPIRE', KEYS[2], ARGV[2]) return 1 end "
                        "  redis.call('DEL', KEYS[2]) return 0 end "
                        "if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end return 0",
                        "2", key, owner_key(key), it->second.token, std::to_string(it->second.ttl.count())});
      if (!r)
        co_return fail(r.error());
      if (r->get()->type == REDIS_REPLY_INTEGER && r->get()->integer == 2) {
        // why: as in etcd, the lease lives on without the key; renewing the lease must not end it, or its
        // owner would register again and take the key back from its successor, and the two would alternate
        taken.push_back(key);
        continue;
      }
      if (r->get()->type != REDIS_REPLY_INTEGER || r->get()->integer != 1) {
        // why: the key expired: the lease is over, as etcd would say; what is still ours goes with it
        std::set<std::string> keys = std::move(it->second.keys);
        std::string token = it->second.token;
        leases_.erase(it);
        for (auto& k : keys)
          (void)delete_if_owned(k, token);
        co_return fail(errc::not_found, "redis: keep_alive: lease " + std::to_string(lease) + " has expired");
      }
    }
    for (auto& key : taken)
      it->second.keys.erase(key);
    co_return result<void>{};
  }
  task<result<void>> revoke(lease_id lease) {
    co_await worker_.schedule();
    std::lock_guard lock(mutex_);
    auto it = leases_.find(lease);
    if (it == leases_.end())
      co_return result<void>{};
    for (auto& key : it->second.keys)
      if (auto r = delete_if_owned(key, it->second.token); !r)
        co_return fail(r.error());
    leases_.erase(it);
    co_return result<void>{};
  }

private:
  struct reply_deleter {
    void operator()(redisReply* r) const noexcept { ::freeReplyObject(r); }
  };
  using reply_ptr = std::unique_ptr<redisReply, reply_deleter>;
  struct context_deleter {
    void operator()(redisContext* c) const noexcept { ::redisFree(c); }
  };
  struct lease_state {
    std::chrono::milliseconds ttl{0};
    std::string token; // this client's random token and the lease id: unique across processes
    std::set<std::string> keys;
  };

  static constexpr std::string_view owner_prefix{"\x01"
                                                 "ferry-lease-owner"
                                                 "\x01"};
  static std::string owner_key(const std::string& key) { return std::string(owner_prefix) + key; }

  /// Deletes `key` (and its owner key) only while the lease with `token` still owns it.
  result<reply_ptr> delete_if_owned(const std::string& key, const std::string& token) {
    return command(
        {"EVAL",
         "if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[1], KEYS[2]) end return 1",
         "2", key, owner_key(key), token});
  }

  /// `d` as a socket timeout.
  template<class Rep, class Period>
  static ::timeval timeval_of(std::chrono::duration<Rep, Period> d) noexcept {
    // why: seconds first: a duration meant as "never" (milliseconds::max()) overflows in microseconds
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(d);
    return ::timeval{static_cast<::time_t>(seconds.count()),
                     static_cast<::suseconds_t>(
                         std::chrono::duration_cast<std::chrono::microseconds>(d - seconds).count())};
  }

  /// Runs one command (binary-safe arguments), connecting first if needed; a broken connection is dropped
  /// and the next command reconnects.
  result<reply_ptr> command(const std::vector<std::string>& args) {
    if (ctx_ && readable_between_commands())
      ctx_.reset(); // why: bytes (or the end) that no command asked for: the connection is out of step
    if (!ctx_) {
      auto where = host_port::parse(host_);
      if (!where)
        return fail(where.error());
      auto addresses = names_.addresses(where->host, options_.timeout);
      if (!addresses)
        return fail(
            error(addresses.error().code(), "redis " + host_ + " unreachable: " + addresses.error().what()));
      const ::timeval tv = timeval_of(options_.timeout);
      std::string why;
      for (auto& address : *addresses) { // in getaddrinfo's order; the next one when one cannot be reached
        ctx_.reset(::redisConnectWithTimeout(address.c_str(), where->port, tv));
        if (ctx_ && !ctx_->err)
          break;
        why +=
            (why.empty() ? "" : "; ") + address + ": " + (ctx_ ? ctx_->errstr : "cannot allocate a context");
        ctx_.reset();
      }
      if (!ctx_)
        return fail(errc::peer_unreachable, "redis " + host_ + " unreachable: " + why);
      ::redisSetTimeout(ctx_.get(), tv);
      // why: hiredis allocates an array's element table as soon as it reads the array's header, whatever
      // the count; the reply functions below refuse more elements than the reply may hold
      budget_.inner = ctx_->reader->fn;
      ctx_->reader->fn = &bounded_functions;
      ctx_->reader->privdata = &budget_;
    }
    std::vector<const char*> argv;
    std::vector<std::size_t> lengths;
    for (auto& a : args) {
      argv.push_back(a.data());
      lengths.push_back(a.size());
    }
    auto got = exchange(static_cast<int>(argv.size()), argv.data(), lengths.data(), args[0]);
    if (!got) {
      ctx_.reset(); // why: a reply cut off or left unread would be taken for the next command's
      return fail(got.error());
    }
    reply_ptr r(*got);
    if (r->type == REDIS_REPLY_ERROR)
      return fail(errc::invalid_state,
                  "redis " + host_ + ": " + args[0] + ": " + std::string(r->str, r->len));
    return r;
  }

  /// Whether the connection has bytes or its end waiting while no command is under way: an extra reply from
  /// the server, or the server closed it (an idle timeout, say).
  bool readable_between_commands() const noexcept {
    if (ctx_->reader->pos < ctx_->reader->len)
      return true;
    ::pollfd p{ctx_->fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
  }

  /// Sends one command within `options_.timeout`, and gathers its reply within `options_.timeout` from when
  /// the command went out and `options_.max_reply_bytes`.
  // why: not redisCommandArgv: its socket timeout bounds each read, not a reply, so a server that trickles a
  // reply would hold the worker thread for as long as it likes, and a reply is gathered whatever its size
  result<redisReply*> exchange(int argc, const char** argv, const std::size_t* lengths,
                               const std::string& what) {
    auto broken = [&](const char* why) {
      return fail(errc::peer_unreachable, "redis " + host_ + ": " + what + ": " + why);
    };
    if (::redisAppendCommandArgv(ctx_.get(), argc, argv, lengths) != REDIS_OK)
      return broken(ctx_->errstr);
    using clock = std::chrono::steady_clock;
    // why: a blocking write returns once SO_SNDTIMEO passes without all of it sent, and hiredis writes again:
    // a server that takes a large command a little at a time would hold the thread for as long as it liked.
    // Each write gets what is left of the whole write's time
    const auto sent_by = detail::time_after<clock>(clock::now(), options_.timeout);
    for (int written = 0; !written;) {
      // why: at least a millisecond: a zero timeval would mean "never"
      const ::timeval tv =
          timeval_of(std::max(std::chrono::ceil<std::chrono::microseconds>(sent_by - clock::now()),
                              std::chrono::microseconds(1000)));
      ::setsockopt(ctx_->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
      const bool ok = ::redisBufferWrite(ctx_.get(), &written) == REDIS_OK;
      const int write_errno = errno;
      // why: the kernel counts SO_SNDTIMEO in ticks, and may give up a tick before `sent_by`
      const bool timed_out =
          !ok && ctx_->err == REDIS_ERR_IO && (write_errno == EAGAIN || write_errno == EWOULDBLOCK);
      if (!written && (timed_out || clock::now() >= sent_by))
        return fail(errc::timed_out, "redis " + host_ + ": " + what + ": the command was not taken within " +
                                         std::to_string(options_.timeout.count()) +
                                         " ms (its outcome is unknown)");
      if (!ok)
        return broken(ctx_->errstr);
    }
    const auto deadline = detail::time_after<clock>(clock::now(), options_.timeout);
    std::size_t received = 0;
    budget_.elements_left = options_.max_reply_bytes / bytes_per_element;
    budget_.refused = false;
    for (;;) {
      void* reply = nullptr;
      if (::redisGetReplyFromReader(ctx_.get(), &reply) != REDIS_OK) {
        if (budget_.refused)
          return fail(errc::malformed_frame,
                      "redis " + host_ + ": " + what +
                          ": the reply has more elements than max_reply_bytes allows (one per " +
                          std::to_string(bytes_per_element) + " bytes)");
        return fail(errc::malformed_frame, "redis " + host_ + ": " + what + ": " + ctx_->errstr);
      }
      if (reply && ctx_->reader->pos < ctx_->reader->len) {
        // why: RESP answers each command with one reply; a server that sent more has lost its step with ours
        ::freeReplyObject(reply);
        return fail(errc::malformed_frame,
                    "redis " + host_ + ": " + what + ": more than one reply to one command");
      }
      if (reply)
        return static_cast<redisReply*>(reply);
      // why: a last look without waiting once the deadline passed: a reply already here is taken; waits are
      // cut to what poll() takes, and the deadline is looked at again after each
      auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock::now());
      ::pollfd p{ctx_->fd, POLLIN, 0};
      int ready = ::poll(
          &p, 1, static_cast<int>(std::clamp<std::chrono::milliseconds::rep>(left.count(), 0, INT_MAX)));
      if (ready < 0 && errno == EINTR)
        continue;
      if (ready < 0)
        return broken(std::strerror(errno));
      if (ready == 0 && clock::now() < deadline)
        continue;
      if (ready == 0)
        return fail(errc::timed_out, "redis " + host_ + ": " + what + ": no whole reply within " +
                                         std::to_string(options_.timeout.count()) +
                                         " ms (its outcome is unknown)");
      const std::size_t before = ctx_->reader->len;
      if (::redisBufferRead(ctx_.get()) != REDIS_OK)
        return broken(ctx_->errstr);
      received += ctx_->reader->len - before;
      if (received > options_.max_reply_bytes)
        return fail(errc::malformed_frame, "redis " + host_ + ": " + what + ": the reply is larger than " +
                                               std::to_string(options_.max_reply_bytes) +
                                               " bytes (metadata_options::max_reply_bytes)");
    }
  }

  /// A reply's elements: at most one per this many bytes of max_reply_bytes, over all its arrays.
  // why: each element is an object of its own (tens of bytes), however few bytes it took on the wire
  static constexpr std::size_t bytes_per_element = 64;
  struct element_budget {
    redisReplyObjectFunctions* inner = nullptr; // hiredis' own
    std::size_t elements_left = 0;
    bool refused = false;
  };
  static element_budget& budget_of(const redisReadTask* t) {
    return *static_cast<element_budget*>(t->privdata);
  }
  static inline redisReplyObjectFunctions bounded_functions{
      [](const redisReadTask* t, char* s, std::size_t n) {
        return budget_of(t).inner->createString(t, s, n);
      },
      [](const redisReadTask* t, int elements) -> void* {
        auto& b = budget_of(t);
        if (elements > 0 && static_cast<std::size_t>(elements) > b.elements_left) {
          b.refused = true;
          return nullptr; // why: hiredis then fails the reply (as out of memory) and frees what it built
        }
        b.elements_left -= elements > 0 ? static_cast<std::size_t>(elements) : 0;
        return b.inner->createArray(t, elements);
      },
      [](const redisReadTask* t, long long v) { return budget_of(t).inner->createInteger(t, v); },
      [](const redisReadTask* t) { return budget_of(t).inner->createNil(t); },
      &::freeReplyObject,
  };

  static std::string random_token() {
    std::random_device rd;
    char text[40];
    std::snprintf(text, sizeof text, "%08x%08x%08x%08x", rd(), rd(), rd(), rd());
    return text;
  }

  /// A key written anew no longer belongs to the lease it had.
  void forget_key(const std::string& key) {
    for (auto& [id, l] : leases_)
      l.keys.erase(key);
  }

  std::string host_;
  metadata_options options_;
  detail::resolver names_; // the server's name, looked up within the timeout; the last answer kept
  std::unique_ptr<redisContext, context_deleter> ctx_;
  element_budget budget_; // what the reply being read may still allocate (ctx_'s reader points at it)
  std::map<lease_id, lease_state> leases_;
  lease_id last_lease_ = 0;
  std::string token_ = random_token();
  std::mutex mutex_;
  thread_pool worker_; // why: last member: its thread finishes queued commands before the rest goes
};

} // namespace ferry
