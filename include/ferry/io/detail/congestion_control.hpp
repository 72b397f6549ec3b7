#pragma once
// Choosing a TCP socket's congestion control algorithm (TCP_CONGESTION), with an error a user can act on.

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"

#include <cerrno>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string>
#include <string_view>
#include <sys/socket.h>

namespace ferry::io::detail {

/// Makes `fd` use the congestion control algorithm `name` ("reno", "cubic", "bbr", "dctcp" ...).
inline result<void> set_congestion_control(int fd, std::string_view name) {
  if (::setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name.data(), static_cast<::socklen_t>(name.size())) == 0)
    return {};
  int e = errno;
  std::string what = "tcp congestion control \"" + std::string(name) + "\": " + std::strerror(e);
  if (e == ENOENT)
    what += " (not in net.ipv4.tcp_available_congestion_control; its module may need loading)";
  else if (e == EPERM)
    what += " (not in net.ipv4.tcp_allowed_congestion_control, which an unprivileged process is limited to)";
  return fail(errc::invalid_argument, what);
}

/// The congestion control algorithm `fd` uses, or an empty string if it cannot be read.
inline std::string congestion_control(int fd) {
  char name[32] = {};
  ::socklen_t len = sizeof name;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &len) != 0)
    return {};
  return std::string(name, ::strnlen(name, len));
}

} // namespace ferry::io::detail
