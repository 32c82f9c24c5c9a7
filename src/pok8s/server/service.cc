// The HTTP face of the factory. Handlers parse, authorize and call ServiceState, the runner and
// the engine's spec functions; every failure leaves as one JSON error naming what and where.
#include "pok8s/server/service.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>

#include "pok8s/build/spec_build.h"
#include "pok8s/config/build_spec.h"
#include "pok8s/config/cloud_config.h"
#include "pok8s/config/secrets.h"
#include "pok8s/oci/image.h"
#include "pok8s/oci/reference.h"
#include "pok8s/server/artifact_store.h"
#include "pok8s/server/build_request.h"
#include "pok8s/server/http.h"
#include "pok8s/server/keysets.h"
#include "pok8s/server/rate_limit.h"
#include "pok8s/server/runner.h"
#include "pok8s/server/secret_box.h"
#include "pok8s/server/state.h"
#include "pok8s/util/error.h"
#include "pok8s/util/time.h"

namespace pok8s::server {
namespace fs = std::filesystem;
using json = nlohmann::json;
namespace {

constexpr const char* kSessionCookie = "pok8s_session";
constexpr std::int64_t kMaxAttempts = 2;
// Tokens a user may hold at once: each is a row, and creating them is cheap for a client.
constexpr std::size_t kMaxTokensPerUser = 100;

enum class Access { kPublic, kUser, kAdmin };

json time_json(std::int64_t ms) {
  if (ms <= 0) return nullptr;
  return util::rfc3339(ms / 1000);
}

json user_json(const User& u) {
  return {{"id", u.id},
          {"name", u.name},
          {"role", u.role},
          {"disabled", u.disabled},
          {"createdAt", time_json(u.created_at)}};
}

json build_json(const BuildRecord& b) {
  json artifacts = json::array();
  if (b.state == BuildState::kSucceeded && !b.artifacts.empty())
    for (auto a : json::parse(b.artifacts, nullptr, false)) {
      if (!a.is_object()) continue;
      a["url"] = fmt::format("/api/v1/builds/{}/artifacts/{}", b.id, a.value("name", ""));
      artifacts.push_back(a);
    }
  json kinds = json::parse(b.artifact_kinds, nullptr, false);
  return {{"id", b.id},
          {"specId", b.spec_id},
          {"state", build_state_name(b.state)},
          {"owner", b.owner_name},
          {"base", b.base},
          {"version", b.version},
          {"kubernetes", b.kubernetes},
          {"artifactKinds", kinds.is_discarded() ? json::array() : kinds},
          {"createdAt", time_json(b.created_at)},
          {"startedAt", time_json(b.started_at)},
          {"finishedAt", time_json(b.finished_at)},
          {"attempts", b.attempts},
          {"progress", static_cast<double>(b.progress) / 1000.0},
          {"step", b.step},
          {"error", b.error.empty() ? json(nullptr) : json(b.error)},
          {"cancelRequested", b.cancel_requested},
          {"shared", b.shared},
          {"artifacts", artifacts}};
}

std::string cookie_value(const HttpRequest& req, std::string_view name) {
  std::string_view rest = req.header("cookie").value_or("");
  while (!rest.empty()) {
    std::size_t end = rest.find(';');
    std::string_view part = rest.substr(0, end);
    while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
    if (part.size() > name.size() && part.starts_with(name) && part[name.size()] == '=')
      return std::string(part.substr(name.size() + 1));
    if (end == std::string_view::npos) break;
    rest.remove_prefix(end + 1);
  }
  return {};
}

bool is_unsafe(const std::string& method) {
  return method != "GET" && method != "HEAD" && method != "OPTIONS";
}

std::string base64(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::string hex_to_bytes(std::string_view hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
  return out;
}

std::string content_type_for(std::string_view name) {
  if (name.ends_with(".iso")) return "application/x-iso9660-image";
  if (name.ends_with(".json")) return "application/json";
  return "application/octet-stream";
}

// Only application/json is read: a cross-site HTML form can send text/plain or a form encoding
// without asking, but not JSON (login CSRF).
void require_json(const HttpRequest& req) {
  std::string_view type = req.header("content-type").value_or("");
  type = type.substr(0, type.find(';'));
  while (!type.empty() && type.back() == ' ') type.remove_suffix(1);
  std::string lower_type(type);
  for (char& c : lower_type)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  if (lower_type != "application/json")
    throw ApiError(415, "invalid-input",
                   "Failed to read the request: send the body as JSON with Content-Type: "
                   "application/json");
}

// A request body as a JSON object.
json parse_body(const HttpRequest& req) {
  require_json(req);
  json j = json::parse(req.body, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw Error(ErrorKind::kInvalidInput,
                "Failed to read the request: the body is not a JSON object");
  return j;
}

bool bool_field(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_boolean())
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read the request: {} must be true or false", key));
  return it->get<bool>();
}

// A build or token id from a URL: 16 hex digits, or nothing the service has.
bool is_id(std::string_view id) {
  if (id.size() != 16) return false;
  for (char c : id)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// What a message may quote of an id from a URL.
std::string quoted_id(std::string_view id) {
  return is_id(id) ? std::string(id) : fmt::format("{:?}", std::string(id.substr(0, 40)));
}

// Sequence numbers from Last-Event-ID or ?after=: a non-negative integer.
std::int64_t event_cursor(std::string_view text, std::string_view what) {
  std::int64_t n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || p != text.data() + text.size() || n < 0)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to follow the build's events: {} must be an event number "
                            "(a non-negative integer)",
                            what));
  return n;
}

std::string dump(const json& j) {
  // Client text (paths, names) may hold any bytes; they are replaced, never thrown on.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string web_content_type(std::string_view name) {
  if (name.ends_with(".html")) return "text/html; charset=utf-8";
  if (name.ends_with(".js") || name.ends_with(".mjs")) return "text/javascript; charset=utf-8";
  if (name.ends_with(".css")) return "text/css; charset=utf-8";
  if (name.ends_with(".svg")) return "image/svg+xml";
  if (name.ends_with(".png")) return "image/png";
  if (name.ends_with(".json")) return "application/json";
  return "application/octet-stream";
}

std::string string_field(const json& j, const char* key, bool required = true) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read the request: {} is missing", key));
    return {};
  }
  if (!it->is_string())
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read the request: {} must be a string", key));
  return it->get<std::string>();
}

