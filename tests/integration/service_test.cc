// The factory service's API, end to end against a real `pok8s serve` process, a real registry on
// 127.0.0.1 and the real Debian base (converted once): authentication, every endpoint, hostile
// requests, builds with live events, Range downloads, the cache, cancel, timeouts and a crash.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <future>
#include <set>
#include <thread>

#include "e2e/pok8s_cli.h"
#include "integration/registry_harness.h"
#include "integration/service_harness.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::testing;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr const char* kVersion = "v0.3.0";

class ServiceApi : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto fail = [](std::string why) { setup_error_ = std::move(why); };
    try {
      std::string tar = debian_fixture(setup_error_);
      if (tar.empty()) return;
      registry_ = new TestRegistry();
      work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
      util::Path w = work_->path();
      cache_ = test_cache_dir("service-cache");
      push_debian_bases(tar, *registry_, w / "layout", cache_, kVersion);
      service_ =
          new TestService(w / "data", cache_,
                          {"--tls-verify=false", "--max-body", "1M", "--template",
                           "debian-local=Debian 12 (local)|" + registry_->docker("debian:12")});
      admin_ = new ApiClient(service_->port());
      auto login = admin_->login(service_->login_token());
      if (login.status != 200) return fail("admin login failed: " + login.body);
      auto token = admin_->post("/api/v1/tokens", json{{"name", "tests"}});
      if (token.status != 201) return fail("token failed: " + token.body);
      admin_token_ = token.json()["token"];
      api_ = new ApiClient(service_->port());
      api_->bearer(admin_token_);
    } catch (const std::exception& e) {
      fail(std::string("setup failed: ") + e.what());
    }
  }
  static void TearDownTestSuite() {
    delete api_;
    delete admin_;
    delete service_;
    delete registry_;
    delete work_;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  // A spec on the converted base (an ISO build of seconds); `tag` makes it a spec of its own.
  static json quick_request(const std::string& tag) {
    return {{"spec", fmt::format("apiVersion: pok8s/v1\nkind: Build\nbase: {}\nversion: {}\n"
                                 "cloudConfig: cloud-config.yaml\n",
                                 registry_->docker("pok8s/debian:v0.3.0"), kVersion)},
            {"files", {{"cloud-config.yaml", "#cloud-config\nhostname: " + tag + "\n"}}}};
  }
  // A spec that converts the Debian base: minutes of package installs.
  static json slow_request(const std::string& tag) {
    return {{"spec", fmt::format("apiVersion: pok8s/v1\nkind: Build\nbase: {}\nversion: v9.{}\n"
                                 "packages: [jq]\n",
                                 registry_->docker("debian:12"), tag)}};
  }
  static json spec_request(const std::string& yaml, json files = json::object()) {
    return {{"spec", yaml}, {"files", files}};
  }
  static std::string base_yaml() {
    return fmt::format("apiVersion: pok8s/v1\nkind: Build\nbase: {}\nversion: {}\n",
                       registry_->docker("pok8s/debian:v0.3.0"), kVersion);
  }

  static inline std::string setup_error_;
  static inline TestRegistry* registry_ = nullptr;
  static inline util::TempDir* work_ = nullptr;
  static inline util::Path cache_;
  static inline TestService* service_ = nullptr;
  static inline ApiClient* admin_ = nullptr;  // the admin's browser session
  static inline ApiClient* api_ = nullptr;    // the admin's API token
  static inline std::string admin_token_;
};

void expect_error(const HttpReply& r, int status, const std::string& kind,
                  const std::string& needle) {
  EXPECT_EQ(r.status, status) << r.body;
  auto j = r.json();
  ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
  EXPECT_EQ(j["error"]["kind"], kind) << r.body;
  EXPECT_NE(j["error"]["message"].get<std::string>().find(needle), std::string::npos)
      << "message: " << j["error"]["message"] << "\nexpected to contain: " << needle;
  EXPECT_EQ(j["error"]["message"].get<std::string>().find('\n'), std::string::npos) << r.body;
}

TEST_F(ServiceApi, HealthAndTheOpenApiDocumentNeedNoToken) {
  ApiClient anonymous(service_->port());
  auto health = anonymous.get("/api/v1/health");
  ASSERT_EQ(health.status, 200) << health.body;
  EXPECT_EQ(health.json()["database"], "sqlite");
  auto doc = anonymous.get("/api/v1/openapi.json");
  ASSERT_EQ(doc.status, 200);
  EXPECT_EQ(doc.json()["openapi"], "3.1.0");
}

TEST_F(ServiceApi, TheOpenApiDocumentDescribesEveryRoute) {
  // Every route the service answers, and nothing else: a route missing from either side fails.
  const std::set<std::string> routes = {"get /api/v1/openapi.json",
                                        "get /api/v1/health",
                                        "post /api/v1/session",
                                        "get /api/v1/session",
                                        "delete /api/v1/session",
                                        "get /api/v1/users",
                                        "post /api/v1/users",
                                        "patch /api/v1/users/{id}",
                                        "get /api/v1/users/{id}/tokens",
                                        "get /api/v1/tokens",
                                        "post /api/v1/tokens",
                                        "delete /api/v1/tokens/{id}",
                                        "get /api/v1/templates",
                                        "get /api/v1/capabilities",
                                        "post /api/v1/specs/validate",
                                        "post /api/v1/cloud-config/validate",
                                        "get /api/v1/builds",
                                        "post /api/v1/builds",
                                        "get /api/v1/builds/{id}",
                                        "patch /api/v1/builds/{id}",
                                        "post /api/v1/builds/{id}/cancel",
                                        "get /api/v1/builds/{id}/spec",
                                        "get /api/v1/builds/{id}/log",
                                        "get /api/v1/builds/{id}/events",
                                        "get /api/v1/builds/{id}/artifacts/{name}",
                                        "get /api/v1/keysets",
                                        "post /api/v1/keysets",
                                        "get /api/v1/keysets/{name}",
                                        "delete /api/v1/keysets/{name}"};
  auto doc = api_->get("/api/v1/openapi.json").json();
  std::set<std::string> documented;
  for (const auto& [path, ops] : doc["paths"].items())
    for (const auto& [method, _] : ops.items()) documented.insert(method + " " + path);
  EXPECT_EQ(documented, routes);
  expect_error(api_->get("/api/v1/no-such-route"), 404, "not-found", "/api/v1/no-such-route");
}

