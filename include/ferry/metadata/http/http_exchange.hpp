#pragma once
/// `ferry::http_exchange`: POSTs JSON bodies to one of a list of HTTP endpoints (cpp-httplib) and hands the
/// reply back to a coroutine. The blocking HTTP call runs on a worker thread of its own, so the caller's loop
/// never waits on the network; the awaiting coroutine resumes on that worker. An endpoint that cannot be
/// reached is skipped for the next one in the list (etcd clusters); failures name the endpoints tried. A
/// request that was sent and then failed is not sent again: its outcome is unknown, and the error says so.
/// Connecting takes at most `metadata_options::timeout`; an exchange with one endpoint that has no whole
/// reply after twice that (a server that stopped answering, or trickles) fails with errc::timed_out, and a
/// reply whose body is larger than `metadata_options::max_reply_bytes` with errc::malformed_frame, without
/// being kept; one whose connection received more than twice that (at least 1 MiB more: header lines without
/// end) is cut off with errc::malformed_frame as well.

#include "ferry/core/detail/time_after.hpp"
#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/thread_pool.hpp"
#include "ferry/metadata/detail/resolver.hpp"
#include "ferry/metadata/host_port.hpp"
#include "ferry/metadata/http/detail/exchange_watchdog.hpp"
#include "ferry/metadata/metadata_options.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace ferry {

class http_exchange {
public:
  struct reply {
    int status = 0;
    std::string body;
  };

  /// `what` names the service in messages ("etcd", "ferry-metad"); `hosts` are "host:port".
  http_exchange(std::string what, std::vector<std::string> hosts, metadata_options options)
      : what_(std::move(what)), options_(options), worker_(1) {
    for (auto& h : hosts) {
      auto where = host_port::parse(h);
      if (!where) { // every request fails over to the next endpoint, naming this one and why
        endpoints_.push_back({h, {}, {}, std::string(where.error().what()), nullptr});
        continue;
      }
      auto c = std::make_unique<httplib::Client>(where->host, where->port);
      auto seconds = std::chrono::duration_cast<std::chrono::seconds>(options_.timeout);
      auto micros = std::chrono::duration_cast<std::chrono::microseconds>(options_.timeout - seconds);
      c->set_connection_timeout(seconds.count(), micros.count());
      c->set_read_timeout(seconds.count(), micros.count());
      c->set_write_timeout(seconds.count(), micros.count());
      // why: one connection per request. A kept-alive connection that the server closed (or, with etcd's
      // streaming lease keep-alive, left in a state of its own) fails the next request after it was sent,
      // and a compare-and-set cannot be retried blindly; lookups are rare enough to pay a loopback handshake.
      c->set_keep_alive(false);
      c->set_socket_options([this](socket_t fd) { watchdog_.watch_socket(fd); });
      // why: `Host` names the endpoint with an IPv6 address in its brackets and a zone's '%' encoded (RFC
      // 7230, 6874), which the client made with the bare address does not write
      std::string host_header;
      for (char ch : where->to_string())
        host_header += ch == '%' ? std::string("%25") : std::string(1, ch);
      endpoints_.push_back({h, where->host, std::move(host_header), {}, std::move(c)});
    }
  }
  http_exchange(const http_exchange&) = delete;
  http_exchange& operator=(const http_exchange&) = delete;

