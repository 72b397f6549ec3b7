// ferry-plain-tcp: what plain sockets move over loopback TCP with the memory of a ferry-bench row, the
// yardstick for how much of a gap to iperf3 is the memory rather than the transfer engine. A sender process
// and a receiver process, one thread each, move messages of --block-size over --streams connections the way
// iperf3 (3.12) does: blocking sends of whole messages on the streams poll finds writable, non-blocking
// receives on the streams poll finds readable, and no tuning at all. Each side's messages cycle
// through --blocks distinct blocks of its own buffer: 128 blocks of 1 MiB is the memory ferry-bench's
// initiator cycles through per batch (not in cache); 1 block is one reused buffer per side, which stays in
// cache (what iperf3 does).
//
//   ferry-plain-tcp --streams 4 --block-size 1M --blocks 128 --duration 3
//   -> {"tool":"plain-tcp","streams":4,"block_size":1048576,"blocks":128,"congestion":"bbr","gbps":5.1}
//
// Throughput is what the receiver took, over the time from its first byte to its last. --low-water sets the
// receiver's SO_RCVLOWAT for the whole run, and --reply-size has it send that many bytes back per message
// (the sender takes them without waiting after each message it sends; a reply the socket has no room for is
// dropped and counted in replies_dropped), for comparisons with ferry's receive batching.
#include <ferry/io/detail/congestion_control.hpp>

#include <CLI/CLI.hpp>

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <netinet/in.h>
#include <poll.h>
#include <string>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

struct options {
  unsigned streams = 1;
  std::uint64_t block_size = 1 << 20;
  unsigned blocks = 128;
  double duration = 3;
  std::string congestion; // "": the system's
  std::string address = "127.0.0.1";
  int low_water = 0;            // SO_RCVLOWAT of the receiver's sockets (0: the system's, 1 byte)
  std::uint32_t reply_size = 0; // bytes the receiver sends back per whole message (0: none)
};

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "ferry-plain-tcp: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

// A buffer of `size` bytes, every page touched (so no run pays for page faults).
char* touched_buffer(std::size_t size, char fill) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    die("mmap");
  std::memset(p, fill, size);
  return static_cast<char*>(p);
}

void set_congestion(int fd, const std::string& name) {
  if (name.empty())
    return;
  if (auto set = ferry::io::detail::set_congestion_control(fd, name); !set) {
    std::fprintf(stderr, "ferry-plain-tcp: %s\n", set.error().message().c_str());
    std::exit(1);
  }
}

// Where each stream stands in its current message; messages take the side's blocks in turn.
struct stream_position {
  char* message = nullptr;
  std::size_t done = 0;
};

struct block_cursor {
  char* base;
  std::uint64_t block_size;
  unsigned blocks;
  unsigned next = 0;
  char* take() {
    char* b = base + static_cast<std::uint64_t>(next) * block_size;
    next = (next + 1) % blocks;
    return b;
  }
};

// What the receiver reports to the sender's process, through a pipe.
struct receiver_report {
  std::uint64_t bytes = 0;
  double seconds = 0; // from the first byte to the last
  std::uint64_t replies_dropped = 0;
};

// The receiver: takes every stream until each ends; writes a receiver_report to `report`.
[[noreturn]] void receive(const options& o, int listener, int report) {
  std::vector<int> socks;
  for (unsigned i = 0; i < o.streams; ++i) {
    int s = ::accept(listener, nullptr, nullptr);
    if (s < 0)
      die("accept");
    socks.push_back(s);
  }
  block_cursor cursor{touched_buffer(o.block_size * o.blocks, 1), o.block_size, o.blocks};
  std::vector<stream_position> at(o.streams);
  for (auto& p : at)
    p.message = cursor.take();
  std::vector<::pollfd> fds;
  for (int s : socks) {
    fds.push_back({s, POLLIN, 0});
    if (o.low_water > 0 && ::setsockopt(s, SOL_SOCKET, SO_RCVLOWAT, &o.low_water, sizeof o.low_water) < 0)
      die("setsockopt SO_RCVLOWAT");
  }
  std::vector<char> reply(o.reply_size);
  std::uint64_t replies_dropped = 0;
  std::uint64_t bytes = 0;
  clock_type::time_point first{}, last{};
  unsigned open = o.streams;
  while (open > 0) {
    if (::poll(fds.data(), fds.size(), -1) < 0 && errno != EINTR)
      die("poll");
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0)
        continue;
      // As iperf3's receiver: read until the message is whole or nothing more is waiting.
      auto& p = at[i];
      for (;;) {
        ssize_t n = ::recv(fds[i].fd, p.message + p.done, o.block_size - p.done, MSG_DONTWAIT);
        if (n == 0) {
          ::close(fds[i].fd);
          fds[i].fd = -1;
          --open;
          break;
        }
        if (n < 0) {
          if (errno == EAGAIN || errno == EINTR)
            break;
          die("recv");
        }
        if (bytes == 0)
          first = clock_type::now();
        bytes += static_cast<std::uint64_t>(n);
        last = clock_type::now();
        p.done += static_cast<std::size_t>(n);
        if (p.done == o.block_size) {
          // why: never waits: a sender blocked in its own send, or done sending, drains no replies, and a
          // receiver waiting for room for one would wait for ever. A reply with no room is dropped, counted.
          if (!reply.empty() &&
              ::send(fds[i].fd, reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
              die("send reply");
            ++replies_dropped;
          }
          p.message = cursor.take();
          p.done = 0;
          break;
        }
      }
    }
  }
  receiver_report r{bytes, std::chrono::duration<double>(last - first).count(), replies_dropped};
  if (::write(report, &r, sizeof r) != sizeof r)
    die("write report");
  std::_Exit(0);
}

