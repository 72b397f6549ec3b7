#pragma once
// `ferry::io::detail::tcp_bytes_moved`: the bytes a TCP connection has moved in both directions, from the
// kernel's TCP_INFO.

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

namespace ferry::io::detail {

/// tcpi_bytes_acked + tcpi_bytes_received of `fd`; 0 when the kernel's tcp_info is too old to carry them.
// why: glibc's struct tcp_info ends before these fields and <linux/tcp.h> clashes with <netinet/tcp.h>; the
// kernel only ever appends to the struct, so the two counters sit at these offsets on every kernel that has
// them (Linux 4.1 and later)
inline std::uint64_t tcp_bytes_moved(int fd) noexcept {
  constexpr std::size_t acked_at = 120, received_at = 128, needed = received_at + 8;
  alignas(8) std::array<std::byte, 256> info{};
  ::socklen_t len = info.size();
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, info.data(), &len) != 0 || len < needed)
    return 0;
  std::uint64_t acked = 0, received = 0;
  std::memcpy(&acked, info.data() + acked_at, 8);
  std::memcpy(&received, info.data() + received_at, 8);
  return acked + received;
}

} // namespace ferry::io::detail