// Every build option the engine knows, probed against config::unbuildable so that the web
// builder's disabled options and their reasons are the engine's own.
json capabilities(bool local_sources, const RequestLimits& limits, std::size_t max_body) {
  auto probe = [](auto&& change) {
    config::BuildSpec s;
    s.base = "docker://example.org/probe:1";
    s.version = "v0";
    change(s);
    auto reasons = config::unbuildable(s);
    json o = {{"buildable", reasons.empty()}};
    if (!reasons.empty()) o["reason"] = reasons.front();
    return o;
  };
  json artifacts = json::array();
  for (const char* kind : {"iso", "raw", "qcow2", "vhd", "uki", "uki-iso", "netboot"}) {
    json o = probe([&](config::BuildSpec& s) { s.artifacts = {kind}; });
    o["name"] = kind;
    artifacts.push_back(o);
  }
  json encryption = json::array();
  for (const char* mode : {"none", "tpm", "passphrase"}) {
    json o = probe([&](config::BuildSpec& s) { s.security.encryption = mode; });
    o["name"] = mode;
    encryption.push_back(o);
  }
  json trusted = probe([](config::BuildSpec& s) { s.security.trusted_boot = true; });
  trusted["name"] = "trustedBoot";
  json keys = probe([](config::BuildSpec& s) { s.security.keys = "/keys"; });
  keys["name"] = "keys";
  json kubernetes = json::array();
  for (const char* k : {"none", "k3s", "k0s"})
    kubernetes.push_back({{"name", k}, {"buildable", true}});
  return {{"artifacts", artifacts},
          {"kubernetes", kubernetes},
          {"encryption", encryption},
          {"trustedBoot", trusted},
          {"keys", keys},
          {"variants", {"core", "standard"}},
          {"compression", {"zstd", "xz", "gzip"}},
          {"localSources", local_sources},
          {"limits",
           {{"maxBodyBytes", max_body},
            {"maxFiles", limits.max_files},
            {"maxFileBytes", limits.max_file_bytes}}}};
}

// Wakes the event streams of a build when this process records one of its events.
class EventHub {
 public:
  std::uint64_t add(const std::string& build_id, std::function<void()> wake) {
    std::lock_guard lock(mutex_);
    std::uint64_t id = ++next_;
    wakers_.emplace(build_id, std::make_pair(id, std::move(wake)));
    return id;
  }
  void remove(const std::string& build_id, std::uint64_t id) {
    std::lock_guard lock(mutex_);
    auto [begin, end] = wakers_.equal_range(build_id);
    for (auto it = begin; it != end; ++it)
      if (it->second.first == id) {
        wakers_.erase(it);
        return;
      }
  }
  void wake(std::string_view build_id) {
    std::lock_guard lock(mutex_);
    auto [begin, end] = wakers_.equal_range(std::string(build_id));
    for (auto it = begin; it != end; ++it) it->second.second();
  }
  void wake_all() {
    std::lock_guard lock(mutex_);
    for (auto& [_, w] : wakers_) w.second();
  }

 private:
  std::mutex mutex_;
  std::uint64_t next_ = 0;
  std::multimap<std::string, std::pair<std::uint64_t, std::function<void()>>> wakers_;
};

// The server-sent events of one build: what the database has after the cursor, then an `end`
// event once the build has finished.
class BuildEventStream : public EventSource {
 public:
  BuildEventStream(ServiceState& state, EventHub& hub, std::string build_id, std::int64_t after,
                   std::chrono::milliseconds poll, const std::atomic<bool>& stopping)
      : state_(state),
        hub_(hub),
        id_(std::move(build_id)),
        cursor_(after),
        poll_(poll),
        stopping_(stopping) {}
  ~BuildEventStream() override {
    if (registered_) hub_.remove(id_, registration_);
  }
  void set_waker(std::function<void()> wake) override {
    registration_ = hub_.add(id_, std::move(wake));
    registered_ = true;
  }
  std::chrono::milliseconds poll_interval() const override { return poll_; }
  Chunk next() override {
    if (stopping_) return {{}, true};
    auto events = state_.events(id_, cursor_, 500);
    std::string out;
    for (const auto& e : events) {
      out += fmt::format("id: {}\nevent: {}\ndata: {}\n\n", e.seq, e.kind, e.data);
      cursor_ = e.seq;
    }
    if (!events.empty()) return {std::move(out), false};
    auto b = state_.build(id_);
    if (b && (b->state == BuildState::kQueued || b->state == BuildState::kRunning)) return {};
    return {fmt::format("event: end\ndata: {}\n\n",
                        dump(json{{"state", b ? build_state_name(b->state) : "gone"}})),
            true};
  }

 private:
  ServiceState& state_;
  EventHub& hub_;
  std::string id_;
  std::int64_t cursor_;
  std::chrono::milliseconds poll_;
  const std::atomic<bool>& stopping_;
  std::uint64_t registration_ = 0;
  bool registered_ = false;
};

}  // namespace

