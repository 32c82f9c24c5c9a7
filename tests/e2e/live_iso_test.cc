// The whole product on a real base: Debian bookworm (mmdebstrap) → pok8s image import →
// pok8s convert → pok8s build --artifact iso → boot in QEMU (TCG) with OVMF and with SeaBIOS,
// reading from the serial console what the cloud-config's boot stage found: / read-only, /etc
// writable, and /etc/pok8s-release. Then a second build from an empty cache is bit-for-bit
// identical.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "e2e/pok8s_cli.h"
#include "integration/qemu.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::testing;
namespace fs = std::filesystem;

namespace {

constexpr const char* kTag = "12-standard-amd64-generic-v0.1.0";
constexpr const char* kIsoName = "debian-12-standard-amd64-generic-v0.1.0.iso";
constexpr const char* kExpected =
    "POK8S-E2E root=ro etc=rw version=v0.1.0 family=debian kubernetes=k3s release=12 fs=yes "
    "reconcile=enabled";

// The boot stage writes what it sees on the serial console in one line.
constexpr const char* kCloudConfig = R"(#cloud-config
stages:
  fs:
    - name: e2e fs stage marker
      files: [{path: /run/pok8s-e2e-fs, content: "yes"}]
  boot:
    - name: e2e probe
      commands:
        - |
          r=ro; touch /pok8s-probe 2>/dev/null && r=rw
          e=ro; touch /etc/pok8s-probe 2>/dev/null && e=rw
          . /etc/pok8s-release
          fs=$(cat /run/pok8s-e2e-fs 2>/dev/null || echo no)
          reconcile=$(systemctl is-enabled pok8s-reconcile.timer 2>/dev/null)
          echo "POK8S-E2E root=$r etc=$e version=$VERSION family=$FAMILY kubernetes=$KUBERNETES release=$FLAVOR_RELEASE fs=$fs reconcile=$reconcile" > /dev/ttyS0
)";

std::string file_sha256(const util::Path& p) {
  util::Sha256 h;
  h.update(util::read_file(p, 4ull << 30));
  return h.hex_digest();
}

class LiveIso : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto fail = [](std::string why) { setup_error_ = std::move(why); };
    work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
    util::Path w = work_->path();
    layout_ = "oci:" + (w / "layout").string();
    if (convert_debian_fixture(w, w / "layout", "v0.1.0", setup_error_).empty()) return;
    util::write_file_atomic(w / "cloud.yaml", kCloudConfig);
    auto r = run_pok8s((w / "cache").string(),
                       {"build", layout_ + ":" + kTag, "--artifact", "iso", "-o",
                        (w / "out").string(), "--config", (w / "cloud.yaml").string()});
    if (r.status != 0) return fail("build failed:\n" + r.output);
    iso_ = w / "out" / kIsoName;
  }
  static void TearDownTestSuite() {
    delete work_;
    work_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  // Boots the ISO and returns the probe line from the serial console.
  static void boot_and_probe(Firmware firmware, bool as_disk = false) {
    util::TempDir vm_dir = util::TempDir::scratch("/var/tmp");
    QemuOptions options;
    options.firmware = firmware;
    if (as_disk)
      options.disks.push_back(iso_);
    else
      options.cdrom = iso_;
    Qemu vm(options, vm_dir.path());
    auto line = vm.wait_for_line("POK8S-E2E", boot_timeout(std::chrono::seconds(420)));
    ASSERT_TRUE(line) << "no probe line; the console ended with:\n" << vm.tail(60);
    EXPECT_EQ(*line, kExpected) << vm.tail(60);
  }

  static inline std::string setup_error_;
  static inline util::TempDir* work_ = nullptr;
  static inline std::string layout_;
  static inline util::Path iso_;
};

TEST_F(LiveIso, BootsWithUefiAndTheBootStageSeesAReadOnlyRoot) {
  boot_and_probe(Firmware::kUefi);
}

TEST_F(LiveIso, BootsWithBiosFromCdrom) {
  boot_and_probe(Firmware::kBios);
}