TEST_F(ServiceApi, CallsWithoutValidCredentialsAreRefused) {
  ApiClient anonymous(service_->port());
  for (const char* path : {"/api/v1/builds", "/api/v1/tokens", "/api/v1/templates",
                           "/api/v1/keysets", "/api/v1/session", "/api/v1/capabilities",
                           "/api/v1/builds/0123456789abcdef/artifacts/x.iso"})
    expect_error(anonymous.get(path), 401, "auth", "Authorization: Bearer");
  expect_error(anonymous.post("/api/v1/builds", quick_request("anonymous")), 401, "auth", "log in");
  ApiClient wrong(service_->port());
  wrong.bearer("pok8s_not-a-token");
  expect_error(wrong.get("/api/v1/builds"), 401, "auth", "Bearer");
  expect_error(anonymous.get("/api/v1/builds", {{"Authorization", "Basic YWRtaW46YWRtaW4="}}), 401,
               "auth", "Bearer");
  expect_error(anonymous.get("/api/v1/builds", {{"Cookie", "pok8s_session=forged"}}), 401, "auth",
               "log in");
}

TEST_F(ServiceApi, TheFirstLoginTokenWorksOnce) {
  ApiClient again(service_->port());
  expect_error(again.login(service_->login_token()), 401, "auth", "unknown, used or expired");
}

TEST_F(ServiceApi, SessionRequestsMustCarryTheCsrfToken) {
  ApiClient browser(service_->port());
  ASSERT_EQ(browser.login(admin_token_).status, 200);  // an API token logs in too (and stays)
  EXPECT_EQ(browser.get("/api/v1/builds").status, 200);
  browser.forget_csrf();
  expect_error(browser.post("/api/v1/tokens", json{{"name", "csrf"}}), 403, "forbidden",
               "X-CSRF-Token");
  expect_error(
      browser.post("/api/v1/tokens", json{{"name", "csrf"}}.dump(), {{"X-CSRF-Token", "guess"}}),
      403, "forbidden", "X-CSRF-Token");
  ASSERT_EQ(api_->get("/api/v1/session").status, 200);
  auto session = admin_->get("/api/v1/session").json();
  EXPECT_EQ(session["user"]["name"], "admin");
  ASSERT_TRUE(session["csrfToken"].is_string());
}

TEST_F(ServiceApi, LoggingOutEndsTheSession) {
  ApiClient browser(service_->port());
  ASSERT_EQ(browser.login(admin_token_).status, 200);
  EXPECT_EQ(browser.del("/api/v1/session").status, 204);
  expect_error(browser.get("/api/v1/builds"), 401, "auth", "log in");
}

TEST_F(ServiceApi, ApiTokensAreShownOnceStoredHashedAndRevocable) {
  auto created = api_->post("/api/v1/tokens", json{{"name", "laptop"}});
  ASSERT_EQ(created.status, 201) << created.body;
  std::string secret = created.json()["token"];
  std::string id = created.json()["id"];
  auto list = api_->get("/api/v1/tokens");
  EXPECT_EQ(list.body.find(secret), std::string::npos) << "a listed token shows its secret";
  EXPECT_NE(list.body.find("laptop"), std::string::npos);
  // Only a hash is kept: the database file never holds the secret.
  std::string db = util::read_file(work_->path() / "data" / "pok8s.db", 64u << 20);
  EXPECT_EQ(db.find(secret), std::string::npos);
  ApiClient laptop(service_->port());
  laptop.bearer(secret);
  EXPECT_EQ(laptop.get("/api/v1/builds").status, 200);
  EXPECT_EQ(api_->del("/api/v1/tokens/" + id).status, 204);
  expect_error(laptop.get("/api/v1/builds"), 401, "auth", "Bearer");
  expect_error(api_->del("/api/v1/tokens/" + id), 404, "not-found", id);
  expect_error(api_->post("/api/v1/tokens", json{{"name", ""}}), 400, "invalid-input", "name");
}

TEST_F(ServiceApi, OnlyAdminsManageUsersAndKeySets) {
  auto bob = api_->post("/api/v1/users", json{{"name", "bob"}});
  ASSERT_EQ(bob.status, 201) << bob.body;
  EXPECT_EQ(bob.json()["user"]["role"], "user");
  expect_error(api_->post("/api/v1/users", json{{"name", "bob"}}), 409, "conflict", "taken");
  expect_error(api_->post("/api/v1/users", json{{"name", "Bob; rm"}}), 400, "invalid-input",
               "name");
  ApiClient as_bob(service_->port());
  ASSERT_EQ(as_bob.login(bob.json()["loginToken"]).status, 200);
  EXPECT_EQ(as_bob.get("/api/v1/templates").status, 200);
  expect_error(as_bob.get("/api/v1/users"), 403, "forbidden", "admins");
  expect_error(as_bob.post("/api/v1/keysets", json{{"name", "x"}, {"files", json::object()}}), 403,
               "forbidden", "admins");
  auto users = api_->get("/api/v1/users").json()["users"];
  EXPECT_EQ(users.size(), 2u);
}

