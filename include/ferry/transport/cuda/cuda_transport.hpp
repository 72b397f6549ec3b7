#pragma once
/// `ferry::cuda_transport`: moves bytes between GPU memory, pinned host memory and the GPUs of other
/// processes on the host. GPU to GPU in one process uses peer access (enabled once per pair); GPU memory of
/// another process is opened through its CUDA IPC handle (once, then cached) and copied only while holding a
/// pass through the region's gate in the owner's ferry::shm_gates (the owner closes it when it unregisters
/// the region, and cannot while a copy holds it); GPU to and from host memory
/// goes over PCIe. The slices submitted in one turn of the loop form one batch per pair of memories: a batch
/// of small blocks is moved by one copy-kernel launch (or one cudaMemcpyBatchAsync), a batch of large blocks
/// by the copy engines, one cudaMemcpyAsync per block over the device's streams (engine_options::cuda).
/// Completion comes back through the io_context (a CUDA stream callback posts to it): no thread waits on the
/// GPU. Register GPU and pinned memory with ferry::cuda::register_memory so that its kind, device and IPC
/// handle are known; bounds, permissions and that the memory is still a CUDA allocation are checked before
/// any copy is launched, and every CUDA error becomes a ferry error naming the call.
///
///   ferry::transfer_engine<ferry::cuda_transport, ferry::shm_transport, ferry::tcp_transport> engine(ctx);
///   ferry::cuda::register_memory(engine.registry(), gpu0_kv, size, ferry::access::none, 0);
///   ferry::cuda::register_memory(engine.registry(), gpu1_kv, size, ferry::access::read_write, 1);
///   batch.write(gpu0_kv + a, engine.self, b, 64 << 10);   // GPU 0 to GPU 1, one launch for the whole batch

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/task.hpp"
#include "ferry/io/detail/resume_op.hpp"
#include "ferry/io/io_context.hpp"
#include "ferry/memory/access.hpp"
#include "ferry/memory/detail/process_start.hpp"
#include "ferry/memory/detail/stream_copy.hpp"
#include "ferry/memory/gate_claim.hpp"
#include "ferry/memory/memory_kind.hpp"
#include "ferry/memory/region_registry.hpp"
#include "ferry/memory/shm_gates.hpp"
#include "ferry/transfer/detail/batch_state.hpp"
#include "ferry/transfer/engine_options.hpp"
#include "ferry/transfer/peer.hpp"
#include "ferry/transport/cuda/detail/copy_kernel_ptx.hpp"
#include "ferry/transport/cuda/detail/pointer_info.hpp"
#include "ferry/transport/cuda/device_list.hpp"
#include "ferry/transport/cuda/register_memory.hpp"
#include "ferry/transport/slice.hpp"
#include "ferry/transport/transport_context.hpp"

#include <algorithm>
#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>
#include <iterator>
#include <map>
#include <memory>
#include <poll.h>
#include <string>
#include <string_view>
#include <sys/syscall.h>
#include <tuple>
#include <unistd.h>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferry {

class cuda_transport {
  // One piece of the copy kernel's work (the layout of ferry_copy_piece in copy_kernel.cu).
  struct piece {
    const void* src;
    void* dst;
    unsigned long long length;
  };

  // Batches of one flush share a kernel launch until it holds this many bytes.
  static constexpr std::uint64_t shared_launch_bytes = 8u << 20;

  struct ipc_mapping {
    void* base = nullptr;
    std::size_t size = 0; ///< the mapped allocation's length (0: CUDA did not say)
    ~ipc_mapping() {
      if (base)
        ::cudaIpcCloseMemHandle(base);
    }
  };
  // What a slice into another process's GPU memory holds until its copy is done: the mapping, and a pass
  // through the region's gate in the owner's table, so that the owner cannot unregister (and free) the
  // memory under the copy. The slices in flight into one region share it: one ticket, not one per slice.
  struct remote_hold {
    std::shared_ptr<ipc_mapping> mapping;
    std::shared_ptr<shm_gates> gates; // why: before `pass`, which points into the table: it goes first
    shm_gates::pass pass;
    gate_claim claim; // the region as the descriptor that entered described it
  };
  struct peer_state {
    std::uint64_t incarnation = 0;
    std::map<std::string, std::shared_ptr<ipc_mapping>> by_handle;
    std::shared_ptr<shm_gates> gates; // the owner's table, attached on first use
    std::string gates_failed;         // why the table could not be attached ("": it could, or was not tried)
    bool unreachable = false;
    int pidfd = -1;
    std::uint64_t checked_in_flush = ~0ull;
    peer_state() = default;
    peer_state(peer_state&& o) noexcept
        : incarnation(o.incarnation), by_handle(std::move(o.by_handle)), gates(std::move(o.gates)),
          gates_failed(std::move(o.gates_failed)), unreachable(o.unreachable),
          pidfd(std::exchange(o.pidfd, -1)), checked_in_flush(o.checked_in_flush) {}
    peer_state& operator=(peer_state&&) = delete;
    ~peer_state() {
      if (pidfd >= 0)
        ::close(pidfd);
    }
  };

