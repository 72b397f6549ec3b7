#pragma once
/// `ferry::lease_id`: a lease granted by a metadata store. Keys put under a lease vanish when it expires
/// (its owner stopped calling keep_alive, e.g. because the process died) or is revoked.

#include <cstdint>

namespace ferry {

using lease_id = std::int64_t;

} // namespace ferry
