#pragma once
/// `ferry::io::endpoint`: an IPv4 or IPv6 address and port, parsed from "host:port" ("127.0.0.2:7000",
/// "[::1]:7000") without name resolution.
///
///   auto ep = ferry::io::endpoint::parse("127.0.0.1:9000");   // result<endpoint>

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"

#include <arpa/inet.h>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <netinet/in.h>
#include <string>
#include <string_view>
#include <sys/socket.h>

namespace ferry::io {

class endpoint {
public:
  endpoint() noexcept { std::memset(&storage_, 0, sizeof storage_); }

  /// Parses "a.b.c.d:port" or "[v6]:port"; port 0 asks the kernel to choose (for listening).
  static result<endpoint> parse(std::string_view text) {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos)
      return fail(errc::invalid_argument, "endpoint: expected host:port");
    std::string_view host = text.substr(0, colon), port_text = text.substr(colon + 1);
    unsigned port = 0;
    auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc{} || ptr != port_text.data() + port_text.size() || port > 65535)
      return fail(errc::invalid_argument, "endpoint: port must be a number from 0 to 65535");
    endpoint ep;
    std::string h(host);
    if (h.size() >= 2 && h.front() == '[' && h.back() == ']') {
      auto* a6 = reinterpret_cast<::sockaddr_in6*>(&ep.storage_);
      a6->sin6_family = AF_INET6;
      a6->sin6_port = htons(static_cast<std::uint16_t>(port));
      if (::inet_pton(AF_INET6, h.substr(1, h.size() - 2).c_str(), &a6->sin6_addr) != 1)
        return fail(errc::invalid_argument, "endpoint: not an IPv6 address");
      return ep;
    }
    auto* a4 = reinterpret_cast<::sockaddr_in*>(&ep.storage_);
    a4->sin_family = AF_INET;
    a4->sin_port = htons(static_cast<std::uint16_t>(port));
    if (h == "localhost")
      h = "127.0.0.1";
    if (::inet_pton(AF_INET, h.c_str(), &a4->sin_addr) != 1)
      return fail(errc::invalid_argument, "endpoint: not an IPv4 address (names are not resolved)");
    return ep;
  }

  /// From a socket address the kernel filled in.
  static endpoint from_sockaddr(const ::sockaddr* sa, ::socklen_t len) noexcept {
    endpoint ep;
    std::memcpy(&ep.storage_, sa, len < sizeof ep.storage_ ? len : sizeof ep.storage_);
    return ep;
  }

  /// The loopback address of `family` (127.0.0.1 or ::1), port 0.
  static endpoint loopback(int family) noexcept {
    endpoint ep;
    if (family == AF_INET6) {
      auto* a6 = reinterpret_cast<::sockaddr_in6*>(&ep.storage_);
      a6->sin6_family = AF_INET6;
      a6->sin6_addr = in6addr_loopback;
    } else {
      auto* a4 = reinterpret_cast<::sockaddr_in*>(&ep.storage_);
      a4->sin_family = AF_INET;
      a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    return ep;
  }

  int family() const noexcept { return storage_.ss_family; }
  /// Whether the address is the unspecified one (0.0.0.0 or ::): every address, when listening; no host.
  bool is_unspecified() const noexcept {
    if (family() == AF_INET6)
      return IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const ::sockaddr_in6*>(&storage_)->sin6_addr);
    return reinterpret_cast<const ::sockaddr_in*>(&storage_)->sin_addr.s_addr == htonl(INADDR_ANY);
  }
  std::uint16_t port() const noexcept {
    return family() == AF_INET6 ? ntohs(reinterpret_cast<const ::sockaddr_in6*>(&storage_)->sin6_port)
                                : ntohs(reinterpret_cast<const ::sockaddr_in*>(&storage_)->sin_port);
  }
  /// The same address with another port.
  endpoint with_port(std::uint16_t port) const noexcept {
    endpoint ep = *this;
    if (family() == AF_INET6)
      reinterpret_cast<::sockaddr_in6*>(&ep.storage_)->sin6_port = htons(port);
    else
      reinterpret_cast<::sockaddr_in*>(&ep.storage_)->sin_port = htons(port);
    return ep;
  }
  const ::sockaddr* data() const noexcept { return reinterpret_cast<const ::sockaddr*>(&storage_); }
  ::socklen_t size() const noexcept {
    return family() == AF_INET6 ? sizeof(::sockaddr_in6) : sizeof(::sockaddr_in);
  }

  /// "127.0.0.1:9000" or "[::1]:9000".
  std::string to_string() const {
    char buf[INET6_ADDRSTRLEN] = {};
    if (family() == AF_INET6) {
      ::inet_ntop(AF_INET6, &reinterpret_cast<const ::sockaddr_in6*>(&storage_)->sin6_addr, buf, sizeof buf);
      return "[" + std::string(buf) + "]:" + std::to_string(port());
    }
    ::inet_ntop(AF_INET, &reinterpret_cast<const ::sockaddr_in*>(&storage_)->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(port());
  }

  friend bool operator==(const endpoint& a, const endpoint& b) noexcept {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
  }

private:
  ::sockaddr_storage storage_;
};

} // namespace ferry::io
