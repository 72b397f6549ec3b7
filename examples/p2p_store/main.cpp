// ferry-p2p-demo: one publisher and N fetchers, each a process of its own with its own loopback address
// (127.0.0.2 for the publisher, 127.0.0.3 ... for the fetchers: separate "hosts"), sharing a payload through
// the P2P store (p2p_store.hpp). Every fetcher pulls every shard from a peer that already holds it, checks
// it, and serves it to the others from then on. At the end each fetcher checks every byte of its copy.
//
//   ferry-p2p-demo --peers 4 --size 256M [--shard-size 4M] [--metadata CONN] [--json] [--kill-holder]
//
// Without --metadata the demo serves the metadata itself (ferry-metad's service, embedded, on 127.0.0.1);
// with it, any shared service: http://HOST:PORT (ferry-metad), etcd://HOST:PORT, redis://HOST:PORT.
// --kill-holder lets fetcher 0 finish first, starts the others, and kills fetcher 0 (SIGKILL) while they pull
// from it: their fetches must finish anyway, from the remaining holders.
// Exit status: 0 when every surviving copy matched byte for byte, 1 otherwise, 2 for a bad command line.
#include "p2p_store.hpp"

#include <ferry/core.hpp>
#include <ferry/io.hpp>
#include <ferry/metadata/connect_metadata.hpp>
#include <ferry/metadata/http/metadata_service.hpp>
#include <ferry/transfer.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <iostream>
#include <map>
#include <optional>
#include <poll.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace {

using engine_type = ferry::transfer_engine<ferry::tcp_transport>;

struct options {
  std::string role = "coordinator";
  unsigned peers = 4;
  std::uint64_t size = 256ull << 20;
  std::uint64_t shard_size = 4ull << 20;
  std::string metadata;
  bool json = false;
  bool kill_holder = false;
  double timeout = 600;
  // publisher / fetcher
  std::string name;
  std::string listen;
  std::string payload = "demo";
  std::uint64_t seed = 0x5032504465756d6full;
};

