// ferry-metad: the small HTTP metadata server. Processes on one host (or a few) publish and find segment
// descriptors through it when no etcd is at hand:
//
//   ferry-metad --listen 127.0.0.1:7100          (or [::1]:7100)
//   ferry-bench --mode target --listen 127.0.0.2:0 --metadata http://127.0.0.1:7100 --segment bench-0
//
// It keeps everything in memory (keys with leases expire when their owner stops renewing them) and prints
// "ferry-metad listening on HOST:PORT" once it serves. Stops on SIGINT/SIGTERM.
#include <ferry/metadata/host_port.hpp>
#include <ferry/metadata/http/metadata_service.hpp>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>
#include <unistd.h>

namespace {
volatile std::sig_atomic_t stop_requested = 0;
extern "C" void on_stop(int) {
  stop_requested = 1;
}
} // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:7100";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
      listen = argv[++i];
    } else {
      std::fprintf(stderr, "usage: ferry-metad [--listen HOST:PORT]   (port 0: any free port)\n");
      return std::strcmp(argv[i], "--help") == 0 ? 0 : 2;
    }
  }
  auto where = ferry::host_port::parse(listen);
  if (!where) {
    std::fprintf(stderr, "ferry-metad: --listen: %s\n", where.error().what());
    return 2;
  }
  struct sigaction sa {};
  sa.sa_handler = &on_stop;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  ferry::metadata_service service;
  auto bound = service.start(where->host, where->port);
  if (!bound) {
    std::fprintf(stderr, "ferry-metad: %s\n", bound.error().message().c_str());
    return 1;
  }
  where->port = *bound;
  std::printf("ferry-metad listening on %s\n", where->to_string().c_str());
  std::fflush(stdout);
  while (!stop_requested)
    ::usleep(100000);
  service.stop();
  return 0;
}
