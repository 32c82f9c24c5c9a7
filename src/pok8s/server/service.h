// `pok8s serve`: the HTTP API under /api/v1 (described by share/pok8s/openapi.json), the web
// builder's static files, authentication (tokens and sessions with CSRF protection), and the
// build queue with its runners, over one ServiceState.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/server/http.h"
#include "pok8s/util/file.h"

namespace pok8s::server {

struct Template {
  std::string name;    // [a-z0-9-]+
  std::string title;   // "Debian 12"
  std::string family;  // debian | ubuntu | alpine | fedora | opensuse | rocky | custom
  std::string base;    // a source name
};

// The base images the web builder offers out of the box.
std::vector<Template> default_templates();
// "NAME=SOURCE" (with an optional "TITLE|" before SOURCE): kInvalidInput naming the flag's value.
Template parse_template(std::string_view text);

struct ServiceOptions {
  std::string listen = "127.0.0.1:8080";  // HOST:PORT; port 0 picks a free one
  util::Path data_dir;                    // database, artifacts, key sets, work
  std::string database;                   // "" (SQLite in data_dir) | sqlite:PATH | postgres://…
  std::string store;                      // "" (data_dir/artifacts) | dir:PATH
  util::Path cache_dir;                   // the blob cache shared with the builds
  util::Path web_dir;                     // the web builder's files
  util::Path openapi_file;                // share/pok8s/openapi.json
  util::Path pok8s_binary;                // what runs builds
  std::string version;                    // pok8s's version, part of every build id
  int jobs = 1;                           // builds run by this process at once (0: workers only)
  std::chrono::seconds build_timeout{2 * 3600};
  std::chrono::seconds heartbeat_timeout{30};  // then a silent worker's build is requeued
  std::size_t max_body = 8u << 20;
  HttpLimits http_limits;      // connections, heads, deadlines (max_body is above)
  util::Path secret_key_file;  // "" : data_dir/secret.key (made on first start)
  // Global options for the builds' `pok8s` processes, e.g. the outbound network policy.
  std::vector<std::string> build_global_args;
  std::vector<Template> templates;  // replaces the defaults when not empty
  bool tls_verify = true;           // for the bases' registries
  bool allow_local_sources = false;
  bool new_login_token = false;               // print a fresh admin login token at start
  std::function<void(std::string_view)> log;  // the service's log lines
};

class Service {
 public:
  explicit Service(ServiceOptions options);
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // A one-time admin login token, made on first start (or with new_login_token).
  const std::optional<std::string>& login_token() const;
  // Binds the listening socket; returns the port.
  int bind();
  // Serves until stop() (from another thread or a signal handler's thread).
  void run();
  void stop();

  // Answers raw HTTP/1.1 request bytes as a connection from `client` would be answered, without
  // a socket (HttpServer::answer_bytes): the fuzz target drives whole requests through here.
  std::string answer_bytes(std::string_view raw, std::string_view client);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pok8s::server