TEST_F(LiveIso, ManifestDescribesTheIso) {
  auto manifest = nlohmann::json::parse(util::read_file(
      work_->path() / "out" / "debian-12-standard-amd64-generic-v0.1.0.manifest.json"));
  ASSERT_EQ(manifest["artifacts"].size(), 1u);
  const auto& a = manifest["artifacts"][0];
  EXPECT_EQ(a["name"], kIsoName);
  EXPECT_EQ(a["size"].get<std::uint64_t>(), fs::file_size(iso_));
  EXPECT_EQ(a["sha256"], file_sha256(iso_));
  EXPECT_FALSE(manifest["buildId"].get<std::string>().empty());
  // Only the ISO and its manifest: no temporary files left behind.
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(work_->path() / "out"))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{kIsoName,
                                             "debian-12-standard-amd64-generic-v0.1.0."
                                             "manifest.json"}));
}

TEST_F(LiveIso, TheSameInputsBuildTheSameBytesFromAnEmptyCache) {
  util::Path w = work_->path();
  std::string cache2 = (w / "cache2").string();
  auto r = run_pok8s(cache2, {"build", layout_ + ":" + kTag, "--artifact", "iso", "-o",
                              (w / "out2").string(), "--config", (w / "cloud.yaml").string()});
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(file_sha256(w / "out2" / kIsoName), file_sha256(iso_));
}

TEST_F(LiveIso, ChangingOnlyTheCloudConfigReusesTheRootfsImage) {
  util::Path w = work_->path();
  util::write_file_atomic(w / "other.yaml", "#cloud-config\nhostname: other\n");
  auto r = run_pok8s((w / "cache").string(),
                     {"--json", "build", layout_ + ":" + kTag, "--artifact", "iso", "-o",
                      (w / "out3").string(), "--config", (w / "other.yaml").string()});
  ASSERT_EQ(r.status, 0) << r.output;
  auto json_start = r.output.find("{\n");
  ASSERT_NE(json_start, std::string::npos) << r.output;
  auto result =
      nlohmann::json::parse(r.output.substr(json_start, r.output.rfind('}') - json_start + 1));
  EXPECT_TRUE(result["cached"]["rootfs"].get<bool>());
  EXPECT_TRUE(result["cached"]["initramfs"].get<bool>());
  EXPECT_NE(result["artifacts"][0]["sha256"], file_sha256(iso_));
}

TEST_F(LiveIso, DropsToTheEmergencyShellOnlyWhenAsked) {
  // The ISO's own kernel and initramfs, booted directly with a media label that does not exist.
  util::TempDir vm_dir = util::TempDir::scratch("/var/tmp");
  util::Path kernel = vm_dir.path() / "kernel", initrd = vm_dir.path() / "initrd";
  auto x = util::run_process({"osirrox", "-indev", iso_.string(), "-extract", "/boot/kernel",
                              kernel.string(), "-extract", "/boot/initrd", initrd.string()});
  ASSERT_EQ(x.status, 0) << x.output;
  QemuOptions options;
  options.kernel = kernel;
  options.initrd = initrd;
  options.append = "console=ttyS0 pok8s.media=NOPE pok8s.wait=2 pok8s.shell";
  {
    Qemu vm(options, vm_dir.path());
    ASSERT_TRUE(
        vm.wait_for("no block device with the label NOPE", boot_timeout(std::chrono::seconds(180))))
        << vm.tail(40);
    ASSERT_TRUE(vm.wait_for("starting the emergency shell", std::chrono::seconds(30)))
        << vm.tail(40);
    // The shell is the image's static busybox: it computes what we type.
    vm.send("echo SHELL-$((6*7))\n");
    EXPECT_TRUE(vm.wait_for("SHELL-42", std::chrono::seconds(60))) << vm.tail(40);
  }
  options.append = "console=ttyS0 pok8s.media=NOPE pok8s.wait=2";
  Qemu vm(options, vm_dir.path());
  ASSERT_TRUE(vm.wait_for("rebooting in", boot_timeout(std::chrono::seconds(180)))) << vm.tail(40);
  EXPECT_EQ(vm.serial().find("starting the emergency shell"), std::string::npos) << vm.tail(40);
}

}  // namespace
