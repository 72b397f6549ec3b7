#include "ferry/metadata/etcd_codec.hpp"
#include "ferry/metadata/metad_protocol.hpp"
#include "ferry/metadata/metadata_address.hpp"

#include <doctest/doctest.h>

#include <string>

TEST_SUITE("metadata codecs") {
  TEST_CASE("base64 matches RFC 4648 and refuses what is not base64") {
    using ferry::etcd::base64_decode;
    using ferry::etcd::base64_encode;
    CHECK(base64_encode("") == "");
    CHECK(base64_encode("f") == "Zg==");
    CHECK(base64_encode("fo") == "Zm8=");
    CHECK(base64_encode("foobar") == "Zm9vYmFy");
    CHECK(base64_decode("Zm9vYg==").value() == "foob");
    std::string binary("\0\xff\x10 x", 5);
    CHECK(base64_decode(base64_encode(binary)).value() == binary);
    for (const char* bad : {"Zg=", "Z===", "Zm9v!mFy", "=Zm9", "Zg==Zg=="})
      CHECK_MESSAGE(!base64_decode(bad), bad);
  }

  TEST_CASE("etcd: a prefix's range end and the replies the gateway sends") {
    CHECK(ferry::etcd::prefix_end("ferry/") == "ferry0");
    CHECK(ferry::etcd::prefix_end(std::string("a\xff", 2)) == "b");
    CHECK(ferry::etcd::prefix_end("") == std::string(1, '\0'));
    auto range = ferry::etcd::decode_reply(
        200,
        R"({"header":{"revision":"9"},"kvs":[{"key":"Yg==","value":"Mg=="},{"key":"YQ==","lease":"4"}],"count":"2"})");
    REQUIRE(range);
    auto kvs = ferry::etcd::decode_range(*range).value();
    REQUIRE(kvs.size() == 2);
    CHECK(kvs[0] == std::pair<std::string, std::string>("a", "")); // empty values are left out by etcd
    CHECK(kvs[1] == std::pair<std::string, std::string>("b", "2"));
    CHECK(ferry::etcd::decode_range(*ferry::etcd::decode_reply(200, R"({"header":{}})")).value().empty());
    CHECK_FALSE(ferry::etcd::decode_range(*ferry::etcd::decode_reply(200, R"({"kvs":[{"key":"!!"}]})")));
    auto missing =
        ferry::etcd::decode_reply(404, R"({"error":"etcdserver: requested lease not found","code":5})");
    REQUIRE_FALSE(missing);
    CHECK(missing.error() == ferry::errc::not_found);
    CHECK(std::string(missing.error().what()).find("requested lease not found") != std::string::npos);
    CHECK(ferry::etcd::decode_reply(500, "<html>").error() == ferry::errc::invalid_state);
    CHECK(ferry::etcd::decode_reply(200, "[1]").error() == ferry::errc::malformed_frame);
    CHECK(ferry::etcd::decode_grant(*ferry::etcd::decode_reply(200, R"({"ID":"7587","TTL":"5"})")).value() ==
          7587);
    CHECK(
        ferry::etcd::decode_keep_alive(*ferry::etcd::decode_reply(200, R"({"result":{"ID":"1","TTL":"4"}})"))
            .value());
    CHECK_FALSE(
        ferry::etcd::decode_keep_alive(*ferry::etcd::decode_reply(200, R"({"result":{"ID":"1"}})")).value());
    CHECK(ferry::etcd::decode_txn_succeeded(*ferry::etcd::decode_reply(200, R"({"succeeded":true})")));
    CHECK_FALSE(ferry::etcd::decode_txn_succeeded(*ferry::etcd::decode_reply(200, R"({"header":{}})")));
  }

  TEST_CASE("ferry-metad: requests round-trip and malformed ones are refused with the reason") {
    ferry::metad::request r;
    r.op = ferry::metad::operation::cas;
    r.key = "ferry/p2p/x";
    r.expected = std::nullopt;
    r.value = "v";
    auto back = ferry::metad::decode_request("/v1/cas", ferry::metad::encode_request(r));
    REQUIRE(back);
    CHECK(back->key == r.key);
    CHECK_FALSE(back->expected.has_value());
    CHECK(back->value == "v");
    struct bad_case {
      const char* path;
      const char* body;
    };
    for (auto bad : {bad_case{"/v1/nope", "{}"}, bad_case{"/v1/get", "not json"}, bad_case{"/v1/get", "[]"},
                     bad_case{"/v1/get", R"({"key": 5})"}, bad_case{"/v1/get", R"({"key": ""})"},
                     bad_case{"/v1/put", R"({"key": "k"})"},
                     bad_case{"/v1/put", R"({"key":"k","value":"v","lease":"x"})"},
                     bad_case{"/v1/cas", R"({"key":"k","value":"v","expected":3})"},
                     bad_case{"/v1/grant", R"({"ttl_ms": -1})"}, bad_case{"/v1/grant", R"({"ttl_ms": 1e30})"},
                     bad_case{"/v1/revoke", "{}"}}) {
      std::string path = bad.path, body = bad.body;
      auto got = ferry::metad::decode_request(path, body);
      CHECK_MESSAGE(!got, path << " " << body);
      if (!got)
        CHECK(got.error() == ferry::errc::malformed_frame);
    }
    CHECK(ferry::metad::decode_reply(404, R"({"error":"no such lease"})").error() == ferry::errc::not_found);
    CHECK(ferry::metad::decode_get_reply(*ferry::metad::decode_reply(200, R"({"value":null})")).value() ==
          std::nullopt);
    CHECK_FALSE(ferry::metad::decode_list_reply(*ferry::metad::decode_reply(200, R"({"entries":[["a"]]})")));
  }

  TEST_CASE("JSON of many small values or deep nesting is refused as it is parsed, on either protocol") {
    std::string wide = R"({"key":[)";
    for (int i = 0; i < (1 << 21); ++i)
      wide += i ? ",{}" : "{}";
    wide += "]}";
    std::string deep = std::string(20, '[') + std::string(20, ']');
    deep = R"({"key":)" + deep + "}";
    for (const std::string* body : {&wide, &deep}) {
      auto request = ferry::metad::decode_request("/v1/get", *body);
      REQUIRE_FALSE(request);
      CHECK(request.error() == ferry::errc::malformed_frame);
      CHECK(std::string(request.error().what()).find(body == &wide ? "values" : "deep") != std::string::npos);
      CHECK(ferry::metad::decode_reply(200, *body).error() == ferry::errc::malformed_frame);
      CHECK(ferry::etcd::decode_reply(200, *body).error() == ferry::errc::malformed_frame);
    }
  }

  TEST_CASE("etcd: an error the gateway wraps in an object keeps its message") {
    auto r = ferry::etcd::decode_reply(
        503,
        R"({"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"x"}})");
    REQUIRE_FALSE(r);
    CHECK(std::string(r.error().what()).find("etcdserver: no leader") != std::string::npos);
  }

  TEST_CASE("connection strings name the backend, its endpoints and the cluster prefix") {
    auto e = ferry::metadata_address::parse("etcd://10.0.0.1:2379,10.0.0.2:2379/prod");
    REQUIRE(e);
    CHECK(e->scheme == ferry::metadata_address::kind::etcd);
    CHECK(e->hosts == std::vector<std::string>{"10.0.0.1:2379", "10.0.0.2:2379"});
    CHECK(e->prefix == "prod/");
    auto m = ferry::metadata_address::parse("memory://");
    REQUIRE(m);
    CHECK(m->hosts == std::vector<std::string>{""});
    CHECK(ferry::metadata_address::parse("p2p").value().scheme == ferry::metadata_address::kind::p2p);
    CHECK(ferry::metadata_address::parse("redis://[::1]:6379").value().hosts[0] == "[::1]:6379");
    auto bad = ferry::metadata_address::parse("etcd//x");
    REQUIRE_FALSE(bad);
    CHECK(std::string(bad.error().what()).find("etcd//x") != std::string::npos);
  }
}
