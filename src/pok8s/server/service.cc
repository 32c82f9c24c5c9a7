// The HTTP face of the factory. Handlers parse, authorize and call ServiceState, the runner and
// the engine's spec functions; every failure leaves as one JSON error naming what and where.
#include "pok8s/server/service.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <httplib.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>

#include "pok8s/build/spec_build.h"
#include "pok8s/config/build_spec.h"
#include "pok8s/config/cloud_config.h"
#include "pok8s/oci/image.h"
#include "pok8s/oci/reference.h"
#include "pok8s/server/artifact_store.h"
#include "pok8s/server/build_request.h"
#include "pok8s/server/keysets.h"
#include "pok8s/server/runner.h"
#include "pok8s/server/state.h"
#include "pok8s/util/error.h"
#include "pok8s/util/time.h"

namespace pok8s::server {
namespace fs = std::filesystem;
using json = nlohmann::json;
namespace {

constexpr const char* kSessionCookie = "pok8s_session";
constexpr std::int64_t kMaxAttempts = 2;
constexpr const char* kIdPattern = "([0-9a-f]{16})";

enum class Access { kPublic, kUser, kAdmin };

json time_json(std::int64_t ms) {
  if (ms <= 0) return nullptr;
  return util::rfc3339(ms / 1000);
}

json user_json(const User& u) {
  return {{"id", u.id}, {"name", u.name}, {"role", u.role}, {"createdAt", time_json(u.created_at)}};
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
          {"artifacts", artifacts}};
}

std::string cookie_value(const httplib::Request& req, std::string_view name) {
  std::string header = req.get_header_value("Cookie");
  std::string_view rest = header;
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

json parse_body(const httplib::Request& req) {
  json j = json::parse(req.body, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw Error(ErrorKind::kInvalidInput,
                "Failed to read the request: the body is not a JSON object");
  return j;
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
  std::unique_ptr<ServiceState> state;
  std::unique_ptr<ArtifactStore> store;
  std::unique_ptr<KeySetStore> keysets;
  std::unique_ptr<BuildRunner> runner;
  std::unique_ptr<oci::BlobStore> blobs;
  httplib::Server http;
  std::optional<std::string> login_token;
  std::string openapi;
  std::vector<Template> templates;
  RequestLimits limits;
  util::UniqueFd lock_fd;
  std::mutex event_mutex;
  std::condition_variable event_cv;
  std::uint64_t event_generation = 0;
  std::atomic<bool> stopping{false};

  explicit Impl(ServiceOptions options) : o(std::move(options)) {
    util::make_dirs(o.data_dir);
    auto db = open_database(o.database, o.data_dir);
    if (db->dialect() == SqlDialect::kSqlite) lock_data_dir();
    state = std::make_unique<ServiceState>(std::move(db));
    store = open_artifact_store(o.store, o.data_dir, o.tls_verify);
    keysets = std::make_unique<KeySetStore>(o.data_dir / "keysets");
    blobs = std::make_unique<oci::BlobStore>(o.cache_dir);
    openapi = util::read_file(o.openapi_file, 4u << 20);
    templates = o.templates.empty() ? default_templates() : o.templates;
    limits.max_file_bytes = std::min<std::size_t>(limits.max_file_bytes, o.max_body);

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
      throw Error(ErrorKind::kInvalidInput,
                  "Failed to start the service: --jobs 0 leaves the builds to `pok8s worker`s, "
                  "which share the queue only in PostgreSQL (--db postgres://…)");
    runner = std::make_unique<BuildRunner>(*state, *store, runner_options());
    routes();
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
    if (!o.tls_verify) r.build_args.push_back("--tls-verify=false");
    r.timeout = o.build_timeout;
    r.stale_after = o.heartbeat_timeout;
    r.max_attempts = kMaxAttempts;
    r.policy = [this] { return policy(); };
    r.log = o.log;
    r.on_event = [this] { notify(); };
    return r;
  }

  void notify() {
    {
      std::lock_guard lock(event_mutex);
      ++event_generation;
    }
    event_cv.notify_all();
  }

  // --- plumbing --------------------------------------------------------------------------

  static void send_json(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(body.dump(), "application/json");
  }
  static void send_error(httplib::Response& res, int status, std::string_view kind,
                         std::string_view message) {
    send_json(res, status, {{"error", {{"kind", kind}, {"message", message}}}});
  }

  std::optional<Caller> authenticate(const httplib::Request& req) {
    std::string auth = req.get_header_value("Authorization");
    if (!auth.empty()) {
      if (!auth.starts_with("Bearer ")) return std::nullopt;
      return state->authenticate_token(auth.substr(7));
    }
    std::string cookie = cookie_value(req, kSessionCookie);
    if (!cookie.empty()) return state->authenticate_session(cookie);
    return std::nullopt;
  }

  using ApiHandler =
      std::function<void(const httplib::Request&, httplib::Response&, const Caller&)>;

  httplib::Server::Handler wrap(Access access, ApiHandler handler) {
    return [this, access, handler](const httplib::Request& req, httplib::Response& res) {
      try {
        Caller anonymous;
        std::optional<Caller> caller;
        if (access != Access::kPublic) {
          caller = authenticate(req);
          if (!caller)
            return send_error(res, 401, "auth",
                              "Failed to authenticate: send 'Authorization: Bearer TOKEN' with an "
                              "API token, or log in (POST /api/v1/session)");
          if (caller->via == "session" && is_unsafe(req.method)) {
            // A cookie rides along with any cross-site form; the CSRF token does not.
            if (!secrets_equal(req.get_header_value("X-CSRF-Token"), caller->csrf))
              return send_error(res, 403, "forbidden",
                                "Failed to authorize: a request made with the session cookie "
                                "must send the session's X-CSRF-Token header");
          }
          if (access == Access::kAdmin && caller->user.role != "admin")
            return send_error(
                res, 403, "forbidden",
                fmt::format("Failed to authorize: {} {} is for admins, and {} is not one",
                            req.method, req.path, caller->user.name));
        }
        handler(req, res, caller ? *caller : anonymous);
      } catch (const ApiError& e) {
        send_error(res, e.status(), e.kind_name(), e.what());
      } catch (const Error& e) {
        send_error(res, http_status(e.kind()), error_kind_name(e.kind()), e.what());
      } catch (const json::exception& e) {
        send_error(res, 400, "invalid-input",
                   fmt::format("Failed to read the request: {}", e.what()));
      } catch (const std::exception& e) {
        log(fmt::format("internal error in {} {}: {}", req.method, req.path, e.what()));
        send_error(
            res, 500, "internal",
            fmt::format("Failed to {} {}: internal error: {}", req.method, req.path, e.what()));
      }
    };
  }

  void get(const std::string& pattern, Access a, ApiHandler h) {
    http.Get(pattern, wrap(a, std::move(h)));
  }
  void post(const std::string& pattern, Access a, ApiHandler h) {
    http.Post(pattern, wrap(a, std::move(h)));
  }
  void del(const std::string& pattern, Access a, ApiHandler h) {
    http.Delete(pattern, wrap(a, std::move(h)));
  }

  BuildRecord find_build(const std::string& id) {
    auto b = state->build(id);
    if (!b)
      throw Error(ErrorKind::kNotFound, fmt::format("Failed to find build {}: no such build", id));
    return *b;
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
    util::make_dirs(o.data_dir / "tmp");
    auto dir = util::TempDir::scratch(o.data_dir / "tmp");
    Prepared p;
    p.spec = materialize_request(request, dir.path(), policy());
    p.yaml = relative_spec_yaml(p.spec, dir.path());
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

  void create_build(const httplib::Request& req, httplib::Response& res, const Caller& caller) {
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
      notify();
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

  void validate_spec(const httplib::Request& req, httplib::Response& res) {
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

  void stream_events(const httplib::Request& req, httplib::Response& res, const std::string& id) {
    find_build(id);
    std::int64_t after = 0;
    if (req.has_param("after")) after = std::stoll(req.get_param_value("after"));
    if (req.has_header("Last-Event-ID")) after = std::stoll(req.get_header_value("Last-Event-ID"));
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    auto last_write =
        std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
    auto cursor = std::make_shared<std::int64_t>(after);
    res.set_chunked_content_provider(
        "text/event-stream", [this, id, cursor, last_write](std::size_t, httplib::DataSink& sink) {
          if (stopping) return false;
          std::uint64_t generation;
          {
            std::lock_guard lock(event_mutex);
            generation = event_generation;
          }
          auto events = state->events(id, *cursor, 500);
          std::string out;
          for (const auto& e : events) {
            out += fmt::format("id: {}\nevent: {}\ndata: {}\n\n", e.seq, e.kind, e.data);
            *cursor = e.seq;
          }
          if (events.empty()) {
            auto b = state->build(id);
            if (!b || (b->state != BuildState::kQueued && b->state != BuildState::kRunning)) {
              std::string end =
                  fmt::format("event: end\ndata: {}\n\n",
                              json{{"state", b ? build_state_name(b->state) : "gone"}}.dump());
              sink.write(end.data(), end.size());
              sink.done();
              return true;
            }
            std::unique_lock lock(event_mutex);
            event_cv.wait_for(lock, std::chrono::seconds(1),
                              [&] { return event_generation != generation || stopping; });
            if (std::chrono::steady_clock::now() - *last_write > std::chrono::seconds(15))
              out = ": keep-alive\n\n";
          }
          if (!out.empty()) {
            *last_write = std::chrono::steady_clock::now();
            if (!sink.write(out.data(), out.size())) return false;
          }
          return true;
        });
  }

  void download(const httplib::Request& req, httplib::Response& res, const std::string& id,
                const std::string& name) {
    BuildRecord b = find_build(id);
    if (b.state != BuildState::kSucceeded)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to find artifact {} of build {}: the build is {}, only a "
                              "succeeded build has artifacts",
                              name, id, build_state_name(b.state)));
    std::optional<StoredArtifact> found;
    for (const auto& a : json::parse(b.artifacts))
      if (a.value("name", "") == name)
        found = StoredArtifact{name, a.value("size", std::uint64_t{0}), a.value("sha256", "")};
    if (!found)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to find artifact {:?} of build {}: it has no such artifact",
                              name.substr(0, 100), id));
    auto path = store->locate(id, *found);
    if (!path)
      throw Error(
          ErrorKind::kNotFound,
          fmt::format("Failed to find artifact {} of build {}: it is gone from the store {}", name,
                      id, store->describe()));
    // httplib answers a range past the end with an empty 206; RFC 9110 says 416.
    for (const auto& [first, last] : req.ranges)
      if (first >= 0 && static_cast<std::uint64_t>(first) >= found->size) {
        res.set_header("Content-Range", fmt::format("bytes */{}", found->size));
        throw ApiError(416, "invalid-input",
                       fmt::format("Failed to serve artifact {} of build {}: the range starts at "
                                   "byte {}, past its {} bytes",
                                   name, id, first, found->size));
      }
    auto fd = std::make_shared<util::UniqueFd>(util::open_file(*path, O_RDONLY | O_CLOEXEC));
    res.set_header("X-Checksum-Sha256", found->sha256);
    res.set_header("Digest", "sha-256=" + base64(hex_to_bytes(found->sha256)));
    res.set_header("Content-Disposition", fmt::format("attachment; filename=\"{}\"", name));
    res.set_header("Accept-Ranges", "bytes");
    res.set_content_provider(found->size, content_type_for(name),
                             [fd](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
                               std::vector<char> buf(std::min<std::size_t>(length, 256u << 10));
                               ssize_t n = ::pread(fd->get(), buf.data(), buf.size(),
                                                   static_cast<off_t>(offset));
                               if (n <= 0) return false;
                               return sink.write(buf.data(), static_cast<std::size_t>(n));
                             });
  }

  // --- routes ----------------------------------------------------------------------------

  void routes() {
    http.new_task_queue = [] { return new httplib::ThreadPool(64); };
    // Without it a response's body waits for the client's delayed ACK of its headers (~40 ms).
    http.set_tcp_nodelay(true);
    http.set_payload_max_length(o.max_body);
    http.set_read_timeout(30, 0);
    http.set_keep_alive_max_count(1000);
    http.set_post_routing_handler([](const httplib::Request&, httplib::Response& res) {
      res.set_header("X-Content-Type-Options", "nosniff");
      res.set_header("X-Frame-Options", "DENY");
      res.set_header("Referrer-Policy", "no-referrer");
      res.set_header("Content-Security-Policy",
                     "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                     "script-src 'self'; connect-src 'self'; frame-ancestors 'none'");
    });
    http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 413)
        send_error(res, 413, "too-large",
                   fmt::format("Failed to read the request: the body is larger than the service's "
                               "limit of {} bytes (--max-body)",
                               o.max_body));
      else if (res.status == 404)
        send_error(res, 404, "not-found",
                   fmt::format("Failed to find {}: no such page or API route", req.path));
      else if (res.status == 416)
        send_error(res, 416, "invalid-input", "Failed to serve the range: it is outside the file");
      else
        send_error(res, res.status, "invalid-input",
                   fmt::format("Failed to serve {} {}", req.method, req.path));
    });
    if (!o.web_dir.empty() && fs::is_directory(o.web_dir))
      http.set_mount_point("/", o.web_dir.string());

    get("/api/v1/openapi.json", Access::kPublic,
        [this](const httplib::Request&, httplib::Response& res, const Caller&) {
          res.set_content(openapi, "application/json");
        });
    get("/api/v1/health", Access::kPublic,
        [this](const httplib::Request&, httplib::Response& res, const Caller&) {
          auto counts = state->queue_counts();
          send_json(res, 200,
                    {{"status", "ok"},
                     {"version", o.version},
                     {"database", state->dialect() == SqlDialect::kSqlite ? "sqlite" : "postgres"},
                     {"queued", counts.queued},
                     {"running", counts.running}});
        });

    post("/api/v1/session", Access::kPublic,
         [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
           std::string token = string_field(parse_body(req), "token");
           SessionGrant g = state->login(token);
           res.set_header("Set-Cookie",
                          fmt::format("{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                                      kSessionCookie, g.cookie, (g.expires_at - now_ms()) / 1000));
           send_json(res, 200, {{"user", user_json(g.user)}, {"csrfToken", g.csrf}});
         });
    get("/api/v1/session", Access::kUser,
        [](const httplib::Request&, httplib::Response& res, const Caller& c) {
          send_json(res, 200,
                    {{"user", user_json(c.user)},
                     {"csrfToken", c.via == "session" ? json(c.csrf) : json(nullptr)}});
        });
    del("/api/v1/session", Access::kUser,
        [this](const httplib::Request&, httplib::Response& res, const Caller& c) {
          if (c.via == "session") state->logout(c.session_id);
          res.set_header(
              "Set-Cookie",
              fmt::format("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0", kSessionCookie));
          res.status = 204;
        });

    get("/api/v1/users", Access::kAdmin,
        [this](const httplib::Request&, httplib::Response& res, const Caller&) {
          json users = json::array();
          for (const auto& u : state->users()) users.push_back(user_json(u));
          send_json(res, 200, {{"users", users}});
        });
    post("/api/v1/users", Access::kAdmin,
         [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
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

    get("/api/v1/tokens", Access::kUser,
        [this](const httplib::Request&, httplib::Response& res, const Caller& c) {
          json tokens = json::array();
          for (const auto& t : state->api_tokens(c.user))
            tokens.push_back({{"id", t.id},
                              {"name", t.name},
                              {"createdAt", time_json(t.created_at)},
                              {"lastUsedAt", time_json(t.last_used_at)}});
          send_json(res, 200, {{"tokens", tokens}});
        });
    post("/api/v1/tokens", Access::kUser,
         [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
           std::string name = string_field(parse_body(req), "name");
           if (name.empty() || name.size() > 64)
             throw Error(ErrorKind::kInvalidInput,
                         "Failed to create the token: name must be 1-64 characters");
           for (unsigned char ch : name)
             if (ch < 0x20 || ch == 0x7f)
               throw Error(ErrorKind::kInvalidInput,
                           "Failed to create the token: name holds a control character");
           NewToken t = state->create_api_token(c.user, name);
           send_json(res, 201,
                     {{"id", t.info.id},
                      {"name", t.info.name},
                      {"createdAt", time_json(t.info.created_at)},
                      {"lastUsedAt", nullptr},
                      {"token", t.secret}});
         });
    del(fmt::format("/api/v1/tokens/{}", kIdPattern), Access::kUser,
        [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
          if (!state->delete_api_token(c.user, req.matches[1].str()))
            throw Error(ErrorKind::kNotFound,
                        fmt::format("Failed to revoke token {}: you have no such token",
                                    req.matches[1].str()));
          res.status = 204;
        });

    get("/api/v1/templates", Access::kUser,
        [this](const httplib::Request&, httplib::Response& res, const Caller&) {
          json list = json::array();
          for (const auto& t : templates)
            list.push_back(
                {{"name", t.name}, {"title", t.title}, {"family", t.family}, {"base", t.base}});
          send_json(res, 200, {{"templates", list}});
        });
    get("/api/v1/capabilities", Access::kUser,
        [this](const httplib::Request&, httplib::Response& res, const Caller&) {
          send_json(res, 200, capabilities(o.allow_local_sources, limits, o.max_body));
        });
    post("/api/v1/specs/validate", Access::kUser,
         [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
           validate_spec(req, res);
         });
    post("/api/v1/cloud-config/validate", Access::kUser,
         [](const httplib::Request& req, httplib::Response& res, const Caller&) {
           std::string text = string_field(parse_body(req), "text");
           json verdict = {{"valid", true}};
           try {
             if (!config::has_cloud_config_header(text))
               throw Error(
                   ErrorKind::kInvalidInput,
                   "Failed to read cloud-config cloud-config.yaml: line 1: the first line must be "
                   "#cloud-config");
             config::parse_cloud_config(text, "cloud-config.yaml");
           } catch (const Error& e) {
             verdict["valid"] = false;
             verdict["error"] = e.what();
             std::string_view m = e.what();
             if (auto at = m.find(": line "); at != std::string_view::npos)
               verdict["line"] = std::atoi(std::string(m.substr(at + 7)).c_str());
           }
           send_json(res, 200, verdict);
         });

    get("/api/v1/builds", Access::kUser,
        [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
          std::optional<BuildState> filter;
          if (req.has_param("state")) {
            filter = parse_build_state(req.get_param_value("state"));
            if (!filter)
              throw Error(ErrorKind::kInvalidInput,
                          "Failed to list builds: state must be queued, running, succeeded, failed "
                          "or canceled");
          }
          auto number = [&](const char* key, std::int64_t def, std::int64_t lo, std::int64_t hi) {
            if (!req.has_param(key)) return def;
            std::string v = req.get_param_value(key);
            std::int64_t n = 0;
            auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
            if (ec != std::errc() || p != v.data() + v.size() || n < lo || n > hi)
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
    post("/api/v1/builds", Access::kUser,
         [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
           create_build(req, res, c);
         });
    get(fmt::format("/api/v1/builds/{}", kIdPattern), Access::kUser,
        [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
          send_json(res, 200, build_json(find_build(req.matches[1].str())));
        });
    post(fmt::format("/api/v1/builds/{}/cancel", kIdPattern), Access::kUser,
         [this](const httplib::Request& req, httplib::Response& res, const Caller& c) {
           BuildRecord b = find_build(req.matches[1].str());
           if (b.owner != c.user.id && c.user.role != "admin")
             throw ApiError(403, "forbidden",
                            fmt::format("Failed to cancel build {}: it is {}'s, and only they or "
                                        "an admin may cancel it",
                                        b.id, b.owner_name));
           BuildRecord after = state->cancel_build(b.id);
           notify();
           send_json(res, 202, build_json(after));
         });
    get(fmt::format("/api/v1/builds/{}/spec", kIdPattern), Access::kUser,
        [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
          BuildRecord b = find_build(req.matches[1].str());
          send_json(res, 200, {{"spec", b.spec}, {"files", json::parse(b.files)}});
        });
    get(fmt::format("/api/v1/builds/{}/log", kIdPattern), Access::kUser,
        [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
          std::string id = find_build(req.matches[1].str()).id;
          std::string text;
          for (std::int64_t after = 0;;) {
            auto events = state->events(id, after, 5000);
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
          res.set_content(text, "text/plain; charset=utf-8");
        });
    get(fmt::format("/api/v1/builds/{}/events", kIdPattern), Access::kUser,
        [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
          stream_events(req, res, req.matches[1].str());
        });
    get(fmt::format("/api/v1/builds/{}/artifacts/([^/]+)", kIdPattern), Access::kUser,
        [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
          download(req, res, req.matches[1].str(), req.matches[2].str());
        });

    get("/api/v1/keysets", Access::kUser,
        [this](const httplib::Request&, httplib::Response& res, const Caller&) {
          send_json(res, 200, {{"keysets", keysets->list()}});
        });
    post("/api/v1/keysets", Access::kAdmin,
         [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
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
                           fmt::format("Failed to read the request: files.{} must be a string",
                                       file.substr(0, 64)));
             files.emplace(file, text.get<std::string>());
           }
           send_json(res, 201, keysets->create(name, files));
         });
    get("/api/v1/keysets/([^/]+)", Access::kUser,
        [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
          auto d = keysets->describe(req.matches[1].str());
          if (!d)
            throw Error(ErrorKind::kNotFound,
                        fmt::format("Failed to find key set {:?}: no such key set",
                                    req.matches[1].str().substr(0, 64)));
          send_json(res, 200, *d);
        });
    del("/api/v1/keysets/([^/]+)", Access::kAdmin,
        [this](const httplib::Request& req, httplib::Response& res, const Caller&) {
          if (!keysets->remove(req.matches[1].str()))
            throw Error(ErrorKind::kNotFound,
                        fmt::format("Failed to delete key set {:?}: no such key set",
                                    req.matches[1].str().substr(0, 64)));
          res.status = 204;
        });
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
  if (port == 0) {
    port = impl_->http.bind_to_any_port(host);
    if (port < 0)
      throw Error(ErrorKind::kIo, fmt::format("Failed to listen on {}: cannot bind", listen));
  } else if (!impl_->http.bind_to_port(host, port)) {
    throw Error(ErrorKind::kIo,
                fmt::format("Failed to listen on {}: the address is in use or not local", listen));
  }
  return port;
}

void Service::run() {
  impl_->runner->start(impl_->o.jobs);
  impl_->http.listen_after_bind();
  // Builds in progress go back to the queue for the next start.
  impl_->runner->stop();
}

void Service::stop() {
  impl_->stopping = true;
  impl_->notify();
  impl_->http.stop();
}

}  // namespace pok8s::server
