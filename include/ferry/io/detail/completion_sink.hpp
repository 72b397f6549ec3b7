#pragma once
// Where a backend hands the operations it completed: the io_context queues them and resumes their awaiters
// from its loop, one handler at a time.

#include "ferry/io/detail/io_op.hpp"

namespace ferry::io::detail {

struct completion_sink {
  void* context_ = nullptr;
  void (*complete_)(void* context, op_base* op) noexcept = nullptr;
  void operator()(op_base* op) const noexcept { complete_(context_, op); }
};

} // namespace ferry::io::detail