TEST_F(ServiceApi, TemplatesAndCapabilitiesDescribeWhatCanBeBuilt) {
  auto templates = api_->get("/api/v1/templates").json()["templates"];
  std::set<std::string> names;
  for (const auto& t : templates) names.insert(t["name"].get<std::string>());
  for (const char* n :
       {"debian-local", "debian", "ubuntu", "alpine", "fedora", "opensuse", "rocky"})
    EXPECT_TRUE(names.count(n)) << n;
  auto caps = api_->get("/api/v1/capabilities").json();
  const std::set<std::string> built = {"iso", "raw", "qcow2", "vhd"};
  for (const auto& a : caps["artifacts"]) {
    if (built.count(a["name"].get<std::string>()))
      EXPECT_TRUE(a["buildable"].get<bool>()) << a;
    else
      EXPECT_TRUE(!a["buildable"].get<bool>() && !a["reason"].get<std::string>().empty()) << a;
  }
  EXPECT_FALSE(caps["trustedBoot"]["buildable"].get<bool>());
}

TEST_F(ServiceApi, ValidationReturnsTheSpecItsBuildIdAndWhatCannotBeBuilt) {
  auto ok = api_->post("/api/v1/specs/validate", quick_request("validate")).json();
  EXPECT_TRUE(ok["valid"].get<bool>()) << ok;
  EXPECT_EQ(ok["specId"].get<std::string>().size(), 16u);
  EXPECT_NE(ok["spec"].get<std::string>().find("cloudConfig: cloud-config.yaml"), std::string::npos)
      << ok["spec"];
  EXPECT_NE(ok["baseDigest"].get<std::string>().find("@sha256:"), std::string::npos);
  // The same spec in JSON (the web builder's form) is the same build.
  json as_json = {{"apiVersion", "pok8s/v1"},
                  {"kind", "Build"},
                  {"base", registry_->docker("pok8s/debian:v0.3.0")},
                  {"version", kVersion},
                  {"cloudConfig", "cloud-config.yaml"}};
  auto again =
      api_->post("/api/v1/specs/validate",
                 json{{"spec", as_json.dump()},
                      {"files", {{"cloud-config.yaml", "#cloud-config\nhostname: validate\n"}}}})
          .json();
  EXPECT_EQ(again["specId"], ok["specId"]);
  auto later =
      api_->post("/api/v1/specs/validate", spec_request(base_yaml() + "artifacts: [iso, uki]\n"))
          .json();
  EXPECT_FALSE(later["valid"].get<bool>());
  EXPECT_NE(later["unbuildable"].dump().find("artifacts: uki"), std::string::npos) << later;
  auto cc =
      api_->post("/api/v1/cloud-config/validate", json{{"text", "#cloud-config\nhostname: [x]\n"}})
          .json();
  EXPECT_FALSE(cc["valid"].get<bool>());
  EXPECT_EQ(cc["line"], 2);
  EXPECT_NE(cc["error"].get<std::string>().find("hostname must be a string"), std::string::npos);
  // A typo is what Kairos ignores: valid, and named in a warning.
  auto typo =
      api_->post("/api/v1/cloud-config/validate", json{{"text", "#cloud-config\nhostnme: x\n"}})
          .json();
  EXPECT_TRUE(typo["valid"].get<bool>());
  ASSERT_EQ(typo["warnings"].size(), 1u) << typo;
  EXPECT_EQ(typo["warnings"][0],
            "cloud-config cloud-config.yaml: line 2: unknown top-level key "
            "\"hostnme\" is kept but not read by pok8s; did you mean "
            "\"hostname\"?");
  EXPECT_TRUE(
      api_->post("/api/v1/cloud-config/validate", json{{"text", "#cloud-config\nhostname: x\n"}})
          .json()["valid"]
          .get<bool>());
}

TEST_F(ServiceApi, BadSpecsAreRefusedNamingTheField) {
  auto total = api_->get("/api/v1/builds").json()["total"];
  expect_error(api_->post("/api/v1/builds", spec_request("apiVersion: pok8s/v1\nkind: [\n")), 400,
               "invalid-input", "line");
  expect_error(api_->post("/api/v1/builds", spec_request(base_yaml() + "artifact: [iso]\n")), 400,
               "invalid-input", "did you mean \"artifacts\"");
  expect_error(
      api_->post("/api/v1/builds", spec_request("apiVersion: pok8s/v1\nkind: Build\nbase: " +
                                                registry_->docker("pok8s/debian:v0.3.0") + "\n")),
      400, "invalid-input", "version");
  expect_error(api_->post("/api/v1/builds", spec_request(base_yaml() + "artifacts: [iso, uki]\n")),
               501, "unsupported", "artifacts: uki");
  expect_error(
      api_->post("/api/v1/builds", spec_request(base_yaml() + "security: {trustedBoot: true}\n")),
      501, "unsupported", "security.trustedBoot");
  expect_error(
      api_->post(
          "/api/v1/builds",
          spec_request("apiVersion: pok8s/v1\nkind: Build\nbase: oci:/var/lib\nversion: v1\n")),
      400, "invalid-input", "only builds from registries");
  expect_error(
      api_->post("/api/v1/builds", spec_request(fmt::format(
                                       "apiVersion: pok8s/v1\nkind: Build\nbase: {}\nversion: v1\n",
                                       registry_->docker("no/such:image")))),
      404, "not-found", "no/such");
  // A converted base cannot take what only conversion adds.
  expect_error(api_->post("/api/v1/builds", spec_request(base_yaml() + "packages: [jq]\n")), 400,
               "invalid-input", "packages");
  EXPECT_EQ(api_->get("/api/v1/builds").json()["total"], total) << "a refused spec was queued";
}

