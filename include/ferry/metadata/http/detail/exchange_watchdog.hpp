#pragma once
// A thread that ends an HTTP exchange that has taken too long, or received too much: armed with a client, a
// time and a byte count, it shuts the client's connection down at that time, or once the connection has
// received more than that many bytes, unless disarmed first.
// why: cpp-httplib 0.11 bounds each read, not a whole reply: a server that trickles the body, or header line
// after header line, would hold the store's one worker thread for ever; and it keeps every header line it
// reads, however many, so one that sends header lines without end as fast as it can would take all memory
// within the time.

#include "ferry/io/detail/tcp_bytes_moved.hpp"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <mutex>
#include <stop_token>
#include <thread>

namespace ferry::detail {

class exchange_watchdog {
public:
  using clock = std::chrono::steady_clock;

  exchange_watchdog() : thread_([this](std::stop_token stop) { run(stop); }) {}
  exchange_watchdog(const exchange_watchdog&) = delete;
  exchange_watchdog& operator=(const exchange_watchdog&) = delete;
  // why: the jthread's destructor asks it to stop (the wait below wakes for that) and joins it

  /// Why the watchdog stopped a client.
  enum class fired { no, late, too_much };

  /// How often the bytes received are looked at while an exchange lasts.
  static constexpr auto look_every = std::chrono::milliseconds(10);

  /// From now until disarm(): at `at`, or once its connection received more than `most_bytes` (looked at
  /// every look_every), `client` is stopped (its connection shut down).
  void arm(httplib::Client& client, clock::time_point at,
           std::uint64_t most_bytes = std::numeric_limits<std::uint64_t>::max()) {
    std::lock_guard lock(mutex_);
    client_ = &client;
    at_ = at;
    most_bytes_ = most_bytes;
    socket_.store(-1, std::memory_order_release);
    fired_ = fired::no;
    ++generation_;
    wake_.notify_all();
  }

  /// The connection of the armed exchange, once made (call it from the client's socket options).
  // why: no lock. The client calls this while it holds its own socket lock (name lookup, connect), and
  // stop() waits for that lock while this watchdog holds mutex_: taking mutex_ here would deadlock both.
  void watch_socket(int fd) noexcept { socket_.store(fd, std::memory_order_release); }

  /// Ends the watch; whether and why it stopped the client. Once this returns, the watchdog no longer touches
  /// the client or its socket.
  fired disarm() {
    std::lock_guard lock(mutex_); // why: a stop() under way holds this lock: it has finished once we have it
    client_ = nullptr;
    socket_.store(-1, std::memory_order_release);
    ++generation_;
    wake_.notify_all();
    return fired_;
  }

private:
  void run(std::stop_token stop) {
    std::unique_lock lock(mutex_);
    while (!stop.stop_requested()) {
      if (!client_) {
        wake_.wait(lock, stop, [&] { return client_ != nullptr; });
        continue;
      }
      const std::uint64_t watching = generation_;
      const clock::time_point at = at_;
      // why: the bytes are looked at only when a bound is set, and then every look_every
      const bool counting = most_bytes_ != std::numeric_limits<std::uint64_t>::max();
      const clock::time_point look = counting ? std::min(at, clock::now() + look_every) : at;
      if (wake_.wait_until(lock, stop, look, [&] { return generation_ != watching; }))
        continue; // disarmed or armed anew
      if (stop.stop_requested())
        return;
      fired why = fired::no;
      if (clock::now() >= at)
        why = fired::late;
      else if (int fd = socket_.load(std::memory_order_acquire);
               fd >= 0 && io::detail::tcp_bytes_received(fd) > most_bytes_)
        why = fired::too_much;
      if (why == fired::no)
        continue;
      client_->stop();
      fired_ = why;
      client_ = nullptr;
    }
  }

  std::mutex mutex_;
  std::condition_variable_any wake_;
  httplib::Client* client_ = nullptr;
  clock::time_point at_{};
  std::uint64_t most_bytes_ = std::numeric_limits<std::uint64_t>::max();
  std::atomic<int> socket_{-1}; // the armed exchange's connection, once made
  std::uint64_t generation_ = 0;
  fired fired_ = fired::no;
  std::jthread thread_; // why: last: it starts once the state above exists, and stops before it goes
};

} // namespace ferry::detail