std::uint64_t pattern_word(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t x = seed ^ (i * 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
void fill(std::vector<std::byte>& b, std::uint64_t seed) {
  for (std::size_t i = 0; i + 8 <= b.size(); i += 8) {
    std::uint64_t w = pattern_word(seed, i / 8);
    std::memcpy(b.data() + i, &w, 8);
  }
  for (std::size_t i = b.size() / 8 * 8; i < b.size(); ++i)
    b[i] = static_cast<std::byte>(pattern_word(seed, i / 8) >> (8 * (i % 8)));
}
bool matches(const std::vector<std::byte>& b, std::uint64_t seed) {
  std::vector<std::byte> expected(b.size());
  fill(expected, seed);
  return expected == b;
}

// Waits until the coordinator closes our stdin (then the process may end).
void wait_for_eof() {
  char c;
  while (::read(0, &c, 1) > 0) {
  }
}

// ---- the peers ----

int run_peer(const options& o) {
  auto meta = ferry::connect_metadata(o.metadata);
  if (!meta) {
    std::fprintf(stderr, "%s: %s\n", o.name.c_str(), meta.error().message().c_str());
    return 1;
  }
  ferry::io::io_context ctx;
  engine_type engine(ctx, {.name = o.name, .listen = o.listen});
  if (auto started = engine.start(); !started) {
    std::fprintf(stderr, "%s: cannot listen on %s: %s\n", o.name.c_str(), o.listen.c_str(),
                 started.error().message().c_str());
    return 1;
  }
  engine.use_metadata(*meta);
  engine.run_in_background();
  p2p::store<engine_type> store(engine, *meta);
  std::vector<std::byte> buffer(o.size);
  int code = 0;
  if (o.role == "publisher") {
    fill(buffer, o.seed);
    auto m = ferry::sync_wait(store.publish(o.payload, {std::span<const std::byte>(buffer)}, o.shard_size));
    if (!m) {
      std::fprintf(stderr, "publisher: %s\n", m.error().message().c_str());
      std::printf("failed %s\n", m.error().message().c_str());
      std::fflush(stdout);
      ferry::sync_wait(engine.shutdown());
      return 1;
    } else {
      std::printf("ready %zu shards\n", m->shard_count());
      std::fflush(stdout);
    }
  } else {
    p2p::fetch_options fo;
    fo.on_shard = [](std::size_t done, std::size_t total) {
      std::printf("progress %zu %zu\n", done, total);
      std::fflush(stdout);
    };
    auto report = ferry::sync_wait(store.fetch(o.payload, {std::span<std::byte>(buffer)}, fo));
    nlohmann::json j{{"peer", o.name}};
    if (!report) {
      j["error"] = report.error().message();
      j["verified"] = false;
      code = 1;
    } else {
      j["bytes"] = report->bytes;
      j["seconds"] = report->seconds;
      j["retries"] = report->retries;
      j["pulled_from"] = report->pulled_from;
      j["verified"] = matches(buffer, o.seed); // every byte, independently of the shard checksums
    }
    std::printf("result %s\n", j.dump().c_str());
    std::fflush(stdout);
  }
  wait_for_eof(); // keep serving the copy to the other peers until the demo ends
  ferry::sync_wait(engine.shutdown());
  return code;
}

// ---- the coordinator ----

struct child {
  pid_t pid = -1;
  int in = -1;  // its stdin (we write end)
  int out = -1; // its stdout (we read end)
  std::string name;
  std::string pending;
  std::optional<nlohmann::json> result;
  std::size_t progress = 0, total = 0;
  bool ready = false;
  bool failed = false;
};

child spawn(const std::vector<std::string>& args, std::string name) {
  int to_child[2], from_child[2];
  // why: close-on-exec, or every later child would inherit our ends and no child would ever see EOF
  if (::pipe2(to_child, O_CLOEXEC) != 0 || ::pipe2(from_child, O_CLOEXEC) != 0)
    throw std::runtime_error("pipe failed");
  pid_t pid = ::fork();
  if (pid < 0)
    throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::dup2(to_child[0], 0);
    ::dup2(from_child[1], 1);
    ::close(to_child[0]);
    ::close(to_child[1]);
    ::close(from_child[0]);
    ::close(from_child[1]);
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv("/proc/self/exe", argv.data());
    ::_exit(127);
  }
  ::close(to_child[0]);
  ::close(from_child[1]);
  child c;
  c.pid = pid;
  c.in = to_child[1];
  c.out = from_child[0];
  c.name = std::move(name);
  return c;
}

// Reads what the children printed; handles whole lines. Returns false once every child's output ended.
bool pump(std::vector<child>& children, int timeout_ms) {
  std::vector<pollfd> fds;
  for (auto& c : children)
    if (c.out >= 0)
      fds.push_back({c.out, POLLIN, 0});
  if (fds.empty())
    return false;
  ::poll(fds.data(), fds.size(), timeout_ms);
  for (auto& c : children) {
    if (c.out < 0)
      continue;
    for (auto& f : fds)
      if (f.fd == c.out && (f.revents & (POLLIN | POLLHUP | POLLERR))) {
        char buf[4096];
        auto n = ::read(c.out, buf, sizeof buf);
        if (n <= 0) {
          ::close(c.out);
          c.out = -1;
          break;
        }
        c.pending.append(buf, static_cast<std::size_t>(n));
        std::size_t nl;
        while ((nl = c.pending.find('\n')) != std::string::npos) {
          std::string line = c.pending.substr(0, nl);
          c.pending.erase(0, nl + 1);
          if (line.starts_with("ready"))
            c.ready = true;
          else if (line.starts_with("failed"))
            c.failed = true;
          else if (line.starts_with("progress "))
            std::sscanf(line.c_str(), "progress %zu %zu", &c.progress, &c.total);
          else if (line.starts_with("result "))
            c.result = nlohmann::json::parse(line.substr(7), nullptr, false);
        }
      }
  }
  return true;
}

void finish(child& c, bool kill) {
  if (c.pid <= 0)
    return;
  if (kill)
    ::kill(c.pid, SIGKILL);
  if (c.in >= 0)
    ::close(c.in);
  c.in = -1;
  int status;
  ::waitpid(c.pid, &status, 0);
  c.pid = -1;
  if (c.out >= 0)
    ::close(c.out);
  c.out = -1;
}

int run_coordinator(options o) {
  std::optional<ferry::metadata_service> embedded;
  if (o.metadata.empty()) {
    embedded.emplace();
    auto port = embedded->start("127.0.0.1", 0);
    if (!port) {
      std::fprintf(stderr, "ferry-p2p-demo: %s\n", port.error().message().c_str());
      return 1;
    }
    o.metadata = "http://127.0.0.1:" + std::to_string(*port);
  } else if (o.metadata.starts_with("memory") || o.metadata == "p2p") {
    std::fprintf(
        stderr, "ferry-p2p-demo: the peers are processes: --metadata must be http://, etcd:// or redis://\n");
    return 2;
  }
  // why: a cluster prefix of its own, so that runs sharing a server (etcd, say) never see each other's keys
  std::string conn = o.metadata + "/p2p-demo-" + std::to_string(::getpid());
  if (auto a = ferry::metadata_address::parse(o.metadata); a && !a->prefix.empty())
    conn = o.metadata; // the caller chose the prefix
  auto common = [&](std::string role, std::string name, std::string listen) {
    return std::vector<std::string>{"ferry-p2p-demo",
                                    "--role",
                                    role,
                                    "--name",
                                    name,
                                    "--listen",
                                    listen,
                                    "--metadata",
                                    conn,
                                    "--size",
                                    std::to_string(o.size),
                                    "--shard-size",
                                    std::to_string(o.shard_size),
                                    "--payload",
                                    o.payload};
  };
  std::vector<child> publisher;
  publisher.push_back(spawn(common("publisher", "origin", "127.0.0.2:0"), "origin"));
  // why: every wait below ends by --timeout at the latest, whatever a peer does
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                             std::chrono::duration<double>(o.timeout));
  auto in_time = [&] { return std::chrono::steady_clock::now() < deadline; };
  while (!publisher[0].ready && !publisher[0].failed && in_time() && pump(publisher, 100)) {
  }
  if (!publisher[0].ready) {
    std::fprintf(stderr, "ferry-p2p-demo: the publisher did not start\n");
    finish(publisher[0], true);
    return 1;
  }
  auto t0 = std::chrono::steady_clock::now();
  std::vector<child> fetchers;
  auto start_fetcher = [&](unsigned i) {
    std::string name = "peer-" + std::to_string(i);
    fetchers.push_back(spawn(common("fetcher", name, "127.0.0." + std::to_string(3 + i) + ":0"), name));
  };
  std::vector<std::string> killed;
  if (o.kill_holder && o.peers >= 2) {
    start_fetcher(0);
    while (!fetchers[0].result && in_time() && pump(fetchers, 100)) {
    }
    for (unsigned i = 1; i < o.peers; ++i)
      start_fetcher(i);
    // peer-0 holds every shard and is the least used holder: the others pull from it first. Kill it once
    // they are under way.
    bool under_way = false;
    while (!under_way && in_time() && pump(fetchers, 20)) {
      for (unsigned i = 1; i < o.peers; ++i)
        under_way = under_way || fetchers[i].progress * 10 >= std::max<std::size_t>(fetchers[i].total, 1) ||
                    fetchers[i].result.has_value(); // a fetcher that ended (even failing) ends the wait
    }
    ::kill(fetchers[0].pid, SIGKILL);
    killed.push_back(fetchers[0].name);
  } else {
    for (unsigned i = 0; i < o.peers; ++i)
      start_fetcher(i);
  }
  auto all_done = [&] {
    for (auto& f : fetchers)
      if (!f.result && !(std::find(killed.begin(), killed.end(), f.name) != killed.end()) && f.out >= 0)
        return false;
    return true;
  };
  while (!all_done() && in_time() && pump(fetchers, 100)) {
  }
  if (!in_time())
    std::fprintf(stderr, "ferry-p2p-demo: gave up after --timeout %.0f s\n", o.timeout);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  bool verified = true;
  std::uint64_t bytes = 0;
  unsigned retries = 0;
  std::map<std::string, std::uint64_t> served;
  nlohmann::json per_peer = nlohmann::json::array();
  for (auto& f : fetchers) {
    if (std::find(killed.begin(), killed.end(), f.name) != killed.end())
      continue;
    if (!f.result || f.result->is_discarded() || !f.result->value("verified", false)) {
      verified = false;
      std::fprintf(stderr, "ferry-p2p-demo: %s: %s\n", f.name.c_str(),
                   f.result && f.result->contains("error") ? (*f.result)["error"].get<std::string>().c_str()
                                                           : "no verified copy");
      continue;
    }
    bytes += (*f.result)["bytes"].get<std::uint64_t>();
    retries += (*f.result)["retries"].get<unsigned>();
    for (auto& [from, n] : (*f.result)["pulled_from"].items())
      served[from] += n.get<std::uint64_t>();
    per_peer.push_back(*f.result);
  }
  for (auto& f : fetchers)
    finish(f, false);
  finish(publisher[0], false);

  double gbps = seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0;
  if (o.json) {
    nlohmann::json j{{"peers", o.peers},       {"bytes", bytes},          {"seconds", seconds},
                     {"verified", verified},   {"payload_bytes", o.size}, {"shard_size", o.shard_size},
                     {"aggregate_gbps", gbps}, {"served", served},        {"retries", retries},
                     {"killed", killed},       {"metadata", o.metadata},  {"fetchers", per_peer}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("ferry-p2p-demo: %u peers fetched a %llu-byte payload in %llu-byte shards through %s\n",
                o.peers, static_cast<unsigned long long>(o.size),
                static_cast<unsigned long long>(o.shard_size), o.metadata.c_str());
    std::printf("  %llu bytes in %.3f s: %.2f GB/s aggregate, %u shard pulls retried%s\n",
                static_cast<unsigned long long>(bytes), seconds, gbps, retries,
                killed.empty() ? "" : (", " + killed[0] + " killed mid-fetch").c_str());
    for (auto& [who, n] : served)
      std::printf("  %-10s served %llu bytes\n", who.c_str(), static_cast<unsigned long long>(n));
    std::printf("  %s\n", verified ? "every byte of every copy verified" : "VERIFICATION FAILED");
  }
  return verified ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
  options o;
  CLI::App app{"ferry-p2p-demo: a payload published once and fetched by many peers, each becoming a source.",
               "ferry-p2p-demo"};
  app.add_option("--peers", o.peers, "fetching processes")
      ->check(CLI::Range(1u, 200u))
      ->capture_default_str();
  app.add_option("--size", o.size, "payload bytes (suffixes K, M, G)")
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 36))
      ->capture_default_str();
  app.add_option("--shard-size", o.shard_size, "shard bytes (suffixes K, M, G)")
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(std::uint64_t{4096}, std::uint64_t{1} << 32))
      ->capture_default_str();
  app.add_option("--metadata", o.metadata, "http://, etcd:// or redis:// (default: an embedded ferry-metad)");
  app.add_flag("--json", o.json, "print one JSON object");
  app.add_flag("--kill-holder", o.kill_holder, "kill a holder (SIGKILL) while the others pull from it");
  app.add_option("--timeout", o.timeout, "seconds the whole demo may take")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--role", o.role)->group("")->check(CLI::IsMember({"coordinator", "publisher", "fetcher"}));
  app.add_option("--name", o.name)->group("");
  app.add_option("--listen", o.listen)->group("");
  app.add_option("--payload", o.payload)->group("");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  try {
    return o.role == "coordinator" ? run_coordinator(o) : run_peer(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry-p2p-demo: %s\n", e.what());
    return 1;
  }
}
