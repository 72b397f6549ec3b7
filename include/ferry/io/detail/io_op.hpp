#pragma once
// The operations an io_context runs, as plain data: each backend reads the same description (an op code and
// its arguments) and completes it through one function pointer. Awaiters embed them: no allocation per
// operation.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <sys/socket.h>
#include <sys/types.h>

namespace ferry::io::detail {

/// Anything an io_context completes: an I/O operation, a timer, a posted continuation.
struct op_base {
  using complete_fn = void (*)(op_base*) noexcept;
  complete_fn complete_ = nullptr;
  /// -errno on failure, otherwise the operation's value (bytes, a file descriptor, 0).
  int result_ = 0;
  /// Non-zero while a stop_callback may ask to cancel this operation; its key in the context's table.
  std::uint64_t cancel_id_ = 0;
  op_base* next_ = nullptr;
};

enum class op_code : std::uint8_t {
  nop,
  recv,
  send,
  recvmsg,
  sendmsg,
  accept,
  connect,
  read,
  write,
  read_fixed,
  write_fixed,
};

/// Whether the op waits for the descriptor to become readable (true) or writable (false) in a readiness
/// backend.
constexpr bool waits_for_input(op_code c) noexcept {
  return c == op_code::recv || c == op_code::recvmsg || c == op_code::accept;
}
constexpr bool is_file_op(op_code c) noexcept {
  return c == op_code::read || c == op_code::write || c == op_code::read_fixed || c == op_code::write_fixed;
}

struct io_op : op_base {
  op_code code_ = op_code::nop;
  int fd_ = -1;
  int flags_ = 0;
  std::uint16_t buf_index_ = 0;
  void* buf_ = nullptr;
  std::uint32_t len_ = 0;
  std::uint64_t offset_ = 0;
  ::msghdr* msg_ = nullptr;
  ::sockaddr* addr_ = nullptr;
  ::socklen_t addrlen_ = 0;            // connect: the address length
  ::socklen_t* addrlen_out_ = nullptr; // accept: in/out length
  bool connect_started_ = false;       // readiness backend: connect() already issued, waiting for writability
  bool cancel_asked_ = false;          // io_uring backend: this process asked the kernel to cancel it
  std::uint64_t start_mark_ = 0;       // io_uring backend: the count of released descriptors when it started
};

struct timer_op : op_base {
  std::chrono::steady_clock::time_point deadline_{};
  std::size_t heap_index_ = static_cast<std::size_t>(-1);
};

} // namespace ferry::io::detail
