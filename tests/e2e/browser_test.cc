// The web builder end to end: Debian's chromium, driven by tests/browser/wizard.mjs through
// Playwright, walks the wizard of a real `pok8s serve` (real registry, real Debian base, a fake k3s
// served over HTTP) to a finished build, and the ISO it downloads hashes as its manifest says.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "e2e/pok8s_cli.h"
#include "integration/registry_harness.h"
#include "integration/service_harness.h"
#include "pok8s/util/file.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::testing;
namespace fs = std::filesystem;

namespace {

constexpr const char* kChromium = "/usr/bin/chromium";
constexpr const char* kFakeK3s = "#!/bin/sh\necho 'k3s version v1.31.2+k3s1'\n";
constexpr std::size_t kScriptOutputLimit = 8u << 20;

util::Path browser_dir() {
  return util::Path(POK8S_TEST_SOURCE_DIR) / "tests" / "browser";
}

// What this machine lacks to drive the browser, with the command that installs it; empty when
// nothing is missing. A missing tool fails the test: a skipped browser test hides a broken UI.
std::string missing_browser_tools() {
  if (!fs::exists(kChromium))
    return fmt::format("{} is missing: run ./scripts/install-deps.sh test (Debian's chromium)",
                       kChromium);
  try {
    if (util::run_process({"node", "--version"}).status != 0)
      return "node does not run: run ./scripts/install-deps.sh test (Debian's nodejs)";
  } catch (const std::exception& e) {
    return fmt::format("node is missing ({}): run ./scripts/install-deps.sh test (Debian's nodejs)",
                       e.what());
  }
  if (!fs::exists(browser_dir() / "node_modules" / "playwright-core" / "package.json"))
    return fmt::format("{} is missing: run npm ci --prefix tests/browser",
                       (browser_dir() / "node_modules" / "playwright-core").string());
  return {};
}

// The caller's environment with `extra` ("NAME=value") set in place of any value it had.
std::vector<std::string> environment_with(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string_view entry(*e);
    bool replaced = false;
    for (const auto& x : extra)
      replaced = replaced || entry.starts_with(x.substr(0, x.find('=') + 1));
    if (!replaced) env.emplace_back(entry);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

std::string tail(const std::string& text, std::size_t bytes) {
  return text.size() > bytes ? "…" + text.substr(text.size() - bytes) : text;
}

// A directory served over HTTP on 127.0.0.1 by Python's http.server, as a k3s release would be.
class FileServer {
 public:
  explicit FileServer(const util::Path& dir) : port_(free_port()) {
    util::Path log = dir.parent_path() / "http-server.log";
    process_ = ChildProcess({"/usr/bin/python3", "-m", "http.server", std::to_string(port_),
                             "--bind", "127.0.0.1", "--directory", dir.string()},
                            log);
    for (int i = 0; i < 200; ++i) {
      if (http_status(port_, "/") == 200) return;
      if (!process_.running())
        throw std::runtime_error("python3 -m http.server exited:\n" + util::read_file(log));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    throw std::runtime_error("python3 -m http.server did not answer:\n" + util::read_file(log));
  }
  std::string url(const std::string& name) const {
    return fmt::format("http://127.0.0.1:{}/{}", port_, name);
  }

 private:
  int port_;
  ChildProcess process_;
};

TEST(WebBuilder, WalksTheWizardToADownloadedIsoWhoseSha256MatchesTheManifest) {
  std::string missing = missing_browser_tools();
  ASSERT_EQ(missing, "") << "the browser test cannot run";
  std::string fixture_error;
  std::string tar = debian_fixture(fixture_error);
  ASSERT_FALSE(tar.empty()) << fixture_error;

  // The Debian base, pushed to a registry on 127.0.0.1 as a template would name it.
  TestRegistry registry;
  util::TempDir work = util::TempDir::scratch("/var/tmp");
  const util::Path w = work.path();
  const util::Path cache = test_cache_dir("browser-cache");
  push_debian_bases(tar, registry, w / "layout", cache);

  // A k3s "release" on 127.0.0.1, with its sha256 as the wizard asks for it.
  util::make_dirs(w / "release");
  util::write_file_atomic(w / "release" / "k3s", kFakeK3s, 0755);
  FileServer release(w / "release");
  const std::string k3s_sha256 = util::file_sha256(w / "release" / "k3s");

  TestService service(w / "data", cache,
                      {"--tls-verify=false", "--template",
                       "debian-local=Debian 12 (local)|" + registry.docker("debian:12")});

  auto started = std::chrono::steady_clock::now();
  auto wizard = util::run_process({"node", (browser_dir() / "wizard.mjs").string()},
                                  {.env = environment_with({
                                       fmt::format("POK8S_URL=http://127.0.0.1:{}", service.port()),
                                       "POK8S_LOGIN_TOKEN=" + service.login_token(),
                                       "POK8S_TEMPLATE=debian-local",
                                       "POK8S_K8S_BINARY_URL=" + release.url("k3s"),
                                       "POK8S_K8S_SHA256=" + k3s_sha256,
                                       "POK8S_DOWNLOAD_DIR=" + (w / "downloads").string(),
                                       "POK8S_BUILD_TIMEOUT_S=1500",
                                       fmt::format("POK8S_CHROMIUM={}", kChromium),
                                   }),
                                   .output_limit = kScriptOutputLimit});
  auto seconds =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started);
  std::string screenshot;
  if (wizard.status != 0 && fs::exists(w / "downloads" / "failure.png")) {
    // The work directory goes with the test; the page as it failed is kept next to the cache.
    util::Path kept = cache.parent_path() / "browser-failure.png";
    std::error_code ec;
    fs::copy_file(w / "downloads" / "failure.png", kept, fs::copy_options::overwrite_existing, ec);
    if (!ec) screenshot = "\n--- the page as it failed: " + kept.string();
  }
  EXPECT_EQ(wizard.status, 0) << "node tests/browser/wizard.mjs exited with " << wizard.status
                              << " after " << seconds.count() << " s:\n"
                              << wizard.output << screenshot
                              << "\n--- the end of the service log:\n"
                              << tail(service.log(), 12000);
  if (wizard.status == 0) std::cout << wizard.output;
}

TEST(WebBuilder, SpecMappingRoundTripsWithoutABrowser) {
  try {
    auto r = util::run_process({"node", "--test", (browser_dir() / "spec_test.mjs").string()},
                               {.env = std::nullopt, .output_limit = kScriptOutputLimit});
    EXPECT_EQ(r.status, 0) << r.output;
  } catch (const std::exception& e) {
    FAIL() << "node is missing (" << e.what() << "): run ./scripts/install-deps.sh test";
  }
}

}  // namespace
