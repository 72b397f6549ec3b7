#pragma once
// When a process started: what tells a process from a later one that the kernel gave the same process id.
// A segment descriptor carries its owner's, and same-host peers check it when they first look at the owner.

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

namespace ferry::detail {

/// What /proc/<pid>/stat tells of a process: its state (field 3: 'R', 'S', 'Z' for one that has exited and
/// waits for its parent, ...) and when it started (field 22, in clock ticks after boot).
struct process_stat {
  char state = 0;          // 0 where it cannot be read (no such process, or no /proc)
  std::uint64_t start = 0; // 0 where it cannot be read
};

/// Reads /proc/<pid>/stat.
inline process_stat read_process_stat(pid_t pid) noexcept {
  char path[32];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return {};
  char buf[1024];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0)
    return {};
  buf[n] = '\0';
  // why: the second field is the command in parentheses, which may hold spaces and parentheses itself
  const char* p = std::strrchr(buf, ')');
  if (!p || p[1] != ' ' || p[2] == '\0')
    return {};
  process_stat st;
  st.state = p[2];
  // fields 3 to 21 follow, then the start time
  for (int field = 3; field <= 22; ++field) {
    p = std::strchr(p, ' ');
    if (!p)
      return {st.state, 0};
    ++p;
  }
  for (; *p >= '0' && *p <= '9'; ++p)
    st.start = st.start * 10 + static_cast<std::uint64_t>(*p - '0');
  return st;
}

/// When process `pid` started, in clock ticks after boot; 0 where it cannot be read (no such process, or no
/// /proc). A tick is 10 ms on most systems: two processes given the same id within one tick look the same,
/// but the kernel hands an id out again only once it went round all of them.
inline std::uint64_t process_start_time(pid_t pid) noexcept {
  return read_process_stat(pid).start;
}

/// Threads of process `pid` that /proc lists (its main thread included, also once it ended while others run
/// on); 0 where it cannot be read.
inline std::size_t thread_count(pid_t pid) noexcept {
  char path[32];
  std::snprintf(path, sizeof path, "/proc/%d/task", static_cast<int>(pid));
  DIR* d = ::opendir(path);
  if (!d)
    return 0;
  std::size_t n = 0;
  while (auto* e = ::readdir(d))
    n += e->d_name[0] != '.';
  ::closedir(d);
  return n;
}

/// This process's start time (looked up again in a forked child, which started later).
inline std::uint64_t own_start_time() noexcept {
  static std::atomic<pid_t> looked_up_by{0};
  static std::atomic<std::uint64_t> start{0};
  const pid_t me = ::getpid();
  if (looked_up_by.load(std::memory_order_acquire) != me) {
    start.store(process_start_time(me), std::memory_order_relaxed);
    looked_up_by.store(me, std::memory_order_release);
  }
  return start.load(std::memory_order_relaxed);
}

/// False when process `pid` is known not to be the running one that started at `start`: it started at
/// another time, or it has exited and only its entry is left until its parent reaps it (a zombie, whose id
/// is not given to another process meanwhile, and which `kill(pid, 0)` still finds). True when it is, or
/// where that cannot be told: `start` unknown (0), or /proc not readable.
inline bool still_runs(pid_t pid, std::uint64_t start) noexcept {
  auto now = read_process_stat(pid);
  // why: the state is the main thread's; one that ended while other threads of the process run on shows
  // 'Z' too, and that process still runs: it has more than its main thread under /proc/<pid>/task
  if ((now.state == 'Z' || now.state == 'X') && thread_count(pid) <= 1)
    return false;
  return start == 0 || now.start == 0 || now.start == start;
}

/// A pidfd for the process `pid` that started at `start` (0: not checked). -1 with errno ESRCH when that
/// process has ended, whether or not another now has its id (also where no pidfd can be had, as far as the
/// start time tells); -1 with another errno where no pidfd can be had (an old kernel, a seccomp profile) and
/// the process may still run.
inline int open_process(pid_t pid, std::uint64_t start) noexcept {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    if (errno != ESRCH && !still_runs(pid, start))
      errno = ESRCH;
    return -1;
  }
  // why: the start time is read after the pidfd is opened; if the process the pidfd names is still running
  // after that read, the read was about that process, not a later one given its id
  bool same = still_runs(pid, start);
  ::pollfd p{fd, POLLIN, 0};
  if (!same || ::poll(&p, 1, 0) != 0) {
    ::close(fd);
    errno = ESRCH;
    return -1;
  }
  return fd;
}

} // namespace ferry::detail
