#pragma once
// A posted resumption: io_context::post(&op) resumes `handle` from the loop's thread.

#include "ferry/io/detail/io_op.hpp"

#include <coroutine>

namespace ferry::io::detail {

struct resume_op : op_base {
  std::coroutine_handle<> handle;
  resume_op() noexcept { complete_ = &run; }
  static void run(op_base* o) noexcept { static_cast<resume_op*>(o)->handle.resume(); }
};

} // namespace ferry::io::detail
