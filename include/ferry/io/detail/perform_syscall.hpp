#pragma once
// Runs one operation as an ordinary non-blocking system call (the readiness backend's way of doing I/O).
// Returns the result or -errno; -EAGAIN means "not ready, wait for the descriptor".

#include "ferry/io/detail/io_op.hpp"

#include <cerrno>
#include <sys/socket.h>
#include <unistd.h>

namespace ferry::io::detail {

inline int perform_syscall(io_op& op) noexcept {
  for (;;) {
    long r = 0;
    switch (op.code_) {
    case op_code::nop:
      return 0;
    case op_code::recv:
      r = ::recv(op.fd_, op.buf_, op.len_, op.flags_ | MSG_DONTWAIT);
      break;
    case op_code::send:
      r = ::send(op.fd_, op.buf_, op.len_, op.flags_ | MSG_DONTWAIT | MSG_NOSIGNAL);
      break;
    case op_code::recvmsg:
      r = ::recvmsg(op.fd_, op.msg_, op.flags_ | MSG_DONTWAIT);
      break;
    case op_code::sendmsg:
      r = ::sendmsg(op.fd_, op.msg_, op.flags_ | MSG_DONTWAIT | MSG_NOSIGNAL);
      break;
    case op_code::accept:
      r = ::accept4(op.fd_, op.addr_, op.addrlen_out_, SOCK_NONBLOCK | SOCK_CLOEXEC);
      break;
    case op_code::connect:
      if (!op.connect_started_) {
        r = ::connect(op.fd_, op.addr_, op.addrlen_);
        if (r < 0 && errno == EINPROGRESS) {
          op.connect_started_ = true;
          return -EAGAIN;
        }
      } else {
        int err = 0;
        ::socklen_t len = sizeof(err);
        if (::getsockopt(op.fd_, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
          return -errno;
        return -err;
      }
      break;
    case op_code::read:
    case op_code::read_fixed:
      r = ::pread(op.fd_, op.buf_, op.len_, static_cast<off_t>(op.offset_));
      break;
    case op_code::write:
    case op_code::write_fixed:
      r = ::pwrite(op.fd_, op.buf_, op.len_, static_cast<off_t>(op.offset_));
      break;
    }
    if (r >= 0)
      return static_cast<int>(r);
    if (errno == EINTR)
      continue;
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

} // namespace ferry::io::detail
