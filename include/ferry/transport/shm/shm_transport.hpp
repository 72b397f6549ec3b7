#pragma once
/// `ferry::shm_transport`: transfers that never touch a socket. To the engine's own segment it copies within
/// the process; to a segment of another process on the same host it maps that process's shared-memory regions
/// (`ferry::shared_buffer`) once and copies directly, on a pool of copy threads (engine_options::shm).
/// Only regions the owner registered as shared are reachable, read-only ones are mapped read-only, and bounds
/// and permissions are checked against the owner's descriptor before any byte is copied; each copy holds a
/// pass through the region's gate (`ferry::shm_gates`), so that once the owner unregistered a region no copy
/// touches it, and unregistering it while a copy runs is refused.
///
///   ferry::transfer_engine<ferry::shm_transport, ferry::tcp_transport> engine(ctx, options);

#include "ferry/core/error.hpp"
#include "ferry/core/task.hpp"
#include "ferry/core/thread_pool.hpp"
#include "ferry/memory/access.hpp"
#include "ferry/memory/detail/process_start.hpp"
#include "ferry/memory/detail/stream_copy.hpp"
#include "ferry/memory/gate_claim.hpp"
#include "ferry/memory/shm_gates.hpp"
#include "ferry/transfer/detail/batch_state.hpp"
#include "ferry/transfer/peer.hpp"
#include "ferry/transport/slice.hpp"
#include "ferry/transport/transport_context.hpp"

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <poll.h>
#include <stop_token>
#include <string>
#include <string_view>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry {

class shm_transport {
  struct mapping {
    std::byte* base = nullptr;
    std::size_t length = 0;
    std::uint64_t object = 0; // gate_claim::hash of the object's name
    ~mapping() {
      if (base)
        ::munmap(base, length);
    }
  };
  /// The process that owns a peer's segment, to notice that it ended. Looked at on the loop's thread only.
  struct owner_process {
    int pidfd = -1;                                      // where one could be had
    pid_t pid = 0;                                       // where none could be had
    std::uint64_t pid_start = 0;                         // when it started (0: unknown)
    std::chrono::steady_clock::time_point identity_seen; // when its start time was last compared (no pidfd)
    bool ended = false;                                  // known to have ended

    owner_process(pid_t id, std::uint64_t start) : pid(id), pid_start(start) {
      // why: the descriptor may be older than the owner's end, and its pid given to another process since;
      // that process's pidfd would say "alive" for good while copies went to the memory the owner left
      pidfd = id > 0 ? detail::open_process(id, start) : -1;
      // why: without a pid, kill(0) or kill(-1) would ask about a group of processes
      ended = id <= 0 || (pidfd < 0 && errno == ESRCH);
    }
    owner_process(const owner_process&) = delete;
    owner_process& operator=(const owner_process&) = delete;
    ~owner_process() {
      if (pidfd >= 0)
        ::close(pidfd);
    }
    /// False once the process has exited (its memory would then reach nobody).
    bool alive() {
      if (!ended)
        ended = !still_running();
      return !ended;
    }

  private:
    bool still_running() {
      if (pidfd >= 0) {
        ::pollfd p{pidfd, POLLIN, 0};
        return ::poll(&p, 1, 0) == 0;
      }
      // why: no pidfd (an old kernel, a seccomp profile): the process id, in the same namespace
      if (::kill(pid, 0) != 0 && errno == ESRCH)
        return false;
      // why: a later process given the id answers kill() too, and so does one that exited and waits for its
      // parent; /proc tells them apart. Looked at every 10 ms at most (a file read per slice would cost more
      // than small copies): the kernel hands an id out again only once it went round all of them
      auto now = std::chrono::steady_clock::now();
      if (now - identity_seen < std::chrono::milliseconds(10))
        return true;
      identity_seen = now;
      return detail::still_runs(pid, pid_start);
    }
  };

  struct peer_maps {
    std::uint64_t incarnation = 0;
    std::map<std::string, std::shared_ptr<mapping>> by_name; // key: object name and its protection
    std::shared_ptr<shm_gates> gates;                        // the owner's, attached on first use
    std::shared_ptr<owner_process> owner;                    // the process of `incarnation`
    bool unreachable = false; // its shared memory cannot be opened from here, or its process ended
    bool set_up = false;      // the fields above describe `incarnation`
    /// Unmaps what this peer's copies no longer use (copies under way keep their mappings until they end).
    void drop_mappings() {
      by_name.clear();
      gates.reset();
    }
    /// Later requests go to the next transport; what is mapped is unmapped once no copy uses it.
    void give_up() {
      unreachable = true;
      drop_mappings();
    }
  };

public:
  static constexpr std::string_view name = "shm";

