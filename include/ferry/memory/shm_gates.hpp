#pragma once
/// `ferry::shm_gates`: how the owner of shared regions keeps same-host peers out of memory it no longer
/// exposes. A same-host peer copies straight into the owner's shared memory, without asking the owner, so
/// the owner's own checks cannot run there; instead a small shared-memory object holds one *gate* per
/// exposed shared region and *tickets* that the peers' copy threads hold while they copy. A peer takes a
/// ticket, marks it with the gate, and copies only if the gate is open with the epoch its descriptor names;
/// the owner closes a gate only when no live process holds a ticket marked with it (else unregistering is
/// refused with errc::busy, as for any transfer in use), so once a region is unregistered no peer touches
/// it, and a region registered again in its place (with other permissions, say) has a new epoch that stale
/// descriptors do not match. A ticket left behind by a process that died does not hold a gate, also once the
/// kernel gave its process id to another process (a ticket records when its holder started).
///
///   auto gates = ferry::shm_gates::create();                    // the owner (region_registry does this)
///   auto [gate, epoch] = *gates->open_gate(gate_claim::of(r));  // published in the region's descriptor
///   auto peer_side = ferry::shm_gates::attach(gates->name());   // a peer, from the segment descriptor
///   if (auto pass = peer_side->enter(gate, epoch, gate_claim::of(r))) { /* copy */ }
///   gates->close_gate(gate);                                    // false while a live peer copies

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/memory/detail/pid_namespace.hpp"
#include "ferry/memory/detail/process_start.hpp"
#include "ferry/memory/gate_claim.hpp"
#include "ferry/memory/shared_buffer.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <fcntl.h>
#include <new>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <utility>

namespace ferry {

class shm_gates {
public:
  static constexpr std::uint32_t gate_count = 4096;
  static constexpr std::uint32_t ticket_count = 256;
  /// How long a peer waits for an owner in the middle of closing a gate to open it again or close it.
  static constexpr std::chrono::milliseconds closing_patience{200};

  /// The owner's table: a new shared object, every gate free.
  static result<shm_gates> create() {
    auto buf = shared_buffer::create(sizeof(table));
    if (!buf)
      return fail(buf.error());
    auto* t = new (buf->data()) table;
    t->pid_namespace.store(detail::pid_namespace_id(), std::memory_order_relaxed);
    t->magic.store(table::magic_value, std::memory_order_release);
    shm_gates g;
    g.pid_ = ::getpid();
    g.start_ = detail::own_start_time();
    g.name_ = buf->name();
    g.table_ = t;
    g.owned_ = std::move(*buf);
    return g;
  }

  /// A peer's view of the owner's table named `name` (from the segment descriptor). Refused for an owner in
  /// another PID namespace: tickets name their holders by process id, and the owner tells a live holder from
  /// a dead one by it.
  static result<shm_gates> attach(const std::string& name) {
    // why: O_NONBLOCK: a name from a descriptor that names a FIFO must not block the caller's loop in open()
    int fd = ::shm_open(name.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK, 0);
    if (fd < 0)
      return fail(errc::peer_unreachable, "shm gates: cannot open the owner's table");
    struct ::stat st {};
    if (::fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return fail(errc::peer_unreachable, "shm gates: the owner's table is not a shared-memory object");
    }
    // why: the claims in the table are what a peer trusts about the owner's regions: a table that others
    // than its owner may write vouches for nothing. Whose it is the peer compares with the objects it maps
    // (owner_uid()): a table made by another user cannot vouch for the owner's memory
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
      ::close(fd);
      return fail(errc::peer_unreachable, "shm gates: the table is writable by others than its owner");
    }
    if (static_cast<std::uint64_t>(st.st_size) < sizeof(table)) {
      ::close(fd);
      return fail(errc::peer_unreachable, "shm gates: the owner's table is too small");
    }
    void* p = ::mmap(nullptr, sizeof(table), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED)
      return fail(errc::peer_unreachable, "shm gates: cannot map the owner's table");
    auto* t = static_cast<table*>(p);
    if (t->magic.load(std::memory_order_acquire) != table::magic_value) {
      ::munmap(p, sizeof(table));
      return fail(errc::peer_unreachable, "shm gates: not a gate table (or one of another ferry version)");
    }
    if (t->pid_namespace.load(std::memory_order_relaxed) != detail::pid_namespace_id()) {
      ::munmap(p, sizeof(table));
      return fail(errc::peer_unreachable, "shm gates: the owner runs in another PID namespace");
    }
    shm_gates g;
    g.pid_ = ::getpid();
    g.start_ = detail::own_start_time();
    g.name_ = name;
    g.table_ = t;
    g.mapped_ = true;
    g.owner_uid_ = st.st_uid;
    return g;
  }

