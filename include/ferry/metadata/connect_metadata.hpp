#pragma once
/// `ferry::connect_metadata`: a metadata client from a connection string (see `ferry::metadata_address`).
/// The http:// and etcd:// backends come with the ferry::http component, redis:// with ferry::redis; without
/// them those schemes fail with errc::unsupported saying which component is missing. Connecting is lazy: a
/// server that is down shows in the first operation's error, which names it.
///
///   auto meta = ferry::connect_metadata("etcd://127.0.0.1:2379/cluster-a");
///   if (!meta) die(meta.error().message());
///   engine.use_metadata(*meta);

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/metadata/memory_metadata_store.hpp"
#include "ferry/metadata/metadata_address.hpp"
#include "ferry/metadata/metadata_client.hpp"
#include "ferry/metadata/metadata_options.hpp"

#if defined(FERRY_WITH_HTTP)
#include "ferry/metadata/http/etcd_metadata_store.hpp"
#include "ferry/metadata/http/http_metadata_store.hpp"
#endif
#if defined(FERRY_WITH_REDIS)
#include "ferry/metadata/redis/redis_metadata_store.hpp"
#endif

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace ferry {

/// The process-wide memory store called `name` (memory://NAME), made on first use.
inline std::shared_ptr<memory_metadata_store> shared_memory_metadata_store(const std::string& name) {
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<memory_metadata_store>> stores;
  std::lock_guard lock(mutex);
  auto& s = stores[name];
  if (!s)
    s = std::make_shared<memory_metadata_store>();
  return s;
}

inline result<metadata_client> connect_metadata(std::string_view connection, metadata_options options = {}) {
  auto address = metadata_address::parse(connection);
  if (!address)
    return fail(address.error());
  std::string text(connection);
  switch (address->scheme) {
  case metadata_address::kind::p2p:
    return metadata_client();
  case metadata_address::kind::memory:
    return metadata_client::wrap(shared_memory_metadata_store(address->hosts.at(0)), address->prefix, text);
  case metadata_address::kind::http:
#if defined(FERRY_WITH_HTTP)
    return metadata_client::wrap(std::make_shared<http_metadata_store>(address->hosts, options),
                                 address->prefix, text);
#else
    break;
#endif
  case metadata_address::kind::etcd:
#if defined(FERRY_WITH_HTTP)
    return metadata_client::wrap(std::make_shared<etcd_metadata_store>(address->hosts, options),
                                 address->prefix, text);
#else
    break;
#endif
  case metadata_address::kind::redis:
#if defined(FERRY_WITH_REDIS)
    return metadata_client::wrap(std::make_shared<redis_metadata_store>(address->hosts.at(0), options),
                                 address->prefix, text);
#else
    return fail(errc::unsupported, "metadata: redis:// needs the ferry::redis component (hiredis)");
#endif
  }
  (void)options;
  return fail(errc::unsupported,
              "metadata: http:// and etcd:// need the ferry::http component (cpp-httplib)");
}

} // namespace ferry
