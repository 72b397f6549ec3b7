#pragma once
/// `ferry::metadata_service`: the small HTTP metadata server (what `ferry-metad` runs), embeddable in any
/// process: a map with leases and compare-and-set behind the protocol of `ferry/metadata/metad_protocol.hpp`.
/// It serves on threads of its own (cpp-httplib).
///
///   ferry::metadata_service service;
///   auto port = service.start("127.0.0.1", 0);   // port 0: any free port
///   ferry::http_metadata_store meta({"127.0.0.1:" + std::to_string(*port)});

#include "ferry/core/error.hpp"
#include "ferry/core/result.hpp"
#include "ferry/core/sync_wait.hpp"
#include "ferry/metadata/memory_metadata_store.hpp"
#include "ferry/metadata/metad_protocol.hpp"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>

namespace ferry {

class metadata_service {
public:
  metadata_service() = default;
  metadata_service(const metadata_service&) = delete;
  metadata_service& operator=(const metadata_service&) = delete;
  ~metadata_service() { stop(); }

  /// Binds `host:port` (0: any free port) and serves in the background; the port it serves on.
  result<std::uint16_t> start(const std::string& host, std::uint16_t port) {
    if (thread_.joinable())
      return fail(errc::invalid_state, "metadata_service: already serving");
    server_ = std::make_unique<httplib::Server>();
    // why: a request is read whole before it is decoded; bound it (values are at most 64 MiB)
    server_->set_payload_max_length(std::size_t(65) << 20);
    // why: that bound holds for a body of a stated length only; cpp-httplib 0.11 reads a chunked body
    // without one. Such a request is answered before its body is read. One request per connection (ferry's
    // clients make a connection per request anyway): the body left unread is then never taken for the next
    // request, as cpp-httplib keeps a connection open whatever the answer says.
    server_->set_keep_alive_max_count(1);
    server_->set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!req.has_header("Transfer-Encoding"))
        return httplib::Server::HandlerResponse::Unhandled;
      res.status = 411;
      res.set_content(metad::encode_error("ferry-metad: a request must state its length (Content-Length), "
                                          "not be chunked"),
                      "application/json");
      return httplib::Server::HandlerResponse::Handled;
    });
    server_->Post(R"(/v1/[a-z_]+)",
                  [this](const httplib::Request& req, httplib::Response& res) { serve(req, res); });
    int bound = port == 0 ? server_->bind_to_any_port(host) : (server_->bind_to_port(host, port) ? port : -1);
    if (bound <= 0)
      return fail(errc::peer_unreachable,
                  "metadata_service: cannot listen on " + host + ":" + std::to_string(port));
    listening_done_ = false;
    thread_ = std::thread([this] {
      server_->listen_after_bind();
      listening_done_ = true;
    });
    // why: the socket is bound and listening already (connections queue); wait for the accept loop anyway so
    // that stop() right after start() finds it running
    while (!server_->is_running() && !listening_done_)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return static_cast<std::uint16_t>(bound);
  }

  /// Stops serving (requests in progress finish first).
  void stop() {
    if (!thread_.joinable())
      return;
    server_->stop();
    thread_.join();
  }

  /// The store behind the service (to inspect it in process).
  memory_metadata_store& store() noexcept { return store_; }

private:
  void serve(const httplib::Request& req, httplib::Response& res) {
    auto r = metad::decode_request(req.path, req.body);
    if (!r) {
      res.status = 400;
      res.set_content(metad::encode_error(r.error().message()), "application/json");
      return;
    }
    nlohmann::json out = nlohmann::json::object();
    error e;
    switch (r->op) {
    case metad::operation::get: {
      auto v = sync_wait(store_.get(r->key));
      out["value"] = *v ? nlohmann::json(**v) : nlohmann::json(nullptr);
      break;
    }
    case metad::operation::put: {
      auto done = r->lease != 0 ? sync_wait(store_.put(r->key, *r->value, r->lease))
                                : sync_wait(store_.put(r->key, *r->value));
      if (!done)
        e = done.error();
      break;
    }
    case metad::operation::remove:
      (void)sync_wait(store_.remove(r->key));
      break;
    case metad::operation::list: {
      auto entries = sync_wait(store_.list(r->key));
      out["entries"] = nlohmann::json::array();
      for (auto& [k, v] : *entries)
        out["entries"].push_back({k, v});
      break;
    }
    case metad::operation::cas: {
      auto swapped = sync_wait(store_.compare_and_set(r->key, r->expected, *r->value));
      out["swapped"] = *swapped;
      break;
    }
    case metad::operation::grant: {
      auto lease = sync_wait(store_.grant(std::chrono::milliseconds(r->ttl_ms)));
      out["lease"] = *lease;
      break;
    }
    case metad::operation::keep_alive: {
      auto alive = sync_wait(store_.keep_alive(r->lease));
      if (!alive)
        e = alive.error();
      break;
    }
    case metad::operation::revoke:
      (void)sync_wait(store_.revoke(r->lease));
      break;
    }
    if (e) {
      res.status = e == errc::not_found ? 404 : 400;
      res.set_content(metad::encode_error(e.message()), "application/json");
      return;
    }
    res.set_content(out.dump(), "application/json");
  }

  memory_metadata_store store_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::atomic<bool> listening_done_{false};
};

} // namespace ferry