  // A slice waiting for the next flush, with what keeps its target alive.
  struct entry {
    slice* s = nullptr;
    std::byte* src = nullptr; // own segment: resolved at the flush
    std::byte* dst = nullptr;
    std::uint64_t region = 0; // own segment: the region's offset
    memory_kind remote_kind = memory_kind::host;
    std::int32_t remote_device = -1;
    bool self = false;
    std::shared_ptr<void> keep; // another process: its open IPC mapping, until the copy is done
  };

  struct side {
    memory_kind kind = memory_kind::host;
    int device = -1;
    std::intptr_t device_delta = 0;
    bool ipc = false; // another process's memory, opened through CUDA IPC on `device`
    friend bool operator==(const side&, const side&) = default;
  };

  // One stream's share of a batch: its copies, and the slices it settles once they are done.
  struct launch {
    cuda_transport* owner = nullptr;
    int device = 0;
    ::cudaStream_t stream = nullptr;
    ::cudaEvent_t done = nullptr;
    std::vector<entry> entries;
    std::vector<std::shared_ptr<void>> keep; // leases of the own segment's regions its copies touch
    piece* host_pieces = nullptr;            // pinned staging of the kernel's descriptors
    piece* device_pieces = nullptr;
    std::size_t capacity = 0;
    io::detail::resume_op resume;
    ::cudaError_t callback_status = ::cudaSuccess; // what the stream reported to the completion callback
    ~launch() {
      if (host_pieces)
        ::cudaFreeHost(host_pieces);
      if (device_pieces)
        ::cudaFree(device_pieces);
      if (done)
        ::cudaEventDestroy(done);
    }
  };

  struct device_state {
    bool ready = false;
    unsigned sms = 1; // streaming multiprocessors (sizes the kernel's grid)
    std::vector<::cudaStream_t> streams;
    unsigned next_stream = 0;
    std::vector<std::unique_ptr<launch>> idle;
  };

public:
  static constexpr std::string_view name = "cuda";
  static constexpr bool moves_gpu_memory = true;

  explicit cuda_transport(transport_context& tc) : tc_(tc), opts_(tc.options.cuda) {}
  cuda_transport(const cuda_transport&) = delete;
  cuda_transport& operator=(const cuda_transport&) = delete;
  ~cuda_transport() {
    for (std::size_t d = 0; d < devices_.size(); ++d) {
      if (!devices_[d].ready)
        continue;
      ::cudaSetDevice(static_cast<int>(d));
      for (auto st : devices_[d].streams) {
        ::cudaStreamSynchronize(st);
        ::cudaStreamDestroy(st);
      }
      devices_[d].idle.clear();
    }
    peers_.clear();
    if (library_)
      ::cudaLibraryUnload(library_);
  }

  /// Own segment: ranges of GPU or pinned memory. Another process: on this host, in GPU memory that carries
  /// an IPC handle.
  bool reaches(const peer& p, std::uint64_t offset, std::uint64_t length) const {
    if (p.is_self) {
      // why: a range outside every region is taken too, so that it fails as out_of_bounds, not unroutable
      // why: the registry is read once per batch (when nothing is pending), not once per block
      auto* r = own_region(offset, length, pending_.empty());
      return !r || r->location.kind != memory_kind::host;
    }
    if (p.descriptor.host.empty() || p.descriptor.host != tc_.host)
      return false;
    if (auto it = peers_.find(p.id); it != peers_.end() &&
                                     it->second.incarnation == p.descriptor.incarnation &&
                                     (it->second.unreachable || !it->second.gates_failed.empty()))
      return false;
    auto* r = p.descriptor.region_for(offset, length);
    // (a region without a gate is taken too, and refused with the reason: see open_remote)
    return r && r->location.kind == memory_kind::cuda_device && !r->location.ipc_handle.empty();
  }

  // why: noexcept: running out of memory halfway through taking a slice (queued, a connection half set up)
  // must end the process, not reach the engine, which would fail a slice that is still held here
  void submit(const peer& p, slice* s) noexcept {
    entry e;
    e.s = s;
    access wanted = s->op == transfer_op::write ? access::write : access::read;
    if (p.is_self) {
      e.self = true; // resolved at the flush
    } else {
      auto opened = open_remote(p, s, wanted);
      if (!opened) {
        s->settle(opened.error());
        return;
      }
      e.src = s->op == transfer_op::write ? s->local : opened->first;
      e.dst = s->op == transfer_op::write ? opened->first : s->local;
      e.keep = std::move(opened->second);
      e.remote_kind = memory_kind::cuda_device;
    }
    pending_.push_back(std::move(e));
    if (!flush_scheduled_) {
      flush_scheduled_ = true;
      // why: the engine submits a batch's slices in one go; flushing once they are all in lets one launch
      // carry the whole batch
      tc_.scope.spawn(flush_soon());
    }
  }

