#pragma once
/// `ferry::region_registry`: the memory a process has registered for transfers. Registering a range that an
/// existing registration already covers only counts a reference (no new work); removing a region that a
/// transfer is using is refused with errc::busy, never a use-after-free. Exposed regions (access other than
/// `none`) get a place in the segment's offset space, which is what peers address; every remote access is
/// checked here, by the owner, against those regions and their permissions. Safe to use from any thread.
///
///   ferry::region_registry regs;
///   auto id = regs.add(buf.data(), buf.size(), ferry::access::read_write);
///   auto use = regs.pin_exposed(offset, length, ferry::access::write);   // bounds + permission check
///
/// A file or block device can be exposed too (`add_file`): its region has no address, only a file_backing
/// that moves its bytes; pin_exposed refuses it unless the caller says it handles files.

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/memory/access.hpp"
#include "ferry/memory/file_backing.hpp"
#include "ferry/memory/memory_kind.hpp"
#include "ferry/memory/region_descriptor.hpp"
#include "ferry/memory/shm_gates.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <fcntl.h>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

namespace ferry {

class region_registry {
  /// A later registration inside a region: its start and length.
  struct covered_range {
    std::uintptr_t start = 0;
    std::uint64_t length = 0;
  };
  struct entry {
    std::byte* base = nullptr;
    std::uint64_t length = 0;
    region_descriptor exposed;          // permissions == none: local only
    bool outer_live = true;             // the registration that created the region has not been removed
    std::vector<covered_range> covered; // later registrations inside it (one per registration)
    std::uint32_t uses = 0;
    std::shared_ptr<file_backing> file; // a file region: no base, bytes move through the file
  };

public:
  /// A region held in use: while it lives, the region cannot be removed. `data()` points at the range asked
  /// for.
  class lease {
  public:
    lease() = default;
    lease(lease&& o) noexcept
        : owner_(std::exchange(o.owner_, nullptr)), entry_(o.entry_), data_(o.data_),
          file_offset_(o.file_offset_) {}
    lease& operator=(lease&& o) noexcept {
      if (this != &o) {
        release();
        owner_ = std::exchange(o.owner_, nullptr);
        entry_ = o.entry_;
        data_ = o.data_;
        file_offset_ = o.file_offset_;
      }
      return *this;
    }
    ~lease() { release(); }
    std::byte* data() const noexcept { return data_; }
    /// For a file region (pin_exposed with files_too): the file, else nullptr. The lease keeps it open.
    file_backing* file() const noexcept { return owner_ && entry_->file ? entry_->file.get() : nullptr; }
    /// For a file region: where the range asked for starts in the file.
    std::uint64_t file_offset() const noexcept { return file_offset_; }
    explicit operator bool() const noexcept { return owner_ != nullptr; }
    /// Where the held region's memory lives (host, pinned host, a GPU).
    const memory_location& location() const noexcept { return entry_->exposed.location; }
    /// Whether [p, p + n) lies in the held region too (a second pin of it would hold nothing more).
    bool covers(const void* p, std::size_t n) const noexcept {
      if (!owner_ || !entry_->base)
        return false;
      auto at = reinterpret_cast<std::uintptr_t>(p);
      auto base = reinterpret_cast<std::uintptr_t>(entry_->base);
      return at >= base && at - base <= entry_->length && n <= entry_->length - (at - base);
    }

  private:
    friend class region_registry;
    lease(region_registry* r, entry* e, std::byte* d, std::uint64_t file_offset = 0) noexcept
        : owner_(r), entry_(e), data_(d), file_offset_(file_offset) {}
    void release() noexcept {
      if (!owner_)
        return;
      std::lock_guard lock(owner_->mutex_);
      --entry_->uses;
      owner_ = nullptr;
    }
    region_registry* owner_ = nullptr;
    entry* entry_ = nullptr;
    std::byte* data_ = nullptr;
    std::uint64_t file_offset_ = 0;
  };