  /// POSTs `body` to `path`; the reply of the first endpoint that answers, or errc::peer_unreachable.
  task<result<reply>> post(std::string path, std::string body) {
    co_await worker_.schedule();
    std::lock_guard lock(mutex_);
    std::string tried;
    for (std::size_t n = 0; n < endpoints_.size(); ++n) {
      auto& e = endpoints_[(current_ + n) % endpoints_.size()];
      if (!e.client) {
        tried += (tried.empty() ? "" : ", ") + e.host + " (" + e.refused + ")";
        continue;
      }
      auto addresses = names_.addresses(e.name, options_.timeout);
      if (!addresses) {
        tried += (tried.empty() ? "" : ", ") + e.host + " (" + addresses.error().what() + ")";
        continue;
      }
      for (const std::string& address : *addresses) { // in getaddrinfo's order, as a client would try them
        e.client->set_hostname_addr_map({{e.name, address}});
        // why: the body is collected as it arrives. etcd's gateway ends its error replies with an HTTP
        // trailer (Grpc-Trailer-Content-Type) that cpp-httplib 0.11 fails to read after the last chunk; a
        // reply whose status line came and whose body is a whole JSON document is complete despite that.
        httplib::Request req;
        req.method = "POST";
        req.path = path;
        req.body = body;
        req.set_header("Content-Type", "application/json");
        req.set_header("Host", e.host_header);
        int status = 0;
        std::string received;
        bool too_large = false;
        req.response_handler = [&](const httplib::Response& r) {
          status = r.status;
          return true;
        };
        req.content_receiver = [&](const char* data, std::size_t length, std::uint64_t, std::uint64_t) {
          if (length > options_.max_reply_bytes - received.size()) {
            too_large = true;
            return false;
          }
          received.append(data, length);
          return true;
        };
        httplib::Response res;
        httplib::Error err = httplib::Error::Success;
        using clock = std::chrono::steady_clock;
        watchdog_.arm(*e.client,
                      detail::time_after<clock>(detail::time_after<clock>(clock::now(), options_.timeout),
                                                options_.timeout),
                      most_reply_bytes());
        bool sent = e.client->send(req, res, err);
        const auto fired = watchdog_.disarm();
        const bool late = fired == detail::exchange_watchdog::fired::late;
        // why: a reply that came whole, its body within the bound, was not too much, whatever the watchdog
        // found as it ended
        if (too_large || (!sent && fired == detail::exchange_watchdog::fired::too_much))
          co_return fail(errc::malformed_frame, what_ + " " + e.host + ": the reply is larger than " +
                                                    std::to_string(options_.max_reply_bytes) +
                                                    " bytes (metadata_options::max_reply_bytes)");
        // why: a reply that came whole counts even if the watchdog fired as it ended; one cut off does not
        if (sent ||
            (!late && err == httplib::Error::Read && status != 0 && nlohmann::json::accept(received))) {
          current_ = (current_ + n) % endpoints_.size();
          co_return reply{sent ? res.status : status, std::move(received)};
        }
        // why: a request that never went out (connecting failed, or took the watchdog's time) may go to the
        // next endpoint; one that went out may have taken effect
        const bool never_sent = err == httplib::Error::Connection || err == httplib::Error::ConnectionTimeout;
        if (late && !never_sent)
          co_return fail(errc::timed_out, what_ + " " + e.host + ": no whole reply within twice " +
                                              std::to_string(options_.timeout.count()) +
                                              " ms (its outcome is unknown)");
        if (!tried.empty())
          tried += ", ";
        tried += e.host + (address == e.name ? "" : " at " + address) + " (" + httplib::to_string(err) + ")";
        // why: only a request that never reached the server may go to the next endpoint; one that was sent
        // may have taken effect (a compare-and-set, a lease grant), and sending it again could answer wrongly
        if (!never_sent)
          co_return fail(errc::peer_unreachable, what_ + " " + e.host + ": " + httplib::to_string(err) +
                                                     " after the request was sent (its outcome is unknown)");
      }
    }
    co_return fail(errc::peer_unreachable, what_ + " unreachable: " + tried);
  }

private:
  /// The most a reply may take on the wire: its body's bound, and as much again for its status line and
  /// headers (at least 1 MiB: etcd's headers are a few hundred bytes).
  std::uint64_t most_reply_bytes() const noexcept {
    const std::uint64_t body = options_.max_reply_bytes;
    const std::uint64_t head = std::max<std::uint64_t>(body, 1u << 20);
    return body > std::numeric_limits<std::uint64_t>::max() - head ? std::numeric_limits<std::uint64_t>::max()
                                                                   : body + head;
  }

  struct endpoint {
    std::string host;        // as given
    std::string name;        // its host, without brackets
    std::string host_header; // as an HTTP Host header
    std::string refused;     // why `host` is not HOST:PORT (then no client)
    std::unique_ptr<httplib::Client> client;
  };
  std::string what_;
  metadata_options options_;
  std::vector<endpoint> endpoints_;
  std::size_t current_ = 0;
  std::mutex mutex_;
  detail::exchange_watchdog watchdog_;
  detail::resolver names_; // the endpoints' names, looked up within the timeout; the last answers kept
  thread_pool worker_;     // why: last member: its thread finishes queued requests before the clients go
};

} // namespace ferry
