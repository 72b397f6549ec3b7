#pragma once
// Real metadata servers for the tests: etcd, redis-server and ferry-metad, each started as a process on a
// random loopback port (with its own temporary data directory), waited for, and stopped (SIGKILL) at the end.

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <netinet/in.h>
#include <random>
#include <string>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace ferry_test {

/// A socket address for `host` (an IPv4 or an IPv6 address, without brackets) and `port`; its length.
inline ::socklen_t socket_address(const std::string& host, int port, ::sockaddr_storage& out) {
  out = {};
  if (host.find(':') != std::string::npos) {
    auto* a = reinterpret_cast<::sockaddr_in6*>(&out);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<std::uint16_t>(port));
    REQUIRE(::inet_pton(AF_INET6, host.c_str(), &a->sin6_addr) == 1);
    return sizeof *a;
  }
  auto* a = reinterpret_cast<::sockaddr_in*>(&out);
  a->sin_family = AF_INET;
  a->sin_port = htons(static_cast<std::uint16_t>(port));
  REQUIRE(::inet_pton(AF_INET, host.c_str(), &a->sin_addr) == 1);
  return sizeof *a;
}

/// Whether this host can bind `host` (IPv6 may be off on a machine).
inline bool can_bind(const std::string& host) {
  ::sockaddr_storage a;
  ::socklen_t len = socket_address(host, 0, a);
  int fd = ::socket(a.ss_family, SOCK_STREAM, 0);
  bool ok = fd >= 0 && ::bind(fd, reinterpret_cast<::sockaddr*>(&a), len) == 0;
  if (fd >= 0)
    ::close(fd);
  return ok;
}

/// A port of `host` that nothing listens on right now (chosen at random).
inline int free_port(const std::string& host = "127.0.0.1") {
  static std::mt19937 rng(std::random_device{}());
  for (;;) {
    int port = std::uniform_int_distribution<int>(20000, 60000)(rng);
    ::sockaddr_storage a;
    ::socklen_t len = socket_address(host, port, a);
    int fd = ::socket(a.ss_family, SOCK_STREAM, 0);
    bool ok = ::bind(fd, reinterpret_cast<::sockaddr*>(&a), len) == 0;
    ::close(fd);
    if (ok)
      return port;
  }
}

/// A socket connected to host:port (127.0.0.1 unless named), or -1.
inline int connect_to(int port, const std::string& host = "127.0.0.1") {
  ::sockaddr_storage a;
  ::socklen_t len = socket_address(host, port, a);
  int fd = ::socket(a.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && ::connect(fd, reinterpret_cast<::sockaddr*>(&a), len) == 0)
    return fd;
  if (fd >= 0)
    ::close(fd);
  return -1;
}

/// Whether something accepts connections on host:port.
inline bool accepts(int port, const std::string& host = "127.0.0.1") {
  int fd = connect_to(port, host);
  if (fd < 0)
    return false;
  ::close(fd);
  return true;
}

