#pragma once
/// `ferry::verbs::nic_context`: one opened RDMA NIC — its device context, the first active port (link layer,
/// LID, MTU, the GID index chosen for it), a protection domain, and one completion queue with a completion
/// channel. Every queue pair ferry creates on this NIC reports to that queue; a `completion_worker` drains
/// it.
///
///   auto nic = ferry::verbs::nic_context::open("mlx5_0");
///   if (!nic) std::puts(nic.error().message().c_str());

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/transport/verbs/gid_selection.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <memory>
#include <optional>
#include <string>
#include <utility>

namespace ferry::verbs {

struct nic_options {
  /// The GID index to use on RoCE ports; nullopt: chosen automatically (select_gid).
  std::optional<std::uint32_t> gid_index;
  /// The port to use; 0: the first active one.
  std::uint8_t port = 0;
  int cq_entries = 4096;
};

class nic_context {
public:
  nic_context(const nic_context&) = delete;
  nic_context& operator=(const nic_context&) = delete;
  ~nic_context() {
    if (cq_)
      ::ibv_destroy_cq(cq_);
    if (channel_)
      ::ibv_destroy_comp_channel(channel_);
    if (pd_)
      ::ibv_dealloc_pd(pd_);
    if (ctx_)
      ::ibv_close_device(ctx_);
  }

  /// Opens the device named `name` (e.g. "mlx5_0") and sets up its PD, CQ and completion channel.
  static result<std::unique_ptr<nic_context>> open(const std::string& name, const nic_options& options = {}) {
    int count = 0;
    ::ibv_device** list = ::ibv_get_device_list(&count);
    if (!list) // why: libibverbs returns no list at all (not an empty one) when the host has no device
      return fail(errc::not_found, "verbs: no RDMA device on this host");
    ::ibv_device* dev = nullptr;
    for (int i = 0; i < count; ++i)
      if (name == ::ibv_get_device_name(list[i]))
        dev = list[i];
    std::unique_ptr<nic_context> nic(new nic_context);
    nic->name_ = name;
    if (dev) {
      nic->ctx_ = ::ibv_open_device(dev);
      std::string numa_path = std::string(dev->ibdev_path) + "/device/numa_node";
      if (std::FILE* f = std::fopen(numa_path.c_str(), "r")) {
        if (std::fscanf(f, "%d", &nic->numa_node_) != 1)
          nic->numa_node_ = -1;
        std::fclose(f);
      }
    }
    ::ibv_free_device_list(list);
    if (!dev)
      return fail(errc::not_found, "verbs: no RDMA device of that name");
    if (!nic->ctx_)
      return fail_errno(-errno, "ibv_open_device");
    if (auto r = nic->setup(options); !r)
      return fail(r.error());
    return nic;
  }

  const std::string& name() const noexcept { return name_; }
  ::ibv_context* context() const noexcept { return ctx_; }
  ::ibv_pd* pd() const noexcept { return pd_; }
  ::ibv_cq* cq() const noexcept { return cq_; }
  ::ibv_comp_channel* channel() const noexcept { return channel_; }
  std::uint8_t port() const noexcept { return port_; }
  int link_layer() const noexcept { return link_layer_; }
  bool roce() const noexcept { return link_layer_ == IBV_LINK_LAYER_ETHERNET; }
  std::uint16_t lid() const noexcept { return lid_; }
  ::ibv_mtu active_mtu() const noexcept { return mtu_; }
  const gid_choice& gid_selected() const noexcept { return gid_; }
  const std::array<std::uint8_t, 16>& gid() const noexcept { return gid_bytes_; }
  int numa_node() const noexcept { return numa_node_; }
  std::uint32_t max_message() const noexcept { return max_msg_; }
  int max_qp_wr() const noexcept { return device_.max_qp_wr; }
  int max_sge() const noexcept { return device_.max_sge; }
  int max_qp_rd_atom() const noexcept { return device_.max_qp_rd_atom; }
  int cq_entries() const noexcept { return cq_entries_; }

private:
  nic_context() = default;

  result<void> setup(const nic_options& options) {
    if (int r = ::ibv_query_device(ctx_, &device_); r != 0)
      return fail_errno(-r, "ibv_query_device");
    for (std::uint8_t p = 1; p <= device_.phys_port_cnt; ++p) {
      if (options.port != 0 && p != options.port)
        continue;
      ::ibv_port_attr pa{};
      if (::ibv_query_port(ctx_, p, &pa) != 0 || pa.state != IBV_PORT_ACTIVE)
        continue;
      port_ = p;
      link_layer_ = pa.link_layer;
      lid_ = pa.lid;
      mtu_ = pa.active_mtu;
      max_msg_ = pa.max_msg_sz;
      break;
    }
    if (port_ == 0)
      return fail(errc::peer_unreachable, "verbs: the device has no active port");
    auto table = query_gid_table(ctx_, port_);
    if (!table)
      return fail(table.error());
    auto wanted = options.gid_index ? options.gid_index : gid_index_from_environment();
    auto choice = select_gid(*table, link_layer_, wanted);
    if (!choice)
      return fail(choice.error());
    gid_ = *choice;
    for (auto& e : *table)
      if (e.index == gid_.index)
        gid_bytes_ = e.gid;
    pd_ = ::ibv_alloc_pd(ctx_);
    if (!pd_)
      return fail_errno(-errno, "ibv_alloc_pd");
    channel_ = ::ibv_create_comp_channel(ctx_);
    if (!channel_)
      return fail_errno(-errno, "ibv_create_comp_channel");
    cq_entries_ = std::min(options.cq_entries, device_.max_cqe > 0 ? device_.max_cqe : options.cq_entries);
    cq_ = ::ibv_create_cq(ctx_, cq_entries_, nullptr, channel_, 0);
    if (!cq_)
      return fail_errno(-errno, "ibv_create_cq");
    // why: the completion worker waits on these descriptors with poll() and must never block in a read
    for (int fd : {channel_->fd, ctx_->async_fd}) {
      int flags = ::fcntl(fd, F_GETFL);
      if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return fail_errno(-errno, "fcntl(O_NONBLOCK) on a verbs descriptor");
    }
    return {};
  }

  std::string name_;
  ::ibv_context* ctx_ = nullptr;
  ::ibv_pd* pd_ = nullptr;
  ::ibv_comp_channel* channel_ = nullptr;
  ::ibv_cq* cq_ = nullptr;
  ::ibv_device_attr device_{};
  std::uint8_t port_ = 0;
  int link_layer_ = IBV_LINK_LAYER_UNSPECIFIED;
  std::uint16_t lid_ = 0;
  ::ibv_mtu mtu_ = IBV_MTU_1024;
  std::uint32_t max_msg_ = 1u << 30;
  gid_choice gid_;
  std::array<std::uint8_t, 16> gid_bytes_{};
  int numa_node_ = -1;
  int cq_entries_ = 0;
};

} // namespace ferry::verbs
