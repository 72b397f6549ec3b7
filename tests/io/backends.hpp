#pragma once
// The backends every io test runs on: epoll always, io_uring when compiled in and permitted here.
#include "ferry/io/io_context.hpp"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace ferry_test {

inline std::vector<ferry::io::io_backend> io_backends() {
  std::vector<ferry::io::io_backend> out{ferry::io::io_backend::epoll};
#if FERRY_WITH_URING
  ferry::io::io_context probe({.backend = ferry::io::io_backend::automatic});
  if (probe.backend() == ferry::io::io_backend::uring)
    out.push_back(ferry::io::io_backend::uring);
  else
    MESSAGE("io_uring is not usable here: ", probe.backend_note());
#endif
  return out;
}

/// Runs `body(ctx)` once per backend, each in a fresh io_context, labelled in failure messages.
template<class Body>
void for_each_backend(Body&& body) {
  for (auto b : io_backends()) {
    CAPTURE(std::string(ferry::io::to_string(b)));
    ferry::io::io_context ctx({.backend = b});
    body(ctx);
  }
}

} // namespace ferry_test