std::vector<Template> default_templates() {
  return {{"debian", "Debian 12 (bookworm)", "debian", "docker://docker.io/library/debian:12"},
          {"ubuntu", "Ubuntu 24.04 LTS", "ubuntu", "docker://docker.io/library/ubuntu:24.04"},
          {"alpine", "Alpine 3.20", "alpine", "docker://docker.io/library/alpine:3.20"},
          {"fedora", "Fedora 41", "fedora", "docker://registry.fedoraproject.org/fedora:41"},
          {"opensuse", "openSUSE Leap 15.6", "opensuse",
           "docker://registry.opensuse.org/opensuse/leap:15.6"},
          {"rocky", "Rocky Linux 9", "rocky", "docker://quay.io/rockylinux/rockylinux:9"}};
}

Template parse_template(std::string_view text) {
  auto eq = text.find('=');
  auto bad = [&](std::string_view why) {
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read --template {:?}: {}", std::string(text), why));
  };
  if (eq == std::string_view::npos || eq == 0) bad("give NAME=SOURCE or NAME=TITLE|SOURCE");
  Template t;
  t.name = std::string(text.substr(0, eq));
  for (char c : t.name)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
      bad("the name may only hold a-z, 0-9 and -");
  std::string_view rest = text.substr(eq + 1);
  if (auto bar = rest.find('|'); bar != std::string_view::npos) {
    t.title = std::string(rest.substr(0, bar));
    rest = rest.substr(bar + 1);
  }
  t.base = std::string(rest);
  oci::ImageName::parse(t.base);
  if (t.title.empty()) t.title = t.name;
  t.family = "custom";
  for (const auto& d : default_templates())
    if (t.name.starts_with(d.family)) t.family = d.family;
  return t;
}

struct Service::Impl {
  ServiceOptions o;
  std::unique_ptr<SecretBox> secrets;
  std::unique_ptr<ServiceState> state;
  std::unique_ptr<ArtifactStore> store;
  std::unique_ptr<KeySetStore> keysets;
  std::unique_ptr<BuildRunner> runner;
  std::unique_ptr<oci::BlobStore> blobs;
  std::optional<std::string> login_token;
  std::string openapi;
  std::vector<Template> templates;
  RequestLimits limits;
  util::UniqueFd lock_fd;
  std::map<std::string, std::string> web_files;  // URL path -> content
  EventHub hub;
  std::atomic<bool> stopping{false};
  // Logging in and making tokens are what a client can repeat cheaply to fill the database or
  // guess secrets: each is limited per client address and per user.
  RateLimiter logins_by_address{1.0 / 6, 10};
  RateLimiter sessions_by_user{1.0 / 6, 20};
  RateLimiter tokens_by_user{1.0 / 6, 10};
  RateLimiter tokens_by_address{1.0 / 3, 20};
  // Last: destroyed first, so no handler runs on what is destroyed after it.
  std::unique_ptr<HttpServer> http;

  // The umask the service was started with, which its builds run with.
  mode_t started_umask = 022;

  explicit Impl(ServiceOptions options) : o(std::move(options)) {
    // The data directory holds the database, the key sets and the secret key: the service's
    // user alone may read what it writes there, whatever the umask it was started with.
    started_umask = ::umask(077);
    util::make_dirs(o.data_dir);
    fs::permissions(o.data_dir, fs::perms::owner_all, fs::perm_options::replace);
    for (const char* sub : {"tmp", "work", "keysets"}) {
      util::make_dirs(o.data_dir / sub);
      fs::permissions(o.data_dir / sub, fs::perms::owner_all, fs::perm_options::replace);
    }
    secrets = std::make_unique<SecretBox>(SecretBox::load_or_create(
        o.secret_key_file.empty() ? o.data_dir / "secret.key" : o.secret_key_file));
    auto db = open_database(o.database, o.data_dir);
    if (db->dialect() == SqlDialect::kSqlite) lock_data_dir();
    state = std::make_unique<ServiceState>(std::move(db), secrets.get());
    store = open_artifact_store(o.store, o.data_dir, o.tls_verify);
    keysets = std::make_unique<KeySetStore>(o.data_dir / "keysets");
    blobs = std::make_unique<oci::BlobStore>(o.cache_dir);
    openapi = util::read_file(o.openapi_file, 4u << 20);
    templates = o.templates.empty() ? default_templates() : o.templates;
    limits.max_file_bytes = std::min<std::size_t>(limits.max_file_bytes, o.max_body);
    load_web_files();

    login_token = state->bootstrap_admin();
    if (!login_token && o.new_login_token) login_token = state->new_login_token("admin");
    if (state->dialect() == SqlDialect::kSqlite) {
      // One service owns an SQLite database (the lock above), so whatever it finds running was
      // interrupted when it last stopped.
      for (const auto& id : state->recover_stale(now_ms() + 1, kMaxAttempts,
                                                 "the service restarted while it was running"))
        log(fmt::format("Build {} was interrupted by a restart: queued again or failed", id));
    }
    if (o.jobs == 0 && state->dialect() == SqlDialect::kSqlite)
      log("Builds are queued and wait: --jobs 0 runs none here, and `pok8s worker`s share a "
          "queue only in PostgreSQL (--db postgres://…)");
    runner = std::make_unique<BuildRunner>(*state, *store, runner_options());
    http = std::make_unique<HttpServer>(server_options());
  }

  void log(const std::string& line) const {
    if (o.log) o.log(line);
  }

  void lock_data_dir() {
    util::Path lock = o.data_dir / "serve.lock";
    lock_fd = util::open_file(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (::flock(lock_fd.get(), LOCK_EX | LOCK_NB) != 0)
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format("Failed to start the service: another pok8s serve uses {} (its "
                      "SQLite database has one owner; use --db postgres://… to run several)",
                      o.data_dir.string()));
  }

