#pragma once
/// The transport concept. A transport says whether it reaches a peer, accepts slices for it (settling each
/// exactly once), and can abort everything it holds of one batch. The engine is a template over a list of
/// transports and routes each request to the first one that reaches its target: no virtual call per slice.
///
///   static_assert(ferry::transport<ferry::tcp_transport>);

#include "ferry/transfer/peer.hpp"
#include "ferry/transport/slice.hpp"

#include <concepts>
#include <cstdint>
#include <string_view>

namespace ferry {

namespace detail {
class batch_state;
}

template<class T>
concept transport = requires(T& t, const peer& p, slice* s, detail::batch_state* b, std::uint64_t n) {
  { T::name } -> std::convertible_to<std::string_view>;
  /// Whether this transport can move [offset, offset + length) of `p` (a cheap check, made per request).
  { t.reaches(p, n, n) } -> std::same_as<bool>;
  /// Takes the slice; it is settled later (or at once) through s->settle(). One that throws (from reaches()
  /// too) must not have taken it: the engine fails the slice with errc::internal and the reason. (ferry's own
  /// transports take a slice in several steps, and their submit() is noexcept.)
  t.submit(p, s);
  /// Settles, as soon as it safely can, every slice of `b` it holds: afterwards no byte of b moves.
  t.abort(b);
  /// Forgets per-peer state (connections, mappings) after the peer's descriptor changed.
  t.forget(p);
  /// Ends background work: fails what is queued; what runs finishes (the engine then joins its scope).
  t.shutdown();
};

/// Whether transport T moves bytes whose local side is GPU memory (it says so with
/// `static constexpr bool moves_gpu_memory = true`). The engine never hands such a slice to another one:
/// a transport that copies with the CPU or send()s would touch memory the CPU cannot reach.
template<class T>
inline constexpr bool moves_gpu_memory = [] {
  if constexpr (requires { T::moves_gpu_memory; })
    return static_cast<bool>(T::moves_gpu_memory);
  else
    return false;
}();

} // namespace ferry
