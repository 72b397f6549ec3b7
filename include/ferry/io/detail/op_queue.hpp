#pragma once
// An intrusive FIFO of operations (linked through op_base::next_): pushing never allocates.

#include "ferry/io/detail/io_op.hpp"

namespace ferry::io::detail {

class op_queue {
public:
  bool empty() const noexcept { return head_ == nullptr; }
  op_base* front() const noexcept { return head_; }

  void push(op_base* op) noexcept {
    op->next_ = nullptr;
    if (tail_)
      tail_->next_ = op;
    else
      head_ = op;
    tail_ = op;
  }
  op_base* pop() noexcept {
    op_base* op = head_;
    if (op) {
      head_ = op->next_;
      if (!head_)
        tail_ = nullptr;
      op->next_ = nullptr;
    }
    return op;
  }
  /// Moves every element of `other` to the back of this queue.
  void splice(op_queue& other) noexcept {
    if (other.empty())
      return;
    if (tail_)
      tail_->next_ = other.head_;
    else
      head_ = other.head_;
    tail_ = other.tail_;
    other.head_ = other.tail_ = nullptr;
  }
  /// Unlinks `op` if queued here; returns whether it was (linear: for rare cancellation only).
  bool remove(op_base* op) noexcept {
    op_base* prev = nullptr;
    for (op_base* cur = head_; cur; prev = cur, cur = cur->next_) {
      if (cur != op)
        continue;
      (prev ? prev->next_ : head_) = cur->next_;
      if (tail_ == cur)
        tail_ = prev;
      cur->next_ = nullptr;
      return true;
    }
    return false;
  }

private:
  op_base* head_ = nullptr;
  op_base* tail_ = nullptr;
};

} // namespace ferry::io::detail
