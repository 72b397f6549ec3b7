// When a process started, as a same-host peer reads it to tell a segment's owner from a later process that
// the kernel gave the same process id.

#include "ferry/memory/detail/process_start.hpp"

#include <doctest/doctest.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <string>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using ferry::detail::open_process;
using ferry::detail::own_start_time;
using ferry::detail::process_start_time;
using ferry::detail::still_runs;

namespace {
/// A forked child that hands its parent its own start time, as it reads it, and then sleeps until killed
/// (which the destructor does); with `name`, it goes by that command name.
struct sleeping_child {
  pid_t pid = -1;
  std::uint64_t start = 0;

  explicit sleeping_child(const char* name = nullptr) {
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      if (name)
        ::prctl(PR_SET_NAME, name);
      std::uint64_t own = own_start_time();
      (void)!::write(ready[1], &own, sizeof own);
      ::pause();
      ::_exit(0);
    }
    REQUIRE(::read(ready[0], &start, sizeof start) == sizeof start);
    ::close(ready[0]);
    ::close(ready[1]);
  }
  sleeping_child(const sleeping_child&) = delete;
  sleeping_child& operator=(const sleeping_child&) = delete;
  void end() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      pid = -1;
    }
  }
  ~sleeping_child() { end(); }
};
} // namespace

TEST_SUITE("process_start") {
  TEST_CASE("a process's start time is read from /proc, and a process that started later has a later one") {
    const auto mine = own_start_time();
    REQUIRE(mine != 0);
    CHECK(process_start_time(::getpid()) == mine);
    CHECK(still_runs(::getpid(), mine));
    CHECK_FALSE(still_runs(::getpid(), mine + 1));
    CHECK(still_runs(::getpid(), 0)); // unknown: not checked
    usleep(20000);                    // why: at least two clock ticks (of 100 a second) later
    sleeping_child later;
    const pid_t child = later.pid;
    const std::uint64_t childs = later.start;
    CHECK(childs == process_start_time(child));
    CHECK(childs > mine);
    // a pidfd is had for the process that started then, and refused for any other start time
    int fd = open_process(child, childs);
    CHECK(fd >= 0);
    if (fd >= 0)
      ::close(fd);
    errno = 0;
    CHECK(open_process(child, mine) == -1);
    CHECK(errno == ESRCH);
    later.end();
    // once it ended, nothing is read and no pidfd is had
    CHECK(process_start_time(child) == 0);
    errno = 0;
    CHECK(open_process(child, childs) == -1);
    CHECK(errno == ESRCH);
  }

  TEST_CASE("a process that exited and waits for its parent to reap it no longer runs") {
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0)
      ::_exit(0);
    ::siginfo_t info{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(child), &info, WEXITED | WNOWAIT) == 0); // exited, not reaped
    REQUIRE(::kill(child, 0) == 0); // why: what a zombie answers, like a running process
    auto st = ferry::detail::read_process_stat(child);
    CHECK(st.state == 'Z');
    CHECK(st.start != 0);
    CHECK_FALSE(still_runs(child, st.start));
    CHECK_FALSE(still_runs(child, 0));
    errno = 0;
    CHECK(open_process(child, st.start) == -1);
    CHECK(errno == ESRCH);
    REQUIRE(::waitpid(child, nullptr, 0) == child);
  }

  TEST_CASE("a process whose main thread ended while another thread runs on still runs") {
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      std::thread([] { ::pause(); }).detach();
      (void)!::write(ready[1], "x", 1);
      // why: the exit system call ends the calling thread alone (pthread_exit would unwind through the test
      // framework); the process lives on in the other thread, and its main thread shows 'Z'
      ::syscall(SYS_exit, 0);
    }
    char x;
    REQUIRE(::read(ready[0], &x, 1) == 1);
    ::close(ready[0]);
    ::close(ready[1]);
    const std::uint64_t start = process_start_time(child);
    for (int i = 0; i < 200 && ferry::detail::read_process_stat(child).state != 'Z'; ++i)
      usleep(5000);
    CHECK(ferry::detail::read_process_stat(child).state == 'Z');
    CHECK(ferry::detail::thread_count(child) == 2);
    CHECK(still_runs(child, start));
    int fd = open_process(child, start);
    CHECK(fd >= 0);
    if (fd >= 0)
      ::close(fd);
    ::kill(child, SIGKILL);
    REQUIRE(::waitpid(child, nullptr, 0) == child);
  }

  TEST_CASE("a command with spaces and parentheses in its name does not confuse the reading") {
    sleeping_child named("a b) (c 1 2 3");
    char comm[64] = {};
    if (std::FILE* f = std::fopen(("/proc/" + std::to_string(named.pid) + "/comm").c_str(), "r")) {
      CHECK(std::fgets(comm, sizeof comm, f) != nullptr);
      std::fclose(f);
    }
    CHECK(std::string(comm).rfind("a b) (c", 0) == 0);
    CHECK(named.start != 0);
    CHECK(process_start_time(named.pid) == named.start);
    CHECK(named.start >= own_start_time());
  }
}
