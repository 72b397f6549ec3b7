#pragma once
/// `ferry::cuda::register_memory`: registers GPU memory (from cudaMalloc or a caller's allocator) or pinned
/// host memory (cudaMallocHost, cudaHostRegister) with a region registry, recording its kind and device; GPU
/// memory that peers may reach also gets a CUDA IPC handle in the segment descriptor, so that another process
/// on the host can open it.
///
///   void* kv = nullptr;
///   cudaSetDevice(1); cudaMalloc(&kv, size);
///   auto offset = ferry::cuda::register_memory(engine.registry(), kv, size, ferry::access::read_write, 1);

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/memory/access.hpp"
#include "ferry/memory/memory_kind.hpp"
#include "ferry/memory/region_registry.hpp"
#include "ferry/transport/cuda/detail/pointer_info.hpp"
#include "ferry/transport/cuda/device_list.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cuda_runtime_api.h>
#include <string>
#include <string_view>

namespace ferry::cuda {

/// Any device: register_memory takes the device the memory is on.
inline constexpr int any_device = -1;

/// A CUDA IPC handle as hex text (what a segment descriptor carries).
inline std::string to_hex(const ::cudaIpcMemHandle_t& h) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(sizeof h.reserved * 2);
  for (char c : h.reserved) {
    auto b = static_cast<unsigned char>(c);
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 15]);
  }
  return out;
}

/// Parses the hex text of an IPC handle; false if it is not one.
inline bool from_hex(std::string_view text, ::cudaIpcMemHandle_t& h) noexcept {
  if (text.size() != sizeof h.reserved * 2)
    return false;
  auto value = [](char c) -> int {
    if (c >= '0' && c <= '9')
      return c - '0';
    if (c >= 'a' && c <= 'f')
      return c - 'a' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < sizeof h.reserved; ++i) {
    int hi = value(text[2 * i]), lo = value(text[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return false;
    h.reserved[i] = static_cast<char>(hi * 16 + lo);
  }
  return true;
}

/// Where [p, p + length) lives, as CUDA sees it: GPU memory (with an IPC handle when `shareable`), pinned
/// host memory, or errc::invalid_argument for memory CUDA does not know (or a range that leaves its
/// allocation).
inline result<memory_location> locate(const void* p, std::size_t length, bool shareable,
                                      int expected_device = any_device) {
  auto info = detail::query_pointer(p);
  if (!info)
    return fail(info.error());
  auto at = reinterpret_cast<std::uintptr_t>(p);
  if (info->kind == memory_kind::host)
    return fail(errc::invalid_argument,
                "cuda register: not GPU or pinned host memory (freed, or never allocated through CUDA)");
  if (info->size != 0 && !info->contains(at, length))
    return fail(errc::out_of_bounds, "cuda register: the range runs past the end of its CUDA allocation");
  if (expected_device != any_device && info->kind == memory_kind::cuda_device &&
      info->device != expected_device)
    return fail(errc::invalid_argument,
                "cuda register: the memory belongs to another device than the one named");
  memory_location where;
  where.kind = info->kind;
  where.device = info->kind == memory_kind::cuda_device ? info->device : -1;
  if (shareable && info->kind == memory_kind::cuda_device) {
    ::cudaIpcMemHandle_t h{};
    void* base = reinterpret_cast<void*>(info->base);
    if (::cudaError_t e = ::cudaIpcGetMemHandle(&h, base); e != ::cudaSuccess) {
      // why: memory from some allocators (cudaMallocAsync pools, VMM) has no legacy IPC handle; it stays
      // reachable in this process, and peers in other processes are told nothing they could not open
      ::cudaGetLastError();
    } else {
      where.ipc_handle = to_hex(h);
      where.ipc_offset = at - info->base;
    }
  }
  return where;
}

/// Registers GPU or pinned host memory: its kind and device are recorded, and GPU memory that peers may reach
/// (permissions other than access::none) carries its IPC handle. `expected_device`, if given, must be the
/// device the memory is on. Yields the region's segment offset, as region_registry::add does.
inline result<std::uint64_t> register_memory(region_registry& registry, void* p, std::size_t length,
                                             access permissions, int expected_device = any_device) {
  if (!p || length == 0)
    return fail(errc::invalid_argument, "cuda register: empty region");
  auto where = locate(p, length, permissions != access::none, expected_device);
  if (!where)
    return fail(where.error());
  return registry.add(p, length, permissions, std::move(*where));
}

} // namespace ferry::cuda
