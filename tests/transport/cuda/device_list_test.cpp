#include "ferry/transport/cuda/device_list.hpp"

#include <doctest/doctest.h>

#include <filesystem>

TEST_SUITE("cuda device_list") {
  TEST_CASE("devices are listed where a GPU exists, and the reason is given where none does") {
    bool gpu_node = std::filesystem::exists("/dev/nvidia0");
    auto devices = ferry::cuda::list_devices();
    if (!gpu_node) {
      REQUIRE_FALSE(devices);
      MESSAGE("no GPU on this host (", devices.error().message(), "): the CUDA tests that need one skip");
      CHECK(std::string(devices.error().what()) == "cudaGetDeviceCount");
      CHECK_FALSE(devices.error().code().message().empty());
      return;
    }
    REQUIRE_MESSAGE(devices, devices.error().message());
    REQUIRE_FALSE(devices->empty());
    for (auto& d : *devices) {
      CHECK_FALSE(d.name.empty());
      CHECK(d.memory_bytes > 0);
      CHECK(d.pci_bus_id.size() >= 12);
    }
  }
}