  /// Copies already launched finish (a GPU copy cannot be recalled); slices not launched yet are cancelled at
  /// the next flush. A batch therefore ends only when its launched copies are done, also past its deadline;
  /// a GPU fault that breaks the device's context ends them with the fault's error.
  void abort(detail::batch_state*) noexcept {}

  void forget(const peer& p) { peers_.erase(p.id); }

  void shutdown() noexcept { stopping_ = true; }

private:
  // The exposed region of the own segment holding [offset, offset + length), from a copy of the registry's
  // list that is refreshed when the registry changes.
  const region_descriptor* own_region(std::uint64_t offset, std::uint64_t length, bool refresh) const {
    if (refresh || !own_valid_) {
      std::uint64_t g = tc_.registry.generation();
      if (g != own_generation_ || !own_valid_) {
        own_.regions = tc_.registry.exposed();
        own_generation_ = g;
        own_valid_ = true;
      }
    }
    return own_.regions.empty() ? nullptr : own_.region_for(offset, length);
  }

  // ---- remote (CUDA IPC) ----

  result<std::pair<std::byte*, std::shared_ptr<remote_hold>>> open_remote(const peer& p, slice* s,
                                                                          access wanted) {
    auto* r = p.descriptor.region_for(s->remote_offset, s->length);
    if (!r)
      return fail(errc::out_of_bounds, "cuda: range outside the target's regions");
    if (!allows(r->permissions, wanted))
      return fail(errc::permission_denied, "cuda: the region does not permit this");
    if (r->location.kind != memory_kind::cuda_device || r->location.ipc_handle.empty())
      return fail(errc::unsupported, "cuda: the target region is not GPU memory with an IPC handle");
    // why: only behind its owner's gate, as shared memory: the owner must be able to keep peers out of memory
    // it unregistered and freed
    if (r->shm_gate == region_descriptor::no_gate || p.descriptor.shm_gates.empty())
      return fail(errc::unsupported,
                  "cuda: the target's GPU region has no gate to copy through (its owner could not make its "
                  "table of gates, or runs an older version): it cannot keep this process out of memory it "
                  "frees, so its GPU memory is not mapped");
    auto& ps = peers_[p.id];
    if (ps.incarnation != p.descriptor.incarnation) {
      ps.by_handle.clear();
      ps.gates.reset();
      ps.gates_failed.clear();
      ps.incarnation = p.descriptor.incarnation;
      ps.unreachable = false;
      if (ps.pidfd >= 0)
        ::close(std::exchange(ps.pidfd, -1));
      if (p.descriptor.pid != 0) {
        // why: as for shared memory: the descriptor's pid may name a later process by now
        ps.pidfd = detail::open_process(static_cast<pid_t>(p.descriptor.pid), p.descriptor.pid_start);
        if (ps.pidfd < 0 && errno == ESRCH)
          ps.unreachable = true;
      }
      ps.checked_in_flush = ~0ull;
    }
    // why: GPU memory of a process that ended is gone; once per flush (not per slice) we ask whether it lives
    if (!ps.unreachable && ps.pidfd >= 0 && ps.checked_in_flush != flush_count_) {
      ps.checked_in_flush = flush_count_;
      ::pollfd pfd{ps.pidfd, POLLIN, 0};
      if (::poll(&pfd, 1, 0) != 0)
        ps.unreachable = true;
    }
    if (ps.unreachable) {
      ps.by_handle.clear();
      return fail(errc::peer_unreachable, "cuda: the segment's process has ended");
    }
    auto& m = ps.by_handle[r->location.ipc_handle];
    if (!m) {
      ::cudaIpcMemHandle_t h{};
      if (!cuda::from_hex(r->location.ipc_handle, h)) {
        ps.by_handle.erase(r->location.ipc_handle);
        return fail(errc::malformed_frame, "cuda: the region's IPC handle is not valid hex");
      }
      int count = 0;
      ::cudaGetDeviceCount(&count);
      int device = r->location.device >= 0 && r->location.device < count ? r->location.device : 0;
      ::cudaSetDevice(device);
      void* base = nullptr;
      if (::cudaError_t e = ::cudaIpcOpenMemHandle(&base, h, cudaIpcMemLazyEnablePeerAccess);
          e != ::cudaSuccess) {
        ::cudaGetLastError();
        ps.by_handle.erase(r->location.ipc_handle);
        return fail(cuda::cuda_error(e, "cudaIpcOpenMemHandle"));
      }
      m = std::make_shared<ipc_mapping>();
      m->base = base;
      std::uintptr_t first = 0;
      if (!cuda::detail::address_range(reinterpret_cast<std::uintptr_t>(base), first, m->size))
        m->size = 0;
    }
    // why: the offset comes from the descriptor; one past the allocation would fault, and a fault spoils this
    // process's whole CUDA context
    if (m->size == 0) {
      // why: nothing bounds the copy then; not kept, so that the next slice asks CUDA again, and this one
      // goes to a transport that reaches the peer without mapping its memory
      ps.by_handle.erase(r->location.ipc_handle);
      return fail(errc::peer_unreachable, "cuda: CUDA did not tell the size of the target's GPU allocation");
    }
    const std::uint64_t into = r->location.ipc_offset, within = s->remote_offset - r->offset;
    if (into > m->size || within > m->size - into || s->length > m->size - into - within)
      return fail(
          errc::out_of_bounds,
          "cuda: the region lies past the end of the target's GPU allocation (its descriptor's ipc_offset)");
    auto* at = static_cast<std::byte*>(m->base) + into + within;
    if (!ps.gates) {
      if (!ps.gates_failed.empty())
        return fail(errc::peer_unreachable, ps.gates_failed);
      auto attached = shm_gates::attach(p.descriptor.shm_gates);
      if (!attached) {
        // why: remembered for this incarnation: reaches() then hands its slices to another transport at once
        ps.gates_failed = "cuda: the owner's table of gates: " + attached.error().message();
        return fail(errc::peer_unreachable, ps.gates_failed);
      }
      // why: CUDA IPC memory has no owner to compare the table's with: only this process's own user's table
      // vouches for it
      if (attached->owner_uid() != ::geteuid()) {
        ps.gates_failed = "cuda: the owner's table of gates belongs to another user; GPU memory of another "
                          "user is not mapped";
        return fail(errc::peer_unreachable, ps.gates_failed);
      }
      ps.gates = std::make_shared<shm_gates>(std::move(*attached));
    }
    // why: one pass for all the copies in flight into a region, for as long as any is: a ticket per flush
    // would run the owner's table (shared with its shm peers) out under load
    const auto key = std::tuple{p.id, ps.incarnation, r->shm_gate, r->shm_epoch};
    auto& cached = holds_[key];
    auto hold = cached.lock();
    const gate_claim claim = gate_claim::of(*r);
    // why: a descriptor fetched again may describe the region behind the same gate otherwise: it enters anew
    if (!hold || hold->mapping != m || hold->gates != ps.gates || hold->claim != claim) {
      auto entered = ps.gates->enter(r->shm_gate, r->shm_epoch, claim);
      if (!entered) {
        holds_.erase(key);
        if (entered.error() == errc::busy)
          return fail(errc::peer_unreachable, "cuda: every ticket of the owner's gates is taken");
        return fail(entered.error()); // closed: the owner unregistered the region
      }
      hold = std::make_shared<remote_hold>(remote_hold{m, ps.gates, std::move(*entered), claim});
      cached = hold;
    }
    return std::pair{at, hold};
  }

