#pragma once
/// `ferry::verbs::list_devices()`: the RDMA devices (HCAs) libibverbs sees on this host, with their ports.
/// An empty list means no RDMA device is present (the verbs transport then has nothing to run on).
///
///   for (auto& d : ferry::verbs::list_devices()) std::puts(d.name.c_str());

#include <cstdint>
#include <cstdio>
#include <infiniband/verbs.h>
#include <string>
#include <vector>

namespace ferry::verbs {

struct port_info {
  std::uint8_t number = 0;
  bool active = false;
  int link_layer = 0; ///< IBV_LINK_LAYER_INFINIBAND or IBV_LINK_LAYER_ETHERNET (RoCE)
  std::uint16_t lid = 0;
  int active_mtu = 0; ///< an ibv_mtu value
};

struct device_info {
  std::string name; ///< e.g. "mlx5_0"
  std::uint64_t node_guid = 0;
  int numa_node = -1; ///< from sysfs; -1 when unknown
  std::vector<port_info> ports;
};

/// Lists the devices; devices that cannot be opened are listed without ports.
inline std::vector<device_info> list_devices() {
  std::vector<device_info> out;
  int count = 0;
  ::ibv_device** list = ::ibv_get_device_list(&count);
  if (!list)
    return out;
  for (int i = 0; i < count; ++i) {
    device_info d;
    d.name = ::ibv_get_device_name(list[i]);
    d.node_guid = ::ibv_get_device_guid(list[i]);
    std::string numa_path = std::string(list[i]->ibdev_path) + "/device/numa_node";
    if (std::FILE* f = std::fopen(numa_path.c_str(), "r")) {
      if (std::fscanf(f, "%d", &d.numa_node) != 1)
        d.numa_node = -1;
      std::fclose(f);
    }
    if (::ibv_context* ctx = ::ibv_open_device(list[i])) {
      ::ibv_device_attr attr{};
      if (::ibv_query_device(ctx, &attr) == 0) {
        for (std::uint8_t p = 1; p <= attr.phys_port_cnt; ++p) {
          ::ibv_port_attr pa{};
          if (::ibv_query_port(ctx, p, &pa) != 0)
            continue;
          d.ports.push_back({p, pa.state == IBV_PORT_ACTIVE, pa.link_layer, pa.lid, pa.active_mtu});
        }
      }
      ::ibv_close_device(ctx);
    }
    out.push_back(std::move(d));
  }
  ::ibv_free_device_list(list);
  return out;
}

} // namespace ferry::verbs
