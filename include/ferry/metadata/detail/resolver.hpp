#pragma once
/// `ferry::detail::resolver`: the addresses of a metadata service's host name, looked up within a deadline,
/// with the last answer kept. getaddrinfo has no deadline of its own: a name server that does not answer
/// costs its timeout times its attempts (10 s with the defaults), and the metadata clients' one worker thread
/// (lease renewals included) would wait that long. Here the lookup runs on a thread of its own, and a caller
/// that stops waiting leaves it to finish there; while it runs, later callers get the kept answer at once
/// instead of waiting again. When a lookup fails for a reason that may pass (no answer, a temporary failure),
/// the addresses the last successful one gave are used, so that a name service outage does not take a
/// server that is still reachable away; a name the name service says does not exist is forgotten.
///
///   ferry::detail::resolver names;
///   auto addresses = names.addresses("etcd-0.etcd", std::chrono::milliseconds(2000));   // {"10.0.0.7"}

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <netdb.h>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <system_error>
#include <thread>
#include <vector>

namespace ferry::detail {

class resolver {
public:
  /// Numeric addresses for `host` (an IPv4 address, an IPv6 one without brackets, with its zone if any, or a
  /// name), in the order getaddrinfo gives them, a link-local one with its zone; an address is its own
  /// answer. Errors, only when no answer is kept: errc::timed_out (no answer within `timeout`) or
  /// errc::peer_unreachable (the name does not resolve).
  result<std::vector<std::string>> addresses(const std::string& host, std::chrono::milliseconds timeout) {
    ::in_addr v4;
    if (::inet_pton(AF_INET, host.c_str(), &v4) == 1 || host.find(':') != std::string::npos)
      return std::vector<std::string>{
          host}; // why: a name has no ':'; an IPv6 address keeps its zone as given
    std::shared_ptr<lookup> l;
    {
      std::lock_guard lock(mutex_);
      auto& entry = names_[host];
      if (entry.running && !entry.running->finished()) {
        if (!entry.kept.empty())
          return entry.kept; // why: the name service is slow right now; the caller before waited already
        l = entry.running;
      } else {
        l = entry.running = start(host);
        if (!l)
          return entry.kept.empty()
                     ? result<std::vector<std::string>>(
                           fail(errc::peer_unreachable, "cannot look up '" + host + "': no thread for it"))
                     : entry.kept;
      }
    }
    auto outcome = l->wait(host, timeout);
    std::lock_guard lock(mutex_);
    auto& entry = names_[host];
    if (outcome) {
      entry.kept = *outcome;
      return outcome;
    }
    if (l->says_no_such_name()) {
      entry.kept.clear(); // why: the name service answered: the name is gone, and so is its old address
      return fail(outcome.error());
    }
    if (!entry.kept.empty())
      return entry.kept; // why: the name service failed; the server it named may well still be there
    return fail(outcome.error());
  }

private:
  /// One getaddrinfo call, on a thread of its own; shared by the callers that wait for it.
  class lookup {
  public:
    bool finished() {
      std::lock_guard lock(mutex_);
      return done_;
    }
    bool says_no_such_name() {
      std::lock_guard lock(mutex_);
      return done_ && (status_ == EAI_NONAME
#ifdef EAI_NODATA
                       || status_ == EAI_NODATA
#endif
                      );
    }
    result<std::vector<std::string>> wait(const std::string& host, std::chrono::milliseconds timeout) {
      std::unique_lock lock(mutex_);
      // why: a year stands for "no deadline": longer would overflow the clock's arithmetic
      const auto limit = std::min<std::chrono::milliseconds>(timeout, std::chrono::hours(24 * 365));
      if (!done_cv_.wait_for(lock, limit, [&] { return done_; }))
        return fail(errc::timed_out, "the name lookup of '" + host + "' did not finish within " +
                                         std::to_string(timeout.count()) + " ms");
      if (status_ != 0)
        return fail(errc::peer_unreachable, "cannot look up '" + host + "': " + ::gai_strerror(status_));
      if (found_.empty())
        return fail(errc::peer_unreachable, "'" + host + "' has no IPv4 or IPv6 address");
      return found_;
    }
    void run(const std::string& host) noexcept {
      int status = EAI_MEMORY;
      std::vector<std::string> found;
      try {
        ::addrinfo hints{};
        hints.ai_socktype = SOCK_STREAM;
        ::addrinfo* list = nullptr;
        status = ::getaddrinfo(host.c_str(), nullptr, &hints, &list);
        for (auto* a = status == 0 ? list : nullptr; a; a = a->ai_next) {
          char text[NI_MAXHOST] = {};
          // why: getnameinfo, not inet_ntop: it keeps a link-local address's zone ("fe80::1%eth0")
          if ((a->ai_family == AF_INET || a->ai_family == AF_INET6) &&
              ::getnameinfo(a->ai_addr, a->ai_addrlen, text, sizeof text, nullptr, 0, NI_NUMERICHOST) == 0 &&
              std::find(found.begin(), found.end(), text) == found.end())
            found.emplace_back(text);
        }
        if (list)
          ::freeaddrinfo(list);
      } catch (...) {
        status = EAI_MEMORY;
        found.clear();
      }
      std::lock_guard lock(mutex_);
      status_ = status;
      found_ = std::move(found);
      done_ = true;
      done_cv_.notify_all();
    }

  private:
    std::mutex mutex_;
    std::condition_variable done_cv_;
    bool done_ = false;
    int status_ = 0;
    std::vector<std::string> found_;
  };

  /// A lookup of `host` under way, or null when no thread could be started for it.
  static std::shared_ptr<lookup> start(const std::string& host) {
    auto l = std::make_shared<lookup>();
    try {
      std::thread([l, host] { l->run(host); }).detach();
    } catch (const std::system_error&) {
      return nullptr;
    }
    return l;
  }

  struct name {
    std::vector<std::string> kept;   // the last successful lookup's addresses
    std::shared_ptr<lookup> running; // the latest lookup, finished or not
  };

  std::mutex mutex_;
  std::map<std::string, name> names_;
};

} // namespace ferry::detail
