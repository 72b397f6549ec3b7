#pragma once
// Running a piece of a test as process 1 of a PID namespace of its own, with its own /proc: there a test
// chooses which process id the next process gets, as when the kernel hands out a dead process's id again.

#include <cstdio>
#include <sched.h>
#include <sys/mount.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

namespace ferry_test {

/// What in_own_pid_namespace() returns when this host does not let it make the namespace or mount its /proc.
inline constexpr int no_own_pid_namespace = 120;

/// Runs `body` (returning an exit code, 0 for success) as process 1 of a new PID namespace with its own
/// /proc, in forked processes, and returns its exit code (100 + the signal if it was killed), or
/// no_own_pid_namespace.
template<class Body>
int in_own_pid_namespace(Body body) {
  pid_t child = ::fork();
  if (child < 0)
    return no_own_pid_namespace;
  if (child == 0) {
    // why: a new PID namespace takes effect for the children of the process that makes it
    if (::unshare(CLONE_NEWPID | CLONE_NEWNS) != 0)
      ::_exit(no_own_pid_namespace);
    pid_t first = ::fork();
    if (first == 0) {
      if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
          ::mount("proc", "/proc", "proc", 0, nullptr) != 0)
        ::_exit(no_own_pid_namespace);
      ::_exit(body());
    }
    int status = 0;
    ::waitpid(first, &status, 0);
    ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status));
  }
  int status = 0;
  if (::waitpid(child, &status, 0) != child)
    return no_own_pid_namespace;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

/// Inside such a namespace: the next process forked gets `pid` (ns_last_pid). False if it cannot be chosen.
inline bool next_pid_is(pid_t pid) {
  std::FILE* last = std::fopen("/proc/sys/kernel/ns_last_pid", "w");
  if (!last)
    return false;
  std::fprintf(last, "%d", static_cast<int>(pid) - 1);
  return std::fclose(last) == 0;
}

} // namespace ferry_test
