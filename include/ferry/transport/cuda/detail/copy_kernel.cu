// The batch copy kernels of ferry::cuda_transport. Their PTX is embedded in copy_kernel_ptx.hpp (ferry is
// header-only, so the kernels travel as text and are loaded with cudaLibraryLoadData). Regenerate with
//   nvcc -ptx -arch=compute_75 -o copy_kernel.ptx copy_kernel.cu
// and paste the result into copy_kernel_ptx.hpp.
//
// All take the same arguments: an array of pieces (source, destination, length) in device memory and its
// length. They differ in who copies a piece:
//   ferry_copy_pieces     one CUDA block per piece (grid-stride over the pieces), 4 loads in flight per thread
//   ferry_copy_pieces_u8  the same with 8 loads in flight per thread
//   ferry_copy_warps      one warp per piece (grid-stride over warps), 8 loads in flight per lane; meant for
//                         a grid sized to the GPU (a few blocks per SM) rather than to the batch
// benchmarks/cuda_copy_kernels_bench.cpp measures them against each other.

struct ferry_copy_piece {
  const unsigned char* src;
  unsigned char* dst;
  unsigned long long length;
};

// Copies n bytes with `width` cooperating threads (this one is `lane`), `unroll` 16-byte loads in flight
// per thread before the first store. why .cg: the bytes are touched once; caching them in L1 only evicts
// the descriptors, and the global-space instructions skip the generic address check.
template<int unroll>
__device__ __forceinline__ void ferry_copy_range(const unsigned char* src, unsigned char* dst,
                                                 unsigned long long n, unsigned lane, unsigned width) {
  if (((reinterpret_cast<unsigned long long>(src) | reinterpret_cast<unsigned long long>(dst)) & 15) == 0) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    const unsigned long long vectors = n / 16;
    unsigned long long k = lane;
    for (; k + (unroll - 1) * width < vectors; k += unroll * width) {
      uint4 v[unroll];
#pragma unroll
      for (int u = 0; u < unroll; ++u)
        v[u] = __ldcg(s + k + u * width);
#pragma unroll
      for (int u = 0; u < unroll; ++u)
        __stcg(d + k + u * width, v[u]);
    }
    for (; k < vectors; k += width)
      __stcg(d + k, __ldcg(s + k));
    for (unsigned long long t = vectors * 16 + lane; t < n; t += width)
      dst[t] = src[t];
  } else {
    for (unsigned long long t = lane; t < n; t += width)
      dst[t] = src[t];
  }
}

extern "C" __global__ void __launch_bounds__(1024) ferry_copy_pieces(const ferry_copy_piece* pieces,
                                                                     unsigned long long count) {
  for (unsigned long long i = blockIdx.x; i < count; i += gridDim.x)
    ferry_copy_range<4>(pieces[i].src, pieces[i].dst, pieces[i].length, threadIdx.x, blockDim.x);
}

extern "C" __global__ void __launch_bounds__(1024) ferry_copy_pieces_u8(const ferry_copy_piece* pieces,
                                                                        unsigned long long count) {
  for (unsigned long long i = blockIdx.x; i < count; i += gridDim.x)
    ferry_copy_range<8>(pieces[i].src, pieces[i].dst, pieces[i].length, threadIdx.x, blockDim.x);
}

extern "C" __global__ void __launch_bounds__(1024) ferry_copy_warps(const ferry_copy_piece* pieces,
                                                                    unsigned long long count) {
  const unsigned lane = threadIdx.x & 31;
  const unsigned long long warps = (static_cast<unsigned long long>(gridDim.x) * blockDim.x) >> 5;
  for (unsigned long long i = (static_cast<unsigned long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
       i < count; i += warps)
    ferry_copy_range<8>(pieces[i].src, pieces[i].dst, pieces[i].length, lane, 32);
}