  // ---- batching ----

  task<> flush_soon() {
    co_await tc_.io.schedule();
    flush();
  }

  struct group {
    side src, dst;
    std::vector<entry> entries;
    std::uint64_t bytes = 0;
  };

  void flush() {
    flush_scheduled_ = false;
    ++flush_count_;
    // why: passes nothing holds any more are forgotten
    std::erase_if(holds_, [](const auto& h) { return h.second.expired(); });
    std::vector<entry> work;
    work.swap(pending_);
    own_region(0, 0, true);                        // the registry as of this flush
    std::vector<cuda::detail::pointer_info> known; // one CUDA query per allocation per flush
    auto classify = [&](const std::byte* p, std::size_t n, side& out) -> error {
      auto at = reinterpret_cast<std::uintptr_t>(p);
      const cuda::detail::pointer_info* info = nullptr;
      for (auto& k : known)
        if (k.contains(at, n)) {
          info = &k;
          break;
        }
      if (!info) {
        auto q = cuda::detail::query_pointer(p);
        if (!q)
          return q.error();
        if (q->kind == memory_kind::host || q->size == 0) {
          out = {q->kind, q->device, q->device_delta};
          return {};
        }
        if (!q->contains(at, n))
          return error(errc::out_of_bounds, "cuda: a block runs past the end of its CUDA allocation");
        known.push_back(*q);
        info = &known.back();
      }
      out = {info->kind, info->device, info->device_delta};
      return {};
    };
    struct held {
      std::uint64_t region;
      access wanted;
      std::shared_ptr<region_registry::lease> lease;
    };
    std::vector<held> leases; // one per region of the own segment that this flush touches
    std::vector<group> groups;
    for (auto& e : work) {
      if (e.s->batch->aborted() || stopping_) {
        settle(e, error(errc::cancelled, "cuda"));
        continue;
      }
      const bool write = e.s->op == transfer_op::write;
      if (e.self) {
        // Bounds and permissions, checked here before anything is launched.
        access wanted = write ? access::write : access::read;
        auto* r = own_region(e.s->remote_offset, e.s->length, false);
        if (!r) {
          settle(e, error(errc::out_of_bounds, "cuda: range outside the segment's exposed regions"));
          continue;
        }
        if (!allows(r->permissions, wanted)) {
          settle(e, error(errc::permission_denied, "cuda: the region does not permit this access"));
          continue;
        }
        e.region = r->offset;
        e.remote_kind = r->location.kind;
        e.remote_device = r->location.device;
        // why: one lease per region and flush (not per block) keeps the per-block cost of a batch low
        auto h = std::find_if(leases.begin(), leases.end(),
                              [&](const held& x) { return x.region == e.region && x.wanted == wanted; });
        if (h == leases.end()) {
          auto l = tc_.registry.pin_exposed(r->offset, r->length, wanted, false, true);
          if (!l) {
            settle(e, l.error());
            continue;
          }
          leases.push_back({e.region, wanted, std::make_shared<region_registry::lease>(std::move(*l))});
          flush_keep_.push_back(leases.back().lease);
          h = leases.end() - 1;
        }
        std::byte* remote = h->lease->data() + (e.s->remote_offset - e.region);
        e.src = write ? e.s->local : remote;
        e.dst = write ? remote : e.s->local;
      }
      side src, dst;
      error bad = classify(e.src, e.s->length, src);
      if (!bad)
        bad = classify(e.dst, e.s->length, dst);
      if (!bad) {
        side& local = write ? src : dst;
        side& remote = write ? dst : src;
        remote.ipc = !e.self;
        // why: freed GPU memory reads as host memory; only then is the registry asked what it was
        if (local.kind == memory_kind::host &&
            tc_.registry.location_of(e.s->local, e.s->length).kind != memory_kind::host)
          bad = freed();
        else if (e.remote_kind != memory_kind::host && remote.kind != e.remote_kind)
          bad = freed();
        else if (e.self && e.remote_kind == memory_kind::cuda_device && e.remote_device >= 0 &&
                 remote.device != e.remote_device)
          bad = error(errc::invalid_argument, "cuda: the memory is now on another device than registered");
      }
      if (bad) {
        settle(e, bad);
        continue;
      }
      auto g = std::find_if(groups.begin(), groups.end(),
                            [&](const group& x) { return x.src == src && x.dst == dst; });
      if (g == groups.end()) {
        groups.push_back({src, dst, {}, 0});
        g = groups.end() - 1;
      }
      if (g->entries.empty())
        g->entries.reserve(work.size());
      g->bytes += e.s->length;
      g->entries.push_back(std::move(e));
    }
    for (auto& g : groups)
      run_group(g);
    flush_keep_.clear();
    work.clear();
    if (pending_.empty())
      pending_.swap(work); // keeps the capacity for the next batch
  }

