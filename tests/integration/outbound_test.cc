// The outbound policy end to end, with the real pok8s binary: under --public-network-only a
// registry, a redirect, a token realm, a DNS name or a download that leads to a non-public
// address is refused before anything is fetched from it (the helpers count what reaches them),
// --allow-network lets the same fetch through, and a closed port reads like an open one.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "e2e/pok8s_cli.h"
#include "integration/registry_harness.h"
#include "pok8s/oci/outbound.h"
#include "pok8s/oci/registry.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

extern char** environ;

using namespace pok8s;
using namespace pok8s::testing;
namespace fs = std::filesystem;

namespace {

constexpr const char* kSecret = "SECRET-UPSTREAM-TEXT";
constexpr const char* kRefused =
    "is a loopback address, which this service does not fetch from (allow it with "
    "--allow-network CIDR)";

// tests/integration/outbound_server.py in one mode, bound to `bind`; counts its requests.
class Helper {
 public:
  Helper(const util::Path& dir, const std::string& name, std::vector<std::string> args,
         const std::string& bind = "127.0.0.1")
      : dir_(dir / name), bind_(bind) {
    util::make_dirs(dir_);
    std::vector<std::string> argv = {
        "/usr/bin/python3", std::string(POK8S_TEST_SCRIPTS_DIR) + "/outbound_server.py",
        "--bind",           bind,
        "--port-file",      (dir_ / "port").string(),
        "--count-file",     (dir_ / "count").string()};
    argv.insert(argv.end(), args.begin(), args.end());
    util::Path log = dir_ / "log";
    process_ = ChildProcess(argv, log);
    port_ = read_port_file(dir_ / "port", process_, log);
  }
  int port() const { return port_; }
  std::string host() const { return bind_ + ":" + std::to_string(port_); }
  // How many requests reached it so far.
  int hits() const {
    util::Path count = dir_ / "count";
    return fs::exists(count) ? std::stoi(util::read_file(count)) : 0;
  }

 private:
  util::Path dir_;
  std::string bind_;
  ChildProcess process_;
  int port_ = 0;
};

class Outbound : public ::testing::Test {
 protected:
  // One registry with a tiny image for the whole suite.
  static void SetUpTestSuite() {
    registry_ = new TestRegistry();
    work_ = new util::TempDir(util::TempDir::scratch());
    util::Path tree = work_->path() / "tree";
    util::make_dirs(tree / "etc");
    util::write_file_atomic(tree / "etc/os-release", "ID=debian\nVERSION_ID=12\n");
    // A conversion here stops at the Kubernetes binary's download, before it uses the node
    // binaries it looks for first: stand-ins spare this test from building them.
    util::Path libexec = work_->path() / "libexec";
    util::make_dirs(libexec);
    for (const char* name : {"pok8s-agent", "pok8s-init", "pok8s-sysimage", "pok8s-luks"})
      util::write_file_atomic(libexec / name, "#!/bin/sh\nexit 1\n", 0755);
    layout_ = "oci:" + (work_->path() / "layout").string() + ":tiny";
    std::string cache = (work_->path() / "cache").string();
    auto r = run_pok8s(cache, {"image", "import", "dir:" + tree.string(), layout_});
    if (r.status != 0) setup_error_ = "import failed:\n" + r.output;
    r = run_pok8s(cache,
                  {"image", "copy", layout_, registry_->docker("tiny:1"), "--tls-verify=false"});
    if (setup_error_.empty() && r.status != 0) setup_error_ = "push failed:\n" + r.output;
  }
  static void TearDownTestSuite() {
    delete registry_;
    delete work_;
    registry_ = nullptr;
    work_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  // `pok8s GLOBAL... ARGS...` with a fresh cache; inside a mount namespace whose /etc/hosts is
  // `hosts` when given.
  util::ProcessResult pok8s(const std::vector<std::string>& global,
                            const std::vector<std::string>& args, const std::string& hosts = "") {
    std::vector<std::string> argv;
    if (!hosts.empty()) {
      util::Path file = dir_.path() / "hosts";
      util::write_file_atomic(file, util::read_file("/etc/hosts") + hosts);
      argv = {"unshare",    "--mount", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
              file.string()};
    }
    argv.insert(argv.end(), {pok8s_binary(), "--cache", (dir_.path() / "cache").string()});
    argv.insert(argv.end(), global.begin(), global.end());
    argv.insert(argv.end(), args.begin(), args.end());
    util::remove_tree(dir_.path() / "cache");
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e)
      if (!std::string_view(*e).starts_with("POK8S_")) env.emplace_back(*e);
    env.push_back("POK8S_LIBEXEC_DIR=" + (work_->path() / "libexec").string());
    return util::run_process(argv, {.env = env, .output_limit = 1u << 20});
  }
  // `image inspect` of `name` over plain HTTP: the manifest and the config, no layers.
  util::ProcessResult inspect(const std::vector<std::string>& global, const std::string& name,
                              const std::string& hosts = "") {
    return pok8s(global, {"image", "inspect", "--no-os-release", "--tls-verify=false", name},
                 hosts);
  }
  // A self-signed certificate for 127.0.0.1: its --cert and --key arguments.
  std::vector<std::string> tls_args() {
    util::Path key = dir_.path() / "tls.key", cert = dir_.path() / "tls.crt";
    run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key.string(),
         "-out", cert.string(), "-days", "2", "-subj", "/CN=127.0.0.1"});
    return {"--cert", cert.string(), "--key", key.string()};
  }

  static inline TestRegistry* registry_ = nullptr;
  static inline util::TempDir* work_ = nullptr;
  static inline std::string layout_;
  static inline std::string setup_error_;
  util::TempDir dir_ = util::TempDir::scratch();
};

