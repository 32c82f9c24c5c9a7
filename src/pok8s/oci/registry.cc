// The registry transport after the OCI distribution spec v2 (pull, monolithic push) and
// distribution's token authentication spec, on libcurl.
#include "pok8s/oci/registry.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "pok8s/oci/credentials.h"
#include "pok8s/oci/curl_handles.h"
#include "pok8s/oci/outbound.h"
#include "pok8s/util/ascii.h"
#include "pok8s/util/error.h"
#include "pok8s/util/parallel.h"

namespace pok8s::oci {

namespace {

// Error bodies are read for their message only; anything beyond this is dropped.
constexpr std::size_t kMaxErrorBodyBytes = 64u << 10;
constexpr std::uint64_t kProgressStep = 256u << 10;
constexpr long kConnectTimeoutSeconds = 30;
// A transfer that moves no byte for this long is treated as a timeout (and retried).
constexpr long kStallSeconds = 60;
constexpr int kMaxBackoffMs = 30'000;

// Retryable failures: connection resets, timeouts, 5xx and 429. retrying() catches only these.
class TransientError : public Error {
 public:
  using Error::Error;
};

// An address the outbound policy refused: final, never retried, and never a reason to try
// plain HTTP instead.
class RefusedError : public Error {
 public:
  using Error::Error;
};

// libcurl's global state is set up once for the process and never torn down: other threads
// may still hold handles when static destructors run.
void curl_global_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      throw Error(ErrorKind::kInternal, "Failed to initialise libcurl");
  });
}

struct CurlEasyDeleter {
  void operator()(CURL* h) const { curl_easy_cleanup(h); }
};
struct CurlSlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};

// One easy handle per thread, reset before each request: concurrent transfers never share a
// handle, and consecutive requests of a thread reuse its connections. Trusted destinations get
// handles of their own: a connection they opened to an address the policy refuses must never
// be reused, without a new check, by a request to a user's registry on the same host and port.
CURL* thread_handle(bool trusted) {
  thread_local std::unique_ptr<CURL, CurlEasyDeleter> user_handle;
  thread_local std::unique_ptr<CURL, CurlEasyDeleter> trusted_handle;
  auto& handle = trusted ? trusted_handle : user_handle;
  if (!handle) {
    curl_global_once();
    handle.reset(curl_easy_init());
    if (!handle) throw Error(ErrorKind::kInternal, "Failed to create a libcurl handle");
  }
  curl_easy_reset(handle.get());
  return handle.get();
}

std::string trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return std::string(s);
}

// Printable, bounded text from a server for a one-line message.
std::string printable(std::string_view s, std::size_t limit = 300) {
  std::string out;
  for (char c : s.substr(0, limit)) out += (c < 0x20 || c >= 0x7f) ? ' ' : c;
  if (s.size() > limit) out += "…";
  return out;
}

struct UrlParts {
  std::string scheme, host, port;
  std::string origin() const { return scheme + "://" + host + ":" + port; }
};

std::optional<UrlParts> url_parts(const std::string& url) {
  CurlUrl u(curl_url());
  if (!u || curl_url_set(u.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) return std::nullopt;
  auto get = [&](CURLUPart part, unsigned flags) -> std::string {
    char* out = nullptr;
    if (curl_url_get(u.get(), part, &out, flags) != CURLUE_OK) return {};
    CurlString owned(out);
    return out;
  };
  UrlParts p{util::ascii_lower(get(CURLUPART_SCHEME, 0)), util::ascii_lower(get(CURLUPART_HOST, 0)),
             get(CURLUPART_PORT, CURLU_DEFAULT_PORT)};
  if (p.scheme != "http" && p.scheme != "https") return std::nullopt;
  return p;
}

// Resolves `reference` (absolute or relative, as a Location header may be) against `base`
// and appends `query` ("name=value", value URL-encoded) to any query it already has.
std::string resolve_url(const std::string& base, const std::string& reference,
                        const std::vector<std::string>& queries) {
  CurlUrl u(curl_url());
  if (!u || curl_url_set(u.get(), CURLUPART_URL, base.c_str(), 0) != CURLUE_OK ||
      (!reference.empty() &&
       curl_url_set(u.get(), CURLUPART_URL, reference.c_str(), 0) != CURLUE_OK))
    throw Error(ErrorKind::kFormat, fmt::format("Failed to resolve the URL \"{}\" against {}",
                                                printable(reference, 200), base));
  for (const auto& q : queries)
    if (curl_url_set(u.get(), CURLUPART_QUERY, q.c_str(), CURLU_APPENDQUERY | CURLU_URLENCODE) !=
        CURLUE_OK)
      throw Error(ErrorKind::kInternal, "Failed to build a URL query");
  char* out = nullptr;
  if (curl_url_get(u.get(), CURLUPART_URL, &out, 0) != CURLUE_OK)
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to resolve the URL \"{}\"", printable(reference, 200)));
  CurlString owned(out);
  std::string url = out;
  if (!url_parts(url))
    throw Error(
        ErrorKind::kFormat,
        fmt::format("Refusing the URL \"{}\": only http and https are used", printable(url, 200)));
  return url;
}