  shm_gates() = default;
  shm_gates(shm_gates&& o) noexcept
      : name_(std::move(o.name_)), table_(std::exchange(o.table_, nullptr)), owned_(std::move(o.owned_)),
        mapped_(std::exchange(o.mapped_, false)), pid_(o.pid_), start_(o.start_), owner_uid_(o.owner_uid_) {}
  shm_gates& operator=(shm_gates&& o) noexcept {
    if (this != &o) {
      release();
      name_ = std::move(o.name_);
      table_ = std::exchange(o.table_, nullptr);
      owned_ = std::move(o.owned_);
      mapped_ = std::exchange(o.mapped_, false);
      pid_ = o.pid_;
      start_ = o.start_;
      owner_uid_ = o.owner_uid_;
    }
    return *this;
  }
  ~shm_gates() { release(); }

  /// The name peers attach by.
  const std::string& name() const noexcept { return name_; }
  /// The user whose table this is (a peer's view: the owner of the object it attached). What the table
  /// vouches for is that user's memory only: a peer maps through it only objects of this user.
  ::uid_t owner_uid() const noexcept { return owner_uid_; }
  explicit operator bool() const noexcept { return table_ != nullptr; }

  // ---- the owner ----

  /// Opens a free gate with a new epoch for the region that `claim` describes (what peers check their
  /// descriptors against); errc::out_of_space when every gate is in use. One thread of the owner opens gates.
  result<std::pair<std::uint32_t, std::uint64_t>> open_gate(const gate_claim& claim) {
    for (std::uint32_t i = 0; i < gate_count; ++i) {
      auto& g = table_->gates[i];
      std::uint64_t s = g.load(std::memory_order_relaxed);
      if ((s & state_mask) != free_state)
        continue;
      // why: written while the gate is free, before the open state publishes it (seq_cst): a peer that sees
      // the gate open with this epoch sees this claim; none reads a free gate's
      store_claim(i, claim);
      std::uint64_t epoch = (s >> 2) + 1;
      if (g.compare_exchange_strong(s, (epoch << 2) | open_state, std::memory_order_seq_cst))
        return std::pair{i, epoch};
    }
    return fail(errc::out_of_space, "shm gates: every gate is in use");
  }

  /// Closes an open gate unless a live process holds a ticket marked with it (then it stays open and this
  /// returns false). Once it returned true, no peer copies through the gate.
  bool close_gate(std::uint32_t gate) {
    auto& g = table_->gates[gate];
    std::uint64_t open = g.load(std::memory_order_relaxed);
    std::uint64_t epoch_bits = open & ~state_mask;
    // why: closing first, then looking at the tickets (both sequentially consistent), pairs with a peer that
    // marks its ticket first, then looks at the gate: one of the two sees the other
    g.store(epoch_bits | closing_state, std::memory_order_seq_cst);
    for (std::uint32_t i = 0; i < ticket_count; ++i) {
      std::uint64_t held = table_->tickets[i].load(std::memory_order_seq_cst);
      if (ticket_gate(held) == gate + 1 && holder_alive(i, held)) {
        g.store(open, std::memory_order_seq_cst);
        return false;
      }
    }
    g.store(epoch_bits | free_state, std::memory_order_seq_cst);
    return true;
  }