// The sender, as iperf3's client: blocking sockets; each round polls for the streams that can take more and
// sends up to 10 whole messages on each of them, until `duration` seconds have passed; then ends each stream.
void send_for(const options& o, const std::vector<int>& socks) {
  std::vector<char> replies(o.reply_size ? 4096 : 0);
  block_cursor cursor{touched_buffer(o.block_size * o.blocks, 2), o.block_size, o.blocks};
  std::vector<::pollfd> fds;
  for (int s : socks)
    fds.push_back({s, POLLOUT, 0});
  auto end = clock_type::now() +
             std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(o.duration));
  while (clock_type::now() < end) {
    if (::poll(fds.data(), fds.size(), 100) < 0 && errno != EINTR)
      die("poll");
    for (auto& f : fds) {
      if (f.revents == 0)
        continue;
      for (int sent = 0; sent < 10 && clock_type::now() < end; ++sent) {
        char* message = cursor.take();
        for (std::size_t done = 0; done < o.block_size;) {
          ssize_t n = ::send(f.fd, message + done, o.block_size - done, MSG_NOSIGNAL);
          if (n < 0 && errno != EINTR)
            die("send");
          done += n > 0 ? static_cast<std::size_t>(n) : 0;
        }
        // the replies that have come, taken without waiting (they carry nothing the sender needs)
        if (!replies.empty())
          while (::recv(f.fd, replies.data(), replies.size(), MSG_DONTWAIT) > 0) {
          }
      }
    }
  }
  for (int s : socks)
    ::shutdown(s, SHUT_WR);
}

} // namespace

int main(int argc, char** argv) {
  options o;
  CLI::App app{"ferry-plain-tcp: plain loopback TCP sockets moving the memory of a ferry-bench row"};
  app.add_option("--streams", o.streams, "TCP connections, all driven by one thread per side")
      ->check(CLI::Range(1u, 64u));
  app.add_option("--block-size", o.block_size, "bytes per message (suffixes K, M, G)")
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 30));
  app.add_option("--blocks", o.blocks,
                 "distinct blocks each side's messages cycle through (1: one reused buffer)")
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--duration", o.duration, "seconds of sending")->check(CLI::PositiveNumber);
  app.add_option("--congestion", o.congestion, "TCP congestion control of both ends (default: the system's)");
  app.add_option("--address", o.address, "loopback address to use");
  app.add_option(
         "--low-water", o.low_water,
         "SO_RCVLOWAT of the receiver's sockets for the whole run (suffixes K, M; default: the system's)")
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(0, 1 << 30));
  app.add_option("--reply-size", o.reply_size,
                 "bytes the receiver sends back after each whole message, as a transfer engine's reply")
      ->check(CLI::Range(0u, 4096u));
  CLI11_PARSE(app, argc, argv);

  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0)
    die("socket");
  ::sockaddr_in at{};
  at.sin_family = AF_INET;
  if (::inet_pton(AF_INET, o.address.c_str(), &at.sin_addr) != 1) {
    std::fprintf(stderr, "ferry-plain-tcp: not an IPv4 address: %s\n", o.address.c_str());
    return 2;
  }
  set_congestion(listener, o.congestion); // why: accepted connections inherit it
  if (::bind(listener, reinterpret_cast<::sockaddr*>(&at), sizeof at) < 0 || ::listen(listener, 64) < 0)
    die("bind/listen");
  ::socklen_t len = sizeof at;
  ::getsockname(listener, reinterpret_cast<::sockaddr*>(&at), &len);

  int report[2];
  if (::pipe(report) < 0)
    die("pipe");
  pid_t receiver = ::fork();
  if (receiver < 0)
    die("fork");
  if (receiver == 0) {
    ::prctl(PR_SET_PDEATHSIG,
            SIGKILL); // why: a sender that dies must not leave the receiver waiting in accept
    if (::getppid() == 1)
      std::_Exit(1);
    ::close(report[0]);
    receive(o, listener, report[1]);
  }
  ::close(report[1]);
  ::close(listener);

  std::vector<int> socks;
  for (unsigned i = 0; i < o.streams; ++i) {
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
      die("socket");
    set_congestion(s, o.congestion);
    if (::connect(s, reinterpret_cast<::sockaddr*>(&at), sizeof at) < 0)
      die("connect");
    socks.push_back(s);
  }
  std::string congestion = ferry::io::detail::congestion_control(socks.front());
  if (congestion.empty())
    congestion = "?";
  send_for(o, socks);

  receiver_report got;
  bool reported = ::read(report[0], &got, sizeof got) == sizeof got;
  auto [bytes, seconds, replies_dropped] = got;
  int status = 0;
  ::waitpid(receiver, &status, 0);
  for (int s : socks)
    ::close(s);
  if (!reported || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || seconds <= 0) {
    std::fprintf(stderr, "ferry-plain-tcp: the receiver failed\n");
    return 1;
  }
  std::printf(
      "{\"tool\":\"plain-tcp\",\"streams\":%u,\"block_size\":%llu,\"blocks\":%u,\"congestion\":\"%s\","
      "\"low_water\":%d,\"reply_size\":%u,\"replies_dropped\":%llu,\"bytes\":%llu,\"seconds\":%.3f,"
      "\"gbps\":%.3f}\n",
      o.streams, static_cast<unsigned long long>(o.block_size), o.blocks, congestion.c_str(), o.low_water,
      o.reply_size, static_cast<unsigned long long>(replies_dropped), static_cast<unsigned long long>(bytes),
      seconds, static_cast<double>(bytes) / seconds / 1e9);
  return 0;
}
