#pragma once
/// `ferry::metadata_address`: a metadata service's connection string, taken apart.
///
///   memory://[NAME][/PREFIX]                      this process (engines naming the same NAME share it)
///   http://HOST:PORT[/PREFIX]                      a ferry-metad server
///   etcd://HOST:PORT[,HOST:PORT...][/PREFIX]       etcd v3 (tried in order until one answers)
///   redis://HOST:PORT[/PREFIX]                     Redis
///   p2p                                            no service: segments are opened as HOST:PORT directly
///
/// HOST is a name, an IPv4 address or an IPv6 address in brackets ("[::1]:7100"). PREFIX names a cluster:
/// every key is stored under "PREFIX/", so clusters sharing a server never see each other's keys.
///
///   auto a = ferry::metadata_address::parse("etcd://127.0.0.1:2379,127.0.0.1:2381/cluster-a");

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/metadata/host_port.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace ferry {

struct metadata_address {
  enum class kind { memory, http, etcd, redis, p2p };

  kind scheme = kind::memory;
  /// "host:port" entries (memory: at most one entry, the instance's name, possibly empty).
  std::vector<std::string> hosts;
  /// The cluster prefix, ending in '/', or empty.
  std::string prefix;

  static result<metadata_address> parse(std::string_view text) {
    metadata_address a;
    if (text == "p2p" || text == "p2p://") {
      a.scheme = kind::p2p;
      return a;
    }
    auto sep = text.find("://");
    if (sep == std::string_view::npos)
      return fail(errc::invalid_argument, "metadata: '" + std::string(text) +
                                              "' is not SCHEME://... (memory, http, etcd, redis) or p2p");
    std::string_view scheme = text.substr(0, sep), rest = text.substr(sep + 3);
    if (scheme == "memory")
      a.scheme = kind::memory;
    else if (scheme == "http")
      a.scheme = kind::http;
    else if (scheme == "etcd")
      a.scheme = kind::etcd;
    else if (scheme == "redis")
      a.scheme = kind::redis;
    else
      return fail(errc::invalid_argument,
                  "metadata: unknown scheme '" + std::string(scheme) + "' (memory, http, etcd, redis, p2p)");
    auto slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    if (slash != std::string_view::npos) {
      std::string_view prefix = rest.substr(slash + 1);
      while (!prefix.empty() && prefix.back() == '/')
        prefix.remove_suffix(1);
      if (!prefix.empty())
        a.prefix = std::string(prefix) + "/";
    }
    if (a.scheme == kind::memory) {
      a.hosts.emplace_back(authority);
      return a;
    }
    while (!authority.empty()) {
      auto comma = authority.find(',');
      std::string_view host = authority.substr(0, comma);
      auto parsed = host_port::parse(host);
      if (parsed && parsed->port == 0)
        parsed = fail(errc::invalid_argument, "'" + std::string(host) + "' is not HOST:PORT: port 0");
      if (!parsed)
        return fail(errc::invalid_argument,
                    "metadata: in '" + std::string(text) + "': " + std::string(parsed.error().what()));
      a.hosts.emplace_back(host);
      authority = comma == std::string_view::npos ? std::string_view() : authority.substr(comma + 1);
    }
    if (a.hosts.empty())
      return fail(errc::invalid_argument, "metadata: '" + std::string(text) + "' names no HOST:PORT");
    if (a.scheme != kind::etcd && a.hosts.size() > 1)
      return fail(errc::invalid_argument,
                  "metadata: only etcd:// takes several endpoints ('" + std::string(text) + "')");
    return a;
  }
};

} // namespace ferry
