#include "ferry/transport/tcp/frame.hpp"

#include <doctest/doctest.h>

#include <array>

using ferry::tcp::frame_header;
using ferry::tcp::frame_type;

namespace {
std::array<std::byte, frame_header::size> wire(const frame_header& h) {
  std::array<std::byte, frame_header::size> w;
  ferry::tcp::encode(h, w);
  return w;
}
} // namespace

TEST_SUITE("tcp frame") {
  TEST_CASE("headers round-trip through the wire format") {
    frame_header h;
    h.type = frame_type::write;
    h.request_id = 0x0102030405060708ull;
    h.offset = 1ull << 40;
    h.length = 65536;
    auto w = wire(h);
    CHECK(w[0] == std::byte{'F'});
    CHECK(w[3] == std::byte{'1'});
    auto back = ferry::tcp::decode_header(w);
    REQUIRE(back);
    CHECK(back->type == frame_type::write);
    CHECK(back->request_id == h.request_id);
    CHECK(back->offset == h.offset);
    CHECK(back->payload_length() == 65536);
  }

  TEST_CASE("a fence names a connection by the tag its hello carried, and carries no payload") {
    frame_header h;
    h.type = frame_type::fence;
    h.request_id = 3;
    h.offset = 0xfedcba9876543210ull;
    auto back = ferry::tcp::decode_header(wire(h));
    REQUIRE(back);
    CHECK(back->type == frame_type::fence);
    CHECK(back->offset == h.offset);
    CHECK(back->payload_length() == 0);
    h.type = frame_type::fence_reply;
    REQUIRE(ferry::tcp::decode_header(wire(h)));
  }

  TEST_CASE("replies carry a status and read replies carry data only on success") {
    frame_header h;
    h.type = frame_type::read_reply;
    h.status = static_cast<int>(ferry::errc::out_of_bounds);
    h.length = 0;
    auto back = ferry::tcp::decode_header(wire(h));
    REQUIRE(back);
    CHECK(back->error() == ferry::errc::out_of_bounds);
    CHECK(back->payload_length() == 0);
  }

  TEST_CASE("only a read reply that carries its payload may say that the read's status follows it") {
    frame_header h;
    h.type = frame_type::read_reply;
    h.request_id = 7;
    h.length = 3 << 20;
    h.flags = frame_header::status_follows;
    auto back = ferry::tcp::decode_header(wire(h));
    REQUIRE(back);
    CHECK(back->flags == frame_header::status_follows);
    CHECK(back->payload_length() == h.length);
    auto refused = [&](frame_header bad) { return ferry::tcp::decode_header(wire(bad)).error(); };
    frame_header other_flag = h;
    other_flag.flags = 2;
    CHECK(refused(other_flag) == ferry::errc::malformed_frame);
    frame_header with_status = h;
    with_status.status = static_cast<int>(ferry::errc::out_of_bounds);
    CHECK(refused(with_status) == ferry::errc::malformed_frame); // no payload comes, so no status after it
    frame_header empty = h;
    empty.length = 0;
    CHECK(refused(empty) == ferry::errc::malformed_frame);
    frame_header on_write_reply = h;
    on_write_reply.type = frame_type::write_reply;
    on_write_reply.length = 0;
    CHECK(refused(on_write_reply) == ferry::errc::malformed_frame);
  }

  TEST_CASE("malformed headers are rejected before any payload is read") {
    frame_header ok;
    ok.type = frame_type::read;
    ok.length = 10;
    auto base = wire(ok);
    auto mutate = [&](std::size_t at, std::byte v) {
      auto w = base;
      w[at] = v;
      return ferry::tcp::decode_header(w);
    };
    CHECK(mutate(0, std::byte{0}).error() == ferry::errc::malformed_frame);  // magic
    CHECK(mutate(4, std::byte{1}).error() == ferry::errc::version_mismatch); // version 1: no fences
    CHECK(mutate(4, std::byte{2}).error() == ferry::errc::version_mismatch); // version 2: no read status
    CHECK(mutate(4, std::byte{4}).error() == ferry::errc::version_mismatch); // a later version
    CHECK(mutate(5, std::byte{0}).error() == ferry::errc::malformed_frame);  // type 0
    CHECK(mutate(5, std::byte{13}).error() == ferry::errc::malformed_frame); // type past the last
    CHECK(mutate(6, std::byte{1}).error() == ferry::errc::malformed_frame);  // flags on a request
    CHECK(mutate(12, std::byte{1}).error() == ferry::errc::malformed_frame); // reserved
    CHECK(mutate(8, std::byte{1}).error() == ferry::errc::malformed_frame);  // status on a request
    frame_header huge;
    huge.type = frame_type::write;
    huge.length = frame_header::max_data_payload + 1;
    CHECK(ferry::tcp::decode_header(wire(huge)).error() == ferry::errc::malformed_frame);
    frame_header empty;
    empty.type = frame_type::read;
    CHECK(ferry::tcp::decode_header(wire(empty)).error() == ferry::errc::malformed_frame);
    frame_header ping_with_payload;
    ping_with_payload.type = frame_type::ping;
    ping_with_payload.length = 1;
    CHECK(ferry::tcp::decode_header(wire(ping_with_payload)).error() == ferry::errc::malformed_frame);
    frame_header fence_with_payload;
    fence_with_payload.type = frame_type::fence;
    fence_with_payload.length = 8;
    CHECK(ferry::tcp::decode_header(wire(fence_with_payload)).error() == ferry::errc::malformed_frame);
    frame_header bad_status;
    bad_status.type = frame_type::write_reply;
    bad_status.status = 9999;
    CHECK(ferry::tcp::decode_header(wire(bad_status)).error() == ferry::errc::malformed_frame);
    // a descriptor may be larger than a notification (a segment of many regions), up to its own bound
    frame_header descriptor;
    descriptor.type = frame_type::hello_reply;
    descriptor.length = frame_header::max_message_payload + 1;
    CHECK(ferry::tcp::decode_header(wire(descriptor)));
    descriptor.length = frame_header::max_descriptor_payload + 1;
    CHECK(ferry::tcp::decode_header(wire(descriptor)).error() == ferry::errc::malformed_frame);
    frame_header long_note;
    long_note.type = frame_type::notify;
    long_note.length = frame_header::max_message_payload + 1;
    CHECK(ferry::tcp::decode_header(wire(long_note)).error() == ferry::errc::malformed_frame);
  }
}
