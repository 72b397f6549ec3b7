#pragma once
// A server on a random loopback port that answers every request of a metadata client wrongly on purpose: its
// reply trickles in one byte at a time, or never ends its header lines, or is endless; or it takes a request
// so slowly that a large one is never all sent; or it sends a Redis client more replies than it asked for. It
// speaks just enough HTTP and RESP for a client to take the start of its reply for the start of an answer.

#include "servers.hpp"

#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <memory>
#include <netinet/in.h>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace ferry_test {

class misbehaving_server {
public:
  enum class protocol { http, resp };
  enum class manner {
    trickle,      ///< a reply that promises 1 MB and sends a byte every 20 ms
    endless_head, ///< HTTP: header line after header line; RESP: array element after element, 20 ms apart
    flood,        ///< a reply that promises 4 GB and sends it as fast as it can
    slow_reader,  ///< takes the request 16 KiB every 200 ms, and never answers
    head_flood,   ///< HTTP: header lines without end, as fast as it can
    endless_scan, ///< RESP: answers every command as SCAN, with a cursor that never comes back to 0
    two_replies, ///< RESP: answers the first command of a connection with two replies at once ("v1", "extra")
    late_extra_reply, ///< RESP: answers the Nth command of a connection "vN"; the first one's reply is
                      ///< followed 50 ms later by a second, "extra"
  };

  misbehaving_server(protocol p, manner m) : protocol_(p), manner_(m) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(listener_ >= 0);
    ::sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (m == manner::slow_reader) { // why: a small receive buffer (inherited by what it accepts): a request
                                    // of a few MiB is then more than the connection holds
      int bytes = 64 << 10;
      REQUIRE(::setsockopt(listener_, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes) == 0);
    }
    REQUIRE(::bind(listener_, reinterpret_cast<::sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(listener_, 16) == 0);
    ::socklen_t len = sizeof a;
    REQUIRE(::getsockname(listener_, reinterpret_cast<::sockaddr*>(&a), &len) == 0);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  misbehaving_server(const misbehaving_server&) = delete;
  misbehaving_server& operator=(const misbehaving_server&) = delete;
  ~misbehaving_server() {
    stop_ = true;
    acceptor_.join();
    for (auto& t : connections_)
      t.join();
    ::close(listener_);
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  /// Connections it has taken.
  int accepted() const { return accepted_.load(); }

private:
  void accept_loop() {
    while (!stop_) {
      ::pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0)
        continue;
      int fd = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0)
        continue;
      ++accepted_;
      connections_.emplace_back([this, fd] {
        serve(fd);
        ::close(fd);
      });
    }
  }

  // Sends all of `s`; false once the client has gone (or the server stops).
  bool send_all(int fd, const std::string& s) {
    for (std::size_t done = 0; done < s.size();) {
      if (stop_)
        return false;
      ::pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, 20) <= 0)
        continue;
      auto n = ::send(fd, s.data() + done, s.size() - done, MSG_NOSIGNAL);
      if (n <= 0)
        return false;
      done += static_cast<std::size_t>(n);
    }
    return true;
  }

  void serve(int fd) {
    // The request: whatever arrives first (the client sends it whole at once).
    char buf[65536];
    ::pollfd p{fd, POLLIN, 0};
    while (!stop_ && ::poll(&p, 1, 20) == 0) {
    }
    if (stop_ || ::recv(fd, buf, sizeof buf, 0) <= 0)
      return;
    const bool http = protocol_ == protocol::http;
    switch (manner_) {
    case manner::endless_scan:
      for (;;) {
        if (!send_all(fd, "*2\r\n$1\r\n1\r\n*1\r\n$3\r\nabc\r\n"))
          return;
        while (!stop_ && ::poll(&p, 1, 20) == 0) {
        }
        if (stop_ || ::recv(fd, buf, sizeof buf, 0) <= 0)
          return;
      }
    case manner::two_replies:
    case manner::late_extra_reply:
      for (int n = 1;; ++n) {
        std::string reply = "$2\r\nv" + std::to_string(n % 10) + "\r\n";
        if (n == 1 && manner_ == manner::two_replies)
          reply += "$5\r\nextra\r\n";
        if (!send_all(fd, reply))
          return;
        if (n == 1 && manner_ == manner::late_extra_reply) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
          if (!send_all(fd, "$5\r\nextra\r\n"))
            return;
        }
        while (!stop_ && ::poll(&p, 1, 20) == 0) {
        }
        if (stop_ || ::recv(fd, buf, sizeof buf, 0) <= 0)
          return;
      }
    case manner::slow_reader:
      while (!stop_) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        if (::recv(fd, buf, 16 << 10, MSG_DONTWAIT) == 0)
          return; // the client has gone
      }
      return;
    case manner::trickle:
      if (!send_all(
              fd,
              http ? "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{"
                   : "$1000000\r\n"))
        return;
      while (send_all(fd, "a"))
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      return;
    case manner::endless_head:
      if (!send_all(fd, http ? "HTTP/1.1 200 OK\r\n" : "*1000000\r\n"))
        return;
      while (send_all(fd, http ? "X-Pad: 1\r\n" : ":1\r\n"))
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      return;
    case manner::head_flood: {
      if (!send_all(fd, "HTTP/1.1 200 OK\r\n"))
        return;
      std::string lines;
      for (int i = 0; i < 4096; ++i)
        lines += "X-Pad: 1\r\n";
      while (send_all(fd, lines)) {
      }
      return;
    }
    case manner::flood: {
      if (!send_all(
              fd,
              http ? "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4000000000\r\n\r\n"
                   : "$4000000000\r\n"))
        return;
      std::string chunk(1 << 16, ' ');
      while (send_all(fd, chunk)) {
      }
      return;
    }
    }
  }

  protocol protocol_;
  manner manner_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::thread acceptor_;
  std::vector<std::thread> connections_; // why: only the acceptor's thread adds to it, and it has ended when
                                         // the destructor reads it
};

} // namespace ferry_test