  explicit shm_transport(transport_context& tc) : tc_(tc) {
    if (tc_.options.shm.copy_threads > 0)
      pool_ = std::make_unique<thread_pool>(tc_.options.shm.copy_threads);
  }
  shm_transport(const shm_transport&) = delete;
  shm_transport& operator=(const shm_transport&) = delete;

  /// Own segment: always. Another process: same host, and the target range is in a shared region.
  bool reaches(const peer& p, std::uint64_t offset, std::uint64_t length) const {
    if (p.is_self)
      return true;
    // why: the owner's process id tells when it ended (its shared memory then reaches nobody): without one,
    // TCP
    if (p.descriptor.host.empty() || p.descriptor.host != tc_.host || p.descriptor.pid == 0)
      return false;
    if (auto it = maps_.find(p.id); it != maps_.end() && it->second.unreachable)
      return false;
    auto* r = p.descriptor.region_for(offset, length);
    // why: only behind its owner's gate: the owner must be able to keep peers out once it unregisters it
    return r && !r->shm_name.empty() && r->shm_gate != region_descriptor::no_gate &&
           !p.descriptor.shm_gates.empty();
  }

  // why: noexcept: running out of memory halfway through taking a slice (queued, a connection half set up)
  // must end the process, not reach the engine, which would fail a slice that is still held here
  void submit(const peer& p, slice* s) noexcept {
    auto target = resolve(p, s);
    if (!target) {
      s->settle(target.error());
      return;
    }
    tc_.scope.spawn(copy(s, std::move(*target)));
  }

  /// Copies already running finish (a memcpy cannot be interrupted); the batch's copies still waiting for a
  /// copy thread are settled at once without copying, wherever they are in the queue.
  void abort(detail::batch_state* b) noexcept {
    drop_queued([b](const queued_copy& q) { return q.s->batch == b; });
  }

  void forget(const peer& p) { maps_.erase(p.id); }

  /// Copies waiting for a copy thread are settled as cancelled; running ones finish.
  void shutdown() noexcept {
    stopping_ = true;
    stop_.request_stop();
    drop_queued([](const queued_copy&) { return true; });
  }

private:
  struct target_ref {
    std::byte* remote = nullptr;
    region_registry::lease lease;     // own segment: holds the region while copying
    std::shared_ptr<mapping> mapped;  // a peer's memory: stays mapped until the copy is done
    std::shared_ptr<shm_gates> gates; // a peer's memory: copied only with a pass through its gate
    std::uint32_t gate = 0;
    std::uint64_t epoch = 0;
    gate_claim
        claim; // a peer's memory: the region as the descriptor describes it, which its owner must vouch for
    std::shared_ptr<owner_process> owner; // a peer's memory: asked after the copy whether it still runs
  };

  result<target_ref> resolve(const peer& p, slice* s) {
    access wanted = s->op == transfer_op::write ? access::write : access::read;
    if (p.is_self) {
      auto l = tc_.registry.pin_exposed(s->remote_offset, s->length, wanted);
      if (!l)
        return fail(l.error());
      target_ref t;
      t.remote = l->data();
      t.lease = std::move(*l);
      return t;
    }
    auto* r = p.descriptor.region_for(s->remote_offset, s->length);
    if (!r)
      return fail(errc::out_of_bounds, "shm: range outside the target's regions");
    if (!allows(r->permissions, wanted))
      return fail(errc::permission_denied, "shm: the region does not permit this");
    auto& maps = maps_[p.id];
    // why: by a flag as well as by the incarnation: a descriptor may name incarnation 0, which a new entry
    // has too
    if (!maps.set_up || maps.incarnation != p.descriptor.incarnation) {
      maps.set_up = true;
      maps.drop_mappings();
      maps.incarnation = p.descriptor.incarnation;
      maps.owner =
          std::make_shared<owner_process>(static_cast<pid_t>(p.descriptor.pid), p.descriptor.pid_start);
      maps.unreachable = maps.owner->ended;
    }
    auto give_up = [&maps](error why) -> result<target_ref> {
      maps.give_up();
      return fail(std::move(why));
    };
    // why: a process that ended (and perhaps restarted elsewhere) leaves its shared objects behind; copying
    // into them would report success for bytes nobody will read. Asked here, before anything is mapped or
    // copied, and again once the copy is done (landed()), which may be long after this if it waits in the
    // queue
    if (maps.unreachable || !maps.owner->alive())
      return give_up(error(errc::peer_unreachable, "shm: the segment's process has ended"));
    // why: first the table of gates, whose name is the owner's alone: a process that sees another /dev/shm
    // (another container on this kernel) does not find it, and never maps an object of its own that has the
    // name of one of the owner's regions
    if (!maps.gates) {
      auto attached = shm_gates::attach(p.descriptor.shm_gates);
      if (!attached)
        return give_up(attached.error());
      maps.gates = std::make_shared<shm_gates>(std::move(*attached));
    }
    // why: a read-only mapping must not serve a later write to a writable region of the same object
    std::string key = r->shm_name + (allows(r->permissions, access::write) ? "#rw" : "#ro");
    auto& m = maps.by_name[key];
    if (!m) {
      auto opened = open_mapping(*r, maps.gates->owner_uid());
      if (!opened)
        return give_up(opened.error());
      m = std::move(*opened);
      if (!sweeping_ && !stopping_) {
        sweeping_ = true;
        tc_.scope.spawn(sweep());
      }
    }
    std::uint64_t at = r->shm_offset + (s->remote_offset - r->offset);
    if (at > m->length || s->length > m->length - at)
      return fail(errc::out_of_bounds, "shm: the shared object is smaller than the region");
    target_ref t;
    t.remote = m->base + at;
    t.mapped = m;
    t.gates = maps.gates;
    t.gate = r->shm_gate;
    t.epoch = r->shm_epoch;
    // why: the name's hash comes with the mapping, made once per object: nothing is hashed per copy
    t.claim = {m->object, r->shm_offset, r->length, r->offset, static_cast<std::uint64_t>(r->permissions)};
    t.owner = maps.owner;
    return t;
  }

