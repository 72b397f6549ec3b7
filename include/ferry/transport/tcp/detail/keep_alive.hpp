#pragma once
// The TCP keepalive of the tcp transport's data connections, on the side that opens them and the side that
// accepts them (tcp_options::keepalive_idle).

#include "ferry/io/tcp_socket.hpp"

#include <algorithm>
#include <chrono>

namespace ferry::tcp::detail {

/// Probes after `idle` without traffic, then every third of it, and drops the connection after 3 unanswered
/// probes; nothing (the system's settings) when `idle` is 0.
inline void keep_alive(io::tcp_socket& s, std::chrono::seconds idle) noexcept {
  if (idle.count() <= 0)
    return;
  s.set_keepalive(idle, std::max<std::chrono::seconds>(std::chrono::seconds(1), idle / 3), 3);
}

} // namespace ferry::tcp::detail
