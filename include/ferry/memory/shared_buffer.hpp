#pragma once
/// `ferry::shared_buffer`: memory that other processes on this host can map (a POSIX shared-memory object).
/// Register it with `access` so that a same-host peer's transfers become a memory copy instead of TCP.
/// The object's name is removed when the buffer is destroyed; peers that mapped it keep their mapping.
///
///   auto buf = ferry::shared_buffer::create(64 << 20);
///   engine.registry().add(buf->data(), buf->size(), ferry::access::read_write, buf->name());

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/memory/detail/pid_namespace.hpp"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fcntl.h>
#include <filesystem>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <sys/mman.h>
#include <unistd.h>
#include <utility>

namespace ferry {

class shared_buffer {
public:
  shared_buffer() = default;
  shared_buffer(shared_buffer&& o) noexcept
      : name_(std::move(o.name_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  shared_buffer& operator=(shared_buffer&& o) noexcept {
    if (this != &o) {
      release();
      name_ = std::move(o.name_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~shared_buffer() { release(); }

  /// Creates a zero-filled shared object of `size` bytes (rounded up to the page size), with its memory
  /// allocated (errc::out_of_space when /dev/shm has no room for it), and maps it. Its name,
  /// "/ferry-PID.PIDNS-N-RANDOM", is this process's alone: the random part keeps it from meeting an object
  /// that a process of the same id left behind (a restarted container's PID 1, say), and from being found
  /// by a process that sees another /dev/shm under the same names.
  static result<shared_buffer> create(std::size_t size) {
    static std::atomic<unsigned> counter{0};
    static std::once_flag reaped;
    std::call_once(reaped, remove_orphans);
    std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    size = (size + page - 1) / page * page;
    shared_buffer b;
    int fd = -1;
    for (int attempt = 0; fd < 0 && attempt < 8; ++attempt) {
      b.name_ = fresh_name(counter.fetch_add(1));
      fd = ::shm_open(b.name_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd < 0 && errno != EEXIST)
        break;
    }
    if (fd < 0)
      return fail_errno(-errno, "shm_open");
    // why: allocated now, not on first touch: a size-only object (ftruncate) on a /dev/shm with less room
    // than that maps fine, and the first write to a page there is met with SIGBUS, in this process or in a
    // peer that copies into it
    int e = 0;
    do
      e = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
    while (e == EINTR);
    if (e != 0) {
      ::close(fd);
      ::shm_unlink(b.name_.c_str());
      if (e == ENOSPC || e == ENOMEM)
        return fail(errc::out_of_space,
                    "shared memory: /dev/shm has no room for " + std::to_string(size) + " bytes");
      return fail_errno(-e, "posix_fallocate (shared memory)");
    }
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    e = errno;
    ::close(fd);
    if (p == MAP_FAILED) {
      ::shm_unlink(b.name_.c_str());
      return fail_errno(-e, "mmap (shared memory)");
    }
    b.data_ = static_cast<std::byte*>(p);
    b.size_ = size;
    return b;
  }

  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  std::span<std::byte> bytes() const noexcept { return {data_, size_}; }
  /// The name peers open it by (shm_open).
  const std::string& name() const noexcept { return name_; }

  /// Removes the shared objects of ferry processes that ended without removing them (killed, crashed). Only
  /// those of this PID namespace: another namespace's ids name other processes (containers that share
  /// /dev/shm), whose objects may be in use.
  static void remove_orphans() noexcept {
    std::error_code ec;
    const unsigned long own_namespace = detail::pid_namespace_id();
    // why: increment(ec), not a range-for, whose ++ throws on a read error (this function is noexcept)
    for (std::filesystem::directory_iterator it("/dev/shm", ec), end; !ec && it != end; it.increment(ec)) {
      std::string name = it->path().filename().string();
      unsigned long pid = 0, pid_namespace = 0;
      int fields = std::sscanf(name.c_str(), "ferry-%lu.%lu-", &pid, &pid_namespace);
      // why: a name without the namespace comes from an older ferry, which named objects so on every host
      if (fields < 1 || pid == 0 || (fields == 2 && pid_namespace != own_namespace))
        continue;
      if (::kill(static_cast<pid_t>(pid), 0) < 0 && errno == ESRCH)
        ::shm_unlink(("/" + name).c_str());
    }
  }

private:
  static std::string fresh_name(unsigned n) {
    static thread_local std::mt19937_64 random{(std::uint64_t(std::random_device{}()) << 32) ^
                                               std::random_device{}() ^ std::uint64_t(::getpid())};
    char text[96];
    std::snprintf(text, sizeof text, "/ferry-%lu.%lu-%u-%016llx", static_cast<unsigned long>(::getpid()),
                  static_cast<unsigned long>(detail::pid_namespace_id()), n,
                  static_cast<unsigned long long>(random()));
    return text;
  }

  void release() noexcept {
    if (!data_)
      return;
    ::munmap(data_, size_);
    ::shm_unlink(name_.c_str());
    data_ = nullptr;
  }

  std::string name_;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

} // namespace ferry