  region_registry() = default;
  region_registry(const region_registry&) = delete;
  region_registry& operator=(const region_registry&) = delete;
  /// Closes the gates of the shared regions still registered, so that same-host peers stop copying there:
  /// it waits up to a second in all for copies in progress, then closes them anyway (a peer still copying
  /// finishes that copy, or, for GPU memory, the copies it has queued; none starts another).
  ~region_registry() {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    for (auto& [key, e] : by_address_) {
      if (e.exposed.shm_gate == region_descriptor::no_gate)
        continue;
      bool closed = false;
      while (!(closed = gates_.close_gate(e.exposed.shm_gate)) && std::chrono::steady_clock::now() < give_up)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      // why: left open, the gate would let peers that hold the region's descriptor copy into memory that is
      // no longer registered (and may be registered again, for something else) for as long as this process
      // lives
      if (!closed)
        gates_.force_close_gate(e.exposed.shm_gate);
    }
  }

  /// Registers [base, base + length). `shm_name`/`shm_offset` name the shared-memory object behind it, if
  /// any. Yields the region's segment offset (meaningful when exposed). A range inside an existing
  /// registration with the same access (and the same memory: kind, device, the object behind it) only adds
  /// a reference; a partial overlap is refused.
  result<std::uint64_t> add(void* base, std::size_t length, access permissions, std::string shm_name = {},
                            std::uint64_t shm_offset = 0) {
    return add(base, length, permissions, memory_location{}, std::move(shm_name), shm_offset);
  }

  /// Registers memory that is not plain host memory (GPU or pinned memory, see ferry::cuda::register_memory):
  /// `where` is recorded in the region's descriptor, so that peers know what it is and how to open it.
  result<std::uint64_t> add(void* base, std::size_t length, access permissions, memory_location where,
                            std::string shm_name = {}, std::uint64_t shm_offset = 0) {
    if (!base || length == 0)
      return fail(errc::invalid_argument, "register: empty region");
    auto* b = static_cast<std::byte*>(base);
    auto key = reinterpret_cast<std::uintptr_t>(b);
    if (length > UINTPTR_MAX - key)
      return fail(errc::invalid_argument, "register: the region runs past the end of the address space");
    region_descriptor asked{0, length, permissions, std::move(shm_name), shm_offset, std::move(where)};
    // why: a region that its descriptor cannot carry would make the whole segment unreadable to every peer
    if (const char* why = asked.problem())
      return fail(errc::invalid_argument, std::string("register: ") + why);
    std::lock_guard lock(mutex_);
    if (entry* covering = find_local(b, length)) {
      if (covering->exposed.permissions != permissions)
        return fail(errc::already_exists, "register: range already registered with other access");
      if (const char* why = other_memory(*covering, b, asked))
        return fail(errc::already_exists, why);
      covering->covered.push_back({key, length});
      return covering->exposed.offset + static_cast<std::uint64_t>(b - covering->base);
    }
    auto next = by_address_.lower_bound(key);
    if (next != by_address_.end() && next->first < key + length)
      return fail(errc::already_exists, "register: overlaps a registered region");
    if (next != by_address_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second.length > key)
        return fail(errc::already_exists, "register: overlaps a registered region");
    }
    std::uint64_t after = 0;
    if (permissions != access::none) {
      auto room = room_for(length);
      if (!room)
        return fail(room.error());
      after = *room;
    }
    entry e;
    e.base = b;
    e.length = length;
    e.exposed = std::move(asked);
    e.exposed.offset = permissions == access::none ? 0 : next_offset_;
    // why: GPU memory that same-host peers map through CUDA IPC is gated like shared memory: once the owner
    // unregistered (and perhaps freed) it, no peer copies there
    if (permissions != access::none &&
        (!e.exposed.shm_name.empty() || !e.exposed.location.ipc_handle.empty()))
      gate(e.exposed);
    auto& stored = by_address_.emplace(key, std::move(e)).first->second;
    if (permissions != access::none) {
      by_offset_.emplace(next_offset_, &stored);
      next_offset_ = after;
      ++generation_;
    }
    return stored.exposed.offset;
  }

