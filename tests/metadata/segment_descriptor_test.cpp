#include "ferry/metadata/segment_descriptor.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <string>

namespace {
ferry::segment_descriptor sample() {
  ferry::segment_descriptor d;
  d.name = "decode-0";
  d.incarnation = 0xfeedface12345678ull;
  d.host = "boot-id";
  d.endpoints = {{"tcp", "127.0.0.2:7000"}};
  d.regions = {{0, 4096, ferry::access::read_write, "/ferry-1-0", 0, {}, 7, 3},
               {8192, 100, ferry::access::read, "", 0, {}}};
  d.shm_gates = "/ferry-1-1";
  d.pid = 4242;
  d.pid_start = 123456789;
  return d;
}
} // namespace

TEST_SUITE("segment_descriptor") {
  TEST_CASE("a descriptor survives a round trip through JSON") {
    auto d = sample();
    auto back = ferry::segment_descriptor::parse(d.to_json());
    REQUIRE(back);
    CHECK(*back == d);
    CHECK(back->endpoint_for("tcp")->address == "127.0.0.2:7000");
    CHECK(back->endpoint_for("rdma") == nullptr);
  }

  TEST_CASE("region_for finds the region holding a range and nothing across gaps") {
    auto d = sample();
    CHECK(d.region_for(0, 4096) == &d.regions[0]);
    CHECK(d.region_for(8192 + 50, 50) == &d.regions[1]);
    CHECK(d.region_for(4000, 200) == nullptr);
    CHECK(d.region_for(5000, 1) == nullptr);
    CHECK(d.region_for(8192 + 50, 51) == nullptr);
  }

  TEST_CASE("malformed descriptors are rejected with a reason, never a crash") {
    const char* bad[] = {
        "",
        "[]",
        "{",
        R"({"name":"x"})",
        R"({"name":"","incarnation":1,"host":"h","endpoints":[],"regions":[]})",
        R"({"name":"x","incarnation":-1,"host":"h","endpoints":[],"regions":[]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[{"transport":1}],"regions":[]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":0,"access":"read"}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":18446744073709551615,"length":2,"access":"read"}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":10,"access":"all"}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":10,"access":"none"}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":10,"access":"read"},{"offset":5,"length":10,"access":"read"}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":10,"access":"read","shm_name":""}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":10,"access":"read","shm_name":"/a"}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":10,"access":"read","shm_name":"/a","shm_offset":0,"shm_gate":4294967295,"shm_epoch":1}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":10,"access":"read","shm_name":"/a","shm_offset":0,"shm_gate":1}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":10,"access":"read","shm_name":"/a","shm_offset":0,"shm_gate":-1,"shm_epoch":1}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":8192,"access":"read","shm_name":"/a","shm_offset":18446744073709547520}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":8192,"access":"read","memory":"cuda_device","device":0,"ipc_handle":"h","ipc_offset":18446744073709547520}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":10,"access":"read","memory":"host","device":0}]})",
        R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[{"offset":0,"length":10,"access":"read","memory":"host","device":-1,"ipc_handle":"h","ipc_offset":0}]})",
        R"({"name":"x","incarnation":1,"host":"h","net_namespace":-4,"endpoints":[],"regions":[]})",
        R"({"name":"x","incarnation":1,"host":"h","shm_gates":"","endpoints":[],"regions":[]})",
        R"({"name":"x","incarnation":1,"host":"h","shm_gates":7,"endpoints":[],"regions":[]})",
        R"({"name":"x","incarnation":1,"host":"h","pid":7,"pid_start":-3,"endpoints":[],"regions":[]})",
        R"({"name":"x","incarnation":1,"host":"h","pid":7,"pid_start":"soon","endpoints":[],"regions":[]})",
    };
    for (const char* text : bad) {
      CAPTURE(text);
      auto d = ferry::segment_descriptor::parse(text);
      REQUIRE_FALSE(d);
      CHECK(d.error() == ferry::errc::malformed_frame);
      CHECK(std::string(d.error().what()).rfind("segment descriptor", 0) == 0);
    }
  }

  TEST_CASE("text of many small values is refused as it is parsed, and the largest descriptor still parses") {
    // 16 MiB of empty objects: parsed whole first, they would take some 450 MB
    std::string flood = R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[)";
    while (flood.size() < (16u << 20))
      flood += "{},";
    flood += "{}]}";
    auto d = ferry::segment_descriptor::parse(flood);
    REQUIRE_FALSE(d);
    CHECK(d.error() == ferry::errc::malformed_frame);
    CHECK(std::string(d.error().what()).find("values") != std::string::npos);
    std::string deep = R"({"name":"x","incarnation":1,"host":"h","endpoints":[],"regions":[],"x":)";
    deep += std::string(100, '[') + std::string(100, ']') + "}";
    auto nested = ferry::segment_descriptor::parse(deep);
    REQUIRE_FALSE(nested);
    CHECK(std::string(nested.error().what()).find("nested") != std::string::npos);
    // as many regions as a segment exposes, each with every member: within the bounds
    auto big = sample();
    big.regions.clear();
    for (std::uint64_t i = 0; i < ferry::segment_descriptor::max_regions; ++i) {
      ferry::region_descriptor r{i * 8192, 4096, ferry::access::read_write, "/ferry-1-0", i * 4096, {}, 7, 3};
      r.location.kind = ferry::memory_kind::cuda_device;
      r.location.device = 1;
      r.location.ipc_handle = "00ff";
      r.location.ipc_offset = i;
      big.regions.push_back(r);
    }
    auto back = ferry::segment_descriptor::parse(big.to_json());
    REQUIRE_MESSAGE(back, back.error().message());
    CHECK(*back == big);
  }

  TEST_CASE("a name that peers would refuse is named as such, and writing one out never throws") {
    using ferry::segment_descriptor;
    CHECK(segment_descriptor::name_problem("decode-0") == nullptr);
    CHECK(segment_descriptor::name_problem("décodeur-é") == nullptr);
    CHECK(segment_descriptor::name_problem("\xe2\x82\xac \xf0\x9f\x98\x80 \xed\x9f\xbf \xf4\x8f\xbf\xbf") ==
          nullptr);
    CHECK(segment_descriptor::name_problem(std::string(255, 'a')) == nullptr);
    for (std::string bad :
         {std::string(), std::string(256, 'a'), std::string("caf\xe9"), std::string("a\nb"),
          std::string("tab\there"), std::string("\xc0\xaf"), std::string("\xf5\x80\x80\x80"),
          std::string("cut\xc3"), std::string("\xe0\x80\xaf"), std::string("\xed\xa0\x80"),
          std::string("\xf0\x80\x80\xaf"), std::string("\xf4\x90\x80\x80"), std::string("\xe2\x28\xa1")}) {
      CAPTURE(bad);
      CHECK(segment_descriptor::name_problem(bad) != nullptr);
    }
    segment_descriptor d;
    d.name = "caf\xe9";
    d.incarnation = 1;
    d.host = "h";
    std::string text;
    CHECK_NOTHROW(text = d.to_json());
    CHECK(text.find("caf\xef\xbf\xbd") != std::string::npos); // U+FFFD in place of the stray byte
    d.name = "a\nb";
    CHECK_FALSE(segment_descriptor::parse(d.to_json()));
  }
}