  // The web builder's files, read once: a request can only ever get one of them.
  void load_web_files() {
    if (o.web_dir.empty() || !fs::is_directory(o.web_dir)) return;
    for (const auto& entry : fs::directory_iterator(o.web_dir)) {
      if (!entry.is_regular_file()) continue;
      std::string name = entry.path().filename().string();
      web_files["/" + name] = util::read_file(entry.path(), 4u << 20);
    }
    if (auto it = web_files.find("/index.html"); it != web_files.end()) web_files["/"] = it->second;
  }

  RequestPolicy policy() const {
    RequestPolicy p;
    p.allow_local_sources = o.allow_local_sources;
    p.keysets = keysets->directories();
    return p;
  }

  RunnerOptions runner_options() {
    RunnerOptions r;
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    r.worker_id = fmt::format("{}:{}:serve", host, ::getpid());
    r.work_dir = o.data_dir / "work";
    r.pok8s_binary = o.pok8s_binary;
    r.global_args = {"--cache", o.cache_dir.string()};
    r.global_args.insert(r.global_args.end(), o.build_global_args.begin(),
                         o.build_global_args.end());
    if (!o.tls_verify) r.build_args.push_back("--tls-verify=false");
    r.child_umask = started_umask;
    r.timeout = o.build_timeout;
    r.stale_after = o.heartbeat_timeout;
    r.max_attempts = kMaxAttempts;
    r.policy = [this] { return policy(); };
    r.log = o.log;
    r.on_event = [this](std::string_view build_id) { hub.wake(build_id); };
    return r;
  }

  // --- plumbing --------------------------------------------------------------------------

  static void send_json(HttpResponse& res, int status, const json& body) {
    res.status = status;
    res.set_body(dump(body), "application/json");
  }
  static HttpResponse error_response(int status, std::string_view kind, std::string_view message) {
    HttpResponse res;
    send_json(res, status, {{"error", {{"kind", kind}, {"message", message}}}});
    return res;
  }

  std::optional<Caller> authenticate(const HttpRequest& req) {
    if (auto auth = req.header("authorization")) {
      if (!auth->starts_with("Bearer ")) return std::nullopt;
      return state->authenticate_token(auth->substr(7));
    }
    std::string cookie = cookie_value(req, kSessionCookie);
    if (!cookie.empty()) return state->authenticate_session(cookie);
    return std::nullopt;
  }

  // One check of a rate limit: ApiError 429 with when to try again.
  static void limit(RateLimiter& limiter, const std::string& key, std::string_view what) {
    auto now = std::chrono::steady_clock::now();
    if (limiter.allow(key, now)) return;
    auto wait = limiter.retry_after(key, now);
    throw ApiError(
        429, "rate-limited",
        fmt::format("Failed to {}: too many attempts; try again in {} s", what, wait.count()));
  }

  using ApiHandler = std::function<void(HttpRequest&, HttpResponse&, const Caller&)>;

  HttpHandler wrap(Access access, ApiHandler handler) {
    return [this, access, handler = std::move(handler)](HttpRequest& req) {
      HttpResponse res;
      try {
        Caller anonymous;
        std::optional<Caller> caller;
        if (access != Access::kPublic) {
          caller = authenticate(req);
          if (!caller)
            return error_response(401, "auth",
                                  "Failed to authenticate: send 'Authorization: Bearer TOKEN' "
                                  "with an API token, or log in (POST /api/v1/session)");
          if (caller->via == "session" && is_unsafe(req.method)) {
            // A cookie rides along with any cross-site form; the CSRF token does not.
            if (!secrets_equal(req.header("x-csrf-token").value_or(""), caller->csrf))
              return error_response(403, "forbidden",
                                    "Failed to authorize: a request made with the session "
                                    "cookie must send the session's X-CSRF-Token header");
          }
          if (access == Access::kAdmin && caller->user.role != "admin")
            return error_response(
                403, "forbidden",
                fmt::format("Failed to authorize: this route is for admins, and {} is not one",
                            caller->user.name));
        }
        handler(req, res, caller ? *caller : anonymous);
        return res;
      } catch (const ApiError& e) {
        HttpResponse r = error_response(e.status(), e.kind_name(), e.what());
        if (e.status() == 429) r.set_header("Retry-After", retry_after_of(e.what()));
        return r;
      } catch (const Error& e) {
        return error_response(http_status(e.kind()), error_kind_name(e.kind()), e.what());
      } catch (const json::exception& e) {
        return error_response(400, "invalid-input",
                              fmt::format("Failed to read the request: {}", e.what()));
      }
      // Anything else is a bug: the server logs it and answers 500 without the details.
    };
  }

  // The seconds a 429's message names, for its Retry-After header.
  static std::string retry_after_of(std::string_view message) {
    auto at = message.rfind("in ");
    std::string digits;
    for (std::size_t i = at == std::string_view::npos ? message.size() : at + 3;
         i < message.size() && message[i] >= '0' && message[i] <= '9'; ++i)
      digits += message[i];
    return digits.empty() ? "1" : digits;
  }

  std::vector<HttpRoute> routes_;

  void add(std::string method, std::string pattern, Access a, ApiHandler h,
           HandlerPool pool = HandlerPool::kLight) {
    routes_.push_back({std::move(method), std::move(pattern), pool, wrap(a, std::move(h))});
  }

  // A build the caller may see; anyone else's is "no such build", so ids cannot be probed.
  BuildRecord readable_build(const std::string& id, const Caller& c) {
    std::optional<BuildRecord> b;
    if (is_id(id)) b = state->build(id);
    if (!b || !state->can_read_build(*b, c.user))
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to find build {}: no such build", quoted_id(id)));
    return *b;
  }

  // The build's secret values, to scrub from what others than its owner see.
  static std::vector<std::string> secrets_of(const BuildRecord& b) {
    std::map<std::string, std::string> files;
    json j = json::parse(b.files, nullptr, false);
    if (j.is_object())
      for (const auto& [name, text] : j.items())
        if (text.is_string()) files.emplace(name, text.get<std::string>());
    return config::secret_values(b.spec, files);
  }