struct Request {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;
  RegistryAccess access = RegistryAccess::kPull;
  // Off for the token server: its credentials are set explicitly.
  bool authenticate = true;
  std::optional<std::string> authorization;
  // An upload body: bytes or a file.
  std::string_view body;
  const util::Path* body_file = nullptr;
  std::uint64_t body_size = 0;
  std::function<void(std::uint64_t)> on_sent;
  // A 2xx body goes to `sink` when set, else into Response::body up to `body_limit`.
  std::function<void(std::string_view)> sink;
  std::uint64_t body_limit = kMaxErrorBodyBytes;
};

struct Response {
  long status = 0;
  std::map<std::string, std::string> headers;  // names in lowercase; the last response only
  std::string body;
  std::string url;  // after redirects
  // Under the outbound policy's public_only: messages carry none of the server's own words
  // (they could be an internal service's answer, relayed to whoever named it).
  bool redact = false;

  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

struct Transfer {
  CURL* handle = nullptr;
  const Request* request = nullptr;
  Response* response = nullptr;
  std::exception_ptr sink_error;
  bool too_large = false;
  util::UniqueFd file;
  std::uint64_t sent = 0;
};

std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::string_view line(data, size * count);
  if (line.substr(0, 5) == "HTTP/") {
    // A new response (after a redirect or a 100 Continue) replaces the previous headers.
    t->response->headers.clear();
  } else if (auto colon = line.find(':'); colon != std::string_view::npos) {
    if (t->response->headers.size() < 200)
      t->response->headers[util::ascii_lower(trim(line.substr(0, colon)))] =
          trim(line.substr(colon + 1));
  }
  return size * count;
}

std::size_t on_write(char* data, std::size_t size, std::size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::size_t len = size * count;
  long status = 0;
  curl_easy_getinfo(t->handle, CURLINFO_RESPONSE_CODE, &status);
  bool ok = status >= 200 && status < 300;
  if (ok && t->request->sink) {
    try {
      t->request->sink(std::string_view(data, len));
    } catch (...) {
      // Exceptions must not cross libcurl; perform() rethrows this one.
      t->sink_error = std::current_exception();
      return 0;
    }
    return len;
  }
  std::string& body = t->response->body;
  std::uint64_t limit = ok ? t->request->body_limit : kMaxErrorBodyBytes;
  if (body.size() + len > limit) {
    if (ok) {
      t->too_large = true;
      return 0;
    }
    body.append(data, static_cast<std::size_t>(limit - body.size()));
    return len;
  }
  body.append(data, len);
  return len;
}

std::size_t on_read(char* buffer, std::size_t size, std::size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::size_t len = size * count;
  std::size_t n = 0;
  if (t->file.valid()) {
    ssize_t r;
    do {
      r = ::read(t->file.get(), buffer, len);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return CURL_READFUNC_ABORT;
    n = static_cast<std::size_t>(r);
  } else {
    std::string_view body = t->request->body;
    n = std::min<std::size_t>(len, body.size() - std::min<std::size_t>(t->sent, body.size()));
    std::copy_n(body.data() + t->sent, n, buffer);
  }
  t->sent += n;
  if (t->request->on_sent && n > 0) t->request->on_sent(t->sent);
  return n;
}

bool is_transient(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
      return true;
    default:
      return false;
  }
}

// The error codes of the OCI distribution spec: a fixed vocabulary, safe to repeat.
bool is_spec_error_code(std::string_view code) {
  static constexpr std::string_view kCodes[] = {
      "BLOB_UNKNOWN",          "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
      "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID",    "MANIFEST_UNKNOWN",    "NAME_INVALID",
      "NAME_UNKNOWN",          "SIZE_INVALID",        "UNAUTHORIZED",        "DENIED",
      "UNSUPPORTED",           "TOOMANYREQUESTS"};
  return std::find(std::begin(kCodes), std::end(kCodes), code) != std::end(kCodes);
}

// The registry's own words for a failure: the spec's {"errors":[{"code","message"}]}; when
// redacted, only a code from the spec's list.
std::string error_reason(const Response& r) {
  std::string reason;
  try {
    auto doc = nlohmann::json::parse(r.body);
    if (doc.is_object() && doc.contains("errors") && doc["errors"].is_array()) {
      for (const auto& e : doc["errors"]) {
        if (!e.is_object()) continue;
        std::string code, text;
        if (e.contains("code") && e["code"].is_string()) code = e["code"];
        if (!r.redact && e.contains("message") && e["message"].is_string()) text = e["message"];
        if (text.empty() && (!r.redact || is_spec_error_code(code))) text = util::ascii_lower(code);
        if (text.empty()) continue;
        if (!reason.empty()) reason += "; ";
        reason += text;
        // One fixed code says enough, and a list of them could still spell something out.
        if (r.redact) break;
      }
    }
  } catch (const nlohmann::json::exception&) {
  }
  if (reason.empty()) {
    switch (r.status) {
      case 401:
        reason = "unauthorized";
        break;
      case 403:
        reason = "access denied";
        break;
      case 404:
        reason = "not found";
        break;
      case 429:
        reason = "too many requests";
        break;
      default:
        reason = r.status >= 500 ? "server error" : "request refused";
        break;
    }
  }
  return fmt::format("{} (HTTP {})", printable(reason), r.status);
}

