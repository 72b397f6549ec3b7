#pragma once
// The identity of the network namespace this thread is in: loopback reaches between processes only inside
// one. Looked up each time: a process may move to another (setns, unshare).

#include <cstdint>
#include <sys/stat.h>

namespace ferry::io::detail {

/// The inode of /proc/thread-self/ns/net (0 where it cannot be read).
inline std::uint64_t net_namespace_id() noexcept {
  struct ::stat st {};
  if (::stat("/proc/thread-self/ns/net", &st) == 0 || ::stat("/proc/self/ns/net", &st) == 0)
    return static_cast<std::uint64_t>(st.st_ino);
  return 0;
}

} // namespace ferry::io::detail