TEST_F(ServiceApi, HostileRequestsAreRefusedWithAClearError) {
  auto total = api_->get("/api/v1/builds").json()["total"];
  auto with_file = [&](const std::string& name) {
    return json{{"spec", base_yaml()}, {"files", {{name, "x"}}}};
  };
  for (const char* name : {"../escape.yaml", "/etc/passwd", "a/../../b.yaml", "a//b", "keysets/x",
                           "a\nb", "$(reboot).yaml", "a b.yaml"})
    expect_error(api_->post("/api/v1/builds", with_file(name)), 400, "invalid-input", "files");
  expect_error(api_->post("/api/v1/builds",
                          spec_request(base_yaml() + "cloudConfig: ../../../etc/passwd\n")),
               400, "invalid-input", "cloudConfig");
  expect_error(api_->post("/api/v1/builds", std::string("{not json")), 400, "invalid-input",
               "not JSON");
  expect_error(api_->post("/api/v1/builds", json{{"spec", base_yaml()}, {"extra", 1}}), 400,
               "invalid-input", "unknown key \"extra\"");
  expect_error(
      api_->post("/api/v1/builds", json{{"spec", base_yaml()},
                                        {"files", {{"big.yaml", std::string(2u << 20, 'x')}}}}),
      413, "too-large", "limit");
  // Shell metacharacters in every field that reaches a command or a file the node executes.
  const std::vector<std::pair<std::string, std::string>> hostile = {
      {"packages: ['jq; rm -rf /']\n", "packages"},
      {"packages: ['$(reboot)']\n", "packages"},
      {"packages: ['-o=APT::Get::Foo=1']\n", "packages"},
      {"kubernetes: {distribution: k3s, version: 'v1`id`', binary: 'http://127.0.0.1/k3s', sha256: "
       "'0000000000000000000000000000000000000000000000000000000000000000'}\n",
       "kubernetes.version"},
      {"kubernetes: {distribution: k3s, version: v1.31.2+k3s1, binary: 'http://x/a b', sha256: "
       "'0000000000000000000000000000000000000000000000000000000000000000'}\n",
       "kubernetes.binary"},
      {"toppings: {wireguard: {interface: 'wg0;id', address: [10.0.0.1/24], peers: [{publicKey: "
       "'xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=', allowedIPs: [10.0.0.0/24]}]}}\n",
       "interface"},
      {"toppings: {wireguard: {address: ['10.0.0.1/24; id'], peers: [{publicKey: "
       "'xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=', allowedIPs: [10.0.0.0/24]}]}}\n",
       "address"},
      {"toppings: {wireguard: {address: [10.0.0.1/24], peers: [{publicKey: "
       "'xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=', endpoint: 'h:1`id`', allowedIPs: "
       "[10.0.0.0/24]}]}}\n",
       "endpoint"},
      {"toppings: {cluster: {server: 'https://10.0.0.1:6443', token: 'a b$(id)'}}\n", "token"},
      {"toppings: {cluster: {server: 'https://10.0.0.1:6443/$(id)', token: abc}}\n", "server"},
  };
  for (const auto& [yaml, field] : hostile) {
    std::string spec = fmt::format("apiVersion: pok8s/v1\nkind: Build\nbase: {}\nversion: v1\n{}",
                                   registry_->docker("debian:12"), yaml);
    SCOPED_TRACE(yaml);
    expect_error(api_->post("/api/v1/builds", spec_request(spec)), 400, "invalid-input", field);
  }
  expect_error(
      api_->post("/api/v1/builds",
                 spec_request("apiVersion: pok8s/v1\nkind: Build\nbase: " +
                              registry_->docker("debian:12") + "\nversion: 'v1;reboot'\n")),
      400, "invalid-input", "version");
  EXPECT_EQ(api_->get("/api/v1/builds").json()["total"], total) << "a refused request was queued";
  EXPECT_TRUE(fs::is_empty(work_->path() / "data" / "tmp"))
      << "a refused request left files behind";
}

