#pragma once
// The identity of this process's PID namespace: process ids (in shared-memory names, gate tickets, liveness
// checks) mean the same process only between processes that share it.

#include <cstdint>
#include <sys/stat.h>

namespace ferry::detail {

/// The inode of /proc/self/ns/pid (0 where it cannot be read).
inline std::uint64_t pid_namespace_id() noexcept {
  static const std::uint64_t id = [] {
    struct ::stat st {};
    return ::stat("/proc/self/ns/pid", &st) == 0 ? static_cast<std::uint64_t>(st.st_ino) : std::uint64_t{0};
  }();
  return id;
}

} // namespace ferry::detail
