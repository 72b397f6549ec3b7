#pragma once
/// `ferry::verbs::mr_registrar`: registers memory with a protection domain (ibv_reg_mr), asking for relaxed
/// ordering where the device offers it (an optional access flag: devices without it ignore it). GPU memory
/// exported as a dma-buf (`ferry::cuda`, GPUDirect RDMA) goes through `register_dmabuf`.
///
///   ferry::verbs::registration_cache<ferry::verbs::mr_registrar> cache(ferry::verbs::mr_registrar{pd});

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/transport/verbs/registration_cache.hpp"

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <infiniband/verbs.h>

namespace ferry::verbs {

struct mr_registrar {
  ::ibv_pd* pd = nullptr;
  /// Local access only: these registrations serve this process's own READs and WRITEs, whose keys never
  /// leave the process. Exposed regions are registered separately, with exactly the remote access they grant.
  int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_RELAXED_ORDERING;

  result<registration> register_range(std::byte* p, std::size_t n) {
    ::ibv_mr* mr = ::ibv_reg_mr(pd, p, n, access);
    if (!mr)
      return fail_errno(-errno, "ibv_reg_mr");
    return registration{mr, mr->lkey, mr->rkey};
  }

  /// Registers `length` bytes at `offset` of a dma-buf (GPU memory), addressed by peers at `iova`.
  result<registration> register_dmabuf(int fd, std::uint64_t offset, std::size_t length, std::uint64_t iova) {
    ::ibv_mr* mr = ::ibv_reg_dmabuf_mr(pd, offset, length, iova, fd, access);
    if (!mr)
      return fail_errno(-errno, "ibv_reg_dmabuf_mr");
    return registration{mr, mr->lkey, mr->rkey};
  }

  void deregister(registration r) noexcept {
    if (r.handle)
      ::ibv_dereg_mr(static_cast<::ibv_mr*>(r.handle));
  }
};
static_assert(registrar<mr_registrar>);

} // namespace ferry::verbs
