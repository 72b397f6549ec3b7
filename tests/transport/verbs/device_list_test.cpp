#include "ferry/transport/verbs/device_list.hpp"

#include <doctest/doctest.h>

#include <filesystem>

TEST_SUITE("verbs device_list") {
  TEST_CASE("the devices listed are the ones the kernel exposes") {
    std::size_t in_sysfs = 0;
    std::error_code ec;
    for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/sys/class/infiniband", ec))
      ++in_sysfs;
    auto devices = ferry::verbs::list_devices();
    CHECK(devices.size() == in_sysfs);
    if (devices.empty())
      MESSAGE("no RDMA device on this host: the verbs tests that need hardware skip");
    for (auto& d : devices) {
      CHECK_FALSE(d.name.empty());
      CHECK(std::filesystem::exists("/sys/class/infiniband/" + d.name));
    }
  }
}