  /// Exposes a file (its first `file->length()` bytes) as a region of the segment with `permissions` (not
  /// `none`: a file region is reached only through segment offsets). Yields the region's segment offset.
  result<std::uint64_t> add_file(std::shared_ptr<file_backing> file, access permissions) {
    if (!file || file->length() == 0)
      return fail(errc::invalid_argument, "register file: empty file region");
    if (permissions == access::none)
      return fail(errc::invalid_argument,
                  "register file: a file region must be exposed (read, write or both)");
    std::lock_guard lock(mutex_);
    auto room = room_for(file->length());
    if (!room)
      return fail(room.error());
    entry e;
    e.length = file->length();
    e.file = std::move(file);
    e.exposed = {next_offset_, e.length, permissions, {}, 0, {}};
    auto& stored = files_.emplace(next_offset_, std::move(e)).first->second;
    by_offset_.emplace(next_offset_, &stored);
    next_offset_ = *room;
    ++generation_;
    return stored.exposed.offset;
  }

  /// Drops the file region at segment offset `offset`; errc::busy while a transfer uses it.
  result<void> remove_file(std::uint64_t offset) {
    std::lock_guard lock(mutex_);
    auto it = files_.find(offset);
    if (it == files_.end())
      return fail(errc::not_found, "unregister file: no file region starts there");
    if (it->second.uses > 0)
      return fail(errc::busy, "unregister file: a transfer is using the region");
    by_offset_.erase(offset);
    files_.erase(it);
    ++generation_;
    return {};
  }

  /// Drops the registration that starts at `base` (the region's own, or a covered range registered later;
  /// of several that start there, the latest). The region goes when its last registration does. Once the
  /// region's own registration is gone, the region is only what the registrations left inside it cover: it
  /// shrinks to them (keeping their segment offsets; peers that map it are sent to a new gate; size() then
  /// counts each part). Going or shrinking is refused with errc::busy while a transfer uses the region, and
  /// shrinking with errc::out_of_space if the parts would be more regions than a segment exposes.
  /// errc::not_found if no registration starts there.
  result<void> remove(const void* base) { return remove_and_tell(base, std::nullopt); }

  /// Drops the registration of [base, base + length) exactly: of several that start at `base` (a pool and
  /// the first block in it, say), the one of that length.
  result<void> remove(const void* base, std::size_t length) {
    return remove_and_tell(base, std::optional<std::uint64_t>(length));
  }

  /// A range of this process's memory that stopped being registered as it was: [start, start + length);
  /// `exposed` when peers could reach it.
  struct withdrawn_range {
    std::uintptr_t start = 0;
    std::uint64_t length = 0;
    bool exposed = false;
  };
  /// An observer of withdrawals (on_withdrawal); it is called no more once this is destroyed or reset.
  class withdrawal_watch {
  public:
    withdrawal_watch() = default;
    withdrawal_watch(withdrawal_watch&& o) noexcept
        : registry_(std::exchange(o.registry_, nullptr)), id_(o.id_) {}
    withdrawal_watch& operator=(withdrawal_watch&& o) noexcept {
      if (this != &o) {
        reset();
        registry_ = std::exchange(o.registry_, nullptr);
        id_ = o.id_;
      }
      return *this;
    }
    ~withdrawal_watch() { reset(); }
    /// Stops the calls; once it returns, none is in progress.
    void reset() noexcept {
      if (auto* r = std::exchange(registry_, nullptr)) {
        std::lock_guard lock(r->observers_mutex_);
        std::erase_if(r->observers_, [this](const auto& o) { return o.first == id_; });
      }
    }

