// The other process of the CUDA IPC test: allocates GPU memory on the device named by argv[1] (argv[2]
// bytes), fills it with the test pattern (seed 4), registers it with an engine that serves its descriptor
// over TCP, prints "listening HOST:PORT", and serves until its stdin closes; then it exits at once.

#include "ferry/transfer.hpp"
#include "ferry/transport/cuda/cuda_transport.hpp"
#include "ferry/transport/cuda/register_memory.hpp"

#include <cstdio>
#include <cstdlib>
#include <cuda_runtime_api.h>
#include <string>
#include <unistd.h>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::printf("usage: ipc_peer DEVICE BYTES\n");
    return 2;
  }
  int device = std::atoi(argv[1]);
  std::size_t n = std::strtoull(argv[2], nullptr, 10);
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = static_cast<std::byte>((i * 131 + 4 * 7 + (i >> 12)) & 0xff);
  void* p = nullptr;
  if (::cudaSetDevice(device) != ::cudaSuccess || ::cudaMalloc(&p, n) != ::cudaSuccess ||
      ::cudaMemcpy(p, v.data(), n, ::cudaMemcpyHostToDevice) != ::cudaSuccess) {
    std::printf("error: cannot prepare GPU memory: %s\n", ::cudaGetErrorString(::cudaGetLastError()));
    return 1;
  }
  int code = 0;
  {
    ferry::io::io_context ctx;
    ferry::transfer_engine<ferry::cuda_transport, ferry::tcp_transport> engine(
        ctx, {.name = "ipc-peer", .listen = "127.0.0.1:0"});
    auto reg = ferry::cuda::register_memory(engine.registry(), p, n, ferry::access::read_write, device);
    auto started = reg ? engine.start() : ferry::result<void>(ferry::fail(reg.error()));
    if (!started) {
      std::printf("error: %s\n", started.error().message().c_str());
      return 1;
    }
    std::printf("listening %s\n", engine.endpoint()->to_string().c_str());
    std::fflush(stdout);
    engine.run_in_background();
    char c;
    while (::read(0, &c, 1) > 0) {
    }
    // why: the test is about a process that ends while a peer holds its memory open; it ends at once,
    // without an orderly shutdown that would wait for the peer's connection
    std::_Exit(code);
  }
}
