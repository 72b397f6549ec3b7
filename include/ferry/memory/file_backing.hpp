#pragma once
/// `ferry::file_backing`: what stands behind a file region of a segment — a file or block device whose bytes
/// are read and written through I/O instead of being addressed in memory. The uring component implements it
/// (`ferry::uring_file`); the registry holds it (`region_registry::add_file`), the engine's uring transport
/// reaches it for this process's own transfers and the tcp server serves it to peers.
///
///   auto f = ferry::uring_file::open(ctx, "/nvme/kv.bin", {.permissions = ferry::access::read_write});
///   auto offset = engine.registry().add_file(*f, ferry::access::read_write);

#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <stop_token>

namespace ferry {

class file_backing {
public:
  virtual ~file_backing() = default;
  /// Bytes of the file the region covers (fixed at registration).
  virtual std::uint64_t length() const noexcept = 0;
  /// Bytes the file has now: fewer than length() once it shrank under the registration (a block device: its
  /// capacity). Lets a server refuse a read that cannot be whole before it starts answering it.
  virtual result<std::uint64_t> size_now() const { return length(); }
  /// Reads exactly `into.size()` bytes at `offset`, or fails (a file that ends early is an error, never
  /// data). Runs on the loop of the io_context the file was opened with. Once `stop` is requested, what has
  /// not reached the kernel yet (pieces waiting for a queue slot, later pieces) is not started and the call
  /// fails with errc::cancelled; I/O already in the kernel finishes first.
  virtual task<result<void>> read(std::uint64_t offset, std::span<std::byte> into,
                                  std::stop_token stop = {}) = 0;
  /// Writes all of `from` at `offset`, or fails; `stop` as for read() (a write stopped part-way may have
  /// written some of its bytes).
  virtual task<result<void>> write(std::uint64_t offset, std::span<const std::byte> from,
                                   std::stop_token stop = {}) = 0;
};

} // namespace ferry
