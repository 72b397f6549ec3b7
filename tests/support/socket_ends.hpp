#pragma once
// The sockets of this process that have a given address at one end, found through /proc/self/fd.

#include "ferry/io/detail/congestion_control.hpp"
#include "ferry/io/endpoint.hpp"

#include <dirent.h>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <vector>

namespace ferry_test {

/// Every TCP socket of this process whose local or remote address is `at` (a listening socket excluded), as
/// its descriptor (valid while its owner keeps it open).
inline std::vector<int> sockets_towards(const ferry::io::endpoint& at) {
  std::vector<int> out;
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir)
    return out;
  const std::string wanted = at.to_string();
  while (auto* entry = ::readdir(dir)) {
    char* end = nullptr;
    long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd == ::dirfd(dir))
      continue;
    struct ::stat st {};
    if (::fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode))
      continue;
    int listening = 0;
    ::socklen_t len = sizeof listening;
    if (::getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || listening)
      continue;
    auto name_of = [&](auto fn) {
      ::sockaddr_storage ss{};
      ::socklen_t n = sizeof ss;
      if (fn(static_cast<int>(fd), reinterpret_cast<::sockaddr*>(&ss), &n) != 0)
        return std::string();
      auto e = ferry::io::endpoint::from_sockaddr(reinterpret_cast<::sockaddr*>(&ss), n);
      return e.to_string();
    };
    if (name_of(::getsockname) == wanted || name_of(::getpeername) == wanted)
      out.push_back(static_cast<int>(fd));
  }
  ::closedir(dir);
  return out;
}

/// The congestion control of every TCP socket of this process whose local or remote address is `at`
/// (a listening socket excluded).
inline std::vector<std::string> congestion_controls_towards(const ferry::io::endpoint& at) {
  std::vector<std::string> out;
  for (int fd : sockets_towards(at))
    out.push_back(ferry::io::detail::congestion_control(fd));
  return out;
}

} // namespace ferry_test