ErrorKind kind_for_status(long status) {
  if (status == 404) return ErrorKind::kNotFound;
  if (status == 401 || status == 403) return ErrorKind::kAuth;
  if (status >= 500 || status == 429) return ErrorKind::kIo;
  return ErrorKind::kInvalidInput;
}

[[noreturn]] void fail_status(const Response& r, std::string_view action) {
  std::string message = fmt::format("Failed to {}: {}", action, error_reason(r));
  if (r.status >= 500 || r.status == 429) throw TransientError(ErrorKind::kIo, message);
  throw Error(kind_for_status(r.status), message);
}

// The media type of a Content-Type header, without parameters, in lowercase.
std::string content_type_of(const Response& r) {
  std::string ct = r.header("content-type");
  if (auto semi = ct.find(';'); semi != std::string::npos) ct.resize(semi);
  return util::ascii_lower(trim(ct));
}

constexpr std::string_view kManifestAccept =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json";

class ProgressThrottle {
 public:
  ProgressThrottle(const ProgressFn& fn, std::string what, std::uint64_t total)
      : fn_(fn), what_(std::move(what)), total_(total) {}
  void start() {
    last_ = 0;
    if (fn_) fn_({ProgressEvent::Kind::kBlobStart, what_, 0, total_});
  }
  void bytes(std::uint64_t done) {
    if (!fn_ || done < last_ + std::max<std::uint64_t>(kProgressStep, total_ / 100)) return;
    last_ = done;
    fn_({ProgressEvent::Kind::kBlobBytes, what_, done, total_});
  }
  void done() {
    if (fn_) fn_({ProgressEvent::Kind::kBlobDone, what_, total_, total_});
  }

 private:
  const ProgressFn& fn_;
  std::string what_;
  std::uint64_t total_;
  std::uint64_t last_ = 0;
};

}  // namespace

struct RegistryClient::Impl {
  RegistryReference ref;
  TransportOptions options;
  RegistryAccess access;
  std::optional<Credentials> credentials;

  std::mutex base_mu;
  std::string base;  // "https://host[:port]" or "http://…", decided on first use

  enum class AuthMode { kNone, kBasic, kBearer };
  struct CachedToken {
    std::string token;
    std::chrono::steady_clock::time_point expires;
  };
  std::mutex auth_mu;
  AuthMode mode = AuthMode::kNone;
  std::map<std::string, CachedToken> tokens;  // by scope

  std::string name() const { return "docker://" + ref.str(); }
  std::string scope(RegistryAccess a) const {
    return "repository:" + ref.repository + (a == RegistryAccess::kPush ? ":pull,push" : ":pull");
  }

  template <typename F>
  auto retrying(F&& fn) -> decltype(fn()) {
    for (int attempt = 0;; ++attempt) {
      try {
        return fn();
      } catch (const TransientError& e) {
        if (attempt >= options.retries)
          throw Error(e.kind(),
                      fmt::format("{} (gave up after {} attempts)", e.what(), attempt + 1));
        long long delay = static_cast<long long>(std::max(0, options.retry_delay_ms))
                          << std::min(attempt, 16);
        std::this_thread::sleep_for(
            std::chrono::milliseconds(std::min<long long>(delay, kMaxBackoffMs)));
      }
    }
  }

  // Whether messages leave out what the registry said (see Response::redact).
  bool redact() const { return outbound_policy().public_only && !options.trusted; }