TEST_F(ServiceApi, ABuildStreamsItsProgressAndServesItsArtifactsWithRanges) {
  auto created = api_->post("/api/v1/builds", quick_request("first"));
  ASSERT_EQ(created.status, 201) << created.body;
  std::string id = created.json()["id"];
  EXPECT_FALSE(created.json()["reused"].get<bool>());
  auto events = api_->events(id, 900);
  ASSERT_FALSE(events.empty());
  std::vector<std::string> states;
  int steps = 0, progress = 0;
  for (const auto& [kind, data] : events) {
    if (kind == "state") states.push_back(data["state"]);
    steps += kind == "step";
    progress += kind == "progress";
  }
  EXPECT_EQ(events.back().first, "end");
  EXPECT_EQ(events.back().second["state"], "succeeded")
      << api_->get("/api/v1/builds/" + id + "/log").body;
  EXPECT_EQ(states, (std::vector<std::string>{"queued", "running", "succeeded"}));
  EXPECT_GT(steps, 2);
  EXPECT_GT(progress, 0);

  auto b = api_->get("/api/v1/builds/" + id).json();
  EXPECT_EQ(b["state"], "succeeded");
  EXPECT_EQ(b["progress"], 1.0);
  ASSERT_EQ(b["artifacts"].size(), 2u) << b;
  json iso, manifest_entry;
  for (const auto& a : b["artifacts"])
    (a["name"].get<std::string>().ends_with(".iso") ? iso : manifest_entry) = a;
  ASSERT_TRUE(iso.is_object() && manifest_entry.is_object()) << b;

  auto file = api_->get(iso["url"]);
  ASSERT_EQ(file.status, 200);
  EXPECT_EQ(file.body.size(), iso["size"].get<std::size_t>());
  EXPECT_EQ(util::sha256_hex(file.body), iso["sha256"]);
  EXPECT_EQ(file.header("X-Checksum-Sha256"), iso["sha256"]);
  EXPECT_TRUE(file.header("Digest").starts_with("sha-256="));
  auto manifest = api_->get(manifest_entry["url"]).json();
  EXPECT_EQ(manifest["specId"], b["specId"]);
  EXPECT_EQ(manifest["artifacts"][0]["sha256"], iso["sha256"]);

  auto part = api_->get(iso["url"], {{"Range", "bytes=32768-33791"}});
  EXPECT_EQ(part.status, 206);
  EXPECT_EQ(part.body, file.body.substr(32768, 1024));
  EXPECT_EQ(part.header("Content-Range"), fmt::format("bytes 32768-33791/{}", file.body.size()));
  auto tail = api_->get(iso["url"], {{"Range", "bytes=-100"}});
  EXPECT_EQ(tail.status, 206);
  EXPECT_EQ(tail.body, file.body.substr(file.body.size() - 100));
  auto beyond = api_->get(iso["url"], {{"Range", fmt::format("bytes={}-", file.body.size() + 10)}});
  EXPECT_EQ(beyond.status, 416);
  EXPECT_EQ(beyond.header("Content-Range"), fmt::format("bytes */{}", file.body.size()));
  // RFC 9110 §14: what a hostile client asks of ranges.
  std::string size = std::to_string(file.body.size());
  std::string overlapping = "bytes=0-4095";
  for (int i = 0; i < 15; ++i) overlapping += ",0-4095";
  auto merged = api_->get(iso["url"], {{"Range", overlapping}});
  EXPECT_EQ(merged.status, 206);
  EXPECT_EQ(merged.body, file.body.substr(0, 4096)) << "overlapping ranges are sent once";
  std::string many = "bytes=0-0";
  for (int i = 1; i <= 700; ++i) many += fmt::format(",{}-{}", i * 2, i * 2);
  auto too_many = api_->get(iso["url"], {{"Range", many}});
  EXPECT_EQ(too_many.status, 416);
  EXPECT_LT(too_many.body.size(), 4096u);
  auto clamped = api_->get(iso["url"], {{"Range", "bytes=0-99999999999"}});
  EXPECT_EQ(clamped.status, 206);
  EXPECT_EQ(clamped.header("Content-Length"), size);
  EXPECT_EQ(clamped.header("Content-Range"),
            fmt::format("bytes 0-{}/{}", file.body.size() - 1, size));
  EXPECT_EQ(clamped.body, file.body);
  auto empty_suffix = api_->get(iso["url"], {{"Range", "bytes=-0"}});
  EXPECT_EQ(empty_suffix.status, 416);
  EXPECT_EQ(empty_suffix.headers.count("Content-Range"), 1u);
  auto parts = api_->get(iso["url"], {{"Range", "bytes=0-9,100-109"}});
  EXPECT_EQ(parts.status, 206);
  EXPECT_TRUE(parts.header("Content-Type").starts_with("multipart/byteranges; boundary="));
  EXPECT_EQ(parts.header("Content-Length"), std::to_string(parts.body.size()));
  EXPECT_NE(parts.body.find(fmt::format("Content-Range: bytes 0-9/{}", size)), std::string::npos);
  EXPECT_NE(parts.body.find(fmt::format("Content-Range: bytes 100-109/{}", size)),
            std::string::npos);
  EXPECT_NE(parts.body.find(file.body.substr(100, 10)), std::string::npos);

  for (const char* name : {"..%2Fpok8s.db", "..", "%2E%2E%2F%2E%2E%2Fserve.lock", "x.iso",
                           "..%2F..%2Fdata%2Fpok8s.db"})
    EXPECT_EQ(api_->get(fmt::format("/api/v1/builds/{}/artifacts/{}", id, name)).status, 404)
        << name;
  expect_error(api_->get("/api/v1/builds/0123456789abcdef"), 404, "not-found", "no such build");

  auto log = api_->get("/api/v1/builds/" + id + "/log");
  EXPECT_NE(log.body.find("== Fetching"), std::string::npos) << log.body;
  auto spec = api_->get("/api/v1/builds/" + id + "/spec").json();
  EXPECT_EQ(spec["spec"], quick_request("first")["spec"]);
  EXPECT_EQ(spec["files"], quick_request("first")["files"]);
  EXPECT_FALSE(spec["masked"].get<bool>()) << "its owner sees the request as sent";
  auto listed = api_->get("/api/v1/builds?state=succeeded").json();
  EXPECT_NE(listed.dump().find(id), std::string::npos);
  expect_error(api_->get("/api/v1/builds?state=sideways"), 400, "invalid-input", "state");
  expect_error(api_->get("/api/v1/builds?limit=0"), 400, "invalid-input", "limit");
  // A finished build cannot be canceled.
  expect_error(api_->post("/api/v1/builds/" + id + "/cancel", std::string()), 409, "conflict",
               "already succeeded");

  // The same spec again is the same build, served from the cache.
  auto again = api_->post("/api/v1/builds", quick_request("first"));
  EXPECT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.json()["id"], id);
  EXPECT_TRUE(again.json()["reused"].get<bool>());
  EXPECT_EQ(again.json()["state"], "succeeded");
}

TEST_F(ServiceApi, ConcurrentIdenticalRequestsShareOneBuild) {
  std::vector<std::future<HttpReply>> replies;
  for (int i = 0; i < 6; ++i)
    replies.push_back(std::async(std::launch::async, [] {
      return api_->post("/api/v1/builds", quick_request("concurrent"));
    }));
  std::set<std::string> ids;
  int created = 0;
  for (auto& f : replies) {
    auto r = f.get();
    ASSERT_TRUE(r.status == 201 || r.status == 200) << r.body;
    created += r.status == 201;
    ids.insert(r.json()["id"].get<std::string>());
  }
  EXPECT_EQ(created, 1);
  EXPECT_EQ(ids.size(), 1u);
  auto b = wait_for_build(*api_, *ids.begin(), {"succeeded", "failed"}, 900);
  EXPECT_EQ(b["state"], "succeeded") << b;
}