const std::vector<std::string> kPublicOnly = {"--public-network-only"};

std::vector<std::string> allowing(const std::string& cidr) {
  return {"--public-network-only", "--allow-network", cidr};
}

#define EXPECT_OUTPUT_HAS(result, text) \
  EXPECT_NE((result).output.find(text), std::string::npos) << (result).output

}  // namespace

TEST_F(Outbound, RefusesARegistryOnLoopbackUnlessItsNetworkIsAllowed) {
  std::string name = registry_->docker("tiny:1");
  auto r = inspect(kPublicOnly, name);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_OUTPUT_HAS(r, "Failed to reach " + name + ": 127.0.0.1 " + kRefused);

  // Verified TLS goes straight to the manifest; refused alike.
  r = pok8s(kPublicOnly, {"image", "inspect", "--no-os-release", name});
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_OUTPUT_HAS(r, "Failed to pull " + name + ": 127.0.0.1 " + kRefused);

  r = inspect(allowing("127.0.0.0/8"), name);
  EXPECT_EQ(r.status, 0) << r.output;
  r = inspect(allowing("127.0.0.1/32"), name);
  EXPECT_EQ(r.status, 0) << r.output;
  // Without the flag, the CLI fetches from anywhere, as a person on their own machine expects.
  r = inspect({}, name);
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST_F(Outbound, RefusesARedirectToAnAddressThatIsNotAllowed) {
  Helper target(dir_.path(), "target", {"--mode", "record"}, "127.0.0.2");
  Helper registry(dir_.path(), "registry",
                  {"--mode", "redirect", "--to", "http://" + target.host()});
  std::string name = "docker://" + registry.host() + "/tiny:1";

  auto r = inspect(allowing("127.0.0.1/32"), name);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_OUTPUT_HAS(r, "the redirect to " + target.host() + " was refused: 127.0.0.2 " + kRefused);
  EXPECT_GT(registry.hits(), 0);
  EXPECT_EQ(target.hits(), 0);

  // Allowed, the redirect is followed; the target's 404 is reported without its words.
  r = inspect(allowing("127.0.0.0/8"), name);
  EXPECT_EQ(r.status, 3) << r.output;
  EXPECT_OUTPUT_HAS(r, "manifest_unknown (HTTP 404)");
  EXPECT_EQ(r.output.find(kSecret), std::string::npos) << r.output;
  EXPECT_GT(target.hits(), 0);

  // The CLI without the policy keeps the registry's own words.
  r = inspect({}, name);
  EXPECT_EQ(r.status, 3) << r.output;
  EXPECT_OUTPUT_HAS(r, kSecret);
}

TEST_F(Outbound, RefusesARedirectFromHttpsToPlainHttp) {
  Helper target(dir_.path(), "target", {"--mode", "record"});
  std::vector<std::string> args = {"--mode", "redirect", "--to", "http://" + target.host()};
  for (const auto& a : tls_args()) args.push_back(a);
  Helper registry(dir_.path(), "registry", args);
  std::string name = "docker://" + registry.host() + "/tiny:1";

  // Even where the address is allowed, and even without the policy: a downgrade is refused.
  for (const auto& global : {allowing("127.0.0.0/8"), std::vector<std::string>{}}) {
    auto r = inspect(global, name);
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_OUTPUT_HAS(r, "a redirect to a URL that is not https was refused");
  }
  EXPECT_GT(registry.hits(), 0);
  EXPECT_EQ(target.hits(), 0);
}

TEST_F(Outbound, NeverFetchesATokenRealmOnAnotherHost) {
  Helper realm(dir_.path(), "realm", {"--mode", "record"}, "127.0.0.2");
  Helper registry(dir_.path(), "registry",
                  {"--mode", "challenge", "--realm", "http://" + realm.host() + "/token"});
  std::string name = "docker://" + registry.host() + "/tiny:1";

  // Another host, refused even where its address is allowed.
  for (const auto& cidr : {"127.0.0.1/32", "127.0.0.0/8"}) {
    auto r = inspect(allowing(cidr), name);
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_OUTPUT_HAS(r,
                      "the registry's token realm 127.0.0.2 is on another host than the "
                      "registry (127.0.0.1), which this service does not fetch tokens from");
    EXPECT_EQ(r.output.find(kSecret), std::string::npos) << r.output;
  }
  EXPECT_EQ(realm.hits(), 0);

  // The CLI without the policy asks the realm (which gives a token the registry refuses).
  auto r = inspect({}, name);
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_GT(realm.hits(), 0);
}

TEST_F(Outbound, RefusesATokenRealmOnAnotherNameForAnAllowedAddress) {
  Helper realm(dir_.path(), "realm", {"--mode", "record"});
  Helper registry(dir_.path(), "registry",
                  {"--mode", "challenge", "--realm",
                   "http://localhost:" + std::to_string(realm.port()) + "/token"});
  std::string name = "docker://" + registry.host() + "/tiny:1";
  auto r = inspect(allowing("127.0.0.0/8"), name);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_OUTPUT_HAS(r, "the registry's token realm localhost is on another host");
  EXPECT_EQ(realm.hits(), 0);
}

TEST_F(Outbound, FetchesATokenRealmOnTheRegistrysHostWhenItsAddressIsAllowed) {
  Helper realm(dir_.path(), "realm", {"--mode", "record"});
  Helper registry(dir_.path(), "registry",
                  {"--mode", "challenge", "--realm", "http://" + realm.host() + "/token"});
  std::string name = "docker://" + registry.host() + "/tiny:1";

  auto r = inspect(kPublicOnly, name);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(realm.hits(), 0);

  r = inspect(allowing("127.0.0.1/32"), name);
  // The realm's token does not satisfy this registry, which keeps answering 401: an auth error.
  EXPECT_EQ(r.status, 8) << r.output;
  EXPECT_GT(realm.hits(), 0);
  EXPECT_EQ(r.output.find(kSecret), std::string::npos) << r.output;
}

TEST_F(Outbound, RefusesANameThatResolvesToLoopback) {
  std::string name = "docker://evil.test:" + std::to_string(registry_->port()) + "/tiny:1";
  std::string hosts = "127.0.0.1 evil.test\n";
  auto r = inspect(kPublicOnly, name, hosts);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_OUTPUT_HAS(r, "Failed to reach " + name + ": 127.0.0.1 " + kRefused);

  r = inspect(allowing("127.0.0.1/32"), name, hosts);
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST_F(Outbound, TellsAClosedPortFromAnOpenOneByItsNumberAlone) {
  int closed = free_port();
  auto message = [&](int port, bool tls_verify) {
    std::string name = "docker://127.0.0.1:" + std::to_string(port) + "/tiny:1";
    auto r = pok8s(kPublicOnly, {"image", "inspect", "--no-os-release",
                                 tls_verify ? "--tls-verify=true" : "--tls-verify=false", name});
    EXPECT_NE(r.status, 0) << r.output;
    return std::to_string(r.status) + " " +
           std::regex_replace(r.output, std::regex(std::to_string(port)), "PORT");
  };
  for (bool tls_verify : {false, true}) {
    std::string open = message(registry_->port(), tls_verify);
    EXPECT_EQ(message(closed, tls_verify), open);
    EXPECT_NE(open.find(kRefused), std::string::npos) << open;
  }
}

TEST_F(Outbound, RefusesAKubernetesBinaryDownloadFromLoopback) {
  Helper files(dir_.path(), "files", {"--mode", "record"});
  Helper elsewhere(dir_.path(), "elsewhere", {"--mode", "record"}, "127.0.0.2");
  Helper redirect(dir_.path(), "redirect",
                  {"--mode", "redirect", "--to", "http://" + elsewhere.host()});
  auto convert = [&](const std::vector<std::string>& global, const std::string& url) {
    return pok8s(global, {"convert", layout_, "oci:" + (dir_.path() / "out").string(), "--version",
                          "v1", "--variant", "standard", "--k8s-version", "v1.31.2+k3s1",
                          "--k8s-binary", url, "--k8s-sha256", std::string(64, 'b')});
  };
  std::string url = "http://" + files.host() + "/k3s";
  auto r = convert(kPublicOnly, url);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_OUTPUT_HAS(r, "Failed to download " + url + ": 127.0.0.1 " + kRefused);
  EXPECT_EQ(files.hits(), 0);

  // A redirect to an address that is not allowed is not followed either.
  std::string via = "http://" + redirect.host() + "/k3s";
  r = convert(allowing("127.0.0.1/32"), via);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_OUTPUT_HAS(r, "Failed to download " + via + ": the redirect to " + elsewhere.host() +
                           " was refused: 127.0.0.2 " + kRefused);
  EXPECT_EQ(elsewhere.hits(), 0);

  // Allowed, the download happens (and fails its pinned sha256, as this one must).
  r = convert(allowing("127.0.0.1/32"), url);
  EXPECT_EQ(r.status, 6) << r.output;
  EXPECT_OUTPUT_HAS(r, "Failed to verify " + url);
  EXPECT_EQ(files.hits(), 1);
}

TEST_F(Outbound, ExemptsATrustedDestinationWithoutLettingOthersReuseItsConnection) {
  // A registry on HTTPS, so that both clients below would use the same kind of connection.
  std::vector<std::string> args = {"--mode", "record"};
  for (const auto& a : tls_args()) args.push_back(a);
  Helper registry(dir_.path(), "registry", args);
  oci::RegistryReference ref =
      oci::ImageName::parse("docker://" + registry.host() + "/tiny:1").docker;

  // In this process, as `pok8s serve` runs it: the artifact store's registry is trusted.
  oci::OutboundPolicy policy;
  policy.public_only = true;
  oci::set_outbound_policy(policy);
  struct Restore {
    ~Restore() { oci::set_outbound_policy({}); }
  } restore;
  oci::TransportOptions trusted;
  trusted.tls_verify = false;
  trusted.trusted = true;
  oci::RegistryClient store(ref, trusted, oci::RegistryAccess::kPull);
  EXPECT_FALSE(store.head_manifest("1"));  // it answered: the helper knows no manifests
  int hits = registry.hits();
  EXPECT_GT(hits, 0);

  // The same registry named by a user, on the same thread: refused, not served over the
  // connection the trusted client left open.
  oci::TransportOptions user = trusted;
  user.trusted = false;
  oci::RegistryClient named(ref, user, oci::RegistryAccess::kPull);
  try {
    named.head_manifest("1");
    ADD_FAILURE() << "a user's request reached 127.0.0.1";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find(std::string("127.0.0.1 ") + kRefused), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(registry.hits(), hits);
}
