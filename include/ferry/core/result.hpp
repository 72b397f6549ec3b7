#pragma once
/// `ferry::result<T>`: a value or a `ferry::error` (tl::expected from Debian's libexpected-dev).
///
///   ferry::result<int> parse(std::string_view s);
///   if (auto r = parse("42")) use(*r); else log(r.error().message());

#include "ferry/core/error.hpp"

#include <string>
#include <tl/expected.hpp>
#include <utility>

namespace ferry {

/// A value of type T, or the error that prevented it.
template<class T>
using result = tl::expected<T, error>;

/// Wraps an error for returning from a function whose type is `result<T>`.
inline tl::unexpected<error> fail(error e) noexcept {
  return tl::unexpected<error>(e);
}
inline tl::unexpected<error> fail(errc e, const char* what = "") noexcept {
  return tl::unexpected<error>(error(e, what));
}
/// With a note made at run time (it names what failed: an endpoint, a key ...).
inline tl::unexpected<error> fail(errc e, std::string what) {
  return tl::unexpected<error>(error(e, std::move(what)));
}

/// Converts a negative kernel return (-errno) into an error; non-negative values are not errors.
inline tl::unexpected<error> fail_errno(int negative_errno, const char* what) noexcept {
  return tl::unexpected<error>(error::from_errno(-negative_errno, what));
}

} // namespace ferry
