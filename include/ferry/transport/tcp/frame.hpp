#pragma once
/// The TCP transport's wire format. Every message is a fixed 40-byte header, little-endian, optionally
/// followed by a payload of `length` bytes:
///
///   offset  size  field
///        0     4  magic       "FRY1" (0x31595246)
///        4     1  version     3 (2 added the connection tags and fences, 3 the read status that follows a
///                             payload)
///        5     1  type        frame_type
///        6     2  flags       0, or frame_header::status_follows on a read_reply
///        8     4  status      0, or a ferry::errc value in replies
///       12     4  reserved    0
///       16     8  request_id  chosen by the initiator, echoed in the reply
///       24     8  offset      segment offset (read, write); a connection's tag (hello, fence); a
///                             notification's id, the same when it is sent again (notify)
///       32     8  length      payload bytes that follow, or bytes asked for (read)
///
/// Requests flow initiator -> owner; each gets exactly one reply, in order, on the same connection (a read
/// in pieces: its reply, and after its payload the status that ends it, below).
/// A read_reply with the flag `status_follows` (the owner sends a read of a file region in pieces, and only
/// learns whether the later ones can be read after the reply went) is followed, after its payload, by a
/// read_reply with the same request id, no flags and no payload, whose status is the read's outcome: if it
/// is not 0, the payload's bytes are not the region's, and the read failed.
/// A data connection's hello carries a tag the initiator chose for it; a fence names such a tag, and the
/// owner answers it only once the connection with that tag has ended, so that nothing sent on it can still
/// land (what follows the fence on the fencing connection is served after it). A connection that the owner
/// accepts beyond the most it serves is closed; if its first request comes at once and carries no payload
/// (a hello, as every peer's does), it is answered with status `busy` first.
/// `decode_header` rejects
/// anything malformed before a byte of payload is read.
///
///   std::array<std::byte, frame_header::size> wire;
///   encode(h, wire);
///   ferry::result<frame_header> back = decode_header(wire);

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace ferry::tcp {

enum class frame_type : std::uint8_t {
  hello = 1,       ///< asks for the owner's segment descriptor; `offset`: the connection's tag (0: none)
  hello_reply = 2, ///< payload: the descriptor as JSON
  write = 3,       ///< payload: bytes to store at `offset`
  write_reply = 4, ///< status only
  read = 5,        ///< asks for `length` bytes at `offset`; payload: none
  read_reply = 6,  ///< payload: the bytes (only when status is 0)
  notify = 7,      ///< payload: a short message for the owner's application; `offset`: its id (0: none)
  notify_reply = 8,
  ping = 9,
  pong = 10,
  fence = 11,       ///< `offset`: the tag of a connection the initiator gave up; answered once it has ended
  fence_reply = 12, ///< status only
};

struct frame_header {
  static constexpr std::size_t size = 40;
  static constexpr std::uint32_t magic = 0x31595246; // "FRY1" on the wire
  static constexpr std::uint8_t version = 3;
  /// `flags` of a read_reply whose payload is followed by the read's final status (see above).
  static constexpr std::uint16_t status_follows = 1;
  /// The largest payload of a read or write (one slice).
  static constexpr std::uint64_t max_data_payload = 64ull << 20;
  /// The largest notification.
  static constexpr std::uint64_t max_message_payload = 1ull << 20;
  /// The largest segment descriptor (a hello's reply): tens of thousands of regions (a larger one is refused
  /// with errc::out_of_space).
  static constexpr std::uint64_t max_descriptor_payload = 16ull << 20;

  frame_type type = frame_type::ping;
  std::uint16_t flags = 0;
  std::int32_t status = 0;
  std::uint64_t request_id = 0;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;

  /// Payload bytes that follow this header on the wire.
  std::uint64_t payload_length() const noexcept {
    switch (type) {
    case frame_type::hello_reply:
    case frame_type::write:
    case frame_type::notify:
      return length;
    case frame_type::read_reply:
      return status == 0 ? length : 0;
    default:
      return 0;
    }
  }
  /// The status as an error code (empty when 0).
  std::error_code error() const noexcept {
    return status == 0 ? std::error_code{} : std::error_code(status, ferry_category());
  }
};

namespace detail {
inline void put_le(std::byte* p, std::uint64_t v, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i)
    p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}
inline std::uint64_t get_le(const std::byte* p, std::size_t n) noexcept {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < n; ++i)
    v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}
} // namespace detail

