// A program that uses ferry the way an application does: through find_package(ferry) and its headers only.
#include <ferry/core.hpp>
#include <ferry/io.hpp>

#if CONSUMER_HAS_HTTP
#include <ferry/metadata/http/metadata_service.hpp>
#endif
#include <ferry/metadata/connect_metadata.hpp>

#include <chrono>
#include <cstdio>
#include <string>

int main() {
  using namespace std::chrono_literals;
  ferry::io::io_context ctx;
  int v = ctx.run_until([&]() -> ferry::task<int> {
    auto slept = co_await ctx.sleep_for(1ms);
    auto [a, b] = co_await ferry::when_all([]() -> ferry::task<int> { co_return 20; }(),
                                           []() -> ferry::task<int> { co_return 22; }());
    co_return slept ? a + b : -1;
  }());
  std::printf("consumer: io backend %s, result %d\n", ferry::io::to_string(ctx.backend()), v);
#if CONSUMER_HAS_URING
  if (ctx.backend() != ferry::io::io_backend::uring && ctx.backend_note().empty())
    return 2;
#endif
#if CONSUMER_HAS_HTTP
  ferry::metadata_service service;
  auto port = service.start("127.0.0.1", 0);
  auto meta = port ? ferry::connect_metadata("http://127.0.0.1:" + std::to_string(*port) + "/consumer")
                   : ferry::result<ferry::metadata_client>(ferry::fail(port.error()));
  if (!meta || !ferry::sync_wait(meta->put("k", "v")) ||
      ferry::sync_wait(meta->get("k")).value_or(std::nullopt) != "v")
    return 3;
  std::printf("consumer: ferry-metad answered\n");
#endif
#if CONSUMER_HAS_REDIS
  auto redis = ferry::connect_metadata("redis://127.0.0.1:1");
  if (!redis || ferry::sync_wait(redis->get("k")).error() != ferry::errc::peer_unreachable)
    return 4;
#endif
  return v == 42 ? 0 : 1;
}
