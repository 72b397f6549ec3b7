#pragma once
/// `ferry::memory_kind` and `ferry::memory_location`: what kind of memory a registered region is (plain host
/// memory, GPU memory, pinned host memory), the GPU it lives on, and — for GPU memory other processes may
/// reach — the CUDA IPC handle that opens it there. Plain host memory needs none of this.
///
///   registry.add(gpu_ptr, size, ferry::access::read_write,
///                ferry::memory_location{ferry::memory_kind::cuda_device, 0, handle_hex, 0});

#include <cstdint>
#include <string>
#include <string_view>

namespace ferry {

enum class memory_kind : std::uint8_t {
  host = 0,        ///< ordinary (pageable) host memory
  cuda_device = 1, ///< memory of a CUDA device
  cuda_host = 2,   ///< page-locked host memory registered with CUDA (reachable by the GPUs' copy engines)
};

constexpr std::string_view to_string(memory_kind k) noexcept {
  switch (k) {
  case memory_kind::host:
    return "host";
  case memory_kind::cuda_device:
    return "cuda_device";
  case memory_kind::cuda_host:
    return "cuda_host";
  }
  return "host";
}

/// Parses "host", "cuda_device" or "cuda_host"; false if the text is none of them.
constexpr bool parse_memory_kind(std::string_view text, memory_kind& out) noexcept {
  for (memory_kind k : {memory_kind::host, memory_kind::cuda_device, memory_kind::cuda_host})
    if (text == to_string(k)) {
      out = k;
      return true;
    }
  return false;
}

/// Where a region's bytes live.
struct memory_location {
  memory_kind kind = memory_kind::host;
  std::int32_t device = -1;     ///< CUDA device ordinal (cuda_device), -1 otherwise
  std::string ipc_handle;       ///< CUDA IPC handle of the allocation, as hex; empty when not shareable
  std::uint64_t ipc_offset = 0; ///< where the region starts inside that allocation
  friend bool operator==(const memory_location&, const memory_location&) = default;
};

} // namespace ferry