  // One HTTP exchange; throws TransientError on the connection failures worth a retry and
  // RefusedError when the outbound policy refuses an address on the way.
  Response perform(const Request& req, const std::optional<std::string>& authorization,
                   std::string_view action) {
    CURL* h = thread_handle(options.trusted);
    OutboundCheck check(options.trusted);
    Response resp;
    resp.redact = redact();
    Transfer t;
    t.handle = h;
    t.request = &req;
    t.response = &resp;
    char error_buffer[CURL_ERROR_SIZE] = {};
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, error_buffer);
    curl_easy_setopt(h, CURLOPT_URL, req.url.c_str());
    // Every address on the way, redirects and token realms included, passes the policy.
    apply_outbound_policy(h, check, req.url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, kConnectTimeoutSeconds);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, kStallSeconds);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "pok8s/0.1");
    if (!options.tls_verify) {
      curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
      curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(h, CURLOPT_READDATA, &t);

    if (req.method == "GET" || req.method == "HEAD") {
      // Blob GETs redirect to storage; libcurl drops our Authorization on another host.
      curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
      curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
      if (req.method == "HEAD") curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (req.method == "POST") {
      curl_easy_setopt(h, CURLOPT_POST, 1L);
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t{0});
    } else if (req.method == "PUT") {
      curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
      if (req.body_file) {
        t.file = util::open_file(*req.body_file, O_RDONLY | O_CLOEXEC);
        curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req.body_size));
      } else {
        curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
      }
    } else {
      throw Error(ErrorKind::kInternal, "unsupported HTTP method " + req.method);
    }

    std::unique_ptr<curl_slist, CurlSlistDeleter> headers;
    auto add = [&](const std::string& line) {
      // On failure the list is left as it was, still owned by `headers`.
      curl_slist* head = curl_slist_append(headers.get(), line.c_str());
      if (!head) throw Error(ErrorKind::kInternal, "Failed to allocate an HTTP header");
      if (!headers) headers.reset(head);
    };
    for (const auto& line : req.headers) add(line);
    if (authorization) add("Authorization: " + *authorization);
    add("Expect:");  // no 100-continue round trip before uploads
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers.get());

    CURLcode code = curl_easy_perform(h);
    if (t.sink_error) std::rethrow_exception(t.sink_error);
    if (t.too_large)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to {}: the registry sent more than {} bytes", action,
                              req.body_limit));
    if (code != CURLE_OK) {
      std::string detail = check.failure_reason(
          h, code, printable(error_buffer[0] ? error_buffer : curl_easy_strerror(code)));
      std::string message = fmt::format("Failed to {}: {}", action, detail);
      if (check.refused(code)) throw RefusedError(ErrorKind::kInvalidInput, message);
      // While enforcing, a TLS handshake that failed is "no answer" like any other failure, so
      // no hint may tell it apart; an untrusted certificate is named as such either way.
      if (options.tls_verify && (code == CURLE_PEER_FAILED_VERIFICATION ||
                                 (code == CURLE_SSL_CONNECT_ERROR && !check.enforcing())))
        message +=
            " (for a registry without a trusted certificate or on plain HTTP, use "
            "--tls-verify=false)";
      // While enforcing, every failure to connect is retried alike: how many attempts were
      // made must not tell a closed port from an open one either.
      if (is_transient(code) || (check.enforcing() && code != CURLE_PEER_FAILED_VERIFICATION &&
                                 code != CURLE_TOO_MANY_REDIRECTS))
        throw TransientError(ErrorKind::kIo, message);
      throw Error(ErrorKind::kIo, message);
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp.status);
    char* effective = nullptr;
    if (curl_easy_getinfo(h, CURLINFO_EFFECTIVE_URL, &effective) == CURLE_OK && effective)
      resp.url = effective;
    return resp;
  }

  // The scheme and host every URL starts with; probes http when TLS is not verified.
  std::string base_url() {
    std::lock_guard lock(base_mu);
    if (!base.empty()) return base;
    std::string https = "https://" + ref.api_host();
    if (options.tls_verify) return base = https;
    Request probe;
    probe.url = https + "/v2/";
    try {
      perform(probe, std::nullopt, "reach " + name());
      return base = https;
    } catch (const RefusedError&) {
      throw;  // the same address over plain HTTP is refused alike
    } catch (const Error&) {
      // Not TLS (or not reachable over it): try plain HTTP below.
    }
    std::string http = "http://" + ref.api_host();
    probe.url = http + "/v2/";
    retrying([&] {
      Response r = perform(probe, std::nullopt, "reach " + name());
      if (r.status >= 500 || r.status == 429) fail_status(r, "reach " + name());
      return r;
    });
    return base = http;
  }

  std::optional<std::string> authorization_for(RegistryAccess a) {
    std::lock_guard lock(auth_mu);
    if (mode == AuthMode::kBasic && credentials) return credentials->basic_authorization();
    if (mode == AuthMode::kBearer) {
      auto it = tokens.find(scope(a));
      if (it != tokens.end() && std::chrono::steady_clock::now() < it->second.expires)
        return "Bearer " + it->second.token;
    }
    return std::nullopt;
  }

  std::string no_credentials_hint() const {
    return fmt::format(
        "no credentials for {} (pass --creds USER:PASSWORD or add it to an "
        "auth.json)",
        ref.registry);
  }

  // Answers a 401: fetches a bearer token for the challenge, or switches to basic auth.
  void authenticate(const Response& challenge_response, RegistryAccess a, std::string_view action) {
    std::string header = challenge_response.header("www-authenticate");
    if (header.empty())
      throw Error(ErrorKind::kAuth, fmt::format("Failed to {}: {} without a WWW-Authenticate "
                                                "challenge",
                                                action, error_reason(challenge_response)));
    std::vector<AuthChallenge> challenges;
    try {
      challenges = parse_www_authenticate(header);
    } catch (const Error&) {
      if (!redact()) throw;
      throw Error(
          ErrorKind::kFormat,
          fmt::format("Failed to {}: the registry's WWW-Authenticate header is malformed", action));
    }
    const AuthChallenge* bearer = nullptr;
    const AuthChallenge* basic = nullptr;
    for (const auto& c : challenges) {
      if (c.scheme == "bearer" && !bearer) bearer = &c;
      if (c.scheme == "basic" && !basic) basic = &c;
    }
    if (bearer) {
      fetch_token(*bearer, a, action);
      std::lock_guard lock(auth_mu);
      mode = AuthMode::kBearer;
      return;
    }
    if (basic) {
      if (!credentials)
        throw Error(ErrorKind::kAuth, fmt::format("Failed to {}: the registry requires "
                                                  "authentication and there are {}",
                                                  action, no_credentials_hint()));
      std::lock_guard lock(auth_mu);
      mode = AuthMode::kBasic;
      return;
    }
    if (redact())
      throw Error(ErrorKind::kUnsupported,
                  fmt::format("Failed to {}: the registry asks for an authentication scheme other "
                              "than Bearer and Basic, which pok8s speaks",
                              action));
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to {}: the registry asks for \"{}\" authentication; pok8s "
                            "speaks Bearer and Basic",
                            action, printable(challenges.front().scheme, 40)));
  }

  std::string fetch_token(const AuthChallenge& challenge, RegistryAccess a,
                          std::string_view action) {
    std::string realm = challenge.param("realm");
    auto realm_parts = url_parts(realm);
    if (realm.empty() || !realm_parts) {
      if (redact())
        throw Error(
            ErrorKind::kAuth,
            fmt::format("Failed to {}: the registry's token realm is not an http(s) URL", action));
      throw Error(ErrorKind::kAuth, fmt::format("Failed to {}: the registry's token realm \"{}\" "
                                                "is not an http(s) URL",
                                                action, printable(realm, 200)));
    }
    // The realm is a URL the registry names: a registry on the internet could send us to any
    // host the policy allows for other reasons (an internal mirror), with credentials.
    auto registry_parts = url_parts(base_url());
    std::string registry_host = registry_parts ? registry_parts->host : ref.registry;
    if (!options.trusted &&
        !realm_host_allowed(outbound_policy(), registry_host, realm_parts->host))
      throw RefusedError(ErrorKind::kInvalidInput,
                         fmt::format("Failed to {}: the registry's token realm {} is on another "
                                     "host than the registry ({}), which this service does not "
                                     "fetch tokens from",
                                     action, printable(realm_parts->host, 100), registry_host));
    std::vector<std::string> queries;
    if (auto service = challenge.param("service"); !service.empty())
      queries.push_back("service=" + service);
    queries.push_back("scope=" + scope(a));
    Request req;
    req.url = resolve_url(realm, {}, queries);
    req.authenticate = false;
    req.body_limit = kMaxTokenReplyBytes;
    std::optional<std::string> authorization;
    if (credentials) authorization = credentials->basic_authorization();
    auto host = url_parts(req.url);
    std::string token_action = fmt::format("{}: token server {}", action, host ? host->host : "?");
    Response r = retrying([&] {
      Response resp = perform(req, authorization, token_action);
      if (resp.status >= 500 || resp.status == 429) fail_status(resp, token_action);
      return resp;
    });
    if (r.status == 401 || r.status == 403) {
      if (credentials)
        throw Error(ErrorKind::kAuth,
                    fmt::format("Failed to {}: the token server refused the credentials of user "
                                "\"{}\": {}",
                                action, printable(credentials->username, 100), error_reason(r)));
      throw Error(ErrorKind::kAuth, fmt::format("Failed to {}: the token server wants "
                                                "credentials and there are {}",
                                                action, no_credentials_hint()));
    }
    if (r.status != 200) fail_status(r, token_action);
    BearerToken token;
    try {
      token = parse_token_response(r.body);
    } catch (const Error& e) {
      throw Error(ErrorKind::kAuth, fmt::format("Failed to {}: {}", action, e.what()));
    }
    std::lock_guard lock(auth_mu);
    // Renew a little early so a token does not expire in flight.
    auto lifetime = std::chrono::seconds(std::max(1, token.expires_in - 5));
    tokens[scope(a)] = CachedToken{token.token, std::chrono::steady_clock::now() + lifetime};
    return token.token;
  }

  // One request with authentication: a 401 is answered once, then the request is resent.
  // Throws TransientError on 5xx/429 and connection resets, Error on 401/403.
  Response exchange(const Request& req, std::string_view action) {
    auto origin = url_parts(req.url);
    auto base_origin = url_parts(base_url());
    // Credentials go only to the registry itself, never to a host a Location points at.
    bool ours = origin && base_origin && origin->origin() == base_origin->origin();
    for (int round = 0;; ++round) {
      std::optional<std::string> authorization;
      if (ours) authorization = authorization_for(req.access);
      Response r = perform(req, authorization, action);
      if (r.status == 401 && ours && round == 0) {
        authenticate(r, req.access, action);
        continue;
      }
      if (r.status == 401) {
        std::lock_guard lock(auth_mu);
        if (credentials)
          throw Error(ErrorKind::kAuth,
                      fmt::format("Failed to {}: the registry refused the credentials of user "
                                  "\"{}\": {}",
                                  action, printable(credentials->username, 100), error_reason(r)));
        throw Error(ErrorKind::kAuth, fmt::format("Failed to {}: {}; there are {}", action,
                                                  error_reason(r), no_credentials_hint()));
      }
      if (r.status >= 500 || r.status == 429 || r.status == 403) fail_status(r, action);
      return r;
    }
  }

  std::string url(std::string_view kind, const std::string& reference) {
    // The repository comes from a validated RegistryReference and `reference` is a
    // validated tag or digest, so neither needs escaping.
    return fmt::format("{}/v2/{}/{}/{}", base_url(), ref.repository, kind, reference);
  }

  RawDocument get_manifest(const std::string& reference, const std::optional<Digest>& expected,
                           std::string_view action) {
    Request req;
    req.url = url("manifests", reference);
    req.headers.push_back(fmt::format("Accept: {}", kManifestAccept));
    req.access = access;
    req.body_limit = kMaxManifestBytes;
    Response r = retrying([&] { return exchange(req, action); });
    if (r.status != 200) fail_status(r, action);
    RawDocument doc;
    doc.bytes = std::move(r.body);
    std::string ct = content_type_of(r);
    static const std::string_view kKnown[] = {media_type::kOciManifest, media_type::kOciIndex,
                                              media_type::kDockerManifest,
                                              media_type::kDockerManifestList};
    if (std::find(std::begin(kKnown), std::end(kKnown), ct) != std::end(kKnown)) {
      doc.media_type = ct;
    } else if (ct.find("manifest.v1+") != std::string::npos) {
      throw Error(ErrorKind::kUnsupported,
                  fmt::format("Failed to {}: the registry serves a Docker schema 1 manifest, "
                              "which pok8s does not read",
                              action));
    } else if (!(ct.empty() || ct == "application/json" || ct == "text/plain" ||
                 ct == "application/octet-stream")) {
      if (r.redact)
        throw Error(ErrorKind::kFormat,
                    fmt::format("Failed to {}: the registry answered with something other than "
                                "a manifest",
                                action));
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to {}: the registry answered with \"{}\", not a manifest",
                              action, printable(ct, 100)));
    }
    // Otherwise the media type stays empty and the document's own mediaType decides.
    Digest actual = doc.digest();
    if (expected && actual != *expected)
      throw Error(
          ErrorKind::kSignature,
          fmt::format("Failed to {}: the manifest served hashes to {}", action, actual.str()));
    if (auto header = Digest::try_parse(r.header("docker-content-digest"));
        header && header->algorithm() == "sha256" && *header != actual)
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to {}: the manifest hashes to {}, the registry says {}",
                              action, actual.str(), header->str()));
    return doc;
  }
};