  private:
    friend class region_registry;
    withdrawal_watch(region_registry* r, std::uint64_t id) noexcept : registry_(r), id_(id) {}
    region_registry* registry_ = nullptr;
    std::uint64_t id_ = 0;
  };
  /// Calls `observer` with every region that goes or shrinks, before the remove() that withdraws it returns
  /// (outside the registry's lock; the observer must not call back into the registry): what reaches memory
  /// without the registry's checks is taken back there, before the caller may free the memory. A NIC's
  /// registrations say: for one-sided RDMA by peers (exposed regions), and for this process's own transfers
  /// (any region, whose pages such a registration pins: memory freed and allocated again at the same address
  /// must not be reached through it).
  [[nodiscard]] withdrawal_watch on_withdrawal(std::function<void(withdrawn_range)> observer) {
    std::lock_guard lock(observers_mutex_);
    observers_.emplace_back(next_observer_, std::move(observer));
    return withdrawal_watch(this, next_observer_++);
  }

private:
  result<void> remove_and_tell(const void* base, std::optional<std::uint64_t> length) {
    std::optional<withdrawn_range> gone;
    auto r = remove(base, length, gone);
    if (gone) {
      std::lock_guard lock(observers_mutex_);
      for (auto& o : observers_)
        o.second(*gone);
    }
    return r;
  }

  // `gone`: set to the region that went or shrank (as it was).
  result<void> remove(const void* base, std::optional<std::uint64_t> length,
                      std::optional<withdrawn_range>& gone) {
    auto key = reinterpret_cast<std::uintptr_t>(base);
    std::lock_guard lock(mutex_);
    auto it = by_address_.upper_bound(key);
    if (it == by_address_.begin())
      return fail(errc::not_found, "unregister: no registration starts there");
    --it;
    entry& e = it->second;
    if (key - it->first >= e.length)
      return fail(errc::not_found, "unregister: no registration starts there");
    // why: nested registrations end in reverse order; of two that start at one address the later goes first
    auto sub = std::find_if(e.covered.rbegin(), e.covered.rend(), [&](const covered_range& c) {
      return c.start == key && (!length || c.length == *length);
    });
    bool is_covered = sub != e.covered.rend();
    if (!is_covered && !(key == it->first && e.outer_live && (!length || *length == e.length)))
      return fail(errc::not_found, "unregister: no registration starts there" +
                                       std::string(length ? " with that length" : ""));
    std::vector<covered_range> rest = e.covered;
    if (is_covered)
      rest.erase(std::next(rest.begin(), std::distance(sub, e.covered.rend()) - 1));
    bool outer_stays = is_covered && e.outer_live;
    if (!outer_stays && !rest.empty())
      return shrink_to(it, std::move(rest), gone);
    bool last = !outer_stays && rest.empty();
    if (last && e.uses > 0)
      return fail(errc::busy, "unregister: a transfer is using the region");
    if (last && e.exposed.shm_gate != region_descriptor::no_gate && !gates_.close_gate(e.exposed.shm_gate))
      return fail(errc::busy, "unregister: a same-host peer is copying into or out of the region");
    e.covered = std::move(rest);
    e.outer_live = outer_stays;
    if (!last)
      return {};
    if (e.exposed.permissions != access::none) {
      by_offset_.erase(e.exposed.offset);
      ++generation_;
    }
    gone = withdrawn_range{it->first, e.length, e.exposed.permissions != access::none};
    by_address_.erase(it);
    return {};
  }

public:
  /// Holds the local range [p, p + length) for a transfer of this process; it must lie in one region.
  result<lease> pin_local(const void* p, std::size_t length) {
    std::lock_guard lock(mutex_);
    entry* e = find_local(static_cast<const std::byte*>(p), length);
    if (!e)
      return fail(errc::out_of_bounds, "local buffer is not inside a registered region");
    ++e->uses;
    return lease(this, e, const_cast<std::byte*>(static_cast<const std::byte*>(p)));
  }