  // --- builds ----------------------------------------------------------------------------

  struct Prepared {
    config::BuildSpec spec;
    std::string yaml;  // relative paths
    build::SpecIdentity identity;
    std::string base_pinned;
  };

  // Everything a build request must pass before it is queued: the spec parses and follows the
  // service's policy, the engine can build it, the base resolves (pinned by digest), and the
  // conversion it implies is valid. The build id comes out of it.
  Prepared prepare(const BuildRequest& request, bool check_buildable) {
    auto dir = util::TempDir::scratch(o.data_dir / "tmp");
    try {
      return prepare_in(request, check_buildable, dir.path());
    } catch (const ApiError&) {
      throw;
    } catch (const Error& e) {
      // A message about a file of the request names it as the request does, never where the
      // service keeps it.
      std::string message = e.what();
      std::string prefix = dir.path().string() + "/";
      for (auto at = message.find(prefix); at != std::string::npos; at = message.find(prefix))
        message.erase(at, prefix.size());
      for (auto at = message.find(o.data_dir.string()); at != std::string::npos;
           at = message.find(o.data_dir.string()))
        message.replace(at, o.data_dir.string().size(), "the service's data directory");
      throw Error(e.kind(), message);
    }
  }

  Prepared prepare_in(const BuildRequest& request, bool check_buildable, const util::Path& dir) {
    Prepared p;
    p.spec = materialize_request(request, dir, policy());
    p.yaml = relative_spec_yaml(p.spec, dir);
    if (check_buildable) build::check_buildable(p.spec);
    oci::TransportOptions transport;
    transport.tls_verify = o.tls_verify;
    oci::ImageName name = oci::ImageName::parse(p.spec.base);
    auto source = oci::open_source(name, transport);
    oci::ResolvedImage base = oci::resolve_image(*source, *blobs, std::nullopt);
    p.identity = build::identify_spec(p.spec, base, o.version);
    if (build::spec_needs_conversion(p.spec, base))
      convert::validate_convert_options(build::spec_convert_options(p.spec));
    if (name.transport == oci::Transport::kDocker) {
      name.docker.digest = base.manifest_digest();
      name.docker.tag.clear();
      p.base_pinned = name.str();
    } else {
      p.base_pinned = p.spec.base;
    }
    return p;
  }

  void create_build(const HttpRequest& req, HttpResponse& res, const Caller& caller) {
    require_json(req);
    BuildRequest request = parse_build_request(req.body, limits);
    Prepared p = prepare(request, true);
    BuildRecord r;
    r.id = random_id();
    r.spec_id = p.identity.id;
    r.spec = request.spec;
    r.files = json(request.files).dump();
    r.base_pinned = p.base_pinned;
    r.owner = caller.user.id;
    r.base = p.spec.base;
    r.version = p.spec.version;
    r.kubernetes = p.spec.kubernetes.distribution;
    r.artifact_kinds = json(p.spec.artifacts).dump();
    Submission s = state->submit_build(r);
    if (s.reused && s.build.state == BuildState::kSucceeded && !artifacts_present(s.build)) {
      state->invalidate_build(s.build.id, "its artifacts are gone from the store");
      s = state->submit_build(r);
    }
    if (!s.reused) {
      log(fmt::format("Queued build {} (spec {}) for {}", s.build.id, s.build.spec_id,
                      caller.user.name));
      hub.wake_all();
    }
    json body = build_json(s.build);
    body["reused"] = s.reused;
    send_json(res, s.reused ? 200 : 201, body);
  }

  bool artifacts_present(const BuildRecord& b) {
    for (const auto& a : json::parse(b.artifacts, nullptr, false))
      if (!store->contains(b.id, {a.value("name", ""), a.value("size", std::uint64_t{0}),
                                  a.value("sha256", "")}))
        return false;
    return true;
  }

  void validate_spec(const HttpRequest& req, HttpResponse& res) {
    require_json(req);
    BuildRequest request = parse_build_request(req.body, limits);
    json verdict = {{"valid", false}};
    try {
      Prepared p = prepare(request, false);
      auto reasons = config::unbuildable(p.spec);
      verdict["spec"] = p.yaml;
      verdict["specId"] = p.identity.id;
      verdict["baseDigest"] = p.base_pinned;
      verdict["unbuildable"] = reasons;
      verdict["valid"] = reasons.empty();
    } catch (const Error& e) {
      verdict["error"] = e.what();
    }
    send_json(res, 200, verdict);
  }

  void stream_events(const HttpRequest& req, HttpResponse& res, const Caller& c) {
    BuildRecord b = readable_build(req.params[0], c);
    std::int64_t after = 0;
    if (auto v = req.query_value("after")) after = event_cursor(*v, "after");
    if (auto v = req.header("last-event-id")) after = event_cursor(*v, "Last-Event-ID");
    // Builds of other processes (workers sharing PostgreSQL) wake no one here: poll for them.
    auto poll = state->dialect() == SqlDialect::kSqlite ? std::chrono::milliseconds(5000)
                                                        : std::chrono::milliseconds(1000);
    res.events = std::make_shared<BuildEventStream>(*state, hub, b.id, after, poll, stopping);
  }

