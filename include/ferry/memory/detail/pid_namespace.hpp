#pragma once
// The identity of this process's PID namespace: process ids (in shared-memory names, gate tickets, liveness
// checks) mean the same process only between processes that share it.

#include <atomic>
#include <cstdint>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

namespace ferry::detail {

/// The inode of /proc/self/ns/pid (0 where it cannot be read).
inline std::uint64_t pid_namespace_id() noexcept {
  // why: looked up again in a new process: a child forked into a new PID namespace must not inherit the
  // parent's answer
  static std::atomic<pid_t> looked_up_by{0};
  static std::atomic<std::uint64_t> id{0};
  const pid_t me = ::getpid();
  if (looked_up_by.load(std::memory_order_acquire) != me) {
    struct ::stat st {};
    id.store(::stat("/proc/self/ns/pid", &st) == 0 ? static_cast<std::uint64_t>(st.st_ino) : std::uint64_t{0},
             std::memory_order_relaxed);
    looked_up_by.store(me, std::memory_order_release);
  }
  return id.load(std::memory_order_relaxed);
}

} // namespace ferry::detail