  /// Maps the object behind a peer's region; only one of `owner`, the user whose table of gates vouches for
  /// the region.
  static result<std::shared_ptr<mapping>> open_mapping(const region_descriptor& r, ::uid_t owner) {
    bool writable = allows(r.permissions, access::write);
    // why: O_NONBLOCK: a descriptor that names a FIFO must not block the loop in open() until a writer comes
    int fd = ::shm_open(r.shm_name.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK, 0);
    if (fd < 0)
      return fail(errc::peer_unreachable, "shm: cannot open the peer's shared memory");
    struct ::stat st {};
    if (::fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return fail(errc::peer_unreachable, "shm: the peer's region names something that is not shared memory");
    }
    // why: a table of gates vouches only for its own user's memory: a descriptor that names another user's
    // table beside this object (a table anyone can make) is not the object's owner's
    if (st.st_uid != owner) {
      ::close(fd);
      return fail(errc::permission_denied,
                  "shm: the peer's shared object belongs to another user than its table of gates: the "
                  "descriptor is not the object's owner's");
    }
    if (static_cast<std::uint64_t>(st.st_size) < r.shm_offset + r.length) {
      ::close(fd);
      return fail(errc::peer_unreachable, "shm: the peer's shared object is smaller than its region");
    }
    void* p = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ | (writable ? PROT_WRITE : 0),
                     MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED)
      return fail(errc::peer_unreachable, "shm: cannot map the peer's shared memory");
    auto m = std::make_shared<mapping>();
    m->base = static_cast<std::byte*>(p);
    m->length = static_cast<std::size_t>(st.st_size);
    m->object = gate_claim::hash(r.shm_name);
    return m;
  }

  /// A copy waiting for a copy thread.
  struct queued_copy {
    slice* s = nullptr;
    target_ref target;
  };

  /// Copies one slice now, on the calling thread; the error is what the slice settles with.
  static error copy_now(slice* s, target_ref& target) {
    // A peer's memory: only while holding a pass through the region's gate, which its owner does not close
    // while a copy holds one (and then this copy would not get one).
    shm_gates::pass through;
    if (target.gates) {
      auto entered = target.gates->enter(target.gate, target.epoch, target.claim);
      if (!entered)
        return entered.error() == errc::busy
                   ? error(errc::peer_unreachable, "shm: every ticket of the owner's gates is taken")
                   : entered.error();
      through = std::move(*entered);
    }
    if (s->op == transfer_op::write)
      detail::stream_copy(target.remote, s->local, s->length);
    else
      detail::stream_copy(s->local, target.remote, s->length);
    return {};
  }

  /// On the loop's thread: settles, as cancelled and without copying, the queued copies `which` picks.
  template<class Pick>
  void drop_queued(Pick which) noexcept {
    std::vector<queued_copy> dropped;
    {
      std::lock_guard lock(queue_mutex_);
      for (auto it = queue_.begin(); it != queue_.end();)
        if (which(*it)) {
          dropped.push_back(std::move(*it));
          it = queue_.erase(it);
        } else {
          ++it;
        }
    }
    for (auto& d : dropped) {
      d.target = {};
      d.s->settle(error(errc::cancelled, "shm"));
    }
  }

  task<> copy(slice* s, target_ref target) {
    // why: decided here, on the loop's thread, which owns the batch and the transport's state; a copy that
    // has started cannot be interrupted and is reported as done
    if (s->batch->aborted() || stopping_) {
      s->settle(error(errc::cancelled, "shm"));
      co_return;
    }
    if (!pool_) {
      // why: this copy runs now, on the loop's thread, as do the batch's next ones: the loop's timers do not
      // run meanwhile, so the batch's deadline and its caller's stop are looked at here before each
      if (s->batch->overdue()) {
        s->settle(error(errc::cancelled, "shm"));
        co_return;
      }
      error outcome = landed(s, target, copy_now(s, target));
      target = {};
      s->settle(outcome);
      co_return;
    }
    // why: the copies wait in a queue of the transport's rather than in the pool's, so that a batch that is
    // aborted takes its copies out of it at once instead of waiting behind other batches' copies; each
    // copy() hands the pool one turn, which copies whatever is oldest in the queue then (nothing, if aborts
    // emptied it)
    try {
      std::lock_guard lock(queue_mutex_);
      queue_.push_back({s, std::move(target)});
    } catch (...) { // why: out of memory: the slice is settled here, or its batch would wait for it for ever
      s->settle(error(errc::internal, "shm: no memory to queue the copy"));
      co_return;
    }
    // why: nothing else is outstanding on the loop while the copy runs elsewhere; without this, run() would
    // return with the batch unfinished
    io::io_context::work_guard copying(tc_.io);
    try {
      co_await pool_->schedule();
    } catch (...) {
      // why: the pool took no turn (out of memory): one queued copy has no turn to run it, and is settled
      // here instead (any one: each turn copies whichever is oldest)
      std::optional<queued_copy> orphan;
      {
        std::lock_guard lock(queue_mutex_);
        if (!queue_.empty()) {
          orphan.emplace(std::move(queue_.back()));
          queue_.pop_back();
        }
      }
      if (orphan) {
        orphan->target = {};
        orphan->s->settle(error(errc::internal, "shm: no copy thread could take the copy"));
      }
      co_return;
    }
    std::optional<queued_copy> next;
    {
      std::lock_guard lock(queue_mutex_);
      if (!queue_.empty()) {
        next.emplace(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    error outcome;
    if (next) {
      // why: its batch may have been aborted just before abort() could take it out of the queue (aborted() is
      // atomic; the reason is the batch's, recorded when it settles)
      outcome = next->s->batch->aborted() ? error(errc::cancelled, "shm") : copy_now(next->s, next->target);
    }
    co_await tc_.io.schedule();
    if (next) {
      outcome = landed(next->s, next->target, std::move(outcome));
      next->target = {};
      next->s->settle(outcome);
    }
  }

  /// On the loop's thread, after a copy that went well (`outcome` clear): whether the bytes are where their
  /// owner can use them, that is, whether it still ran after the copy. The copy may have waited in the queue
  /// long after resolve() looked, and the owner may have died meanwhile, or during the copy: its memory
  /// outlives it, and a copy into it would be reported done for bytes nobody reads (or, for a read, bytes the
  /// owner no longer vouches for).
  error landed(slice* s, const target_ref& target, error outcome) {
    if (outcome || !target.owner || target.owner->alive())
      return outcome;
    if (auto it = maps_.find(s->target); it != maps_.end() && it->second.owner == target.owner)
      it->second.give_up();
    return error(errc::peer_unreachable, "shm: the segment's process ended before the copy was done");
  }

  /// Once a second while peers' memory is mapped here: unmaps the memory of owners that ended. Their shared
  /// objects stay in use (in /dev/shm, in RAM) for as long as a peer maps them, which would otherwise last
  /// until the next transfer to them, or for good. Ends once nothing is mapped (its timer would keep the
  /// loop's run() from returning), and starts again with the next mapping.
  task<> sweep() {
    while (!stopping_) {
      auto slept = co_await tc_.io.sleep_for(std::chrono::seconds(1), stop_.get_token());
      if (!slept)
        break;
      bool mapped = false;
      for (auto& entry : maps_) {
        peer_maps& maps = entry.second;
        if (maps.by_name.empty() && !maps.gates)
          continue;
        if (maps.owner && !maps.owner->alive())
          maps.give_up();
        else
          mapped = true;
      }
      if (!mapped)
        break;
    }
    sweeping_ = false;
  }

  transport_context& tc_;
  std::unique_ptr<thread_pool> pool_;
  std::mutex queue_mutex_;
  std::deque<queued_copy> queue_; // copies waiting for a copy thread, oldest first
  std::unordered_map<segment_id, peer_maps> maps_;
  bool stopping_ = false;
  bool sweeping_ = false;
  std::stop_source stop_; // ends the sweep
};

} // namespace ferry