RegistryClient::RegistryClient(RegistryReference ref, TransportOptions options,
                               RegistryAccess access)
    : impl_(std::make_unique<Impl>()) {
  impl_->ref = std::move(ref);
  impl_->options = std::move(options);
  impl_->access = access;
  impl_->credentials = find_credentials(impl_->ref.registry, impl_->ref.repository, impl_->options);
}

RegistryClient::~RegistryClient() = default;

const RegistryReference& RegistryClient::reference() const {
  return impl_->ref;
}
std::string RegistryClient::name() const {
  return impl_->name();
}

RawDocument RegistryClient::get_manifest() {
  return impl_->get_manifest(impl_->ref.reference(), impl_->ref.digest, "pull " + name());
}

RawDocument RegistryClient::get_manifest(const Digest& digest) {
  return impl_->get_manifest(digest.str(), digest,
                             fmt::format("pull manifest {} of {}", digest.short_str(), name()));
}

std::optional<Descriptor> RegistryClient::head_manifest(const std::string& tag_or_digest) {
  if (!Digest::try_parse(tag_or_digest) && !is_valid_tag(tag_or_digest))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Invalid tag or digest \"{}\"", printable(tag_or_digest, 140)));
  std::string action = fmt::format("look up {} in {}", tag_or_digest, name());
  Request req;
  req.method = "HEAD";
  req.url = impl_->url("manifests", tag_or_digest);
  req.headers.push_back(fmt::format("Accept: {}", kManifestAccept));
  req.access = impl_->access;
  Response r = impl_->retrying([&] { return impl_->exchange(req, action); });
  if (r.status == 404) return std::nullopt;
  if (r.status != 200) fail_status(r, action);
  Descriptor d;
  d.media_type = content_type_of(r);
  auto digest = Digest::try_parse(r.header("docker-content-digest"));
  if (!digest) digest = Digest::try_parse(tag_or_digest);
  if (!digest)
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to {}: the registry sent no Docker-Content-Digest", action));
  d.digest = *digest;
  try {
    d.size = std::stoll(r.header("content-length"));
  } catch (const std::exception&) {
    d.size = -1;
  }
  return d;
}