  void download(const HttpRequest& req, HttpResponse& res, const Caller& c) {
    BuildRecord b = readable_build(req.params[0], c);
    const std::string& name = req.params[1];
    std::string shown = fmt::format("{:?}", name.substr(0, 100));
    if (b.state != BuildState::kSucceeded)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to find artifact {} of build {}: the build is {}, only a "
                              "succeeded build has artifacts",
                              shown, b.id, build_state_name(b.state)));
    std::optional<StoredArtifact> found;
    for (const auto& a : json::parse(b.artifacts))
      if (a.value("name", "") == name)
        found = StoredArtifact{name, a.value("size", std::uint64_t{0}), a.value("sha256", "")};
    if (!found)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to find artifact {} of build {}: it has no such artifact",
                              shown, b.id));
    auto path = store->locate(b.id, *found);
    if (!path) {
      log(fmt::format("Artifact {} of build {} is gone from the store {}", name, b.id,
                      store->describe()));
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to find artifact {} of build {}: it is gone from the store",
                              shown, b.id));
    }
    auto fd = std::make_shared<util::UniqueFd>(util::open_file(*path, O_RDONLY | O_CLOEXEC));
    res.set_header("X-Checksum-Sha256", found->sha256);
    res.set_header("Digest", "sha-256=" + base64(hex_to_bytes(found->sha256)));
    res.set_header("Content-Disposition", fmt::format("attachment; filename=\"{}\"", name));
    res.file = HttpResponse::File{fd, found->size, content_type_for(name)};
  }

  // --- the server ------------------------------------------------------------------------

  HttpServerOptions server_options() {
    routes();
    HttpServerOptions s;
    s.limits = o.http_limits;
    s.limits.max_body_bytes = o.max_body;
    s.routes = std::move(routes_);
    s.error = [](int status, std::string_view kind, std::string message) {
      return error_response(status, kind, message);
    };
    s.fallback = [this](const HttpRequest& req) -> std::optional<HttpResponse> {
      auto it = web_files.find(req.path);
      if (it == web_files.end()) return std::nullopt;
      HttpResponse r;
      r.set_body(it->second, web_content_type(it->first == "/" ? "index.html" : it->first));
      return r;
    };
    s.common_headers = {{"X-Content-Type-Options", "nosniff"},
                        {"X-Frame-Options", "DENY"},
                        {"Referrer-Policy", "no-referrer"},
                        {"Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                         "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"}};
    s.log = o.log;
    return s;
  }

  // --- routes ----------------------------------------------------------------------------

  void routes() {
    add("GET", "/api/v1/openapi.json", Access::kPublic,
        [this](HttpRequest&, HttpResponse& res, const Caller&) {
          res.set_body(openapi, "application/json");
        });
    add("GET", "/api/v1/health", Access::kPublic,
        [this](HttpRequest&, HttpResponse& res, const Caller&) {
          auto counts = state->queue_counts();
          send_json(res, 200,
                    {{"status", "ok"},
                     {"version", o.version},
                     {"database", state->dialect() == SqlDialect::kSqlite ? "sqlite" : "postgres"},
                     {"queued", counts.queued},
                     {"running", counts.running}});
        });

    add("POST", "/api/v1/session", Access::kPublic,
        [this](HttpRequest& req, HttpResponse& res, const Caller&) {
          std::string token = string_field(parse_body(req), "token");
          limit(logins_by_address, req.client, "log in");
          SessionGrant g = state->login(token);
          limit(sessions_by_user, g.user.id, "log in");
          res.set_header("Set-Cookie",
                         fmt::format("{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                                     kSessionCookie, g.cookie, (g.expires_at - now_ms()) / 1000));
          send_json(res, 200, {{"user", user_json(g.user)}, {"csrfToken", g.csrf}});
        });
    add("GET", "/api/v1/session", Access::kUser,
        [](HttpRequest&, HttpResponse& res, const Caller& c) {
          send_json(res, 200,
                    {{"user", user_json(c.user)},
                     {"csrfToken", c.via == "session" ? json(c.csrf) : json(nullptr)}});
        });
    add("DELETE", "/api/v1/session", Access::kUser,
        [this](HttpRequest&, HttpResponse& res, const Caller& c) {
          if (c.via == "session") state->logout(c.session_id);
          res.set_header(
              "Set-Cookie",
              fmt::format("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0", kSessionCookie));
          res.status = 204;
        });

    add("GET", "/api/v1/users", Access::kAdmin,
        [this](HttpRequest&, HttpResponse& res, const Caller&) {
          json users = json::array();
          for (const auto& u : state->users()) users.push_back(user_json(u));
          send_json(res, 200, {{"users", users}});
        });
    add("POST", "/api/v1/users", Access::kAdmin,
        [this](HttpRequest& req, HttpResponse& res, const Caller&) {
          json body = parse_body(req);
          std::string name = string_field(body, "name");
          std::string role = string_field(body, "role", false);
          bool ok = !name.empty() && name.size() <= 32 && name[0] >= 'a' && name[0] <= 'z';
          for (char c : name)
            ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                        c == '-');
          if (!ok)
            throw Error(ErrorKind::kInvalidInput,
                        "Failed to create the user: name must be 1-32 of a-z 0-9 _ . - starting "
                        "with a letter");
          auto [user, token] = state->create_user(name, role.empty() ? "user" : role);
          send_json(res, 201, {{"user", user_json(user)}, {"loginToken", token}});
        });
    add("PATCH", "/api/v1/users/:id", Access::kAdmin,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) {
          bool disabled = bool_field(parse_body(req), "disabled");
          const std::string& id = req.params[0];
          if (!is_id(id) || !state->user_by_id(id))
            throw Error(ErrorKind::kNotFound,
                        fmt::format("Failed to change user {}: no such user", quoted_id(id)));
          User u = state->set_user_disabled(id, disabled, c.user);
          log(fmt::format("{} {} user {}", c.user.name, disabled ? "disabled" : "enabled", u.name));
          hub.wake_all();
          send_json(res, 200, {{"user", user_json(u)}});
        });
    add("GET", "/api/v1/users/:id/tokens", Access::kAdmin,
        [this](HttpRequest& req, HttpResponse& res, const Caller&) {
          const std::string& id = req.params[0];
          if (!is_id(id) || !state->user_by_id(id))
            throw Error(
                ErrorKind::kNotFound,
                fmt::format("Failed to list the tokens of user {}: no such user", quoted_id(id)));
          send_json(res, 200, {{"tokens", tokens_json(state->api_tokens_of(id))}});
        });

    add("GET", "/api/v1/tokens", Access::kUser,
        [this](HttpRequest&, HttpResponse& res, const Caller& c) {
          send_json(res, 200, {{"tokens", tokens_json(state->api_tokens_of(c.user.id))}});
        });
    add("POST", "/api/v1/tokens", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) {
          std::string name = string_field(parse_body(req), "name");
          if (name.empty() || name.size() > 64)
            throw Error(ErrorKind::kInvalidInput,
                        "Failed to create the token: name must be 1-64 characters");
          for (unsigned char ch : name)
            if (ch < 0x20 || ch == 0x7f)
              throw Error(ErrorKind::kInvalidInput,
                          "Failed to create the token: name holds a control character");
          limit(tokens_by_address, req.client, "create a token");
          limit(tokens_by_user, c.user.id, "create a token");
          if (state->api_tokens_of(c.user.id).size() >= kMaxTokensPerUser)
            throw ApiError(409, "conflict",
                           fmt::format("Failed to create the token: you have {} tokens, the most "
                                       "a user may hold; revoke one first",
                                       kMaxTokensPerUser));
          NewToken t = state->create_api_token(c.user, name);
          send_json(res, 201,
                    {{"id", t.info.id},
                     {"name", t.info.name},
                     {"createdAt", time_json(t.info.created_at)},
                     {"lastUsedAt", nullptr},
                     {"token", t.secret}});
        });
    add("DELETE", "/api/v1/tokens/:id", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) {
          const std::string& id = req.params[0];
          // An admin revokes anyone's token; a user only their own.
          bool done = is_id(id) && (c.user.role == "admin" ? state->revoke_token(id)
                                                           : state->delete_api_token(c.user, id));
          if (!done)
            throw Error(
                ErrorKind::kNotFound,
                fmt::format("Failed to revoke token {}: {}", quoted_id(id),
                            c.user.role == "admin" ? "no such token" : "you have no such token"));
          res.status = 204;
        });

    add("GET", "/api/v1/templates", Access::kUser,
        [this](HttpRequest&, HttpResponse& res, const Caller&) {
          json list = json::array();
          for (const auto& t : templates)
            list.push_back(
                {{"name", t.name}, {"title", t.title}, {"family", t.family}, {"base", t.base}});
          send_json(res, 200, {{"templates", list}});
        });
    add("GET", "/api/v1/capabilities", Access::kUser,
        [this](HttpRequest&, HttpResponse& res, const Caller&) {
          send_json(res, 200, capabilities(o.allow_local_sources, limits, o.max_body));
        });
    add(
        "POST", "/api/v1/specs/validate", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller&) { validate_spec(req, res); },
        HandlerPool::kHeavy);
    add("POST", "/api/v1/cloud-config/validate", Access::kUser,
        [](HttpRequest& req, HttpResponse& res, const Caller&) {
          std::string text = string_field(parse_body(req), "text");
          json verdict = {{"valid", true}};
          try {
            if (!config::has_cloud_config_header(text))
              throw Error(
                  ErrorKind::kInvalidInput,
                  "Failed to read cloud-config cloud-config.yaml: line 1: the first line must be "
                  "#cloud-config");
            config::CloudConfig parsed = config::parse_cloud_config(text, "cloud-config.yaml");
            verdict["warnings"] = config::ignored_section_warnings(parsed);
          } catch (const Error& e) {
            verdict["valid"] = false;
            verdict["error"] = e.what();
            std::string_view m = e.what();
            if (auto at = m.find(": line "); at != std::string_view::npos)
              verdict["line"] = std::atoi(std::string(m.substr(at + 7)).c_str());
          }
          send_json(res, 200, verdict);
        });

    add("GET", "/api/v1/builds", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) {
          std::optional<BuildState> filter;
          if (auto v = req.query_value("state")) {
            filter = parse_build_state(*v);
            if (!filter)
              throw Error(ErrorKind::kInvalidInput,
                          "Failed to list builds: state must be queued, running, succeeded, failed "
                          "or canceled");
          }
          auto number = [&](const char* key, std::int64_t def, std::int64_t lo, std::int64_t hi) {
            auto v = req.query_value(key);
            if (!v) return def;
            std::int64_t n = 0;
            auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), n);
            if (ec != std::errc() || p != v->data() + v->size() || n < lo || n > hi)
              throw Error(ErrorKind::kInvalidInput,
                          fmt::format("Failed to list builds: {} must be a number from {} to {}",
                                      key, lo, hi));
            return n;
          };
          std::int64_t total = 0;
          json list = json::array();
          for (const auto& b : state->builds(filter, number("limit", 50, 1, 500),
                                             number("offset", 0, 0, 1LL << 40), &total, c.user))
            list.push_back(build_json(b));
          send_json(res, 200, {{"builds", list}, {"total", total}});
        });
    add(
        "POST", "/api/v1/builds", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) { create_build(req, res, c); },
        HandlerPool::kHeavy);
    add("GET", "/api/v1/builds/:id", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) {
          send_json(res, 200, build_json(readable_build(req.params[0], c)));
        });
    add("PATCH", "/api/v1/builds/:id", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) {
          BuildRecord b = readable_build(req.params[0], c);
          bool shared = bool_field(parse_body(req), "shared");
          if (b.owner != c.user.id && c.user.role != "admin")
            throw ApiError(403, "forbidden",
                           fmt::format("Failed to share build {}: it is {}'s, and only they or "
                                       "an admin may share it",
                                       b.id, b.owner_name));
          state->set_build_shared(b.id, shared);
          send_json(res, 200, build_json(*state->build(b.id)));
        });
    add("POST", "/api/v1/builds/:id/cancel", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) {
          BuildRecord b = readable_build(req.params[0], c);
          if (b.owner != c.user.id && c.user.role != "admin")
            throw ApiError(403, "forbidden",
                           fmt::format("Failed to cancel build {}: it is {}'s, and only they or "
                                       "an admin may cancel it",
                                       b.id, b.owner_name));
          BuildRecord after = state->cancel_build(b.id);
          hub.wake(b.id);
          send_json(res, 202, build_json(after));
        });
    add("GET", "/api/v1/builds/:id/spec", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) {
          BuildRecord b = readable_build(req.params[0], c);
          json files = json::parse(b.files, nullptr, false);
          if (!files.is_object()) files = json::object();
          // Its owner sees the request as sent; an admin or a user it is shared with sees it
          // with passwords, tokens and keys masked.
          if (b.owner == c.user.id) {
            send_json(res, 200, {{"spec", b.spec}, {"files", files}, {"masked", false}});
            return;
          }
          json masked = json::object();
          for (const auto& [name, text] : files.items())
            masked[name] = config::mask_secrets_in_cloud_config(text.get<std::string>());
          send_json(res, 200,
                    {{"spec", config::mask_secrets_in_spec(b.spec)},
                     {"files", masked},
                     {"masked", true}});
        });
    add("GET", "/api/v1/builds/:id/log", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) {
          BuildRecord b = readable_build(req.params[0], c);
          std::string text;
          for (std::int64_t after = 0;;) {
            auto events = state->events(b.id, after, 5000);
            if (events.empty()) break;
            for (const auto& e : events) {
              after = e.seq;
              json d = json::parse(e.data, nullptr, false);
              if (e.kind == "log")
                text += d.value("line", "") + "\n";
              else if (e.kind == "step")
                text += "== " + d.value("text", "") + "\n";
              else if (e.kind == "state")
                text += "-- " + d.value("state", "") +
                        (d.contains("error") ? ": " + d.value("error", "") : "") + "\n";
            }
          }
          // The runner scrubs lines as it records them; this catches anything older.
          if (b.owner != c.user.id) text = config::scrub(text, secrets_of(b));
          res.set_body(std::move(text), "text/plain; charset=utf-8");
        });
    add("GET", "/api/v1/builds/:id/events", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) {
          stream_events(req, res, c);
        });
    add("GET", "/api/v1/builds/:id/artifacts/:name", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller& c) { download(req, res, c); });

    add("GET", "/api/v1/keysets", Access::kUser,
        [this](HttpRequest&, HttpResponse& res, const Caller&) {
          send_json(res, 200, {{"keysets", keysets->list()}});
        });
    add("POST", "/api/v1/keysets", Access::kAdmin,
        [this](HttpRequest& req, HttpResponse& res, const Caller&) {
          json body = parse_body(req);
          std::string name = string_field(body, "name");
          std::map<std::string, std::string> files;
          if (!body.contains("files") || !body["files"].is_object())
            throw Error(
                ErrorKind::kInvalidInput,
                "Failed to read the request: files must be an object of file name to PEM text");
          for (const auto& [file, text] : body["files"].items()) {
            if (!text.is_string())
              throw Error(ErrorKind::kInvalidInput,
                          fmt::format("Failed to read the request: files.{:?} must be a string",
                                      file.substr(0, 64)));
            files.emplace(file, text.get<std::string>());
          }
          send_json(res, 201, keysets->create(name, files));
        });
    add("GET", "/api/v1/keysets/:name", Access::kUser,
        [this](HttpRequest& req, HttpResponse& res, const Caller&) {
          auto d = keysets->describe(req.params[0]);
          if (!d)
            throw Error(ErrorKind::kNotFound,
                        fmt::format("Failed to find key set {:?}: no such key set",
                                    req.params[0].substr(0, 64)));
          send_json(res, 200, *d);
        });
    add("DELETE", "/api/v1/keysets/:name", Access::kAdmin,
        [this](HttpRequest& req, HttpResponse& res, const Caller&) {
          if (!keysets->remove(req.params[0]))
            throw Error(ErrorKind::kNotFound,
                        fmt::format("Failed to delete key set {:?}: no such key set",
                                    req.params[0].substr(0, 64)));
          res.status = 204;
        });
  }

  static json tokens_json(const std::vector<TokenInfo>& list) {
    json tokens = json::array();
    for (const auto& t : list)
      tokens.push_back({{"id", t.id},
                        {"name", t.name},
                        {"createdAt", time_json(t.created_at)},
                        {"lastUsedAt", time_json(t.last_used_at)}});
    return tokens;
  }
};

Service::Service(ServiceOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Service::~Service() {
  stop();
}

const std::optional<std::string>& Service::login_token() const {
  return impl_->login_token;
}

int Service::bind() {
  std::string listen = impl_->o.listen;
  auto colon = listen.rfind(':');
  if (colon == std::string::npos)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to listen on {:?}: give HOST:PORT", listen));
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  int port = 0;
  auto [p, ec] = std::from_chars(listen.data() + colon + 1, listen.data() + listen.size(), port);
  if (ec != std::errc() || p != listen.data() + listen.size() || port < 0 || port > 65535)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to listen on {:?}: the port must be 0-65535", listen));
  return impl_->http->bind(host, port);
}

void Service::run() {
  impl_->runner->start(impl_->o.jobs);
  impl_->http->run();
  // Builds in progress go back to the queue for the next start.
  impl_->runner->stop();
}

void Service::stop() {
  impl_->stopping = true;
  impl_->hub.wake_all();
  impl_->http->stop();
}

std::string Service::answer_bytes(std::string_view raw, std::string_view client) {
  return impl_->http->answer_bytes(raw, client);
}

}  // namespace pok8s::server
