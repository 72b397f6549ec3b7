#pragma once
/// `ferry::access`: what peers may do with a registered region. `none` keeps a region local: it can be the
/// source or destination of this process's own transfers, but no peer can reach it.
///
///   registry.add(buf, size, ferry::access::read_write);

#include <cstdint>
#include <string_view>

namespace ferry {

enum class access : std::uint8_t {
  none = 0,       ///< local only: not part of the segment peers see
  read = 1,       ///< peers may read
  write = 2,      ///< peers may write
  read_write = 3, ///< peers may read and write
};

constexpr bool allows(access granted, access wanted) noexcept {
  return (static_cast<std::uint8_t>(granted) & static_cast<std::uint8_t>(wanted)) ==
         static_cast<std::uint8_t>(wanted);
}

constexpr std::string_view to_string(access a) noexcept {
  switch (a) {
  case access::none:
    return "none";
  case access::read:
    return "read";
  case access::write:
    return "write";
  case access::read_write:
    return "read_write";
  }
  return "none";
}

/// Parses "none", "read", "write" or "read_write"; false if the text is none of them.
constexpr bool parse_access(std::string_view text, access& out) noexcept {
  for (access a : {access::none, access::read, access::write, access::read_write})
    if (text == to_string(a)) {
      out = a;
      return true;
    }
  return false;
}

} // namespace ferry