Digest RegistryClient::put_manifest(const RawDocument& document, const std::string& tag) {
  if (!tag.empty() && !is_valid_tag(tag))
    throw Error(ErrorKind::kInvalidInput, fmt::format("Invalid tag \"{}\"", printable(tag, 140)));
  Digest digest = document.digest();
  if (document.bytes.size() > kMaxManifestBytes)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to push {}: the manifest is larger than {} bytes", name(),
                            kMaxManifestBytes));
  std::string media_type = document.media_type;
  if (media_type.empty()) {
    media_type = classify_document(document.bytes) == DocumentKind::kIndex
                     ? Index::parse(document.bytes).media_type
                     : Manifest::parse(document.bytes).media_type;
  }
  std::string reference = tag.empty() ? digest.str() : tag;
  std::string action =
      fmt::format("push {} to docker://{}/{}{}{}", digest.short_str(), impl_->ref.registry,
                  impl_->ref.repository, tag.empty() ? "@" : ":", reference);
  Request req;
  req.method = "PUT";
  req.url = impl_->url("manifests", reference);
  req.headers.push_back("Content-Type: " + media_type);
  req.body = document.bytes;
  req.access = RegistryAccess::kPush;
  Response r = impl_->retrying([&] { return impl_->exchange(req, action); });
  if (r.status != 201 && r.status != 200) fail_status(r, action);
  if (auto header = Digest::try_parse(r.header("docker-content-digest"));
      header && *header != digest)
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to {}: the registry stored it as {}", action, header->str()));
  return digest;
}

