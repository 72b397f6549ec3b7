#pragma once
// A test's helper process: forked (before the test starts threads), it sets itself up, reports one line (an
// address, say) once it serves, and serves until killed. If it dies before reporting — a killed process's
// io_uring releases its listening socket asynchronously, so a port just freed may still be taken — it is
// started again, up to 100 times.

#include <doctest/doctest.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <utility>

namespace ferry_test {

class forked_child {
public:
  forked_child() = default;
  forked_child(pid_t pid, std::string line) : pid_(pid), line_(std::move(line)) {}
  forked_child(forked_child&& o) noexcept : pid_(std::exchange(o.pid_, -1)), line_(std::move(o.line_)) {}
  forked_child& operator=(forked_child&& o) noexcept {
    if (this != &o) {
      kill();
      pid_ = std::exchange(o.pid_, -1);
      line_ = std::move(o.line_);
    }
    return *this;
  }
  ~forked_child() { kill(); }

  /// Forks; the child calls `serve(report)`, where report(line) hands the line to the parent, and must not
  /// return while it serves (it ends with _exit). Returns once the line arrived.
  template<class Serve>
  static forked_child start(Serve serve) {
    for (int attempt = 0;; ++attempt) {
      int fds[2];
      REQUIRE(::pipe(fds) == 0);
      pid_t pid = ::fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        ::close(fds[0]);
        int out = fds[1];
        serve([out](const std::string& line) {
          std::string l = line + "\n";
          if (::write(out, l.data(), l.size()) < 0)
            ::_exit(4);
          ::close(out);
        });
        ::_exit(0);
      }
      ::close(fds[1]);
      std::string got;
      char buf[256];
      while (got.find('\n') == std::string::npos) {
        auto n = ::read(fds[0], buf, sizeof buf);
        if (n <= 0)
          break;
        got.append(buf, static_cast<std::size_t>(n));
      }
      ::close(fds[0]);
      if (auto nl = got.find('\n'); nl != std::string::npos)
        return forked_child(pid, got.substr(0, nl));
      int status;
      ::waitpid(pid, &status, 0);
      REQUIRE_MESSAGE(attempt < 100, "the helper process did not start");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  pid_t pid() const noexcept { return pid_; }
  const std::string& line() const noexcept { return line_; }

  void kill(int sig = SIGKILL) {
    if (pid_ <= 0)
      return;
    ::kill(pid_, sig);
    int status;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  /// Kills the process and waits until it has exited, but leaves it unreaped (a zombie, which kill(pid, 0)
  /// still finds) until the destructor or kill() reaps it.
  void kill_leaving_zombie() {
    if (pid_ <= 0)
      return;
    ::kill(pid_, SIGKILL);
    ::siginfo_t info{};
    ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOWAIT);
  }

private:
  pid_t pid_ = -1;
  std::string line_;
};

} // namespace ferry_test