  /// Checks a peer's access to [offset, offset + length) of this segment and holds the region while it runs.
  /// A file region is refused (errc::unsupported) unless `files_too`; then the lease names its file. GPU
  /// memory is refused (errc::unsupported) unless `gpu_too`.
  result<lease> pin_exposed(std::uint64_t offset, std::uint64_t length, access wanted, bool files_too = false,
                            bool gpu_too = false) {
    std::lock_guard lock(mutex_);
    auto found = find_exposed(offset, length, wanted);
    if (!found)
      return fail(found.error());
    entry* e = *found;
    if (e->file) {
      if (!files_too)
        return fail(errc::unsupported, "the region is a file: its owner moves it through the uring transport "
                                       "(add ferry::uring_transport to the engine)");
      ++e->uses;
      return lease(this, e, nullptr, offset - e->exposed.offset);
    }
    // why: the CPU cannot touch GPU memory; a transport that would memcpy or send() it must not get it
    if (e->exposed.location.kind == memory_kind::cuda_device && !gpu_too)
      return fail(errc::unsupported,
                  "the region is GPU memory: its owner moves it through the cuda transport "
                  "(add ferry::cuda_transport to the engine)");
    ++e->uses;
    return lease(this, e, e->base + (offset - e->exposed.offset));
  }

  /// Whether a peer may access [offset, offset + length) of this segment (one exposed region holds it all and
  /// permits `wanted`), without holding anything: errc::out_of_bounds or errc::permission_denied if not.
  result<void> check_exposed(std::uint64_t offset, std::uint64_t length, access wanted) const {
    std::lock_guard lock(mutex_);
    auto found = find_exposed(offset, length, wanted);
    if (!found)
      return fail(found.error());
    return {};
  }

  /// The whole registered region holding [p, p + length): its start and length (what a NIC registers at
  /// once, so that every later slice of it is a registration-cache hit).
  result<std::pair<std::byte*, std::size_t>> local_extent(const void* p, std::size_t length) {
    std::lock_guard lock(mutex_);
    entry* e = find_local(static_cast<const std::byte*>(p), length);
    if (!e)
      return fail(errc::out_of_bounds, "local buffer is not inside a registered region");
    return std::pair<std::byte*, std::size_t>(e->base, static_cast<std::size_t>(e->length));
  }

  /// What kind of memory the registered range [p, p + length) was registered as (plain host memory if it was
  /// registered without a location, or is not registered).
  memory_location location_of(const void* p, std::size_t length) {
    std::lock_guard lock(mutex_);
    entry* e = find_local(static_cast<const std::byte*>(p), length);
    return e ? e->exposed.location : memory_location{};
  }

  /// Whether [offset, offset + length) lies inside one exposed file region.
  bool is_file(std::uint64_t offset, std::uint64_t length) const {
    std::lock_guard lock(mutex_);
    auto it = by_offset_.upper_bound(offset);
    if (it == by_offset_.begin())
      return false;
    const entry* e = std::prev(it)->second;
    return e->file && e->exposed.contains(offset, length);
  }

  /// The exposed regions, in offset order (what a segment descriptor lists).
  std::vector<region_descriptor> exposed() const {
    std::lock_guard lock(mutex_);
    std::vector<region_descriptor> out;
    out.reserve(by_offset_.size());
    for (auto& [offset, e] : by_offset_)
      out.push_back(e->exposed);
    return out;
  }

  /// The name of the table of gates that same-host peers copy into shared regions through (shm_gates); empty
  /// until a shared region is exposed.
  std::string shm_gates_name() const {
    std::lock_guard lock(mutex_);
    return gates_ ? gates_.name() : std::string();
  }

  /// Changes whenever an exposed region is added or removed.
  std::uint64_t generation() const {
    std::lock_guard lock(mutex_);
    return generation_;
  }

  /// How many distinct regions are registered (file regions included; a region shrunk to several parts
  /// counts each).
  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return by_address_.size() + files_.size();
  }

