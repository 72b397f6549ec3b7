// The batch copy kernel of ferry::cuda_transport. Its PTX is embedded in copy_kernel_ptx.hpp (ferry is
// header-only, so the kernel travels as text and is loaded with cudaLibraryLoadData). Regenerate with
//   nvcc -ptx -arch=compute_75 -o copy_kernel.ptx copy_kernel.cu
// and paste the result into copy_kernel_ptx.hpp.
//
// Each CUDA block copies the pieces i = blockIdx.x, blockIdx.x + gridDim.x, ... of the descriptor array;
// pieces are at most a few hundred KiB (the host cuts blocks into pieces), so the grid stays balanced.

struct ferry_copy_piece {
  const unsigned char* src;
  unsigned char* dst;
  unsigned long long length;
};

extern "C" __global__ void __launch_bounds__(512) ferry_copy_pieces(const ferry_copy_piece* pieces,
                                                                    unsigned long long count) {
  for (unsigned long long i = blockIdx.x; i < count; i += gridDim.x) {
    const unsigned char* src = pieces[i].src;
    unsigned char* dst = pieces[i].dst;
    unsigned long long n = pieces[i].length;
    if (((reinterpret_cast<unsigned long long>(src) | reinterpret_cast<unsigned long long>(dst)) & 15) == 0) {
      const uint4* s = reinterpret_cast<const uint4*>(src);
      uint4* d = reinterpret_cast<uint4*>(dst);
      unsigned long long vectors = n / 16;
      unsigned long long k = threadIdx.x;
      const unsigned long long step = blockDim.x;
      // four independent 16-byte loads in flight per thread before the first store
      for (; k + 3 * step < vectors; k += 4 * step) {
        uint4 a = s[k], b = s[k + step], c = s[k + 2 * step], e = s[k + 3 * step];
        d[k] = a;
        d[k + step] = b;
        d[k + 2 * step] = c;
        d[k + 3 * step] = e;
      }
      for (; k < vectors; k += step)
        d[k] = s[k];
      for (unsigned long long t = vectors * 16 + threadIdx.x; t < n; t += step)
        dst[t] = src[t];
    } else {
      for (unsigned long long t = threadIdx.x; t < n; t += blockDim.x)
        dst[t] = src[t];
    }
  }
}
