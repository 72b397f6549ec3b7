#pragma once
/// Error codes of ferry: `ferry::errc` (a std::error_code enum with its own category) and `ferry::error`,
/// an error code plus a static note on what failed (no allocation).
///
///   ferry::result<std::size_t> n = co_await sock.recv(buf);
///   if (!n) std::puts(n.error().message().c_str());   // "recv: Connection reset by peer"

#include <cerrno>
#include <memory>
#include <string>
#include <system_error>
#include <type_traits>

namespace ferry {

/// Conditions that ferry itself reports (kernel failures keep their errno in std::system_category()).
enum class errc : int {
  cancelled = 1,     ///< the caller's stop_token was triggered
  timed_out,         ///< a deadline passed before the operation completed
  closed,            ///< the peer closed the connection (end of stream)
  invalid_argument,  ///< a parameter is out of its domain
  out_of_bounds,     ///< offset/length outside a registered region or file
  permission_denied, ///< the access is not allowed by the region's permissions
  unknown_segment,   ///< no segment of that name is known
  malformed_frame,   ///< a message from the network failed validation
  version_mismatch,  ///< the peer speaks another protocol version
  unsupported,       ///< the operation is not supported by this backend or transport
  not_found,         ///< the named object does not exist
  already_exists,    ///< an object of that name already exists
  not_ready,         ///< the object exists but is not yet readable (e.g. a pending put)
  busy,              ///< the object is in use (leased, pinned, in flight) and cannot change now
  out_of_space,      ///< no capacity left, even after eviction
  invalid_state,     ///< the operation does not fit the object's current state
  peer_unreachable,  ///< the peer could not be reached or stopped answering
  short_transfer,    ///< fewer bytes moved than requested and the rest cannot follow
  internal,          ///< a part failed in a way it has no error for: it threw (out of memory, a bug)
};

namespace detail {
class errc_category final : public std::error_category {
public:
  const char* name() const noexcept override { return "ferry"; }
  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
    case errc::cancelled:
      return "operation cancelled";
    case errc::timed_out:
      return "deadline passed before the operation completed";
    case errc::closed:
      return "connection closed by the peer";
    case errc::invalid_argument:
      return "invalid argument";
    case errc::out_of_bounds:
      return "offset or length outside the registered range";
    case errc::permission_denied:
      return "access not permitted by the region's permissions";
    case errc::unknown_segment:
      return "unknown segment";
    case errc::malformed_frame:
      return "malformed message";
    case errc::version_mismatch:
      return "protocol version mismatch";
    case errc::unsupported:
      return "operation not supported here";
    case errc::not_found:
      return "not found";
    case errc::already_exists:
      return "already exists";
    case errc::not_ready:
      return "not ready yet";
    case errc::busy:
      return "in use; try again later";
    case errc::out_of_space:
      return "out of space";
    case errc::invalid_state:
      return "operation does not fit the current state";
    case errc::peer_unreachable:
      return "peer unreachable";
    case errc::short_transfer:
      return "transfer ended early";
    case errc::internal:
      return "internal failure";
    }
    return "unknown ferry error";
  }
  std::error_condition default_error_condition(int value) const noexcept override {
    switch (static_cast<errc>(value)) {
    case errc::cancelled:
      return std::errc::operation_canceled;
    case errc::timed_out:
      return std::errc::timed_out;
    case errc::invalid_argument:
      return std::errc::invalid_argument;
    case errc::permission_denied:
      return std::errc::permission_denied;
    default:
      return {value, *this};
    }
  }
};
} // namespace detail

/// The category of `ferry::errc`.
inline const std::error_category& ferry_category() noexcept {
  static const detail::errc_category category;
  return category;
}

/// Makes a std::error_code from a `ferry::errc` (found by ADL).
inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), ferry_category()};
}

/// An error code with a note on what failed: a static one ("connect", "io_uring_setup" ...) or, where the
/// message must name something (an endpoint, a key), a shared string. Cheap to copy either way.
class error {
public:
  error() = default;
  error(std::error_code code, const char* what = "") noexcept : code_(code), what_(what ? what : "") {}
  error(errc e, const char* what = "") noexcept : error(make_error_code(e), what) {}
  /// With a note made at run time ("etcd 127.0.0.1:2379: connection refused").
  error(std::error_code code, std::string what)
      : code_(code), owned_(std::make_shared<const std::string>(std::move(what))), what_(owned_->c_str()) {}
  error(errc e, std::string what) : error(make_error_code(e), std::move(what)) {}

  /// An error from a kernel errno (positive, e.g. ECONNRESET).
  static error from_errno(int errno_value, const char* what) noexcept {
    return {std::error_code(errno_value, std::system_category()), what};
  }

  const std::error_code& code() const noexcept { return code_; }
  /// What failed; "" if nothing was noted.
  const char* what() const noexcept { return what_; }
  /// "what: description", ready to print.
  std::string message() const {
    return *what_ ? std::string(what_) + ": " + code_.message() : code_.message();
  }
  explicit operator bool() const noexcept { return static_cast<bool>(code_); }

  friend bool operator==(const error& a, const error& b) noexcept { return a.code_ == b.code_; }
  friend bool operator==(const error& a, const std::error_code& b) noexcept { return a.code_ == b; }
  friend bool operator==(const error& a, errc b) noexcept { return a.code_ == make_error_code(b); }
  friend bool operator==(const error& a, std::errc b) noexcept { return a.code_ == b; }

private:
  std::error_code code_;
  std::shared_ptr<const std::string> owned_; // why: keeps a run-time note alive; empty for static notes
  const char* what_ = "";
};

} // namespace ferry

template<>
struct std::is_error_code_enum<ferry::errc> : std::true_type {};