  // Memory registered as GPU or pinned memory that is no longer that.
  static error freed() {
    return error(errc::invalid_argument,
                 "cuda: memory registered as GPU or pinned memory is no longer a CUDA allocation (freed?)");
  }

  void run_group(group& g) {
    const bool pageable = g.src.kind == memory_kind::host || g.dst.kind == memory_kind::host;
    if (g.src.kind != memory_kind::cuda_device && g.dst.kind != memory_kind::cuda_device) {
      // Host to host (pinned or not): no GPU is involved.
      for (auto& e : g.entries) {
        detail::stream_copy(e.dst, e.src, e.s->length);
        settle(e, {});
      }
      return;
    }
    int device = g.src.kind == memory_kind::cuda_device ? g.src.device : g.dst.device;
    // why: memory opened through CUDA IPC is mapped on the device it was opened on; copies into or out of it
    // run there, with the other side reached through peer access
    if (g.dst.ipc && g.dst.kind == memory_kind::cuda_device)
      device = g.dst.device;
    else if (g.src.ipc && g.src.kind == memory_kind::cuda_device)
      device = g.src.device;
    int other = g.src.kind == memory_kind::cuda_device && g.dst.kind == memory_kind::cuda_device
                    ? (device == g.src.device ? g.dst.device : g.src.device)
                    : device;
    if (auto ready = prepare(device); ready) {
      fail_all(g.entries, ready);
      return;
    }
    bool direct = other == device || peer_access(device, other);
    cuda_copy_method m = opts_.method;
    if (m == cuda_copy_method::automatic)
      m = g.bytes / g.entries.size() >= opts_.copy_engine_threshold ? cuda_copy_method::copy_engine
                                                                    : opts_.small_blocks;
    // why: a kernel reaches neither pageable memory nor another GPU without peer access
    if (m == cuda_copy_method::kernel && (pageable || !direct))
      m = cuda_copy_method::copy_engine;
#if CUDART_VERSION < 12080
    if (m == cuda_copy_method::memcpy_batch)
      m = cuda_copy_method::copy_engine;
#endif
    if (m == cuda_copy_method::copy_engine) {
      // Spread over the device's streams; each stream's share completes on its own.
      auto& ds = devices_[static_cast<std::size_t>(device)];
      std::size_t ways = std::min<std::size_t>(ds.streams.size(), g.entries.size());
      std::vector<launch*> parts;
      for (std::size_t i = 0; i < ways; ++i) {
        parts.push_back(take_launch(device));
        parts.back()->stream = ds.streams[ds.next_stream++ % ds.streams.size()];
      }
      // why: consecutive slices of one request stay on one stream, so that they can be merged into one copy
      std::size_t per = (g.entries.size() + ways - 1) / ways;
      for (std::size_t i = 0; i < g.entries.size(); ++i)
        parts[i / per]->entries.push_back(std::move(g.entries[i]));
      for (auto* l : parts)
        tc_.scope.spawn(run_launch(l, m, g.src, g.dst));
      return;
    }
    // One launch per batch once batches are large, small batches of one flush share a launch.
    // why: batches submitted in the same turn of the loop (several callers) would otherwise all wait for one
    // launch and complete together; their callers would then prepare the next ones together while the GPU
    // idles. A launch each lets the GPU run one batch while the loop prepares the next.
    auto& ds = devices_[static_cast<std::size_t>(device)];
    const std::size_t n = g.entries.size();
    std::size_t start = 0;
    std::uint64_t bytes = 0;
    for (std::size_t k = 0; k <= n; ++k) {
      if (k == n || (bytes >= shared_launch_bytes && g.entries[k].s->batch != g.entries[k - 1].s->batch)) {
        launch* l = take_launch(device);
        l->stream = ds.streams[ds.next_stream++ % ds.streams.size()];
        if (start == 0 && k == n) {
          l->entries = std::move(g.entries);
        } else {
          l->entries.reserve(k - start);
          std::move(g.entries.begin() + static_cast<std::ptrdiff_t>(start),
                    g.entries.begin() + static_cast<std::ptrdiff_t>(k), std::back_inserter(l->entries));
        }
        tc_.scope.spawn(run_launch(l, m, g.src, g.dst));
        start = k;
        bytes = 0;
      }
      if (k < n)
        bytes += g.entries[k].s->length;
    }
  }

