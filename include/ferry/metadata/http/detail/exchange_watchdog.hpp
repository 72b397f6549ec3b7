#pragma once
// A thread that ends an HTTP exchange that has taken too long: armed with a client and a time, it shuts the
// client's connection down at that time unless disarmed first.
// why: cpp-httplib 0.11 bounds each read, not a whole reply: a server that trickles the body, or header line
// after header line, would hold the store's one worker thread for ever.

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
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

  /// From now until disarm(): at `at`, `client` is stopped (its connection shut down).
  void arm(httplib::Client& client, clock::time_point at) {
    std::lock_guard lock(mutex_);
    client_ = &client;
    at_ = at;
    fired_ = false;
    ++generation_;
    wake_.notify_all();
  }

  /// Ends the watch; true if it stopped the client. Once this returns, the watchdog no longer touches it.
  bool disarm() {
    std::lock_guard lock(mutex_); // why: a stop() under way holds this lock: it has finished once we have it
    client_ = nullptr;
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
      if (wake_.wait_until(lock, stop, at, [&] { return generation_ != watching; }))
        continue; // disarmed or armed anew
      if (stop.stop_requested())
        return;
      client_->stop();
      fired_ = true;
      client_ = nullptr;
    }
  }

  std::mutex mutex_;
  std::condition_variable_any wake_;
  httplib::Client* client_ = nullptr;
  clock::time_point at_{};
  std::uint64_t generation_ = 0;
  bool fired_ = false;
  std::jthread thread_; // why: last: it starts once the state above exists, and stops before it goes
};

} // namespace ferry::detail
