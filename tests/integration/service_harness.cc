// The service test harness.
#include "integration/service_harness.h"

#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <thread>

#include "e2e/pok8s_cli.h"
#include "pok8s/util/error.h"

namespace pok8s::testing {

nlohmann::json HttpReply::json() const {
  return nlohmann::json::parse(body, nullptr, false);
}

std::string HttpReply::header(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

ApiClient::ApiClient(int port) : port_(port) {
  // A server may answer (413, 431) and close before a large request is sent whole; the write
  // into the closed connection must fail, not kill the test with SIGPIPE.
  static const bool ignored = [] {
    std::signal(SIGPIPE, SIG_IGN);
    return true;
  }();
  (void)ignored;
}

void ApiClient::bearer(const std::string& token) {
  bearer_ = token;
}

httplib::Headers ApiClient::headers(httplib::Headers extra) const {
  if (!bearer_.empty()) extra.emplace("Authorization", "Bearer " + bearer_);
  if (!cookie_.empty()) extra.emplace("Cookie", "pok8s_session=" + cookie_);
  if (!csrf_.empty()) extra.emplace("X-CSRF-Token", csrf_);
  return extra;
}

static HttpReply reply(const httplib::Result& r) {
  HttpReply out;
  if (!r) return out;
  out.status = r->status;
  out.body = r->body;
  out.headers = r->headers;
  return out;
}

HttpReply ApiClient::login(const std::string& token) {
  httplib::Client c("127.0.0.1", port_);
  auto r =
      reply(c.Post("/api/v1/session", nlohmann::json{{"token", token}}.dump(), "application/json"));
  if (r.status == 200) {
    std::string set = r.header("Set-Cookie");
    auto start = set.find('=') + 1;
    cookie_ = set.substr(start, set.find(';') - start);
    csrf_ = r.json().value("csrfToken", "");
  }
  return r;
}

HttpReply ApiClient::get(const std::string& path, httplib::Headers extra) {
  httplib::Client c("127.0.0.1", port_);
  c.set_read_timeout(120, 0);
  return reply(c.Get(path, headers(std::move(extra))));
}

HttpReply ApiClient::post(const std::string& path, const std::string& body,
                          httplib::Headers extra) {
  httplib::Client c("127.0.0.1", port_);
  c.set_read_timeout(120, 0);
  return reply(c.Post(path, headers(std::move(extra)), body, "application/json"));
}

HttpReply ApiClient::del(const std::string& path) {
  httplib::Client c("127.0.0.1", port_);
  return reply(c.Delete(path, headers({})));
}

HttpReply ApiClient::patch(const std::string& path, const nlohmann::json& body) {
  httplib::Client c("127.0.0.1", port_);
  return reply(c.Patch(path, headers({}), body.dump(), "application/json"));
}

std::vector<std::pair<std::string, nlohmann::json>> ApiClient::events(const std::string& build_id,
                                                                      int timeout_s) {
  std::vector<std::pair<std::string, nlohmann::json>> out;
  httplib::Client c("127.0.0.1", port_);
  c.set_read_timeout(timeout_s, 0);
  std::string buffer;
  c.Get(fmt::format("/api/v1/builds/{}/events", build_id), headers({}),
        [&](const char* data, std::size_t n) {
          buffer.append(data, n);
          for (std::size_t end; (end = buffer.find("\n\n")) != std::string::npos;) {
            std::string block = buffer.substr(0, end);
            buffer.erase(0, end + 2);
            std::string event, data_line;
            std::size_t pos = 0;
            while (pos < block.size()) {
              std::size_t nl = block.find('\n', pos);
              std::string line =
                  block.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
              pos = nl == std::string::npos ? block.size() : nl + 1;
              if (line.starts_with("event: ")) event = line.substr(7);
              if (line.starts_with("data: ")) data_line = line.substr(6);
            }
            if (!event.empty())
              out.emplace_back(event, nlohmann::json::parse(data_line, nullptr, false));
          }
          return true;
        });
  return out;
}

TestService::TestService(const util::Path& data_dir, const util::Path& cache_dir,
                         std::vector<std::string> args, bool allow_loopback)
    : log_file_(data_dir.string() + ".log") {
  util::make_dirs(data_dir);
  std::error_code ec;
  log_start_ = static_cast<std::size_t>(std::filesystem::file_size(log_file_, ec));
  if (ec) log_start_ = 0;
  std::vector<std::string> argv = {pok8s_binary(), "--cache", cache_dir.string(),
                                   "--json",       "serve",   "--listen",
                                   "127.0.0.1:0",  "--data",  data_dir.string()};
  if (allow_loopback) argv.insert(argv.end(), {"--allow-network", "127.0.0.0/8"});
  argv.insert(argv.end(), args.begin(), args.end());
  process_ = ChildProcess(argv, log_file_);
  for (int i = 0; i < 300 && port_ == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::string text = log();
    constexpr std::string_view kTokenFile = "one-time login token is in ";
    if (auto at = text.find(kTokenFile); at != std::string::npos && login_token_.empty()) {
      auto start = at + kTokenFile.size();
      login_token_file_ = text.substr(start, text.find(' ', start) - start);
      login_token_ = util::read_file(login_token_file_);
      while (!login_token_.empty() && login_token_.back() == '\n') login_token_.pop_back();
    }
    if (auto at = text.find(R"({"event":"listening","port":)"); at != std::string::npos)
      port_ = std::stoi(text.substr(at + 28));
    if (port_ == 0 && !process_.running())
      throw Error(ErrorKind::kIo, "pok8s serve exited:\n" + text);
  }
  if (port_ == 0) throw Error(ErrorKind::kIo, "pok8s serve did not start listening:\n" + log());
}

std::string TestService::log() const {
  try {
    return util::read_file(log_file_).substr(log_start_);
  } catch (...) {
    return {};
  }
}

void TestService::kill() {
  process_.crash();
}

util::Path test_cache_dir(const std::string& name) {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  util::Path root = xdg && *xdg ? util::Path(xdg) : util::Path(home ? home : "/tmp") / ".cache";
  return root / "pok8s-test" / name;
}

void push_debian_bases(const std::string& tar, const TestRegistry& registry,
                       const util::Path& layout, const util::Path& cache,
                       const std::string& version) {
  auto step = [&](std::vector<std::string> args) {
    auto r = run_pok8s(cache.string(), std::move(args));
    if (r.status != 0) throw Error(ErrorKind::kIo, "pok8s failed:\n" + r.output);
  };
  std::string oci = "oci:" + layout.string();
  step({"image", "import", tar, oci + ":base"});
  step({"image", "copy", oci + ":base", registry.docker("debian:12"), "--tls-verify=false"});
  if (version.empty()) return;
  step({"convert", oci + ":base", oci, "--version", version});
  step({"image", "copy", oci + ":12-core-amd64-generic-" + version,
        registry.docker("pok8s/debian:" + version), "--tls-verify=false"});
}

nlohmann::json wait_for_build(ApiClient& api, const std::string& id,
                              const std::vector<std::string>& states, int timeout_s) {
  nlohmann::json b;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = api.get("/api/v1/builds/" + id);
    if (r.status == 200) {
      b = r.json();
      for (const auto& s : states)
        if (b.value("state", "") == s) return b;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return b;
}

}  // namespace pok8s::testing
