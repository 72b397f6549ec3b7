// ferry-file-relay: moves a file from one "host" to another through ferry's sockets and files, then checks
// it.
//
// A sender on 127.0.0.2 reads the source file in 1 MiB chunks through ferry::io::file and streams them over a
// ferry::io::tcp_socket; a receiver on 127.0.0.3 writes what arrives into the destination file. Both run as
// coroutines on one io_context (io_uring where permitted, else epoll). At the end both files are read back
// and compared byte for byte.
//
//   ferry-file-relay [--size BYTES] [--chunk BYTES]
#include <ferry/core.hpp>
#include <ferry/io.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace {

using ferry::task;
namespace io = ferry::io;

struct options {
  std::size_t size = 64u << 20;
  std::size_t chunk = 1u << 20;
};

options parse(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::size_t {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::strtoull(argv[++i], nullptr, 10);
    };
    if (a == "--size")
      o.size = value();
    else if (a == "--chunk")
      o.chunk = value();
    else {
      std::fprintf(stderr, "usage: ferry-file-relay [--size BYTES] [--chunk BYTES]\n");
      std::exit(a == "--help" ? 0 : 2);
    }
  }
  if (o.chunk == 0)
    o.chunk = 1;
  return o;
}

// Reads the source file chunk by chunk and sends each chunk, prefixed by nothing: the size is agreed up
// front.
task<ferry::result<void>> send_file(io::io_context& ctx, io::tcp_listener& listener, const std::string& path,
                                    std::size_t chunk) {
  auto peer = co_await listener.accept();
  if (!peer)
    co_return ferry::fail(peer.error());
  auto f = io::file::open(ctx, path, O_RDONLY);
  if (!f)
    co_return ferry::fail(f.error());
  std::vector<std::byte> buf(chunk);
  for (std::uint64_t offset = 0;;) {
    auto n = co_await f->read_all_at(offset, buf);
    if (!n)
      co_return ferry::fail(n.error());
    if (*n == 0)
      break;
    if (auto s = co_await peer->send_all(std::span(buf).first(*n)); !s)
      co_return s;
    offset += *n;
  }
  peer->shutdown(SHUT_WR);
  co_return ferry::result<void>{};
}

// Receives until the sender closes and writes everything at increasing offsets.
task<ferry::result<std::size_t>> receive_file(io::io_context& ctx, io::endpoint from, const std::string& path,
                                              std::size_t chunk) {
  auto s = co_await io::tcp_socket::connect(ctx, from, {}, *io::endpoint::parse("127.0.0.3:0"));
  if (!s)
    co_return ferry::fail(s.error());
  auto f = io::file::open(ctx, path, O_WRONLY | O_CREAT | O_TRUNC);
  if (!f)
    co_return ferry::fail(f.error());
  std::vector<std::byte> buf(chunk);
  std::size_t total = 0;
  for (;;) {
    auto n = co_await s->recv(buf);
    if (!n)
      co_return ferry::fail(n.error());
    if (*n == 0)
      break;
    if (auto w = co_await f->write_all_at(total, std::span(buf).first(*n)); !w)
      co_return ferry::fail(w.error());
    total += *n;
  }
  co_return total;
}

task<bool> same_contents(io::io_context& ctx, const std::string& a, const std::string& b, std::size_t chunk) {
  auto fa = io::file::open(ctx, a, O_RDONLY);
  auto fb = io::file::open(ctx, b, O_RDONLY);
  if (!fa || !fb || *fa->size() != *fb->size())
    co_return false;
  std::vector<std::byte> ba(chunk), bb(chunk);
  for (std::uint64_t off = 0;; off += chunk) {
    auto [na, nb] = co_await ferry::when_all(fa->read_all_at(off, ba), fb->read_all_at(off, bb));
    if (!na || !nb || *na != *nb)
      co_return false;
    if (*na == 0)
      co_return true;
    if (std::memcmp(ba.data(), bb.data(), *na) != 0)
      co_return false;
  }
}

} // namespace

int main(int argc, char** argv) {
  options opt = parse(argc, argv);
  std::string tmpl = (std::filesystem::temp_directory_path() / "ferry-relay-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) {
    std::perror("mkdtemp");
    return 1;
  }
  std::filesystem::path dir = tmpl;
  std::string src = (dir / "source.bin").string(), dst = (dir / "copy.bin").string();

  io::io_context ctx;
  std::printf("io backend: %s%s%s\n", io::to_string(ctx.backend()), ctx.backend_note().empty() ? "" : " — ",
              ctx.backend_note().c_str());

  // Make the source file: random bytes, written through ferry.
  {
    std::mt19937_64 rng(42);
    std::vector<std::byte> data(opt.size);
    for (std::size_t i = 0; i + 8 <= data.size(); i += 8) {
      auto v = rng();
      std::memcpy(data.data() + i, &v, 8);
    }
    auto f = io::file::open(ctx, src, O_WRONLY | O_CREAT | O_TRUNC);
    if (!f || !ctx.run_until(f->write_all_at(0, data))) {
      std::fprintf(stderr, "could not write %s\n", src.c_str());
      return 1;
    }
  }

  auto listener = io::tcp_listener::listen(ctx, *io::endpoint::parse("127.0.0.2:0"));
  if (!listener) {
    std::fprintf(stderr, "listen: %s\n", listener.error().message().c_str());
    return 1;
  }
  auto from = *listener->local_endpoint();
  auto t0 = std::chrono::steady_clock::now();
  auto [sent, received] = ctx.run_until(
      ferry::when_all(send_file(ctx, *listener, src, opt.chunk), receive_file(ctx, from, dst, opt.chunk)));
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!sent || !received) {
    std::fprintf(stderr, "relay failed: %s\n", (!sent ? sent.error() : received.error()).message().c_str());
    return 1;
  }
  bool same = ctx.run_until(same_contents(ctx, src, dst, opt.chunk));
  std::printf("sender   %s read %s and sent it in %zu-byte chunks\n", from.to_string().c_str(), src.c_str(),
              opt.chunk);
  std::printf("receiver 127.0.0.3 wrote %zu bytes to %s\n", *received, dst.c_str());
  std::printf("moved %.1f MiB in %.3f s (%.2f GB/s); contents %s\n",
              static_cast<double>(*received) / (1 << 20), seconds,
              static_cast<double>(*received) / seconds / 1e9, same ? "identical" : "DIFFER");
  std::filesystem::remove_all(dir);
  return same && *received == opt.size ? 0 : 1;
}