TEST_F(ServiceApi, CancelStopsARunningBuildAndAQueuedOne) {
  auto slow = api_->post("/api/v1/builds", slow_request("1"));
  ASSERT_EQ(slow.status, 201) << slow.body;
  std::string running_id = slow.json()["id"];
  auto b = wait_for_build(*api_, running_id, {"running"}, 300);
  ASSERT_EQ(b["state"], "running") << b;
  auto queued = api_->post("/api/v1/builds", quick_request("queued-then-canceled"));
  ASSERT_EQ(queued.status, 201) << queued.body;
  std::string queued_id = queued.json()["id"];

  // carol may not cancel the admin's build: to her, it does not exist.
  auto carol_token = api_->post("/api/v1/users", json{{"name", "carol"}}).json()["loginToken"];
  ApiClient carol(service_->port());
  ASSERT_EQ(carol.login(carol_token).status, 200);
  expect_error(carol.post("/api/v1/builds/" + queued_id + "/cancel", std::string()), 404,
               "not-found", "no such build");

  auto c = api_->post("/api/v1/builds/" + queued_id + "/cancel", std::string());
  EXPECT_EQ(c.status, 202);
  EXPECT_EQ(c.json()["state"], "canceled");
  auto r = api_->post("/api/v1/builds/" + running_id + "/cancel", std::string());
  EXPECT_EQ(r.status, 202);
  EXPECT_TRUE(r.json()["cancelRequested"].get<bool>());
  b = wait_for_build(*api_, running_id, {"canceled", "failed", "succeeded"}, 120);
  EXPECT_EQ(b["state"], "canceled") << b;
  EXPECT_TRUE(b["artifacts"].empty());
  // Nothing of the build is left running.
  auto left = util::run_process({"pgrep", "-f", running_id});
  EXPECT_NE(left.status, 0) << "still running:\n" << left.output;
  expect_error(api_->post("/api/v1/builds/" + running_id + "/cancel", std::string()), 409,
               "conflict", "already canceled");
}

std::pair<std::string, std::string> make_cert(const util::Path& dir, const std::string& cn) {
  auto r = util::run_process({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                              "30", "-subj", "/CN=" + cn, "-keyout", (dir / (cn + ".key")).string(),
                              "-out", (dir / (cn + ".crt")).string()});
  if (r.status != 0) throw std::runtime_error(r.output);
  return {util::read_file(dir / (cn + ".crt")), util::read_file(dir / (cn + ".key"))};
}