/// Writes `h` into exactly frame_header::size bytes.
inline void encode(const frame_header& h, std::span<std::byte, frame_header::size> out) noexcept {
  std::byte* p = out.data();
  detail::put_le(p + 0, frame_header::magic, 4);
  detail::put_le(p + 4, frame_header::version, 1);
  detail::put_le(p + 5, static_cast<std::uint8_t>(h.type), 1);
  detail::put_le(p + 6, h.flags, 2);
  detail::put_le(p + 8, static_cast<std::uint32_t>(h.status), 4);
  detail::put_le(p + 12, 0, 4);
  detail::put_le(p + 16, h.request_id, 8);
  detail::put_le(p + 24, h.offset, 8);
  detail::put_le(p + 32, h.length, 8);
}

/// Validates and decodes a header. Errors: errc::version_mismatch for another protocol version,
/// errc::malformed_frame for anything else that is off (magic, type, reserved bits, status, absurd lengths).
inline result<frame_header> decode_header(std::span<const std::byte, frame_header::size> in) noexcept {
  const std::byte* p = in.data();
  if (detail::get_le(p, 4) != frame_header::magic)
    return fail(errc::malformed_frame, "frame: bad magic");
  if (detail::get_le(p + 4, 1) != frame_header::version)
    return fail(errc::version_mismatch, "frame: unsupported protocol version");
  auto type = static_cast<std::uint8_t>(detail::get_le(p + 5, 1));
  if (type < static_cast<std::uint8_t>(frame_type::hello) ||
      type > static_cast<std::uint8_t>(frame_type::fence_reply))
    return fail(errc::malformed_frame, "frame: unknown type");
  if (detail::get_le(p + 12, 4) != 0)
    return fail(errc::malformed_frame, "frame: reserved bits set");
  frame_header h;
  h.type = static_cast<frame_type>(type);
  h.flags = static_cast<std::uint16_t>(detail::get_le(p + 6, 2));
  h.status = static_cast<std::int32_t>(static_cast<std::uint32_t>(detail::get_le(p + 8, 4)));
  h.request_id = detail::get_le(p + 16, 8);
  h.offset = detail::get_le(p + 24, 8);
  h.length = detail::get_le(p + 32, 8);
  bool is_reply = type % 2 == 0;
  if (!is_reply && h.status != 0)
    return fail(errc::malformed_frame, "frame: status set on a request");
  // why: errc values after short_transfer (internal) describe this process, never a peer's reply
  if (h.status < 0 || h.status > static_cast<std::int32_t>(errc::short_transfer))
    return fail(errc::malformed_frame, "frame: unknown status");
  // why: only a read's payload can be followed by its status, and only a payload that comes (status 0)
  if (h.flags != 0 && (h.flags != frame_header::status_follows || h.type != frame_type::read_reply ||
                       h.status != 0 || h.length == 0))
    return fail(errc::malformed_frame, "frame: unknown flags");
  switch (h.type) {
  case frame_type::write:
  case frame_type::read:
  case frame_type::read_reply:
    if (h.length > frame_header::max_data_payload)
      return fail(errc::malformed_frame, "frame: length too large");
    if (h.type != frame_type::read_reply && h.length == 0)
      return fail(errc::malformed_frame, "frame: empty transfer");
    break;
  case frame_type::hello_reply:
    if (h.length > frame_header::max_descriptor_payload)
      return fail(errc::malformed_frame, "frame: descriptor too large");
    break;
  case frame_type::notify:
    if (h.length > frame_header::max_message_payload)
      return fail(errc::malformed_frame, "frame: message too large");
    break;
  default:
    if (h.length != 0)
      return fail(errc::malformed_frame, "frame: unexpected payload");
  }
  return h;
}

} // namespace ferry::tcp