  /// Closes an open gate whatever tickets are out: peers that hold one finish the copy they are in, and no
  /// peer starts another. For an owner that cannot wait any longer (its registry is going).
  void force_close_gate(std::uint32_t gate) {
    auto& g = table_->gates[gate];
    std::uint64_t s = g.load(std::memory_order_relaxed);
    g.store((s & ~state_mask) | free_state, std::memory_order_seq_cst);
  }

  // ---- a peer ----

  /// A ticket held while copying through a gate; released on destruction.
  class pass {
  public:
    pass() = default;
    pass(pass&& o) noexcept : ticket_(std::exchange(o.ticket_, nullptr)) {}
    pass& operator=(pass&& o) noexcept {
      std::swap(ticket_, o.ticket_);
      return *this;
    }
    ~pass() {
      if (ticket_)
        ticket_->store(0, std::memory_order_release);
    }

  private:
    friend class shm_gates;
    explicit pass(std::atomic<std::uint64_t>* t) noexcept : ticket_(t) {}
    std::atomic<std::uint64_t>* ticket_ = nullptr;
  };

  /// Takes a ticket for `gate` if it is open with `epoch` for the region `expected` describes (what the
  /// peer's descriptor says): errc::out_of_bounds when the owner closed it (the region was unregistered,
  /// perhaps registered again: the descriptor is stale), errc::permission_denied when the owner opened it for
  /// another region than the descriptor describes (another object, place, length or access: the descriptor
  /// is not the owner's), errc::busy when every ticket is taken.
  result<pass> enter(std::uint32_t gate, std::uint64_t epoch, const gate_claim& expected) {
    if (gate >= gate_count)
      return fail(errc::out_of_bounds, "shm gates: no such gate");
    auto* t = claim();
    if (!t)
      return fail(errc::busy, "shm gates: every ticket is taken");
    // why: before the mark, which publishes it: whoever sees the mark sees when its holder started
    table_->ticket_starts[t - table_->tickets].store(start_, std::memory_order_relaxed);
    t->store(mine() | (gate + 1), std::memory_order_seq_cst);
    auto& g = table_->gates[gate];
    const std::uint64_t wanted = (epoch << 2) | open_state;
    // why: a gate is closing only for the moment its owner looks at the tickets; if the owner then finds a
    // copy in progress it opens the gate again, and this copy goes ahead. That moment may last while the
    // owner's thread waits for a core: after a while of yielding, this waits in short sleeps, up to
    // closing_patience.
    std::chrono::steady_clock::time_point give_up{};
    for (int spin = 0;; ++spin) {
      std::uint64_t s = g.load(std::memory_order_seq_cst);
      if (s == wanted) {
        // why: read after the open state, with the ticket marked: the owner cannot close the gate (and open
        // it again for another region) while this ticket holds it
        if (load_claim(gate) == expected)
          return pass(t);
        t->store(0, std::memory_order_release);
        return fail(errc::permission_denied,
                    "shm: the owner exposes another region behind this gate than the descriptor describes "
                    "(another object, place in it, length or access): the descriptor is not its owner's");
      }
      if ((s & ~state_mask) != (epoch << 2) || (s & state_mask) != closing_state)
        break;
      if (spin < 1000) {
        std::this_thread::yield();
        continue;
      }
      auto now = std::chrono::steady_clock::now();
      if (spin == 1000)
        give_up = now + closing_patience;
      else if (now >= give_up)
        break;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    t->store(0, std::memory_order_release);
    return fail(errc::out_of_bounds, "shm: the owner no longer exposes this region (unregistered)");
  }

private:
  static constexpr std::uint64_t state_mask = 3, free_state = 0, open_state = 1, closing_state = 2;
  // A ticket: the holder's pid in the high half, the gate it copies through plus one in the low half (0:
  // none); 0 as a whole when free.
  static std::uint32_t ticket_gate(std::uint64_t t) noexcept { return static_cast<std::uint32_t>(t); }
  static pid_t ticket_pid(std::uint64_t t) noexcept { return static_cast<pid_t>(t >> 32); }
  static bool process_alive(pid_t pid) noexcept { return pid > 0 && (::kill(pid, 0) == 0 || errno != ESRCH); }
  /// Whether the holder of ticket `i`, which holds `held`, still runs: its process id names a live process
  /// that is not a zombie (one that exited and waits for its parent to reap it, which kill() still finds),
  /// and, for a ticket marked with a gate, one that started when the holder did (not a later process the
  /// kernel gave the id to after the holder died).
  bool holder_alive(std::uint32_t i, std::uint64_t held) const noexcept {
    if (!process_alive(ticket_pid(held)))
      return false;
    // why: only a marked ticket's start time is known to be its holder's (it is written before the mark)
    return detail::still_runs(
        ticket_pid(held),
        ticket_gate(held) == 0 ? 0 : table_->ticket_starts[i].load(std::memory_order_relaxed));
  }

  static constexpr std::size_t claim_words = 5;
  struct table {
    static constexpr std::uint64_t magic_value = 0x3453455441475946ull; // "FYGATES4"
    std::atomic<std::uint64_t> magic{0};
    std::atomic<std::uint64_t> pid_namespace{0};  // the owner's (detail::pid_namespace_id())
    std::atomic<std::uint64_t> gates[gate_count]; // epoch << 2 | state
    std::atomic<std::uint64_t> tickets[ticket_count];
    std::atomic<std::uint64_t> ticket_starts[ticket_count];     // when each marked ticket's holder started
    std::atomic<std::uint64_t> claims[gate_count][claim_words]; // the region each open gate is for
  };

  void store_claim(std::uint32_t gate, const gate_claim& c) noexcept {
    const std::uint64_t words[claim_words] = {c.object, c.object_offset, c.length, c.segment_offset,
                                              c.permissions};
    for (std::size_t w = 0; w < claim_words; ++w)
      table_->claims[gate][w].store(words[w], std::memory_order_relaxed);
  }
  gate_claim load_claim(std::uint32_t gate) const noexcept {
    auto word = [&](std::size_t w) { return table_->claims[gate][w].load(std::memory_order_relaxed); };
    return {word(0), word(1), word(2), word(3), word(4)};
  }
  static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "gates live in shared memory");

