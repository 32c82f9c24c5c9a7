// A build spec end to end on the real Debian base: `pok8s build -f spec.yaml` converts the base
// with k3s and the toppings (a manifest to auto-deploy, a WireGuard interface without a key in
// the spec), builds the ISO, and the ISO boots in QEMU (UEFI, TCG) to a boot stage that finds
// the interface up with a key the node made itself and the manifest where k3s deploys it.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "e2e/pok8s_cli.h"
#include "integration/qemu.h"
#include "pok8s/util/file.h"

using namespace pok8s;
using namespace pok8s::testing;
namespace fs = std::filesystem;

namespace {

constexpr const char* kIsoName = "debian-12-standard-amd64-generic-v0.2.0.iso";
constexpr const char* kExpected =
    "POK8S-SPEC version=v0.2.0 kubernetes=k3s wg=enabled,up,44 manifest=yes";
constexpr const char* kPeerKey = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

constexpr const char* kCloudConfig = R"(#cloud-config
stages:
  boot:
    - name: spec probe
      commands:
        - |
          . /etc/pok8s-release
          w=none; systemctl is-enabled wg-quick@wg0 >/dev/null 2>&1 && w=enabled
          wg-quick up wg0 >/dev/null 2>&1
          k=$(wg show wg0 public-key 2>/dev/null) && w="$w,up,${#k}"
          m=no; [ -f /var/lib/rancher/k3s/server/manifests/hello.yaml ] && m=yes
          echo "POK8S-SPEC version=$VERSION kubernetes=$KUBERNETES wg=$w manifest=$m" > /dev/ttyS0
)";

class Spec : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto fail = [](std::string why) { setup_error_ = std::move(why); };
    std::string tar = debian_fixture(setup_error_);
    if (tar.empty()) return;
    work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
    util::Path w = work_->path();
    util::write_file_atomic(w / "fake-k3s", "#!/bin/sh\necho 'k3s version v1.31.2+k3s1'\n", 0755);
    util::write_file_atomic(w / "cloud.yaml", kCloudConfig);
    util::write_file_atomic(w / "hello.yaml",
                            "apiVersion: v1\nkind: Namespace\n"
                            "metadata: {name: hello}\n");
    util::write_file_atomic(w / "spec.yaml", fmt::format(R"(apiVersion: pok8s/v1
kind: Build
base: oci:{}:base
version: v0.2.0
kubernetes: {{distribution: k3s, version: v1.31.2+k3s1, binary: ./fake-k3s}}
toppings:
  manifests: [./hello.yaml]
  wireguard:
    address: [10.8.0.2/24]
    listenPort: 51820
    peers:
      - publicKey: {}
        endpoint: 192.0.2.1:51820
        allowedIPs: [10.8.0.0/24]
artifacts: [iso]
cloudConfig: ./cloud.yaml
)",
                                                         (w / "layout").string(), kPeerKey));
    auto r = run_pok8s((w / "cache").string(),
                       {"image", "import", tar, "oci:" + (w / "layout").string() + ":base"});
    if (r.status != 0) return fail("import failed:\n" + r.output);
    r = run_pok8s((w / "cache").string(), {"--json", "build", "-f", (w / "spec.yaml").string(),
                                           "-o", (w / "out").string()});
    if (r.status != 0) return fail("build -f failed:\n" + r.output);
    auto start = r.output.find("{\n");
    if (start == std::string::npos) return fail("no JSON result:\n" + r.output);
    result_ = nlohmann::json::parse(r.output.substr(start, r.output.rfind('}') - start + 1));
  }
  static void TearDownTestSuite() {
    delete work_;
    work_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  static inline std::string setup_error_;
  static inline util::TempDir* work_ = nullptr;
  static inline nlohmann::json result_;
};

TEST_F(Spec, BootsWithTheToppingsInPlace) {
  util::TempDir vm_dir = util::TempDir::scratch("/var/tmp");
  QemuOptions options;
  options.firmware = Firmware::kUefi;
  options.cdrom = work_->path() / "out" / kIsoName;
  Qemu vm(options, vm_dir.path());
  auto line = vm.wait_for_line("POK8S-SPEC", boot_timeout(std::chrono::seconds(420)));
  ASSERT_TRUE(line) << "no probe line; the console ended with:\n" << vm.tail(60);
  EXPECT_EQ(*line, kExpected) << vm.tail(60);
}

TEST_F(Spec, TheManifestCarriesTheSpecIdAndItsCanonicalForm) {
  EXPECT_TRUE(result_["converted"].get<bool>());
  std::string id = result_["specId"];
  EXPECT_EQ(id.size(), 16u);
  auto manifest = nlohmann::json::parse(util::read_file(
      work_->path() / "out" / "debian-12-standard-amd64-generic-v0.2.0.manifest.json"));
  EXPECT_EQ(manifest["specId"], id);
  const auto& spec = manifest["spec"];
  EXPECT_EQ(spec["version"], "v0.2.0");
  // The base is named by its digest, files by their content: the id does not depend on paths.
  EXPECT_EQ(spec.dump().find(work_->path().string()), std::string::npos) << spec.dump(2);
}

TEST_F(Spec, TheSameSpecAgainReusesTheConversionAndGivesTheSameIso) {
  util::Path w = work_->path();
  auto r = run_pok8s((w / "cache").string(), {"--json", "build", "-f", (w / "spec.yaml").string(),
                                              "-o", (w / "out-again").string()});
  ASSERT_EQ(r.status, 0) << r.output;
  auto start = r.output.find("{\n");
  ASSERT_NE(start, std::string::npos) << r.output;
  auto again = nlohmann::json::parse(r.output.substr(start, r.output.rfind('}') - start + 1));
  EXPECT_FALSE(result_["conversionCached"].get<bool>());
  EXPECT_TRUE(again["conversionCached"].get<bool>()) << r.output;
  EXPECT_EQ(again["specId"], result_["specId"]);
  EXPECT_EQ(again["artifacts"][0]["sha256"], result_["artifacts"][0]["sha256"]);
}

TEST_F(Spec, OptionsTheEngineCannotBuildAreRefusedBeforeAnyWork) {
  util::Path w = work_->path();
  std::string text = util::read_file(w / "spec.yaml");
  text.replace(text.find("artifacts: [iso]"), 16,
               "artifacts: [iso, uki]\nsecurity: {trustedBoot: true}");
  util::write_file_atomic(w / "later.yaml", text);
  auto r = run_pok8s((w / "cache").string(), {"build", "-f", (w / "later.yaml").string(), "-o",
                                              (w / "out-later").string()});
  EXPECT_EQ(r.status, 7) << r.output;
  EXPECT_NE(r.output.find("artifacts: uki"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("security.trustedBoot"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(w / "out-later"));
}

}  // namespace