TEST_F(ServiceApi, KeySetsKeepPrivateKeysPrivate) {
  auto [db_crt, db_key] = make_cert(work_->path(), "pok8s-test-db");
  auto [other_crt, other_key] = make_cert(work_->path(), "pok8s-test-other");
  auto created =
      api_->post("/api/v1/keysets",
                 json{{"name", "prod"}, {"files", {{"db.crt", db_crt}, {"db.key", db_key}}}});
  ASSERT_EQ(created.status, 201) << created.body;
  EXPECT_EQ(created.json()["certificates"][0]["subject"], "CN=pok8s-test-db");
  EXPECT_TRUE(created.json()["certificates"][0]["hasPrivateKey"].get<bool>());
  for (const auto& r : {api_->get("/api/v1/keysets"), api_->get("/api/v1/keysets/prod")}) {
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body.find("PRIVATE KEY"), std::string::npos) << r.body;
  }
  struct stat st {};
  ASSERT_EQ(::stat((work_->path() / "data/keysets/prod/db.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  expect_error(
      api_->post("/api/v1/keysets", json{{"name", "prod"}, {"files", {{"db.crt", db_crt}}}}), 409,
      "conflict", "exists");
  expect_error(
      api_->post("/api/v1/keysets",
                 json{{"name", "mixed"}, {"files", {{"db.crt", db_crt}, {"db.key", other_key}}}}),
      400, "invalid-input", "db.key is not the private key of db.crt");
  expect_error(
      api_->post("/api/v1/keysets", json{{"name", "bad"}, {"files", {{"db.crt", "junk"}}}}), 400,
      "invalid-input", "db.crt is not a PEM X.509 certificate");
  expect_error(
      api_->post("/api/v1/keysets", json{{"name", "../x"}, {"files", {{"db.crt", db_crt}}}}), 400,
      "invalid-input", "name");
  expect_error(
      api_->post("/api/v1/keysets", json{{"name", "x"}, {"files", {{"../db.crt", db_crt}}}}), 400,
      "invalid-input", "plain file name");
  // A spec may not name a key set's files as a manifest or cloud-config.
  auto verdict = api_->post("/api/v1/specs/validate",
                            spec_request(base_yaml() + "cloudConfig: keysets/prod/db.key\n"))
                     .json();
  EXPECT_FALSE(verdict["valid"].get<bool>());
  EXPECT_NE(verdict["error"].get<std::string>().find("cloudConfig"), std::string::npos) << verdict;
  EXPECT_EQ(api_->del("/api/v1/keysets/prod").status, 204);
  expect_error(api_->get("/api/v1/keysets/prod"), 404, "not-found", "prod");
}

TEST_F(ServiceApi, ABuildOverItsTimeIsStopped) {
  util::Path data = work_->path() / "timeout-data";
  TestService service(data, cache_, {"--tls-verify=false", "--build-timeout", "3s"});
  ApiClient api(service.port());
  ASSERT_EQ(api.login(service.login_token()).status, 200);
  auto r = api.post("/api/v1/builds", slow_request("2"));
  ASSERT_EQ(r.status, 201) << r.body;
  auto b = wait_for_build(api, r.json()["id"], {"failed", "succeeded", "canceled"}, 120);
  EXPECT_EQ(b["state"], "failed") << b;
  EXPECT_NE(b["error"].get<std::string>().find("timed out"), std::string::npos) << b;
}

TEST_F(ServiceApi, AServiceKilledDuringABuildLosesNoBuildAndServesNoPartialArtifact) {
  util::Path data = work_->path() / "crash-data";
  std::string id, token;
  {
    TestService service(data, cache_, {"--tls-verify=false"});
    ApiClient api(service.port());
    ASSERT_EQ(api.login(service.login_token()).status, 200);
    token = api.post("/api/v1/tokens", json{{"name", "crash"}}).json()["token"];
    auto r = api.post("/api/v1/builds", quick_request("crash"));
    ASSERT_EQ(r.status, 201) << r.body;
    id = r.json()["id"];
    // Kill it once the build has started writing.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
    while (std::chrono::steady_clock::now() < deadline) {
      auto b = api.get("/api/v1/builds/" + id).json();
      if (b["state"] == "running" && b["progress"].get<double>() > 0.0) break;
      ASSERT_NE(b["state"], "succeeded") << "the build finished before the crash";
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    service.kill();
  }
  EXPECT_FALSE(fs::exists(data / "artifacts" / id)) << "a partial artifact was stored";
  TestService restarted(data, cache_, {"--tls-verify=false"});
  EXPECT_EQ(restarted.login_token(), "") << "a second admin was made";
  EXPECT_NE(restarted.log().find("interrupted by a restart"), std::string::npos) << restarted.log();
  ApiClient api(restarted.port());
  api.bearer(token);
  auto b = wait_for_build(api, id, {"succeeded", "failed"}, 900);
  EXPECT_EQ(b["state"], "succeeded") << b << api.get("/api/v1/builds/" + id + "/log").body;
  EXPECT_EQ(b["attempts"], 2);
  auto log = api.get("/api/v1/builds/" + id + "/log").body;
  EXPECT_NE(log.find("the service restarted while it was running"), std::string::npos) << log;
  for (const auto& a : b["artifacts"]) {
    auto file = api.get(a["url"]);
    EXPECT_EQ(util::sha256_hex(file.body), a["sha256"]) << a;
  }
}

// A user logged in with a fresh account: the admin makes it, it logs in with its one-time
// token and keeps an API token for the calls after.
struct TestUser {
  std::string id;
  std::string token;
  std::unique_ptr<ApiClient> api;
};

TestUser make_user(ApiClient& admin, int port, const std::string& name) {
  auto created = admin.post("/api/v1/users", json{{"name", name}});
  if (created.status != 201) throw std::runtime_error("user: " + created.body);
  ApiClient browser(port);
  if (browser.login(created.json()["loginToken"]).status != 200)
    throw std::runtime_error("login failed for " + name);
  auto token = browser.post("/api/v1/tokens", json{{"name", name}});
  if (token.status != 201) throw std::runtime_error("token: " + token.body);
  TestUser u{created.json()["user"]["id"], token.json()["token"],
             std::make_unique<ApiClient>(port)};
  u.api->bearer(u.token);
  return u;
}

TEST_F(ServiceApi, BuildsArePrivateToTheirOwnerAndTheirSecretsSealedAndMasked) {
  TestUser alice = make_user(*api_, service_->port(), "alice");
  TestUser dave = make_user(*api_, service_->port(), "dave");
  const std::string password = "alice-password-7f3k";
  const std::string join_token = "K10alice-join-token-9q2w";
  json request = {
      {"spec", base_yaml() + "cloudConfig: cloud-config.yaml\n"},
      {"files",
       {{"cloud-config.yaml",
         fmt::format("#cloud-config\nhostname: private\nusers:\n- name: kairos\n  passwd: {}\n"
                     "k3s:\n  env:\n    K3S_TOKEN: {}\n",
                     password, join_token)}}}};
  auto created = alice.api->post("/api/v1/builds", request);
  ASSERT_EQ(created.status, 201) << created.body;
  std::string id = created.json()["id"];
  std::string base = "/api/v1/builds/" + id;

  // To another user the build does not exist: not in a list, not by id, not its parts.
  EXPECT_EQ(dave.api->get("/api/v1/builds").body.find(id), std::string::npos);
  for (const std::string& path :
       {base, base + "/spec", base + "/log", base + "/events", base + "/artifacts/x.iso"})
    expect_error(dave.api->get(path), 404, "not-found", "no such build");
  expect_error(dave.api->post(base + "/cancel", std::string()), 404, "not-found", "no such build");
  EXPECT_NE(alice.api->get("/api/v1/builds").body.find(id), std::string::npos);

  // Its owner sees the request as sent; an admin sees it with the secrets masked.
  auto own = alice.api->get(base + "/spec");
  EXPECT_NE(own.body.find(password), std::string::npos) << own.body;
  auto admin_view = api_->get(base + "/spec");
  ASSERT_EQ(admin_view.status, 200) << admin_view.body;
  EXPECT_TRUE(admin_view.json()["masked"].get<bool>());
  EXPECT_EQ(admin_view.body.find(password), std::string::npos) << admin_view.body;
  EXPECT_EQ(admin_view.body.find(join_token), std::string::npos) << admin_view.body;
  EXPECT_NE(admin_view.body.find("hostname: private"), std::string::npos) << admin_view.body;

  // Shared, it is readable by every user, masked; only its owner or an admin may share it.
  expect_error(dave.api->patch(base, json{{"shared", true}}), 404, "not-found", "no such build");
  auto shared = alice.api->patch(base, json{{"shared", true}});
  ASSERT_EQ(shared.status, 200) << shared.body;
  EXPECT_TRUE(shared.json()["shared"].get<bool>());
  auto dave_view = dave.api->get(base + "/spec");
  ASSERT_EQ(dave_view.status, 200) << dave_view.body;
  EXPECT_EQ(dave_view.body.find(password), std::string::npos);
  expect_error(dave.api->patch(base, json{{"shared", false}}), 403, "forbidden", "alice");
  expect_error(dave.api->post(base + "/cancel", std::string()), 403, "forbidden", "alice");
  EXPECT_EQ(alice.api->patch(base, json{{"shared", false}}).status, 200);
  expect_error(dave.api->get(base), 404, "not-found", "no such build");

  // Someone who sends the very same request (secrets included) gets the same build, and with it
  // the right to read it.
  auto same = dave.api->post("/api/v1/builds", request);
  ASSERT_EQ(same.status, 200) << same.body;
  EXPECT_EQ(same.json()["id"], id);
  EXPECT_EQ(dave.api->get(base).status, 200);

  auto b = wait_for_build(*alice.api, id, {"succeeded", "failed"}, 900);
  EXPECT_EQ(b["state"], "succeeded") << b;
  for (const auto& reply : {alice.api->get(base + "/log"), api_->get(base + "/log")}) {
    EXPECT_EQ(reply.body.find(password), std::string::npos);
    EXPECT_EQ(reply.body.find(join_token), std::string::npos);
  }
  EXPECT_EQ(service_->log().find(password), std::string::npos);
  // At rest, the database holds the secrets sealed only.
  for (const char* file : {"pok8s.db", "pok8s.db-wal"}) {
    util::Path p = work_->path() / "data" / file;
    if (!fs::exists(p)) continue;
    std::string bytes = util::read_file(p, 256u << 20);
    EXPECT_EQ(bytes.find(password), std::string::npos) << file;
    EXPECT_EQ(bytes.find(join_token), std::string::npos) << file;
  }
}

TEST_F(ServiceApi, RevokingACredentialEndsWhatItOpenedAndAdminsCanRevokeAndDisable) {
  TestUser erin = make_user(*api_, service_->port(), "erin");
  // A browser session opened with an API token dies with the token.
  auto second = erin.api->post("/api/v1/tokens", json{{"name", "browser"}});
  ASSERT_EQ(second.status, 201) << second.body;
  ApiClient browser(service_->port());
  ASSERT_EQ(browser.login(second.json()["token"]).status, 200);
  EXPECT_EQ(browser.get("/api/v1/builds").status, 200);
  EXPECT_EQ(erin.api->del("/api/v1/tokens/" + second.json()["id"].get<std::string>()).status, 204);
  expect_error(browser.get("/api/v1/builds"), 401, "auth", "log in");

  // An admin sees and revokes anyone's tokens.
  auto tokens = api_->get("/api/v1/users/" + erin.id + "/tokens");
  ASSERT_EQ(tokens.status, 200) << tokens.body;
  ASSERT_EQ(tokens.json()["tokens"].size(), 1u) << tokens.body;
  EXPECT_EQ(tokens.body.find(erin.token), std::string::npos);
  std::string token_id = tokens.json()["tokens"][0]["id"];
  expect_error(erin.api->get("/api/v1/users/" + erin.id + "/tokens"), 403, "forbidden", "admins");
  EXPECT_EQ(api_->del("/api/v1/tokens/" + token_id).status, 204);
  expect_error(erin.api->get("/api/v1/builds"), 401, "auth", "Bearer");

  // A disabled user's every credential stops at once, and works again once enabled.
  TestUser frank = make_user(*api_, service_->port(), "frank");
  ApiClient frank_browser(service_->port());
  ASSERT_EQ(frank_browser.login(frank.token).status, 200);
  auto disabled = api_->patch("/api/v1/users/" + frank.id, json{{"disabled", true}});
  ASSERT_EQ(disabled.status, 200) << disabled.body;
  EXPECT_TRUE(disabled.json()["user"]["disabled"].get<bool>());
  expect_error(frank.api->get("/api/v1/builds"), 401, "auth", "Bearer");
  expect_error(frank_browser.get("/api/v1/builds"), 401, "auth", "log in");
  ApiClient again(service_->port());
  EXPECT_EQ(again.login(frank.token).status, 401);
  ASSERT_EQ(api_->patch("/api/v1/users/" + frank.id, json{{"disabled", false}}).status, 200);
  EXPECT_EQ(frank.api->get("/api/v1/builds").status, 200);
  // No admin can lock the service out of its last admin.
  auto me = api_->get("/api/v1/session").json()["user"]["id"].get<std::string>();
  expect_error(api_->patch("/api/v1/users/" + me, json{{"disabled", true}}), 409, "conflict", "");
  expect_error(frank.api->patch("/api/v1/users/" + me, json{{"disabled", true}}), 403, "forbidden",
               "admins");
}

TEST_F(ServiceApi, ARequestNamesOnlyItsOwnFilesAndNeverLearnsAServerPath) {
  util::Path data = work_->path() / "data";
  auto verdict = [&](const std::string& extra) {
    auto r = api_->post("/api/v1/specs/validate", spec_request(base_yaml() + extra));
    EXPECT_EQ(r.status, 200) << r.body;
    json v = r.json();
    EXPECT_FALSE(v["valid"].get<bool>()) << extra << v;
    std::string error = v.value("error", "");
    EXPECT_EQ(error.find(data.string()), std::string::npos) << error;
    EXPECT_EQ(error.find(work_->path().string()), std::string::npos) << error;
    return error;
  };
  EXPECT_NE(verdict("security: {splash: /etc/shadow}\n").find("security.splash"),
            std::string::npos);
  EXPECT_NE(verdict("security: {splash: keysets/prod/db.key}\n").find("security.splash"),
            std::string::npos);
  EXPECT_NE(verdict("cloudConfig: ../../pok8s.db\n").find("cloudConfig"), std::string::npos);
  // Whether a server path exists or not, the answer is the same.
  std::string missing = verdict("toppings: {manifests: [/no/such/file.yaml]}\n");
  std::string present = verdict("toppings: {manifests: [/etc/hostname]}\n");
  auto strip = [](std::string text, const std::string& path) {
    auto at = text.find(path);
    if (at != std::string::npos) text.erase(at, path.size());
    return text;
  };
  EXPECT_EQ(strip(missing, "/no/such/file.yaml"), strip(present, "/etc/hostname"));
}

}  // namespace