bool RegistryClient::has_blob(const Digest& digest) {
  std::string action = fmt::format("look up blob {} in {}", digest.short_str(), name());
  Request req;
  req.method = "HEAD";
  req.url = impl_->url("blobs", digest.str());
  req.access = impl_->access;
  Response r = impl_->retrying([&] { return impl_->exchange(req, action); });
  if (r.status == 200) return true;
  if (r.status == 404) return false;
  fail_status(r, action);
}

void RegistryClient::fetch_blob(const Descriptor& descriptor, BlobStore& store,
                                std::string_view what, const ProgressFn& progress) {
  std::string action = fmt::format("fetch {}", what);
  if (descriptor.size < 0)
    throw Error(ErrorKind::kFormat, fmt::format("Failed to {}: negative size", action));
  auto size = static_cast<std::uint64_t>(descriptor.size);
  ProgressThrottle report(progress, std::string(what), size);
  report.start();
  impl_->retrying([&] {
    // A fresh writer per attempt: a transfer cut off halfway starts again from nothing.
    BlobStore::Writer writer = store.begin(descriptor.digest, size);
    Request req;
    req.url = impl_->url("blobs", descriptor.digest.str());
    req.access = impl_->access;
    req.sink = [&](std::string_view data) {
      writer.write(data);
      report.bytes(writer.bytes_written());
    };
    Response r = impl_->exchange(req, action);
    if (r.status != 200) fail_status(r, action);
    writer.commit(what);
  });
  report.done();
}

void RegistryClient::push_blob(const Descriptor& descriptor, const BlobStore& store,
                               std::string_view what, const ProgressFn& progress) {
  std::string action = fmt::format("push {}", what);
  if (has_blob(descriptor.digest)) {
    if (progress)
      progress({ProgressEvent::Kind::kBlobCached, std::string(what),
                static_cast<std::uint64_t>(descriptor.size),
                static_cast<std::uint64_t>(descriptor.size)});
    return;
  }
  util::Path file = store.path_for(descriptor.digest);
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw Error(ErrorKind::kNotFound, fmt::format("Failed to {}: it is not in the blob cache {}",
                                                  action, store.root().string()));
  auto size = static_cast<std::uint64_t>(st.st_size);
  if (descriptor.size >= 0 && size != static_cast<std::uint64_t>(descriptor.size))
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to {}: the cached blob has {} bytes, its descriptor says {}",
                            action, size, descriptor.size));
  ProgressThrottle report(progress, std::string(what), size);
  report.start();
  // Start and finish the upload as one unit: a PUT cut off halfway may have left bytes in
  // the upload session, so a retry opens a new one.
  impl_->retrying([&] {
    Request start;
    start.method = "POST";
    start.url = impl_->url("blobs", "uploads/");
    start.access = RegistryAccess::kPush;
    Response r = impl_->exchange(start, action);
    if (r.status != 202) fail_status(r, action);
    std::string location = r.header("location");
    if (location.empty())
      throw Error(
          ErrorKind::kFormat,
          fmt::format("Failed to {}: the registry started an upload without a Location", action));
    Request put;
    put.method = "PUT";
    put.url = resolve_url(r.url.empty() ? start.url : r.url, location,
                          {"digest=" + descriptor.digest.str()});
    put.headers.push_back("Content-Type: application/octet-stream");
    put.body_file = &file;
    put.body_size = size;
    put.access = RegistryAccess::kPush;
    put.on_sent = [&](std::uint64_t sent) { report.bytes(sent); };
    Response done = impl_->exchange(put, action);
    if (done.status != 201) fail_status(done, action);
  });
  report.done();
}

