// libFuzzer target: whole raw HTTP/1.1 requests (request line, headers, body, chunking,
// pipelining) from anyone who can reach `pok8s serve`, through the real parser, limits, router
// and handlers of one Service over a real SQLite database, in-process. "TOKEN" in an input is
// replaced by a valid API token so that inputs reach the authenticated routes.
#include <fmt/format.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "pok8s/oci/outbound.h"
#include "pok8s/server/service.h"
#include "pok8s/util/file.h"

namespace {

struct Fixture {
  std::string data_dir;
  std::unique_ptr<pok8s::server::Service> service;
  std::string token;

  Fixture() {
    char dir[] = "/tmp/pok8s-fuzz-http.XXXXXX";
    if (!::mkdtemp(dir)) std::abort();
    data_dir = dir;
    // Whatever a spec names, the service fetches nothing: every address is refused.
    pok8s::oci::OutboundPolicy policy;
    policy.public_only = true;
    pok8s::oci::set_outbound_policy(policy);
    pok8s::server::ServiceOptions o;
    o.data_dir = data_dir + "/data";
    o.cache_dir = data_dir + "/cache";
    o.web_dir = POK8S_FUZZ_SOURCE_DIR "/web";
    o.openapi_file = POK8S_FUZZ_SOURCE_DIR "/share/pok8s/openapi.json";
    o.pok8s_binary = "/bin/false";
    o.version = "fuzz";
    o.max_body = 64u << 10;
    service = std::make_unique<pok8s::server::Service>(o);
    // The admin's first login, then an API token for the inputs.
    std::string login = nlohmann::json{{"token", *service->login_token()}}.dump();
    std::string reply = service->answer_bytes(
        fmt::format("POST /api/v1/session HTTP/1.1\r\nContent-Type: application/json\r\n"
                    "Content-Length: {}\r\n\r\n{}",
                    login.size(), login),
        "192.0.2.200");
    auto cookie_at = reply.find("pok8s_session=");
    auto body = nlohmann::json::parse(reply.substr(reply.find("\r\n\r\n") + 4), nullptr, false);
    if (cookie_at == std::string::npos || body.is_discarded()) std::abort();
    std::string cookie = reply.substr(cookie_at, reply.find(';', cookie_at) - cookie_at);
    std::string create = R"({"name": "fuzz"})";
    reply = service->answer_bytes(
        fmt::format("POST /api/v1/tokens HTTP/1.1\r\nContent-Type: application/json\r\n"
                    "Cookie: {}\r\nX-CSRF-Token: {}\r\nContent-Length: {}\r\n\r\n{}",
                    cookie, body.value("csrfToken", ""), create.size(), create),
        "192.0.2.200");
    body = nlohmann::json::parse(reply.substr(reply.find("\r\n\r\n") + 4), nullptr, false);
    if (body.is_discarded() || !body.contains("token")) std::abort();
    token = body["token"];
  }
  ~Fixture() {
    service.reset();
    pok8s::util::remove_tree(data_dir);
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Fixture& f = fixture();
  std::string raw(reinterpret_cast<const char*>(data), size);
  for (auto at = raw.find("TOKEN"); at != std::string::npos; at = raw.find("TOKEN", at + 1))
    raw.replace(at, 5, f.token);
  std::string out = f.service->answer_bytes(raw, "192.0.2.1");
  // Every answer is a whole HTTP/1.1 response, and none names the server's own directories
  // (unless the request did: a 404 quotes the path it was asked for).
  if (!out.empty() && !out.starts_with("HTTP/1.1 ")) __builtin_trap();
  if (out.find(f.data_dir) != std::string::npos && raw.find(f.data_dir) == std::string::npos)
    __builtin_trap();
  return 0;
}
