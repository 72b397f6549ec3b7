#pragma once
/// `ferry::verbs::send_queue_tracker<T>`: what a queue pair has posted and not yet seen complete, in posting
/// order. With selective signaling most requests produce no completion of their own: on a reliable-connected
/// queue pair a completion for request k reports every request posted before k as done. An error completes
/// exactly its own request (signaled or not), and after it every later request completes with a flush
/// error. A completion whose id is not outstanding changes nothing (never reports unrelated work as done).
///
///   tracker.push(item);
///   tracker.complete(wc.wr_id, wc.status, [](const T& t) { return id(t); },
///                    [](T& t, ibv_wc_status s) { s == IBV_WC_SUCCESS ? ok(t) : failed(t, s); });

#include <cstddef>
#include <cstdint>
#include <deque>
#include <infiniband/verbs.h>
#include <utility>

namespace ferry::verbs {

template<class T>
class send_queue_tracker {
public:
  void push(T item) { posted_.push_back(std::move(item)); }
  std::size_t size() const noexcept { return posted_.size(); }
  bool empty() const noexcept { return posted_.empty(); }

  /// Applies one completion: `done(item, IBV_WC_SUCCESS)` for each request posted before the one whose
  /// `id_of(item) == wr_id`, then `done(item, status)` for that one. Returns how many requests completed
  /// (0 when `wr_id` is not outstanding). `done` may push more work.
  template<class IdOf, class Done>
  std::size_t complete(std::uint64_t wr_id, ::ibv_wc_status status, IdOf&& id_of, Done&& done) {
    std::size_t upto = 0;
    while (upto < posted_.size() && id_of(posted_[upto]) != wr_id)
      ++upto;
    if (upto == posted_.size())
      return 0;
    for (std::size_t i = 0; i <= upto; ++i) {
      T item = std::move(posted_.front());
      posted_.pop_front();
      done(item, i == upto ? status : IBV_WC_SUCCESS);
    }
    return upto + 1;
  }

  /// Removes everything outstanding (the queue pair is gone and no completion will come), calling
  /// `drop(item)` on each.
  template<class Drop>
  void clear(Drop&& drop) {
    while (!posted_.empty()) {
      T item = std::move(posted_.front());
      posted_.pop_front();
      drop(item);
    }
  }

private:
  std::deque<T> posted_;
};

} // namespace ferry::verbs
