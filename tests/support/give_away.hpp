#pragma once
// Gives a shared-memory object to another user ("nobody"), as if another service account had made it. Needs
// root (CAP_CHOWN); false, with nothing changed, without it.

#include <fcntl.h>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

namespace ferry_test {

inline bool give_to_another_user(const std::string& shm_name) {
  int fd = ::shm_open(shm_name.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0)
    return false;
  const bool given = ::fchown(fd, 65534, 65534) == 0;
  ::close(fd);
  return given;
}

} // namespace ferry_test
