// libFuzzer target: a serving engine fed whatever a peer may send over one tcp connection. The input goes to
// a real engine over loopback (a read-write region, a read-only one and memory it does not expose), then the
// peer stops sending; whatever the input held, the engine must answer only with frames that decode, hang up
// within a bound, and stay whole (ASan/UBSan watch its memory).
#include "ferry/io/io_context.hpp"
#include "ferry/transfer.hpp"

#include <arpa/inet.h>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace {

using namespace std::chrono_literals;

/// The engine under test, serving on a thread of its own for the whole run.
struct served_engine {
  std::vector<std::byte> writable = std::vector<std::byte>(1 << 20);
  std::vector<std::byte> readable = std::vector<std::byte>(64 << 10);
  std::vector<std::byte> hidden = std::vector<std::byte>(4096);
  ferry::io::io_context ctx;
  ferry::default_engine engine{ctx,
                               {.name = "fuzz", .listen = "127.0.0.1:0", .tcp = {.stall_timeout = 50ms}}};
  ::sockaddr_in at{};

  served_engine() {
    // segment offsets: writable at 0, readable at 1 MiB; hidden is registered but not exposed
    if (!engine.registry().add(writable.data(), writable.size(), ferry::access::read_write) ||
        !engine.registry().add(readable.data(), readable.size(), ferry::access::read) ||
        !engine.registry().add(hidden.data(), hidden.size(), ferry::access::none) || !engine.start()) {
      std::fprintf(stderr, "server_fuzz: the engine did not start\n");
      std::abort();
    }
    at.sin_family = AF_INET;
    at.sin_port = htons(engine.endpoint()->port());
    at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    engine.run_in_background();
  }
};

[[noreturn]] void broken(const char* why) {
  std::fprintf(stderr, "server_fuzz: %s\n", why);
  std::abort();
}

/// Checks the replies received so far: each header decodes and is a reply; consumes whole frames.
void check_replies(std::vector<std::byte>& in) {
  std::size_t at = 0;
  for (;;) {
    if (in.size() - at < ferry::tcp::frame_header::size)
      break;
    std::array<std::byte, ferry::tcp::frame_header::size> raw;
    std::memcpy(raw.data(), in.data() + at, raw.size());
    auto h = ferry::tcp::decode_header(raw);
    if (!h)
      broken("the engine sent a frame that does not decode");
    if (static_cast<int>(h->type) % 2 != 0)
      broken("the engine sent a request, not a reply");
    std::uint64_t whole = ferry::tcp::frame_header::size + h->payload_length();
    if (in.size() - at < whole)
      break;
    at += whole;
  }
  in.erase(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(at));
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static served_engine& s = *new served_engine; // why: never destroyed; its thread serves until exit
  if (size > (64u << 10))
    return 0;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0)
    broken("no socket");
  if (::connect(fd, reinterpret_cast<const ::sockaddr*>(&s.at), sizeof s.at) != 0 && errno != EINPROGRESS)
    broken("cannot connect to the engine");
  auto give_up = std::chrono::steady_clock::now() + 10s;
  std::size_t sent = 0;
  bool shut = false;
  std::vector<std::byte> replies;
  std::array<std::byte, 1 << 16> buf;
  for (;;) {
    if (std::chrono::steady_clock::now() > give_up)
      broken("the engine neither answered nor hung up within 10 s of the peer's last byte");
    if (sent == size && !shut) {
      ::shutdown(fd, SHUT_WR);
      shut = true;
    }
    ::pollfd p{fd, static_cast<short>(POLLIN | (shut ? 0 : POLLOUT)), 0};
    if (::poll(&p, 1, 100) < 0 && errno != EINTR)
      broken("poll");
    if ((p.revents & POLLOUT) && !shut) {
      ssize_t n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL);
      if (n > 0)
        sent += static_cast<std::size_t>(n);
      else if (n < 0 && errno != EAGAIN && errno != EINTR)
        break; // the engine hung up while the input was still going out
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
        break; // hung up: the end of every exchange
      if (n > 0) {
        replies.insert(replies.end(), buf.begin(), buf.begin() + n);
        check_replies(replies);
      }
    }
  }
  ::close(fd);
  return 0;
}