  task<> run_launch(launch* l, cuda_copy_method m, side src, side dst) {
    io::io_context::work_guard guard(tc_.io);
    error failed = enqueue(*l, m, src, dst);
    if (!failed) {
      completion c{l};
      ::cudaError_t e = co_await c;
      if (e != ::cudaSuccess) {
        ::cudaGetLastError();
        failed = cuda::cuda_error(e, "the batch's copies (cudaStreamAddCallback)");
      } else if (::cudaError_t q = ::cudaEventQuery(l->done); q != ::cudaSuccess) {
        ::cudaGetLastError();
        failed = cuda::cuda_error(q, "cudaEventQuery (after the batch's copies)");
      }
    }
    if (failed) {
      // why: part of the launch may be on the stream already (a later copy failed to queue); it must be done
      // before the passes, leases and staging it uses go, or a copy would outlive the memory's gate
      ::cudaStreamSynchronize(l->stream);
      ::cudaGetLastError();
    }
    l->keep.clear(); // why: before settling, so that whoever the batch wakes may unregister the memory
    for (auto& e : l->entries)
      settle(e, failed);
    l->entries.clear();
    devices_[static_cast<std::size_t>(l->device)].idle.emplace_back(l);
  }

  // Resumes the awaiting coroutine on the loop once the stream has reached this point, with the stream's
  // status then.
  // why cudaStreamAddCallback, not cudaLaunchHostFunc: a host function is never called once the context has
  // failed (a GPU fault), which would leave the batch waiting forever; a stream callback runs exactly once
  // and is told the error.
  struct completion {
    launch* l;
    ::cudaError_t status = ::cudaSuccess;
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) noexcept {
      l->resume.handle = h;
      l->callback_status = ::cudaSuccess;
      status = ::cudaStreamAddCallback(l->stream, &completion::on_done, l, 0);
      return status == ::cudaSuccess;
    }
    ::cudaError_t await_resume() const noexcept {
      return status != ::cudaSuccess ? status : l->callback_status;
    }
    static void CUDART_CB on_done(::cudaStream_t, ::cudaError_t st, void* p) {
      auto* l = static_cast<launch*>(p);
      l->callback_status = st;
      // why: runs on a CUDA thread that must not call CUDA; posting wakes the loop, which resumes the batch
      l->owner->tc_.io.post(&l->resume);
    }
  };

  // Queues the copies of `l` on its stream, then the event that reports how they went.
  error enqueue(launch& l, cuda_copy_method m, side src, side dst) {
    if (::cudaError_t e = ::cudaSetDevice(l.device); e != ::cudaSuccess)
      return cuda::cuda_error(e, "cudaSetDevice");
    if (!l.done)
      if (::cudaError_t e = ::cudaEventCreateWithFlags(&l.done, cudaEventDisableTiming); e != ::cudaSuccess) {
        ::cudaGetLastError();
        return cuda::cuda_error(e, "cudaEventCreateWithFlags");
      }
    auto clear = [](::cudaError_t e, const char* what) {
      ::cudaGetLastError();
      return cuda::cuda_error(e, what);
    };
    if (m == cuda_copy_method::kernel) {
      // why: pieces bound the work of one CUDA block (or warp), so that a batch of uneven blocks keeps every
      // SM busy
      const std::uint64_t piece_bytes = std::max<std::uint32_t>(opts_.kernel.piece_bytes, 512);
      std::size_t count = 0;
      for (auto& e : l.entries)
        count += (e.s->length + piece_bytes - 1) / piece_bytes;
      if (auto grown = reserve(l, count); grown)
        return grown;
      std::size_t k = 0;
      for (auto& e : l.entries)
        for (std::uint64_t off = 0; off < e.s->length; off += piece_bytes)
          l.host_pieces[k++] = {e.src + src.device_delta + off, e.dst + dst.device_delta + off,
                                std::min<std::uint64_t>(piece_bytes, e.s->length - off)};
      if (::cudaError_t e = ::cudaMemcpyAsync(l.device_pieces, l.host_pieces, count * sizeof(piece),
                                              ::cudaMemcpyHostToDevice, l.stream);
          e != ::cudaSuccess)
        return clear(e, "cudaMemcpyAsync (copy descriptors)");
      if (auto loaded = load_kernel(); loaded)
        return loaded;
      unsigned long long n = count;
      void* args[] = {&l.device_pieces, &n};
      const auto& shape = opts_.kernel;
      unsigned threads = std::clamp(shape.threads, 32u, 1024u);
      std::size_t per_cta = shape.kernel == cuda_copy_kernel::warp_per_piece ? threads / 32 : 1;
      std::size_t wanted = (count + per_cta - 1) / per_cta;
      if (shape.blocks_per_sm > 0)
        wanted = std::min<std::size_t>(wanted, std::size_t{shape.blocks_per_sm} *
                                                   devices_[std::size_t(l.device)].sms);
      unsigned grid = static_cast<unsigned>(std::clamp<std::size_t>(wanted, 1, 65535));
      if (::cudaError_t e = ::cudaLaunchKernel(reinterpret_cast<const void*>(kernel_), ::dim3(grid),
                                               ::dim3(threads), args, 0, l.stream);
          e != ::cudaSuccess)
        return clear(e, "cudaLaunchKernel (ferry_copy_pieces)");
      ++kernel_launches_;
    } else if (m == cuda_copy_method::memcpy_batch) {
#if CUDART_VERSION >= 12080
      std::vector<void*> dsts;
      std::vector<const void*> srcs;
      std::vector<std::size_t> sizes;
      for (auto& e : l.entries) {
        dsts.push_back(e.dst);
        srcs.push_back(e.src);
        sizes.push_back(e.s->length);
      }
      ::cudaMemcpyAttributes attr{};
      attr.srcAccessOrder = ::cudaMemcpySrcAccessOrderStream;
      std::size_t attr_index = 0;
#if CUDART_VERSION >= 13000
      ::cudaError_t e = ::cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), sizes.size(), &attr,
                                               &attr_index, 1, l.stream);
