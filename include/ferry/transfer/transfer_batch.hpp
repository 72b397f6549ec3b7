#pragma once
/// `ferry::transfer_batch`: requests submitted together, their options, and `batch_result`, what comes back:
/// one result per request (bytes moved, or the precise error). A batch is successful only if every request
/// is.
///
///   ferry::transfer_batch batch;
///   batch.write(src, decode, 0, 1 << 20).write(src + (1 << 20), decode, 8 << 20, 1 << 20);
///   ferry::batch_result r = co_await engine.transfer(batch, ferry::transfer_options().with_timeout(2s));
///   if (!r.ok()) log(r.first_error().message());

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/transfer/transfer_request.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

namespace ferry {

class transfer_batch {
public:
  transfer_batch& add(const transfer_request& r) {
    requests_.push_back(r);
    return *this;
  }
  /// Bytes from the target into `local`.
  transfer_batch& read(void* local, segment_id target, std::uint64_t target_offset, std::uint64_t length) {
    return add({transfer_op::read, local, target, target_offset, length});
  }
  /// Bytes from `local` to the target.
  transfer_batch& write(const void* local, segment_id target, std::uint64_t target_offset,
                        std::uint64_t length) {
    return add({transfer_op::write, const_cast<void*>(local), target, target_offset, length});
  }
  void clear() noexcept { requests_.clear(); }
  void reserve(std::size_t n) { requests_.reserve(n); }

  const std::vector<transfer_request>& requests() const noexcept { return requests_; }
  std::size_t size() const noexcept { return requests_.size(); }
  bool empty() const noexcept { return requests_.empty(); }
  std::uint64_t total_bytes() const noexcept {
    std::uint64_t n = 0;
    for (auto& r : requests_)
      n += r.length;
    return n;
  }

private:
  std::vector<transfer_request> requests_;
};

/// How a batch is run.
///
///   co_await engine.transfer(batch, ferry::transfer_options().with_timeout(2s).with_notify("kv ready"));
struct transfer_options {
  // why: not an aggregate on purpose. g++ 12 destroys aggregate temporaries that appear in a co_await
  // expression twice (a braced `{.stop = token}` argument included); a class with a constructor is safe.
  transfer_options() = default;

  /// Cancels the batch (every request not yet complete fails with errc::cancelled).
  std::stop_token stop{};
  /// Fails what is not complete by then with errc::timed_out (zero: no deadline; negative: the deadline has
  /// passed, and every request fails so without moving a byte).
  std::chrono::nanoseconds timeout{0};
  /// Delivered to every target segment after all of the batch's bytes have landed there.
  std::optional<std::string> notify{};

  transfer_options& with_stop(std::stop_token t) {
    stop = std::move(t);
    return *this;
  }
  transfer_options& with_timeout(std::chrono::nanoseconds t) {
    timeout = t;
    return *this;
  }
  transfer_options& with_notify(std::string message) {
    notify = std::move(message);
    return *this;
  }
};

/// The outcome of a batch: one result per request, in order.
struct batch_result {
  std::vector<result<std::uint64_t>> requests;
  /// Set when transfer_options::notify could not be delivered after the bytes landed.
  error notify_error;

  /// True when every request moved all its bytes (and the notification, if any, was delivered).
  bool ok() const noexcept {
    for (auto& r : requests)
      if (!r)
        return false;
    return !notify_error;
  }
  /// The first failed request's error, saying which request it was ("request 3 of 128: ..."), else the
  /// notification's error (an empty error when ok()). `requests[i].error()` is each one's own.
  error first_error() const {
    for (std::size_t i = 0; i < requests.size(); ++i)
      if (!requests[i])
        return error(requests[i].error().code(), "request " + std::to_string(i) + " of " +
                                                     std::to_string(requests.size()) + ": " +
                                                     requests[i].error().what());
    return notify_error;
  }
  /// Bytes moved by the successful requests.
  std::uint64_t bytes() const noexcept {
    std::uint64_t n = 0;
    for (auto& r : requests)
      if (r)
        n += *r;
    return n;
  }
};

} // namespace ferry