/// "host:port", an IPv6 host in brackets.
inline std::string host_and_port(const std::string& host, int port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

/// A server process: started with `argv`, ready once `port` accepts connections.
class server_process {
public:
  server_process() = default;
  server_process(const server_process&) = delete;
  server_process& operator=(const server_process&) = delete;
  ~server_process() { stop(); }

  void start(std::vector<std::string> argv, int port, const std::string& log,
             const std::string& host = "127.0.0.1") {
    REQUIRE_MESSAGE(std::filesystem::exists(argv[0]),
                    argv[0] << " is missing (bash scripts/install-deps installs it)");
    argv_ = std::move(argv);
    port_ = port;
    host_ = host;
    log_ = log;
    launch();
  }
  /// Starts it again with the same arguments (same port, same data directory).
  void restart() { launch(); }
  /// SIGKILL, as a crash would.
  void stop() {
    if (pid_ <= 0)
      return;
    ::kill(pid_, SIGKILL);
    int status;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  int port() const noexcept { return port_; }
  const std::string& host() const noexcept { return host_; }
  std::string address() const { return host_and_port(host_, port_); }

private:
  void launch() {
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      std::FILE* out = std::fopen(log_.c_str(), "a");
      if (out) {
        ::dup2(::fileno(out), 1);
        ::dup2(::fileno(out), 2);
      }
      std::vector<char*> args;
      for (auto& a : argv_)
        args.push_back(a.data());
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!accepts(port_, host_)) {
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        FAIL(argv_[0] << " exited before it served; its log: " << log_);
      }
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until, argv_[0] << " did not serve within 20 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  std::vector<std::string> argv_;
  int port_ = 0;
  std::string host_;
  std::string log_;
  pid_t pid_ = -1;
};

/// A temporary directory, removed at the end.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    std::string t = (std::filesystem::temp_directory_path() / "ferry-metadata-XXXXXX").string();
    REQUIRE(::mkdtemp(t.data()) != nullptr);
    path = t;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

/// etcd on random loopback ports, its data in a directory of its own.
struct etcd_server {
  temp_dir dir;
  server_process process;
  int peer_port;
  /// On `host` (an IPv4 or IPv6 loopback address, without brackets).
  explicit etcd_server(std::string data = "data", const std::string& host = "127.0.0.1")
      : peer_port(free_port(host)) {
    int port = free_port(host);
    std::string client = "http://" + host_and_port(host, port);
    std::string peer = "http://" + host_and_port(host, peer_port);
    process.start({"/usr/bin/etcd", "--name", "ferry-test", "--data-dir", (dir.path / data).string(),
                   "--listen-client-urls", client, "--advertise-client-urls", client, "--listen-peer-urls",
                   peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "ferry-test=" + peer,
                   "--log-level", "error"},
                  port, (dir.path / "etcd.log").string(), host);
    wait_until_serving();
  }
  std::string connection(const std::string& prefix = "") const {
    return "etcd://" + process.address() + (prefix.empty() ? "" : "/" + prefix);
  }
  /// Loses everything: SIGKILL, a fresh data directory, started again on the same ports.
  void restart_empty() {
    process.stop();
    std::filesystem::remove_all(dir.path / "data");
    process.restart();
    wait_until_serving();
  }
  /// etcd accepts connections before it has elected itself leader; wait until it answers a read.
  void wait_until_serving() {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    for (;;) {
      int fd = connect_to(process.port(), process.host());
      std::string reply;
      if (fd >= 0) {
        std::string body = R"({"key":"AA=="})";
        std::string request = "POST /v3/kv/range HTTP/1.1\r\nHost: " + process.address() +
                              "\r\nContent-Type: application/json\r\n"
                              "Connection: close\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body;
        if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
          char buf[512];
          ssize_t n;
          while ((n = ::read(fd, buf, sizeof buf)) > 0)
            reply.append(buf, static_cast<std::size_t>(n));
        }
      }
      if (fd >= 0)
        ::close(fd);
      if (reply.starts_with("HTTP/1.1 200") && reply.find("\"revision\"") != std::string::npos)
        return;
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < until, "etcd did not serve reads within 20 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
};

struct redis_server {
  temp_dir dir;
  server_process process;
  explicit redis_server(const std::string& host = "127.0.0.1") {
    int port = free_port(host);
    process.start({"/usr/bin/redis-server", "--port", std::to_string(port), "--bind", host, "--save", "",
                   "--appendonly", "no", "--dir", dir.path.string()},
                  port, (dir.path / "redis.log").string(), host);
  }
  std::string connection(const std::string& prefix = "") const {
    return "redis://" + process.address() + (prefix.empty() ? "" : "/" + prefix);
  }
};

struct metad_server {
  temp_dir dir;
  server_process process;
  explicit metad_server(const std::string& host = "127.0.0.1") {
    int port = free_port(host);
    process.start({FERRY_TEST_METAD, "--listen", host_and_port(host, port)}, port,
                  (dir.path / "metad.log").string(), host);
  }
  std::string connection(const std::string& prefix = "") const {
    return "http://" + process.address() + (prefix.empty() ? "" : "/" + prefix);
  }
};

} // namespace ferry_test