#else
      std::size_t failed_at = 0;
      ::cudaError_t e = ::cudaMemcpyBatchAsync(dsts.data(), const_cast<void**>(srcs.data()), sizes.data(),
                                               sizes.size(), &attr, &attr_index, 1, &failed_at, l.stream);
#endif
      if (e != ::cudaSuccess)
        return clear(e, "cudaMemcpyBatchAsync");
#endif
    } else {
      // Copy engines: one copy per run of contiguous slices.
      std::size_t i = 0;
      while (i < l.entries.size()) {
        std::byte* s = l.entries[i].src;
        std::byte* d = l.entries[i].dst;
        std::size_t n = l.entries[i].s->length;
        std::size_t j = i + 1;
        while (j < l.entries.size() && l.entries[j].src == s + n && l.entries[j].dst == d + n) {
          n += l.entries[j].s->length;
          ++j;
        }
        if (::cudaError_t e = ::cudaMemcpyAsync(d, s, n, ::cudaMemcpyDefault, l.stream); e != ::cudaSuccess)
          return clear(e, "cudaMemcpyAsync");
        i = j;
      }
    }
    if (::cudaError_t e = ::cudaEventRecord(l.done, l.stream); e != ::cudaSuccess)
      return clear(e, "cudaEventRecord");
    return {};
  }

  // ---- devices ----

  // Streams of `device`, created on first use.
  error prepare(int device) {
    if (device < 0)
      return error(errc::invalid_argument, "cuda: no device for the copy");
    if (devices_.size() <= static_cast<std::size_t>(device))
      devices_.resize(static_cast<std::size_t>(device) + 1);
    auto& ds = devices_[static_cast<std::size_t>(device)];
    if (ds.ready)
      return {};
    if (::cudaError_t e = ::cudaSetDevice(device); e != ::cudaSuccess) {
      ::cudaGetLastError();
      return cuda::cuda_error(e, "cudaSetDevice");
    }
    unsigned n = std::max(1u, opts_.streams_per_device);
    for (unsigned i = 0; i < n; ++i) {
      ::cudaStream_t st = nullptr;
      if (::cudaError_t e = ::cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking); e != ::cudaSuccess) {
        ::cudaGetLastError();
        return cuda::cuda_error(e, "cudaStreamCreateWithFlags");
      }
      ds.streams.push_back(st);
    }
    int sms = 0;
    if (::cudaDeviceGetAttribute(&sms, ::cudaDevAttrMultiProcessorCount, device) == ::cudaSuccess && sms > 0)
      ds.sms = static_cast<unsigned>(sms);
    ::cudaGetLastError();
    ds.ready = true;
    return {};
  }

  // Enables access from `from` to `to` once; false if the pair cannot have it (copies are then staged).
  bool peer_access(int from, int to) {
    auto key = std::pair{from, to};
    if (auto it = peer_.find(key); it != peer_.end())
      return it->second;
    int can = 0;
    bool ok = ::cudaDeviceCanAccessPeer(&can, from, to) == ::cudaSuccess && can;
    if (ok) {
      ::cudaSetDevice(from);
      ::cudaError_t e = ::cudaDeviceEnablePeerAccess(to, 0);
      ok = e == ::cudaSuccess || e == ::cudaErrorPeerAccessAlreadyEnabled;
    }
    ::cudaGetLastError();
    peer_[key] = ok;
    return ok;
  }

  launch* take_launch(int device) {
    auto& ds = devices_[static_cast<std::size_t>(device)];
    launch* l;
    if (!ds.idle.empty()) {
      l = ds.idle.back().release();
      ds.idle.pop_back();
    } else {
      l = new launch;
      l->owner = this;
      l->device = device;
    }
    l->keep = flush_keep_;
    return l;
  }

  // Descriptor buffers for `count` pieces.
  error reserve(launch& l, std::size_t count) {
    if (l.capacity >= count)
      return {};
    std::size_t want = std::max<std::size_t>(count, 1024);
    if (l.host_pieces)
      ::cudaFreeHost(std::exchange(l.host_pieces, nullptr));
    if (l.device_pieces)
      ::cudaFree(std::exchange(l.device_pieces, nullptr));
    l.capacity = 0;
    void* h = nullptr;
    void* d = nullptr;
    if (::cudaError_t e = ::cudaMallocHost(&h, want * sizeof(piece)); e != ::cudaSuccess) {
      ::cudaGetLastError();
      return cuda::cuda_error(e, "cudaMallocHost (copy descriptors)");
    }
    l.host_pieces = static_cast<piece*>(h);
    if (::cudaError_t e = ::cudaMalloc(&d, want * sizeof(piece)); e != ::cudaSuccess) {
      ::cudaGetLastError();
      return cuda::cuda_error(e, "cudaMalloc (copy descriptors)");
    }
    l.device_pieces = static_cast<piece*>(d);
    l.capacity = want;
    return {};
  }

  error load_kernel() {
    if (kernel_)
      return {};
    if (::cudaError_t e = ::cudaLibraryLoadData(&library_, cuda::detail::copy_kernel_ptx, nullptr, nullptr, 0,
                                                nullptr, nullptr, 0);
        e != ::cudaSuccess) {
      ::cudaGetLastError();
      library_ = nullptr;
      return cuda::cuda_error(e, "cudaLibraryLoadData (copy kernel)");
    }
    const char* name = cuda::detail::copy_kernel_name;
    if (opts_.kernel.kernel == cuda_copy_kernel::block_per_piece_deep)
      name = cuda::detail::copy_kernel_u8_name;
    else if (opts_.kernel.kernel == cuda_copy_kernel::warp_per_piece)
      name = cuda::detail::copy_kernel_warps_name;
    if (::cudaError_t e = ::cudaLibraryGetKernel(&kernel_, library_, name); e != ::cudaSuccess) {
      ::cudaGetLastError();
      kernel_ = nullptr;
      return cuda::cuda_error(e, "cudaLibraryGetKernel (copy kernel)");
    }
    return {};
  }

  void fail_all(std::vector<entry>& entries, error why) {
    for (auto& e : entries)
      settle(e, why);
    entries.clear();
  }

  static void settle(entry& e, error why) {
    slice* s = e.s;
    e.keep.reset();
    s->settle(why);
  }

  transport_context& tc_;
  cuda_options opts_;
  mutable segment_descriptor own_; // the own segment's exposed regions, as of own_generation_
  mutable std::uint64_t own_generation_ = 0;
  mutable bool own_valid_ = false;
  std::vector<entry> pending_;
  std::vector<std::shared_ptr<void>> flush_keep_; // the leases of the flush under way
  // Passes through peers' gates that copies in flight hold, by peer, incarnation, gate and epoch.
  std::map<std::tuple<segment_id, std::uint64_t, std::uint32_t, std::uint64_t>, std::weak_ptr<remote_hold>>
      holds_;
  bool flush_scheduled_ = false;
  std::uint64_t flush_count_ = 0;
  std::vector<device_state> devices_;
  std::map<std::pair<int, int>, bool> peer_;
  std::unordered_map<segment_id, peer_state> peers_;
  ::cudaLibrary_t library_ = nullptr;
  ::cudaKernel_t kernel_ = nullptr;
  std::uint64_t kernel_launches_ = 0;
  bool stopping_ = false;
};

} // namespace ferry
