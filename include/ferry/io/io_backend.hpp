#pragma once
/// `ferry::io::io_backend`: which kernel interface an io_context uses.
///
///   ferry::io::io_context ctx({.backend = ferry::io::io_backend::epoll});

namespace ferry::io {

enum class io_backend {
  automatic, ///< io_uring where it is compiled in (ferry::uring) and permitted; otherwise epoll
  uring,     ///< io_uring only; construction fails with the reason if it is not available
  epoll,     ///< epoll and non-blocking system calls (file I/O runs as plain pread/pwrite)
};

/// "uring", "epoll" or "automatic".
constexpr const char* to_string(io_backend b) noexcept {
  switch (b) {
  case io_backend::uring:
    return "uring";
  case io_backend::epoll:
    return "epoll";
  default:
    return "automatic";
  }
}

} // namespace ferry::io
