#pragma once
/// `ferry::detail::resolver`: the addresses of a metadata service's host name, looked up within a deadline,
/// with the last answer kept. getaddrinfo has no deadline of its own: a name server that does not answer
/// costs its timeout times its attempts (10 s with the defaults), and the metadata clients' one worker thread
/// (lease renewals included) would wait that long. Here the lookup runs on a thread of its own, and a caller
/// that stops waiting leaves it to finish there. When a lookup fails or does not finish in time, the
/// addresses the last successful one gave are used, so that a name service outage does not take a server
/// that is still reachable away.
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
  /// Numeric addresses for `host` (an IPv4 address, an IPv6 one without brackets, or a name), in the order
  /// getaddrinfo gives them; an address is its own answer. Errors, only when no lookup of the name has
  /// succeeded before: errc::timed_out (no answer within `timeout`) or errc::peer_unreachable (the name
  /// does not resolve).
  result<std::vector<std::string>> addresses(const std::string& host, std::chrono::milliseconds timeout) {
    ::in_addr v4;
    ::in6_addr v6;
    if (::inet_pton(AF_INET, host.c_str(), &v4) == 1 || ::inet_pton(AF_INET6, host.c_str(), &v6) == 1)
      return std::vector<std::string>{host};
    auto looked = look_up(host, timeout);
    std::lock_guard lock(mutex_);
    if (looked) {
      last_[host] = *looked;
      return looked;
    }
    if (auto kept = last_.find(host); kept != last_.end())
      return kept->second; // why: the name service failed; the server it named may well still be there
    return fail(looked.error());
  }

private:
  struct lookup {
    std::mutex mutex;
    std::condition_variable done_cv;
    bool done = false;
    int status = 0;
    std::vector<std::string> found;
  };

  static result<std::vector<std::string>> look_up(const std::string& host,
                                                  std::chrono::milliseconds timeout) {
    auto l = std::make_shared<lookup>();
    try {
      std::thread([l, host] {
        ::addrinfo hints{};
        hints.ai_socktype = SOCK_STREAM;
        ::addrinfo* list = nullptr;
        int status = ::getaddrinfo(host.c_str(), nullptr, &hints, &list);
        std::vector<std::string> found;
        for (auto* a = status == 0 ? list : nullptr; a; a = a->ai_next) {
          char text[INET6_ADDRSTRLEN] = {};
          const void* at =
              a->ai_family == AF_INET6
                  ? static_cast<const void*>(&reinterpret_cast<::sockaddr_in6*>(a->ai_addr)->sin6_addr)
                  : static_cast<const void*>(&reinterpret_cast<::sockaddr_in*>(a->ai_addr)->sin_addr);
          if ((a->ai_family == AF_INET || a->ai_family == AF_INET6) &&
              ::inet_ntop(a->ai_family, at, text, sizeof text) != nullptr &&
              std::find(found.begin(), found.end(), text) == found.end())
            found.emplace_back(text);
        }
        if (list)
          ::freeaddrinfo(list);
        std::lock_guard lock(l->mutex);
        l->status = status;
        l->found = std::move(found);
        l->done = true;
        l->done_cv.notify_all();
      }).detach();
    } catch (const std::system_error& e) {
      return fail(errc::peer_unreachable,
                  "cannot look up '" + host + "': no thread for it (" + e.what() + ")");
    }
    std::unique_lock lock(l->mutex);
    // why: a year stands for "no deadline": longer would overflow the clock's arithmetic
    const auto wait = std::min<std::chrono::milliseconds>(timeout, std::chrono::hours(24 * 365));
    if (!l->done_cv.wait_for(lock, wait, [&] { return l->done; }))
      return fail(errc::timed_out, "the name lookup of '" + host + "' did not finish within " +
                                       std::to_string(timeout.count()) + " ms");
    if (l->status != 0)
      return fail(errc::peer_unreachable, "cannot look up '" + host + "': " + ::gai_strerror(l->status));
    if (l->found.empty())
      return fail(errc::peer_unreachable, "'" + host + "' has no IPv4 or IPv6 address");
    return std::move(l->found);
  }

  std::mutex mutex_;
  std::map<std::string, std::vector<std::string>> last_;
};

} // namespace ferry::detail
