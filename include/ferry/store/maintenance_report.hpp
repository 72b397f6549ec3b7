#pragma once
#include <cstddef>

namespace ferry::store {

/// What one `master::tick()` did.
///
///   auto r = m.tick(); if (r.clients_expired) log("lost", r.clients_expired, "clients");
struct maintenance_report {
  std::size_t clients_expired = 0;
  std::size_t puts_reclaimed = 0;
  std::size_t evicted = 0;
};

} // namespace ferry::store
