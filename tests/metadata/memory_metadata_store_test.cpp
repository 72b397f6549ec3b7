#include "ferry/core/sync_wait.hpp"
#include "ferry/metadata/concepts.hpp"
#include "ferry/metadata/memory_metadata_store.hpp"

#include <doctest/doctest.h>

static_assert(ferry::metadata_store<ferry::memory_metadata_store>);

TEST_SUITE("memory_metadata_store") {
  TEST_CASE("values are stored, listed by prefix and removed") {
    ferry::memory_metadata_store s;
    CHECK_FALSE(ferry::sync_wait(s.get("a")).value().has_value());
    REQUIRE(ferry::sync_wait(s.put("seg/a", "1")));
    REQUIRE(ferry::sync_wait(s.put("seg/b", "2")));
    REQUIRE(ferry::sync_wait(s.put("other", "3")));
    CHECK(ferry::sync_wait(s.get("seg/a")).value() == "1");
    auto listed = ferry::sync_wait(s.list("seg/")).value();
    REQUIRE(listed.size() == 2);
    CHECK(listed[1].first == "seg/b");
    REQUIRE(ferry::sync_wait(s.remove("seg/a")));
    REQUIRE(ferry::sync_wait(s.remove("seg/a"))); // absent: no error
    CHECK(ferry::sync_wait(s.list("seg/")).value().size() == 1);
  }
}
