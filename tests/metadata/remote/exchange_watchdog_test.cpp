// The watchdog that bounds an HTTP exchange of the etcd and ferry-metad clients, against cpp-httplib's own
// locking.
#include "misbehaving_server.hpp"

#include "ferry/metadata/http/detail/exchange_watchdog.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

using namespace std::chrono_literals;
using ferry::detail::exchange_watchdog;

TEST_SUITE("exchange_watchdog") {
  TEST_CASE("a client stopped while it is still connecting does not deadlock with its watchdog") {
    // A server that takes the request slowly and never answers.
    ferry_test::misbehaving_server server(ferry_test::misbehaving_server::protocol::http,
                                          ferry_test::misbehaving_server::manner::slow_reader);
    httplib::Client client("http://" + server.address());
    client.set_connection_timeout(2, 0);
    client.set_read_timeout(2, 0);
    client.set_keep_alive(false);
    exchange_watchdog watchdog;
    // why: the client calls its socket options while it holds its socket lock, as during a slow name lookup
    // or a connect to an address that does not answer; the watchdog's deadline passes meanwhile
    client.set_socket_options([&](socket_t fd) {
      std::this_thread::sleep_for(300ms);
      watchdog.watch_socket(fd);
    });
    watchdog.arm(client, exchange_watchdog::clock::now() + 50ms);
    std::atomic<bool> done{false};
    std::thread exchange([&] {
      (void)client.Get("/");
      done = true;
    });
    for (int i = 0; i < 100 && !done; ++i)
      std::this_thread::sleep_for(50ms);
    if (!done) {
      // why: both threads are stuck for good; ending the process is the only way to report it
      std::fprintf(stderr, "the client and its watchdog deadlocked\n");
      std::_Exit(1);
    }
    exchange.join();
    CHECK(watchdog.disarm() == exchange_watchdog::fired::late);
  }
}
