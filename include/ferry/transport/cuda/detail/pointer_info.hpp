#pragma once
// What CUDA knows about a pointer: the kind of memory, its device, the address a kernel uses for it, and the
// allocation it belongs to (so that one query serves every block of a batch inside that allocation).

#include "ferry/core/result.hpp"
#include "ferry/memory/memory_kind.hpp"
#include "ferry/transport/cuda/device_list.hpp"

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>

namespace ferry::cuda::detail {

struct pointer_info {
  memory_kind kind = memory_kind::host;
  int device = -1;                ///< the GPU of device memory (pinned host memory: -1)
  std::uintptr_t base = 0;        ///< the allocation's first byte (or the queried pointer if unknown)
  std::size_t size = 0;           ///< the allocation's length (0: unknown, the info holds for `base` only)
  std::intptr_t device_delta = 0; ///< add to a host address to get the address a kernel uses

  bool contains(std::uintptr_t p, std::size_t n) const noexcept {
    return size == 0 ? p == base : p >= base && n <= size && p - base <= size - n;
  }
};

/// cuMemGetAddressRange, fetched through the runtime (no link against libcuda, so that programs start on
/// hosts without a driver).
inline bool address_range(std::uintptr_t p, std::uintptr_t& base, std::size_t& size) noexcept {
  using fn_t = int (*)(unsigned long long*, std::size_t*, unsigned long long);
  static fn_t fn = [] {
    void* f = nullptr;
    ::cudaDriverEntryPointQueryResult status{};
    if (::cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &f, 12000, ::cudaEnableDefault, &status) !=
            ::cudaSuccess ||
        status != ::cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<fn_t>(f);
  }();
  unsigned long long b = 0;
  if (!fn || fn(&b, &size, p) != 0)
    return false;
  base = static_cast<std::uintptr_t>(b);
  return true;
}

/// Asks CUDA about `p`. Pageable host memory (and freed memory) reads as memory_kind::host.
inline result<pointer_info> query_pointer(const void* p) {
  ::cudaPointerAttributes a{};
  if (::cudaError_t e = ::cudaPointerGetAttributes(&a, p); e != ::cudaSuccess) {
    ::cudaGetLastError();
    return fail(cuda_error(e, "cudaPointerGetAttributes"));
  }
  pointer_info info;
  auto at = reinterpret_cast<std::uintptr_t>(p);
  info.base = at;
  switch (a.type) {
  case ::cudaMemoryTypeDevice:
  case ::cudaMemoryTypeManaged:
    info.kind = memory_kind::cuda_device;
    info.device = a.device;
    break;
  case ::cudaMemoryTypeHost:
    info.kind = memory_kind::cuda_host;
    if (a.devicePointer && a.hostPointer)
      info.device_delta =
          reinterpret_cast<std::intptr_t>(a.devicePointer) - reinterpret_cast<std::intptr_t>(a.hostPointer);
    break;
  default:
    info.kind = memory_kind::host;
    return info;
  }
  std::uintptr_t base = 0;
  std::size_t size = 0;
  if (address_range(at, base, size) && size > 0) {
    info.base = base;
    info.size = size;
  }
  return info;
}

} // namespace ferry::cuda::detail
