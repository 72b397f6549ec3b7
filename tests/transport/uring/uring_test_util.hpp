#pragma once
// Helpers of the uring tests: temporary directories on the real disk, data patterns, raw file access.

#include <doctest/doctest.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <span>
#include <string>
#include <sys/vfs.h>
#include <unistd.h>
#include <vector>

namespace ferry_test {

/// A temporary directory (on a disk-backed filesystem where TMPDIR is one), removed afterwards.
struct temp_dir {
  std::filesystem::path path;
  explicit temp_dir(const std::filesystem::path& under = std::filesystem::temp_directory_path()) {
    std::string tmpl = (under / "ferry-uring-test-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const char* name) const { return (path / name).string(); }
};

inline bool is_tmpfs(const std::filesystem::path& p) {
  struct ::statfs s {};
  return ::statfs(p.c_str(), &s) == 0 && s.f_type == 0x01021994; // TMPFS_MAGIC
}

/// True when files under `dir` cannot be opened with O_DIRECT.
inline bool refuses_direct(const std::filesystem::path& dir) {
  std::string probe = (dir / "ferry-direct-probe-XXXXXX").string();
  int fd = ::mkstemp(probe.data());
  if (fd < 0)
    return false;
  ::close(fd);
  fd = ::open(probe.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  bool refused = fd < 0 && errno == EINVAL;
  if (fd >= 0)
    ::close(fd);
  ::unlink(probe.c_str());
  return refused;
}

inline std::byte pattern_at(std::uint64_t i, unsigned seed) {
  return static_cast<std::byte>(((i * 2654435761u) >> 7 ^ seed) & 0xff);
}
inline void fill(std::span<std::byte> s, unsigned seed, std::uint64_t base = 0) {
  for (std::size_t i = 0; i < s.size(); ++i)
    s[i] = pattern_at(base + i, seed);
}

/// Writes `bytes` bytes of pattern `seed` to a new file at `path` (plain buffered I/O).
inline void make_file(const std::string& path, std::size_t bytes, unsigned seed) {
  std::vector<std::byte> data(bytes);
  fill(data, seed);
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, data.data(), data.size(), 0) == static_cast<ssize_t>(data.size()));
  ::close(fd);
}

/// The file's bytes [offset, offset + length), read with plain pread (what is really on disk).
inline std::vector<std::byte> file_bytes(const std::string& path, std::uint64_t offset, std::size_t length) {
  std::vector<std::byte> out(length);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  auto n = ::pread(fd, out.data(), out.size(), static_cast<off_t>(offset));
  ::close(fd);
  REQUIRE(n == static_cast<ssize_t>(length));
  return out;
}

} // namespace ferry_test