namespace {

class RegistrySource : public ImageSource {
 public:
  RegistrySource(const RegistryReference& ref, const TransportOptions& options)
      : client_(ref, options, RegistryAccess::kPull) {}

  std::string name() const override { return client_.name(); }
  RawDocument top_document() override { return client_.get_manifest(); }
  RawDocument document(const Descriptor& descriptor) override {
    RawDocument doc = client_.get_manifest(descriptor.digest);
    if (descriptor.size >= 0 && doc.bytes.size() != static_cast<std::uint64_t>(descriptor.size))
      throw Error(
          ErrorKind::kSignature,
          fmt::format("Failed to pull manifest {} of {}: {} bytes, the index says {}",
                      descriptor.digest.short_str(), name(), doc.bytes.size(), descriptor.size));
    if (doc.media_type.empty()) doc.media_type = descriptor.media_type;
    return doc;
  }
  void fetch_blob(const Descriptor& descriptor, BlobStore& store,
                  const ProgressFn& progress) override {
    client_.fetch_blob(descriptor, store,
                       fmt::format("blob {} of {}", descriptor.digest.short_str(), name()),
                       progress);
  }

 private:
  RegistryClient client_;
};

class RegistryDestination : public ImageDestination {
 public:
  RegistryDestination(const RegistryReference& ref, const TransportOptions& options)
      : client_(ref, options, RegistryAccess::kPush) {}

  std::string name() const override { return client_.name(); }

  Digest write(const ResolvedImage& image, const BlobStore& store, const TransportOptions& options,
               const ProgressFn& progress) override {
    const RegistryReference& ref = client_.reference();
    Digest digest = image.manifest_doc.digest();
    if (ref.digest && *ref.digest != digest)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to push {}: the manifest hashes to {}, not to the digest "
                              "in the name",
                              name(), digest.str()));
    struct Item {
      const Descriptor* descriptor;
      std::string what;
    };
    std::vector<Item> items;
    const auto& layers = image.manifest.layers;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      // Foreign layers live at their URLs, not in registries we push to.
      if (!layers[i].urls.empty() && !store.has(layers[i].digest)) continue;
      items.push_back({&layers[i], fmt::format("layer {}/{} ({}) to {}", i + 1, layers.size(),
                                               layers[i].digest.short_str(), name())});
    }
    items.push_back(
        {&image.manifest.config,
         fmt::format("config ({}) to {}", image.manifest.config.digest.short_str(), name())});

    std::mutex mu;
    ProgressFn report = [&](const ProgressEvent& ev) {
      if (!progress) return;
      std::lock_guard lock(mu);
      progress(ev);
    };
    util::parallel_for(items.size(), options.jobs, [&](std::size_t i) {
      client_.push_blob(*items[i].descriptor, store, items[i].what, report);
    });
    // Only now, with every blob in place, does the tag point at the image.
    return client_.put_manifest(image.manifest_doc, ref.tag);
  }

 private:
  RegistryClient client_;
};

}  // namespace

Digest push_index(const RegistryReference& ref, const RawDocument& index,
                  const TransportOptions& options) {
  Index parsed = Index::parse(index.bytes, index.media_type);
  RegistryClient client(ref, options, RegistryAccess::kPush);
  for (const auto& entry : parsed.manifests) {
    auto found = client.head_manifest(entry.digest.str());
    if (!found)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to push the index to {}: manifest {} is not in the "
                              "repository; push it first",
                              client.name(), entry.digest.short_str()));
  }
  RawDocument doc = index;
  if (doc.media_type.empty()) doc.media_type = parsed.media_type;
  if (ref.digest && *ref.digest != doc.digest())
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to push the index to {}: it hashes to {}", client.name(),
                            doc.digest().str()));
  return client.put_manifest(doc, ref.tag);
}

std::unique_ptr<ImageSource> open_registry_source(const ImageName& name,
                                                  const TransportOptions& options) {
  return std::make_unique<RegistrySource>(name.docker, options);
}

std::unique_ptr<ImageDestination> open_registry_destination(const ImageName& name,
                                                            const TransportOptions& options) {
  return std::make_unique<RegistryDestination>(name.docker, options);
}

}  // namespace pok8s::oci
