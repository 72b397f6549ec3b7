#pragma once
/// `ferry::host_port`: a service's "HOST:PORT", taken apart for the libraries that connect to it. HOST is a
/// name, an IPv4 address, or an IPv6 address in brackets ("[::1]:2379"); `host` holds it without the
/// brackets, as name lookups and socket libraries want it.
///
///   auto hp = ferry::host_port::parse("[::1]:6379");   // hp->host == "::1", hp->port == 6379
///   hp->to_string();                                   // "[::1]:6379"

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"

#include <arpa/inet.h>
#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>

namespace ferry {

struct host_port {
  /// The host without brackets: "etcd-0.example", "10.0.0.7", "::1".
  std::string host;
  std::uint16_t port = 0;

  /// Whether `host` is an IPv6 address (and so is written in brackets).
  bool is_ipv6() const noexcept { return host.find(':') != std::string::npos; }

  /// "HOST:PORT", with an IPv6 host in brackets again.
  std::string to_string() const { return (is_ipv6() ? "[" + host + "]" : host) + ":" + std::to_string(port); }

  /// Parses "HOST:PORT" (port 0 to 65535). An IPv6 address must be in brackets: "::1:80" is refused, since
  /// its port cannot be told from its last group.
  static result<host_port> parse(std::string_view text) {
    auto bad = [&](const char* why) {
      return fail(errc::invalid_argument, "'" + std::string(text) + "' is not HOST:PORT: " + why);
    };
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos)
      return bad("no port");
    std::string_view host = text.substr(0, colon), port_text = text.substr(colon + 1);
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (port_text.empty() || ec != std::errc{} || end != port_text.data() + port_text.size() || port > 65535)
      return bad("the port must be a number from 0 to 65535");
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
      // why: a zone ("fe80::1%eth0") follows the address; only the address itself is checked here
      std::string address(host.substr(0, host.find('%')));
      ::in6_addr parsed;
      if (::inet_pton(AF_INET6, address.c_str(), &parsed) != 1 || address.size() + 1 == host.size())
        return bad("only an IPv6 address goes in brackets");
    } else if (host.find_first_of(":[]") != std::string_view::npos) {
      return bad("an IPv6 address goes in brackets: [::1]:80");
    }
    if (host.empty())
      return bad("no host");
    return host_port{std::string(host), static_cast<std::uint16_t>(port)};
  }
};

} // namespace ferry