  // A free ticket (or one a dead process left), now this process's; nullptr if every one is taken.
  std::atomic<std::uint64_t>* claim() {
    for (auto& t : table_->tickets) {
      std::uint64_t s = t.load(std::memory_order_relaxed);
      if (s == 0 && t.compare_exchange_strong(s, mine(), std::memory_order_acq_rel))
        return &t;
    }
    for (std::uint32_t i = 0; i < ticket_count; ++i) {
      auto& t = table_->tickets[i];
      std::uint64_t s = t.load(std::memory_order_acquire);
      if (s != 0 && !holder_alive(i, s) && t.compare_exchange_strong(s, mine(), std::memory_order_acq_rel))
        return &t;
    }
    return nullptr;
  }

  // This process's pid, in a ticket's high half.
  // why: getpid() is a system call (glibc keeps no copy), and every copy takes a ticket
  std::uint64_t mine() const noexcept { return std::uint64_t(static_cast<std::uint32_t>(pid_)) << 32; }

  void release() noexcept {
    if (mapped_ && table_)
      ::munmap(table_, sizeof(table));
    table_ = nullptr;
    mapped_ = false;
    owned_ = shared_buffer();
  }

  std::string name_;
  table* table_ = nullptr;
  shared_buffer owned_; // the owner's: the object, unlinked when the owner ends
  bool mapped_ = false; // a peer's mapping
  pid_t pid_ = 0;
  std::uint64_t start_ = 0; // when this process started (detail::own_start_time()), for its tickets
  ::uid_t owner_uid_ = ::geteuid();
};

} // namespace ferry
