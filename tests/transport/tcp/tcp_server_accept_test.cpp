// The serving side of the tcp transport out of descriptors: the connections it cannot accept wait in the
// backlog while it backs off (no spinning on its loop), and are served once descriptors are free again.

#include "ferry/transfer.hpp"

#include "../../support/forked_child.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <chrono>
#include <cstdio>
#include <dirent.h>
#include <fcntl.h>
#include <fstream>
#include <netinet/in.h>
#include <signal.h>
#include <sstream>
#include <string>
#include <sys/resource.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using ferry::access;

namespace {

/// The highest descriptor number this process has open.
int highest_open_fd() {
  int highest = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (auto* e = ::readdir(d))
      highest = std::max(highest, std::atoi(e->d_name));
    ::closedir(d);
  }
  return highest;
}

/// Threads this process runs.
int thread_count() {
  int count = 0;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (auto* e = ::readdir(d))
      count += e->d_name[0] != '.';
    ::closedir(d);
  }
  return count;
}

/// CPU time (user + system) a process has used, in clock ticks.
long cpu_ticks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream rest(text.substr(text.rfind(')') + 2)); // fields from the third on
  std::string field;
  long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14)
      utime = std::stol(field);
    if (i == 15)
      stime = std::stol(field);
  }
  return utime + stime;
}

/// A blocking connection to "host:port"; -1 if it failed.
int connect_to(const std::string& address) {
  auto colon = address.rfind(':');
  ::sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<std::uint16_t>(std::stoi(address.substr(colon + 1))));
  ::inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr);
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && ::connect(fd, reinterpret_cast<::sockaddr*>(&sa), sizeof sa) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

} // namespace

TEST_SUITE("tcp server: out of descriptors") {
  TEST_CASE("a server out of descriptors backs off instead of spinning, and serves once some are free") {
    // The target may open only a few more descriptors; SIGUSR1 lifts the limit again.
    auto child = ferry_test::forked_child::start([](auto report) {
      ferry::io::io_context ctx;
      std::vector<std::byte> region(1 << 16);
      // why: one thread only: a thread that starts once descriptors are gone fails the sanitizers' own
      // checks (UBSan's vptr check opens a pipe), which is the runtime's limit, not the server's
      ferry::engine_options options{.name = "target", .listen = "127.0.0.2:0"};
      options.shm.copy_threads = 0;
      ferry::default_engine engine(ctx, options);
      if (!engine.registry().add(region.data(), region.size(), access::read_write) || !engine.start())
        ::_exit(3);
      if (thread_count() != 1)
        ::_exit(6);
      static ::rlimit lifted{};
      ::getrlimit(RLIMIT_NOFILE, &lifted);
      ::signal(SIGUSR1, [](int) { ::setrlimit(RLIMIT_NOFILE, &lifted); });
      ::rlimit tight = lifted;
      tight.rlim_cur = static_cast<rlim_t>(highest_open_fd() + 1);
      if (::setrlimit(RLIMIT_NOFILE, &tight) != 0)
        ::_exit(5);
      // why: a new descriptor takes the lowest free number, so the free numbers below the limit are taken
      // too, all but three
      std::vector<int> taken;
      for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;)
        taken.push_back(fd);
      for (int i = 0; i < 3 && !taken.empty(); ++i) {
        ::close(taken.back());
        taken.pop_back();
      }
      report(engine.endpoint()->to_string());
      ferry::io::io_context::work_guard forever(ctx);
      ctx.run();
    });
    std::vector<int> held;
    for (int i = 0; i < 16; ++i) { // the kernel completes them; the target can accept only the first few
      int fd = connect_to(child.line());
      REQUIRE(fd >= 0);
      held.push_back(fd);
    }
    std::this_thread::sleep_for(100ms); // the target has taken what it could and hit its limit
    long before = cpu_ticks(child.pid());
    std::this_thread::sleep_for(1s);
    long used = cpu_ticks(child.pid()) - before;
    MESSAGE("the target used ", used, " clock ticks (of ", ::sysconf(_SC_CLK_TCK),
            " a second) out of descriptors");
    CHECK(used < ::sysconf(_SC_CLK_TCK) / 4);
    // once it may open descriptors again, it serves: a new engine opens its segment
    for (int fd : held)
      ::close(fd);
    REQUIRE(::kill(child.pid(), SIGUSR1) == 0);
    ferry::io::io_context ctx;
    ferry::transfer_engine<ferry::tcp_transport> initiator(ctx, {.name = "initiator"});
    auto seg = ctx.run_until(initiator.open_segment(child.line()));
    CHECK_MESSAGE(seg, seg.error().message());
  }
}
