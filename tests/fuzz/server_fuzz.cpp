// libFuzzer target: a serving engine fed whatever a peer may send over one tcp connection. The input goes to
// a real engine over loopback (a read-write region, a read-only one and memory it does not expose), then the
// peer stops sending; whatever the input held, the engine must answer only with replies that decode, never
// stop moving for long before it hangs up, and stay whole (ASan watches its memory).
#include "ferry/io/io_context.hpp"
#include "ferry/transfer.hpp"

#include <algorithm>
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
  // why: small regions keep the replies to a run of reads small (each read returns at most a region)
  std::vector<std::byte> writable = std::vector<std::byte>(256 << 10);
  std::vector<std::byte> readable = std::vector<std::byte>(64 << 10);
  std::vector<std::byte> hidden = std::vector<std::byte>(4096);
  ferry::io::io_context ctx;
  ferry::default_engine engine{ctx,
                               {.name = "fuzz", .listen = "127.0.0.1:0", .tcp = {.stall_timeout = 50ms}}};
  ::sockaddr_in at{};

  served_engine() {
    // segment offsets: writable at 0, readable at 256 KiB; hidden is registered but not exposed
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

/// Follows the replies as they arrive: each header must decode and be a reply; payloads are skipped.
struct reply_stream {
  std::array<std::byte, ferry::tcp::frame_header::size> header;
  std::size_t header_bytes = 0;
  std::uint64_t payload_left = 0;

  void take(const std::byte* p, std::size_t n) {
    while (n > 0) {
      if (payload_left > 0) {
        std::size_t skip = static_cast<std::size_t>(std::min<std::uint64_t>(payload_left, n));
        payload_left -= skip;
        p += skip;
        n -= skip;
        continue;
      }
      std::size_t part = std::min(n, header.size() - header_bytes);
      std::memcpy(header.data() + header_bytes, p, part);
      header_bytes += part;
      p += part;
      n -= part;
      if (header_bytes < header.size())
        return;
      header_bytes = 0;
      auto h = ferry::tcp::decode_header(header);
      if (!h)
        broken("the engine sent a frame that does not decode");
      if (static_cast<int>(h->type) % 2 != 0)
        broken("the engine sent a request, not a reply");
      payload_left = h->payload_length();
    }
  }
};

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
  // why: the engine drops a peer that stalls mid-request after 50 ms; 10 s without a byte moving either way
  // is a hang, whatever the machine's load
  auto give_up = std::chrono::steady_clock::now() + 10s;
  std::size_t sent = 0;
  bool shut = false;
  reply_stream replies;
  std::array<std::byte, 1 << 16> buf;
  for (;;) {
    if (std::chrono::steady_clock::now() > give_up)
      broken("nothing moved for 10 s and the engine did not hang up");
    if (sent == size && !shut) {
      ::shutdown(fd, SHUT_WR);
      shut = true;
    }
    ::pollfd p{fd, static_cast<short>(POLLIN | (shut ? 0 : POLLOUT)), 0};
    if (::poll(&p, 1, 100) < 0 && errno != EINTR)
      broken("poll");
    if ((p.revents & POLLOUT) && !shut) {
      ssize_t n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<std::size_t>(n);
        give_up = std::chrono::steady_clock::now() + 10s;
      } else if (n < 0 && errno != EAGAIN && errno != EINTR)
        break; // the engine hung up while the input was still going out
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
        break; // hung up: the end of every exchange
      if (n > 0) {
        replies.take(buf.data(), static_cast<std::size_t>(n));
        give_up = std::chrono::steady_clock::now() + 10s;
      }
    }
  }
  ::close(fd);
  return 0;
}
