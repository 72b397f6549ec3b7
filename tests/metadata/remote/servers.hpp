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

/// A loopback port that nothing listens on right now (chosen at random).
inline int free_port() {
  static std::mt19937 rng(std::random_device{}());
  for (;;) {
    int port = std::uniform_int_distribution<int>(20000, 60000)(rng);
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ::sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = ::bind(fd, reinterpret_cast<::sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    if (ok)
      return port;
  }
}

/// A socket connected to 127.0.0.1:port, or -1.
inline int connect_to(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ::sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && ::connect(fd, reinterpret_cast<::sockaddr*>(&a), sizeof a) == 0)
    return fd;
  if (fd >= 0)
    ::close(fd);
  return -1;
}

/// Whether something accepts connections on 127.0.0.1:port.
inline bool accepts(int port) {
  int fd = connect_to(port);
  if (fd < 0)
    return false;
  ::close(fd);
  return true;
}

/// A server process: started with `argv`, ready once `port` accepts connections.
class server_process {
public:
  server_process() = default;
  server_process(const server_process&) = delete;
  server_process& operator=(const server_process&) = delete;
  ~server_process() { stop(); }

  void start(std::vector<std::string> argv, int port, const std::string& log) {
    REQUIRE_MESSAGE(std::filesystem::exists(argv[0]),
                    argv[0] << " is missing (bash scripts/install-deps installs it)");
    argv_ = std::move(argv);
    port_ = port;
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
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

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
    while (!accepts(port_)) {
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
  int peer_port = free_port();
  explicit etcd_server(std::string data = "data") {
    int port = free_port();
    std::string client = "http://127.0.0.1:" + std::to_string(port);
    std::string peer = "http://127.0.0.1:" + std::to_string(peer_port);
    process.start({"/usr/bin/etcd", "--name", "ferry-test", "--data-dir", (dir.path / data).string(),
                   "--listen-client-urls", client, "--advertise-client-urls", client, "--listen-peer-urls",
                   peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "ferry-test=" + peer,
                   "--log-level", "error"},
                  port, (dir.path / "etcd.log").string());
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
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      ::sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<std::uint16_t>(process.port()));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      std::string reply;
      if (::connect(fd, reinterpret_cast<::sockaddr*>(&a), sizeof a) == 0) {
        std::string body = R"({"key":"AA=="})";
        std::string request =
            "POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Connection: close\r\nContent-Length: " +
            std::to_string(body.size()) + "\r\n\r\n" + body;
        if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
          char buf[512];
          ssize_t n;
          while ((n = ::read(fd, buf, sizeof buf)) > 0)
            reply.append(buf, static_cast<std::size_t>(n));
        }
      }
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
  redis_server() {
    int port = free_port();
    process.start({"/usr/bin/redis-server", "--port", std::to_string(port), "--bind", "127.0.0.1", "--save",
                   "", "--appendonly", "no", "--dir", dir.path.string()},
                  port, (dir.path / "redis.log").string());
  }
  std::string connection(const std::string& prefix = "") const {
    return "redis://" + process.address() + (prefix.empty() ? "" : "/" + prefix);
  }
};

struct metad_server {
  temp_dir dir;
  server_process process;
  metad_server() {
    int port = free_port();
    process.start({FERRY_TEST_METAD, "--listen", "127.0.0.1:" + std::to_string(port)}, port,
                  (dir.path / "metad.log").string());
  }
  std::string connection(const std::string& prefix = "") const {
    return "http://" + process.address() + (prefix.empty() ? "" : "/" + prefix);
  }
};

} // namespace ferry_test