private:
  // Requires mutex_. Puts a shared region (shared memory, or GPU memory with a CUDA IPC handle) behind a gate
  // of its own. Without one (the table cannot be made, or every gate is taken) it is exposed as private
  // memory: peers could not be kept out once it is removed.
  void gate(region_descriptor& r) {
    if (!gates_ && !gates_failed_) {
      auto made = shm_gates::create();
      if (made)
        gates_ = std::move(*made);
      else
        gates_failed_ = true;
    }
    // why: a peer maps an object through this process's table only if it is this user's (the table vouches
    // for nothing else); another user's object would cost every peer a refused first copy
    if (gates_ && (r.shm_name.empty() || own_object(r.shm_name))) {
      if (auto opened = gates_.open_gate(gate_claim::of(r))) {
        r.shm_gate = opened->first;
        r.shm_epoch = opened->second;
        return;
      }
    }
    r.shm_name.clear();
    r.shm_offset = 0;
    r.location.ipc_handle.clear();
    r.location.ipc_offset = 0;
  }

  // Why a registration of `asked` at `b`, inside `covering`, may not just count a reference: it names other
  // memory than the region (another kind or device, another object behind it), which the region's
  // descriptor would not say. nullptr if it may. Called under mutex_.
  static const char* other_memory(const entry& covering, const std::byte* b, const region_descriptor& asked) {
    const auto& have = covering.exposed;
    const auto into = static_cast<std::uint64_t>(b - covering.base);
    if (asked.location.kind != have.location.kind || asked.location.device != have.location.device)
      return "register: range already registered as another kind of memory";
    // why: a region that got no gate is private memory to peers (gate() dropped its object): a range inside
    // it that names the object is that region too, as private
    if (have.shm_gate == region_descriptor::no_gate)
      return nullptr;
    if (!asked.shm_name.empty() &&
        (asked.shm_name != have.shm_name || asked.shm_offset != have.shm_offset + into))
      return "register: range already registered with another shared-memory object behind it, or none";
    if (!asked.location.ipc_handle.empty() && (asked.location.ipc_handle != have.location.ipc_handle ||
                                               asked.location.ipc_offset != have.location.ipc_offset + into))
      return "register: range already registered with another CUDA IPC handle behind it, or none";
    return nullptr;
  }

  // Requires mutex_. The region at `it` loses its own registration (or the last one that covered a part):
  // what is left of it is what `rest`, the registrations still inside it, cover. Where they cover all of it,
  // only the count changes; else the region is cut into those parts, each keeping its segment offsets, with
  // a gate of its own (the old gate closes: same-host peers must not reach the parts no longer registered).
  result<void> shrink_to(std::map<std::uintptr_t, entry>::iterator it, std::vector<covered_range> rest,
                         std::optional<withdrawn_range>& gone) {
    entry& e = it->second;
    // why: stable: of ranges that start at one address, the later registration stays later (remove()
    // takes the latest)
    std::stable_sort(rest.begin(), rest.end(),
                     [](const covered_range& a, const covered_range& b) { return a.start < b.start; });
    std::vector<covered_range> parts; // the union of `rest`: sorted, disjoint, not touching
    for (const auto& r : rest) {
      if (!parts.empty() && r.start <= parts.back().start + parts.back().length)
        parts.back().length = std::max(parts.back().length, r.start + r.length - parts.back().start);
      else
        parts.push_back(r);
    }
    if (parts.size() == 1 && parts.front().start == it->first && parts.front().length == e.length) {
      e.covered = std::move(rest);
      e.outer_live = false;
      return {};
    }
    const bool exposed = e.exposed.permissions != access::none;
    if (e.uses > 0)
      return fail(errc::busy, "unregister: a transfer is using the region, which would shrink to the ranges "
                              "registered inside it");
    if (exposed && by_offset_.size() - 1 + parts.size() > max_exposed_regions)
      return fail(errc::out_of_space, "unregister: the ranges registered inside the region would be more "
                                      "regions than a segment exposes");
    if (e.exposed.shm_gate != region_descriptor::no_gate && !gates_.close_gate(e.exposed.shm_gate))
      return fail(errc::busy, "unregister: a same-host peer is copying into or out of the region");
    entry old = std::move(e);
    if (exposed)
      by_offset_.erase(old.exposed.offset);
    gone = withdrawn_range{reinterpret_cast<std::uintptr_t>(old.base), old.length, exposed};
    by_address_.erase(it);
    for (const auto& p : parts) {
      const std::uint64_t into = p.start - reinterpret_cast<std::uintptr_t>(old.base);
      entry piece;
      piece.base = old.base + into;
      piece.length = p.length;
      piece.outer_live = false;
      for (const auto& r : rest)
        if (r.start >= p.start && r.start < p.start + p.length)
          piece.covered.push_back(r);
      piece.exposed = old.exposed;
      piece.exposed.offset = exposed ? old.exposed.offset + into : 0;
      piece.exposed.length = p.length;
      if (!piece.exposed.shm_name.empty())
        piece.exposed.shm_offset += into;
      if (!piece.exposed.location.ipc_handle.empty())
        piece.exposed.location.ipc_offset += into;
      piece.exposed.shm_gate = region_descriptor::no_gate;
      piece.exposed.shm_epoch = 0;
      if (old.exposed.shm_gate != region_descriptor::no_gate)
        gate(piece.exposed);
      auto& stored = by_address_.emplace(p.start, std::move(piece)).first->second;
      if (exposed)
        by_offset_.emplace(stored.exposed.offset, &stored);
    }
    if (exposed)
      ++generation_;
    return {};
  }

  // Whether the shared-memory object `name` is a regular object of this process's user.
  static bool own_object(const std::string& name) {
    int fd = ::shm_open(name.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK, 0);
    if (fd < 0)
      return false;
    struct ::stat st {};
    bool own = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid();
    ::close(fd);
    return own;
  }

  // Requires mutex_. The exposed region that holds all of [offset, offset + length) and permits `wanted`.
  result<entry*> find_exposed(std::uint64_t offset, std::uint64_t length, access wanted) const {
    auto it = by_offset_.upper_bound(offset);
    if (it == by_offset_.begin())
      return fail(errc::out_of_bounds, "remote range is outside every exposed region");
    entry* e = std::prev(it)->second;
    if (!e->exposed.contains(offset, length))
      return fail(errc::out_of_bounds, "remote range is outside every exposed region");
    if (!allows(e->exposed.permissions, wanted))
      return fail(errc::permission_denied, "the region does not permit this access");
    return e;
  }

  // Requires mutex_. The region that contains [p, p + length), if any.
  entry* find_local(const std::byte* p, std::size_t length) {
    auto key = reinterpret_cast<std::uintptr_t>(p);
    auto it = by_address_.upper_bound(key);
    if (it == by_address_.begin())
      return nullptr;
    entry& e = std::prev(it)->second;
    std::uint64_t into = key - std::prev(it)->first;
    if (into >= e.length || length > e.length - into)
      return nullptr;
    return &e;
  }

  // Requires mutex_. The next segment offset once a region of `length` bytes is exposed at next_offset_;
  // refused when the segment exposes as many regions as a descriptor carries, or the offset space (2^64
  // bytes) would wrap, which would give the region another one's offset.
  result<std::uint64_t> room_for(std::uint64_t length) const {
    if (by_offset_.size() >= max_exposed_regions)
      return fail(errc::out_of_space,
                  "register: a segment exposes at most " + std::to_string(max_exposed_regions) + " regions");
    // why: regions stay page-aligned in offset space so offsets read well and never straddle neighbours
    constexpr std::uint64_t page = 4096;
    if (length > UINT64_MAX - (page - 1) || (length + page - 1) / page * page > UINT64_MAX - next_offset_)
      return fail(errc::out_of_space, "register: the segment's offset space (2^64 bytes) is used up");
    return next_offset_ + (length + page - 1) / page * page;
  }

  mutable std::mutex mutex_;
  // why: a lock of their own, held while they are called: forget_withdrawals() waits out a call in progress,
  // and an observer never runs under mutex_
  std::mutex observers_mutex_;
  std::vector<std::pair<std::uint64_t, std::function<void(withdrawn_range)>>> observers_;
  std::uint64_t next_observer_ = 1;
  std::map<std::uintptr_t, entry> by_address_;
  std::map<std::uint64_t, entry> files_; // file regions, by segment offset
  std::map<std::uint64_t, entry*> by_offset_;
  std::uint64_t next_offset_ = 0;
  std::uint64_t generation_ = 0;
  shm_gates gates_;
  bool gates_failed_ = false;
};

} // namespace ferry
