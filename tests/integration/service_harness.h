// `pok8s serve` for tests: started as a real process on 127.0.0.1 with its own data directory,
// and a small HTTP client for its API (bearer token or session cookie with CSRF).
#pragma once

#include <httplib.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "integration/registry_harness.h"
#include "pok8s/util/file.h"

namespace pok8s::testing {

struct HttpReply {
  int status = -1;
  std::string body;
  httplib::Headers headers;
  nlohmann::json json() const;
  std::string header(const std::string& name) const;
};

// An API client for one service. Starts anonymous; bearer() or login() authenticate it.
class ApiClient {
 public:
  explicit ApiClient(int port);
  void bearer(const std::string& token);
  // POST /api/v1/session with `token`; keeps the cookie and the CSRF token for later requests.
  HttpReply login(const std::string& token);
  void forget_csrf() { csrf_.clear(); }

  HttpReply get(const std::string& path, httplib::Headers headers = {});
  HttpReply post(const std::string& path, const std::string& body, httplib::Headers headers = {});
  HttpReply post(const std::string& path, const nlohmann::json& body) {
    return post(path, body.dump());
  }
  HttpReply del(const std::string& path);
  HttpReply patch(const std::string& path, const nlohmann::json& body);
  // Follows the SSE stream of a build until it ends (or `timeout`): the events in order.
  std::vector<std::pair<std::string, nlohmann::json>> events(const std::string& build_id,
                                                             int timeout_s);

 private:
  httplib::Headers headers(httplib::Headers extra) const;
  int port_;
  std::string bearer_, cookie_, csrf_;
};

class TestService {
 public:
  // Starts `pok8s --cache CACHE --json serve --listen 127.0.0.1:0 --data DATA ARGS...` and waits
  // until it listens. Throws with its log if it does not.
  // The registry and file servers of the tests are on loopback, so the service may fetch from
  // 127.0.0.0/8 (--allow-network) unless `allow_loopback` is false.
  TestService(const util::Path& data_dir, const util::Path& cache_dir,
              std::vector<std::string> args = {}, bool allow_loopback = true);
  int port() const { return port_; }
  pid_t pid() const { return process_.pid(); }
  // The one-time admin login token, read from the file the service names in its output.
  const std::string& login_token() const { return login_token_; }
  const util::Path& login_token_file() const { return login_token_file_; }
  std::string log() const;
  // SIGKILL, like a crash: nothing is cleaned up.
  void kill();

 private:
  util::Path log_file_;
  std::size_t log_start_ = 0;  // the log is appended to across restarts; this run's part
  ChildProcess process_;
  int port_ = 0;
  std::string login_token_;
  util::Path login_token_file_;
};

// $XDG_CACHE_HOME/pok8s-test/NAME: a blob cache kept between runs, so the conversion of the
// Debian base (the slow part of these tests) happens once per machine.
util::Path test_cache_dir(const std::string& name);

// The bases the service tests build from, in `registry`: the Debian fixture `tar` imported into
// the OCI layout `layout` and pushed as debian:12, and, when `version` is given, converted with
// it and pushed as pok8s/debian:VERSION. Throws with pok8s's output when a step fails.
void push_debian_bases(const std::string& tar, const TestRegistry& registry,
                       const util::Path& layout, const util::Path& cache,
                       const std::string& version = "");

// Waits until build `id` is in one of `states` (or `timeout_s` passes); returns the build.
nlohmann::json wait_for_build(ApiClient& api, const std::string& id,
                              const std::vector<std::string>& states, int timeout_s);

}  // namespace pok8s::testing
