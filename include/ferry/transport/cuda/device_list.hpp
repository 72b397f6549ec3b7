#pragma once
/// `ferry::cuda::list_devices()`: the CUDA devices of this host, or the CUDA runtime's reason why there are
/// none (no driver, no device).
///
///   auto devices = ferry::cuda::list_devices();
///   if (!devices) std::puts(devices.error().message().c_str());   // e.g. "cudaGetDeviceCount: no
///   CUDA-capable device"

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"

#include <cstddef>
#include <cuda_runtime_api.h>
#include <string>
#include <system_error>
#include <vector>

namespace ferry::cuda {

/// The error category of cudaError_t values.
inline const std::error_category& cuda_category() noexcept {
  struct category final : std::error_category {
    const char* name() const noexcept override { return "cuda"; }
    std::string message(int value) const override {
      return ::cudaGetErrorString(static_cast<::cudaError_t>(value));
    }
  };
  static const category c;
  return c;
}

/// An error from a CUDA runtime call, naming the call.
inline error cuda_error(::cudaError_t e, const char* what) noexcept {
  return error(std::error_code(static_cast<int>(e), cuda_category()), what);
}

struct device_info {
  int index = 0;
  std::string name;       ///< e.g. "NVIDIA H100 80GB HBM3"
  std::string pci_bus_id; ///< e.g. "0000:1b:00.0"
  std::size_t memory_bytes = 0;
  int compute_major = 0;
  int compute_minor = 0;
};

/// Lists the devices, or the runtime's error (cudaErrorNoDevice, cudaErrorInsufficientDriver ...).
inline result<std::vector<device_info>> list_devices() {
  int count = 0;
  if (::cudaError_t e = ::cudaGetDeviceCount(&count); e != ::cudaSuccess) {
    ::cudaGetLastError(); // why: clear the sticky-free error so later calls do not report it again
    return fail(cuda_error(e, "cudaGetDeviceCount"));
  }
  std::vector<device_info> out;
  for (int i = 0; i < count; ++i) {
    ::cudaDeviceProp prop{};
    if (::cudaError_t e = ::cudaGetDeviceProperties(&prop, i); e != ::cudaSuccess)
      return fail(cuda_error(e, "cudaGetDeviceProperties"));
    char bus[32] = {};
    ::cudaDeviceGetPCIBusId(bus, sizeof bus, i);
    out.push_back({i, prop.name, bus, prop.totalGlobalMem, prop.major, prop.minor});
  }
  return out;
}

} // namespace ferry::cuda
