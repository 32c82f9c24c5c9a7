// Disk images on a real base: Debian bookworm (mmdebstrap) → import → convert → pok8s build
// --artifact raw,qcow2,vhd → boot in QEMU (TCG) with OVMF, and by SeaBIOS. The cloud-config's
// boot stage reports on the serial console what it finds and powers off. One disk goes through
// its life, each boot checking all it can: the qcow2 boots with a NoCloud disk beside it, boots
// again to see what persists (COS_PERSISTENT's /home and /etc/ssh) and what does not (/etc/motd,
// an ephemeral overlay), then, converted to raw to be edited offline, resets from recovery. Then:
// fallback to passive, a self-expanding disk, the vhd by BIOS, the same bytes from an empty
// cache, and a disk too small refused before anything is written.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "e2e/pok8s_cli.h"
#include "integration/qemu.h"
#include "pok8s/util/file.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::testing;
namespace fs = std::filesystem;

namespace {

constexpr const char* kTag = "12-standard-amd64-generic-v0.1.0";
constexpr const char* kBase = "debian-12-standard-amd64-generic-v0.1.0";

// First boot: write to a persistent and an ephemeral place. Every boot: one line with what it
// sees, the agent's status on one line, then power off.
constexpr const char* kCloudConfig = R"yaml(#cloud-config
k3s:
  enabled: true
  args: [--disable=traefik]
  env: {K3S_NODE_NAME: e2e-node}
stages:
  rootfs:
    - name: e2e persistent path added the Kairos way
      environment_file: /run/cos/cos-layout.env
      environment:
        CUSTOM_BIND_MOUNTS: /var/lib/e2e-extra
  boot.after:
    - name: e2e kubernetes probe (after the default stage that starts k3s)
      commands:
        - |
          exec=$(systemctl show -p ExecStart --value k3s.service | grep -o 'argv\[\]=[^;]*')
          echo "POK8S-K8S $exec| $(systemctl show -p Environment --value k3s.service)" > /dev/ttyS0
  boot:
    - name: e2e disk probe
      commands:
        - |
          if grep -q '^mode=recovery' /run/pok8s/boot-state && [ -f /oem/e2e-reset ]; then
            rm /oem/e2e-reset
            out=$(pok8s-agent reset 2>&1); rc=$?
            echo "POK8S-RESET rc=$rc $(echo "$out" | tail -1)" > /dev/ttyS0
          fi
          r=ro; touch /pok8s-probe 2>/dev/null && r=rw
          . /etc/pok8s-release
          home=$(cat /home/e2e 2>/dev/null || echo none)
          ssh=$(cat /etc/ssh/e2e 2>/dev/null || echo none)
          motd=$(grep -c pok8s-e2e /etc/motd 2>/dev/null)
          oem=no; [ -f /oem/90_custom.yaml ] && oem=yes
          extra=$(cat /var/lib/e2e-extra/f 2>/dev/null || echo none)
          echo "POK8S-DISK root=$r version=$VERSION home=$home ssh=$ssh motd=$motd oem=$oem extra=$extra" > /dev/ttyS0
          echo "POK8S-STATUS $(pok8s-agent status --json | tr -d '\n')" > /dev/ttyS0
          echo written > /home/e2e
          echo written > /etc/ssh/e2e
          mkdir -p /var/lib/e2e-extra && echo written > /var/lib/e2e-extra/f
          echo pok8s-e2e >> /etc/motd
          sync
          # Power off once pok8s-booted.service has counted this boot as good.
          systemd-run --no-block sh -c 'until systemctl -q is-active pok8s-booted.service; do sleep 1; done; systemctl poweroff'
)yaml";

std::string sha256_of(const util::Path& p) {
  return util::file_sha256(p);
}

class DiskImage : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto fail = [](std::string why) { setup_error_ = std::move(why); };
    work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
    util::Path w = work_->path();
    layout_ = "oci:" + (w / "layout").string();
    if (convert_debian_fixture(w, w / "layout", "v0.1.0", setup_error_).empty()) return;
    util::write_file_atomic(w / "cloud.yaml", kCloudConfig);
    auto r = run_pok8s((w / "cache").string(),
                       {"build", layout_ + ":" + kTag, "--artifact", "raw,qcow2,vhd", "--bios",
                        "-o", (w / "out").string(), "--config", (w / "cloud.yaml").string()});
    if (r.status != 0) return fail("build failed:\n" + r.output);
  }
  static void TearDownTestSuite() {
    delete work_;
    work_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  static util::Path artifact(const std::string& ext) {
    return work_->path() / "out" / (std::string(kBase) + "." + ext);
  }

  struct Probe {
    std::string line;
    nlohmann::json status;
    std::string k8s;     // how systemd will start k3s
    std::string reset;   // what pok8s-agent reset said, on a boot of the recovery image
    std::string serial;  // the whole console
  };
  // Boots `disk` until its probe and status lines, and waits for it to power off.
  static Probe boot(const util::Path& disk, const std::optional<util::Path>& second = {},
                    Firmware firmware = Firmware::kUefi) {
    util::TempDir vm_dir = util::TempDir::scratch("/var/tmp");
    QemuOptions options;
    options.firmware = firmware;
    options.disks.push_back(disk);
    if (second) options.disks.push_back(*second);
    Qemu vm(options, vm_dir.path());
    Probe p;
    auto line = vm.wait_for_line("POK8S-DISK", boot_timeout(std::chrono::seconds(420)));
    if (!line) {
      ADD_FAILURE() << "no probe line; the console ended with:\n" << vm.tail(60);
      return p;
    }
    p.line = *line;
    p.serial = vm.serial();
    if (auto at = p.serial.find("POK8S-RESET "); at != std::string::npos)
      p.reset = p.serial.substr(at, p.serial.find('\n', at) - at);
    auto status = vm.wait_for_line("POK8S-STATUS ", std::chrono::seconds(60));
    if (status) p.status = nlohmann::json::parse(status->substr(13), nullptr, false);
    if (auto k8s = vm.wait_for_line("POK8S-K8S ", std::chrono::seconds(60))) p.k8s = *k8s;
    EXPECT_TRUE(vm.wait_exit(std::chrono::seconds(120))) << vm.tail(40);
    p.serial = vm.serial();
    return p;
  }

  static inline std::string setup_error_;
  static inline util::TempDir* work_ = nullptr;
  static inline std::string layout_;
};

// Where a partition starts in a disk image, by its GPT name.
std::uint64_t partition_offset(const util::Path& disk, const std::string& name) {
  auto r = util::run_process({"sfdisk", "--json", disk.string()});
  EXPECT_EQ(r.status, 0) << r.output;
  auto table = nlohmann::json::parse(r.output);
  for (const auto& p : table["partitiontable"]["partitions"])
    if (p["name"] == name) return p["start"].get<std::uint64_t>() * 512;
  ADD_FAILURE() << "no partition " << name << " in " << disk;
  return 0;
}

// Runs debugfs commands on the ext4 file system of partition `name` (e2fsprogs reads
// "FILE?offset=N" as a file system inside a file).
void debugfs(const util::Path& disk, const std::string& name, const std::string& commands) {
  util::TempDir dir = util::TempDir::scratch();
  util::write_file_atomic(dir.path() / "cmds", commands);
  auto r =
      util::run_process({"debugfs", "-w", "-f", (dir.path() / "cmds").string(),
                         fmt::format("{}?offset={}", disk.string(), partition_offset(disk, name))});
  ASSERT_EQ(r.status, 0) << r.output;
}

// The content of `path` in the ext4 file system of partition `name`, or "" (debugfs prints
// nothing for a file that does not exist).
std::string debugfs_cat(const util::Path& disk, const std::string& name, const std::string& path) {
  auto r =
      util::run_process({"debugfs", "-R", "cat " + path,
                         fmt::format("{}?offset={}", disk.string(), partition_offset(disk, name))});
  EXPECT_EQ(r.status, 0) << r.output;
  // debugfs prints its version line on stderr, which run_process merges: keep the last line.
  return util::last_line(r.output);
}

// Replaces the active image's rootfs with 1 MiB of garbage and COS_OEM's GRUB environment
// block with one that says `vars`.
void break_active_and_set_grubenv(const util::Path& disk, const std::vector<std::string>& vars) {
  util::TempDir dir = util::TempDir::scratch();
  util::write_file_atomic(dir.path() / "garbage", std::string(1 << 20, 'x'));
  debugfs(disk, "COS_STATE",
          fmt::format("rm /cOS/active/rootfs.img\nwrite {} /cOS/active/rootfs.img\n",
                      (dir.path() / "garbage").string()));
  util::Path env = dir.path() / "grubenv";
  std::vector<std::string> set = {"grub-editenv", env.string(), "set"};
  set.insert(set.end(), vars.begin(), vars.end());
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"grub-editenv", env.string(), "create"}, set}) {
    auto r = util::run_process(args);
    ASSERT_EQ(r.status, 0) << r.output;
  }
  debugfs(disk, "COS_OEM", fmt::format("rm /grubenv\nwrite {} /grubenv\n", env.string()));
}

// One disk through its life: the qcow2 artifact boots twice (first with a NoCloud datasource disk
// beside it: FAT, label CIDATA, made with mtools, whose user-data adds a stage), which shows what
// persists; then, as raw, a reset from recovery.
TEST_F(DiskImage, Qcow2ReadsACidataDiskKeepsOnlyPersistentPathsAndResetsFromRecovery) {
  util::Path qcow2 = work_->path() / "boot.qcow2";
  fs::copy_file(artifact("qcow2"), qcow2);
  util::Path cidata = work_->path() / "cidata.img";
  util::write_file_atomic(work_->path() / "user-data",
                          "#cloud-config\nstages:\n  boot.after:\n    - name: from cidata\n"
                          "      commands: [\"echo POK8S-CIDATA hello > /dev/ttyS0\"]\n");
  for (const auto& args : std::vector<std::vector<std::string>>{
           {"mformat", "-i", cidata.string(), "-C", "-f", "1440", "-v", "CIDATA", "::"},
           {"mcopy", "-i", cidata.string(), (work_->path() / "user-data").string(),
            "::/user-data"}}) {
    auto r = util::run_process(args);
    ASSERT_EQ(r.status, 0) << r.output;
  }
  Probe first = boot(qcow2, cidata);
  EXPECT_EQ(first.line,
            "POK8S-DISK root=ro version=v0.1.0 home=none ssh=none motd=0 oem=yes extra=none");
  EXPECT_NE(first.serial.find("POK8S-CIDATA hello"), std::string::npos)
      << first.serial.substr(first.serial.size() > 3000 ? first.serial.size() - 3000 : 0);
  ASSERT_TRUE(first.status.is_object()) << first.line;
  EXPECT_EQ(first.status["mode"], "active");
  EXPECT_EQ(first.status["entry"], "active");
  EXPECT_EQ(first.status["version"], "v0.1.0");
  // The cloud-config's k3s section reached systemd: its arguments and environment.
  EXPECT_EQ(first.k8s,
            "POK8S-K8S argv[]=/usr/bin/k3s server --disable=traefik | K3S_NODE_NAME=e2e-node")
      << first.k8s;

  // /home and /etc/ssh come from COS_PERSISTENT; /etc/motd was in the tmpfs overlay.
  Probe second = boot(qcow2);
  EXPECT_EQ(
      second.line,
      "POK8S-DISK root=ro version=v0.1.0 home=written ssh=written motd=0 oem=yes extra=written");
  EXPECT_EQ(second.serial.find("POK8S-CIDATA"), std::string::npos) << "the datasource is gone";
  ASSERT_TRUE(second.status.is_object()) << second.line;
  EXPECT_EQ(second.status["mode"], "active");
  // GRUB took one try for this boot; the first boot gave its own back (pok8s-agent mark-booted).
  EXPECT_EQ(second.status["tries"], 2) << second.status.dump();
  EXPECT_EQ(second.status["fallback"], nullptr) << second.status.dump();

  // The same disk as raw, to edit offline: the active image is broken; GRUB is told to boot
  // recovery, whose boot stage resets.
  util::Path disk = work_->path() / "boot.raw";
  auto converted = util::run_process(
      {"qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2.string(), disk.string()});
  ASSERT_EQ(converted.status, 0) << converted.output;
  fs::remove(qcow2);
  break_active_and_set_grubenv(
      disk, {"pok8s_entry=recovery", "pok8s_tries=3", "pok8s_max_tries=3", "pok8s_fallback="});
  {
    util::TempDir dir = util::TempDir::scratch();
    util::write_file_atomic(dir.path() / "marker", "reset\n");
    debugfs(disk, "COS_OEM",
            fmt::format("write {} /e2e-reset\n", (dir.path() / "marker").string()));
  }
  Probe recovery = boot(disk);
  ASSERT_TRUE(recovery.status.is_object()) << recovery.line;
  EXPECT_EQ(recovery.status["mode"], "recovery") << recovery.status.dump();
  EXPECT_EQ(recovery.reset.rfind("POK8S-RESET rc=0 ", 0), 0u) << recovery.reset;
  // Active boots again, and what COS_PERSISTENT held (written by the boots above) is gone.
  Probe after = boot(disk);
  EXPECT_EQ(after.line,
            "POK8S-DISK root=ro version=v0.1.0 home=none ssh=none motd=0 oem=yes extra=none");
  ASSERT_TRUE(after.status.is_object()) << after.line;
  EXPECT_EQ(after.status["mode"], "active") << after.status.dump();
  EXPECT_EQ(after.status["fallback"], nullptr) << after.status.dump();
}

TEST_F(DiskImage, AnActiveImageThatDoesNotBootFallsBackToPassive) {
  util::Path disk = work_->path() / "fallback.raw";
  fs::copy_file(artifact("raw"), disk);
  // The active image becomes garbage; boot assessment allows one try (instead of three, to keep
  // the test short).
  break_active_and_set_grubenv(
      disk, {"pok8s_entry=active", "pok8s_tries=1", "pok8s_max_tries=1", "pok8s_fallback="});

  {
    // The first boot takes active's only try and fails in the initramfs, then reboots.
    util::TempDir vm_dir = util::TempDir::scratch("/var/tmp");
    QemuOptions options;
    options.firmware = Firmware::kUefi;
    options.disks.push_back(disk);
    Qemu vm(options, vm_dir.path());
    ASSERT_TRUE(vm.wait_for("pok8s-init: Failed to mount", boot_timeout(std::chrono::seconds(300))))
        << vm.tail(40);
    EXPECT_TRUE(vm.wait_exit(std::chrono::seconds(120))) << vm.tail(20);
  }
  // The next boot finds active out of tries and boots passive by itself.
  Probe p = boot(disk);
  EXPECT_EQ(p.line.rfind("POK8S-DISK root=ro version=v0.1.0", 0), 0u) << p.line;
  ASSERT_TRUE(p.status.is_object()) << p.line;
  EXPECT_EQ(p.status["mode"], "passive") << p.status.dump();
  EXPECT_EQ(p.status["entry"], "passive") << p.status.dump();
  EXPECT_EQ(p.status["fallback"], "active") << p.status.dump();
  EXPECT_NE(p.status["reason"].get<std::string>().find("the active image did not finish booting"),
            std::string::npos)
      << p.status.dump();
}

TEST_F(DiskImage, ASelfExpandingDiskGrowsToFillItsDiskOnTheFirstBoot) {
  util::Path w = work_->path();
  auto r = run_pok8s((w / "cache").string(),
                     {"build", layout_ + ":" + kTag, "--artifact", "raw", "--expandable", "-o",
                      (w / "expandable").string(), "--config", (w / "cloud.yaml").string()});
  ASSERT_EQ(r.status, 0) << r.output;
  util::Path built = w / "expandable" / (std::string(kBase) + ".raw");
  auto names = [](const util::Path& disk) {
    auto r = util::run_process({"sfdisk", "--json", disk.string()});
    EXPECT_EQ(r.status, 0) << r.output;
    std::vector<std::string> out;
    // Kept in a variable: a range-for over a member of a temporary would dangle.
    nlohmann::json table = nlohmann::json::parse(r.output);
    for (const auto& p : table["partitiontable"]["partitions"]) out.push_back(p["name"]);
    return out;
  };
  EXPECT_EQ(names(built), (std::vector<std::string>{"COS_GRUB", "COS_OEM", "COS_RECOVERY"}));
  EXPECT_LT(fs::file_size(built), fs::file_size(artifact("raw")));

  // The disk it is written to is bigger than the image: 6 GiB.
  util::Path disk = w / "expanding.raw";
  fs::copy_file(built, disk);
  fs::resize_file(disk, 6ull << 30);
  {
    util::TempDir vm_dir = util::TempDir::scratch("/var/tmp");
    QemuOptions options;
    options.firmware = Firmware::kUefi;
    options.disks.push_back(disk);
    Qemu vm(options, vm_dir.path());
    // Recovery boots, expands the disk and reboots (which ends QEMU here).
    EXPECT_TRUE(vm.wait_exit(boot_timeout(std::chrono::seconds(900)))) << vm.tail(60);
  }
  EXPECT_EQ(names(disk), (std::vector<std::string>{"COS_GRUB", "COS_OEM", "COS_RECOVERY",
                                                   "COS_STATE", "COS_PERSISTENT"}));
  auto table = nlohmann::json::parse(util::run_process({"sfdisk", "--json", disk.string()}).output);
  const auto& last = table["partitiontable"]["partitions"].back();
  std::uint64_t end =
      (last["start"].get<std::uint64_t>() + last["size"].get<std::uint64_t>()) * 512;
  EXPECT_GT(end, (6ull << 30) - (2u << 20)) << table.dump();  // COS_PERSISTENT fills the disk

  Probe p = boot(disk);
  EXPECT_EQ(p.line,
            "POK8S-DISK root=ro version=v0.1.0 home=none ssh=none motd=0 oem=yes extra=none");
  ASSERT_TRUE(p.status.is_object()) << p.line;
  EXPECT_EQ(p.status["mode"], "active") << p.status.dump();
  // And what it wrote to /home and /etc/ssh went to the COS_PERSISTENT the expansion made, where
  // the next boot mounts them from (as the qcow2's second boot shows): read offline.
  EXPECT_EQ(debugfs_cat(disk, "COS_PERSISTENT", "/.state/home/e2e"), "written");
  EXPECT_EQ(debugfs_cat(disk, "COS_PERSISTENT", "/.state/etc-ssh/e2e"), "written");
}

// Built with --bios: SeaBIOS (QEMU's firmware without OVMF; no UEFI to fall back on) runs
// GRUB's boot code from the MBR, which loads its core image from the BIOS boot partition,
// which reads the same menu from COS_GRUB.
TEST_F(DiskImage, VhdBootsWithBiosFirmware) {
  util::Path disk = work_->path() / "boot.vhd";
  fs::copy_file(artifact("vhd"), disk);
  Probe p = boot(disk, std::nullopt, Firmware::kBios);
  EXPECT_EQ(p.line,
            "POK8S-DISK root=ro version=v0.1.0 home=none ssh=none motd=0 oem=yes extra=none");
  ASSERT_TRUE(p.status.is_object()) << p.line;
  EXPECT_EQ(p.status["mode"], "active");
}

TEST_F(DiskImage, ManifestListsEveryDisk) {
  auto manifest = nlohmann::json::parse(
      util::read_file(work_->path() / "out" / (std::string(kBase) + ".manifest.json")));
  ASSERT_EQ(manifest["artifacts"].size(), 3u) << manifest.dump(2);
  for (const auto& a : manifest["artifacts"]) {
    util::Path file = work_->path() / "out" / a["name"].get<std::string>();
    EXPECT_EQ(a["size"].get<std::uint64_t>(), fs::file_size(file));
    EXPECT_EQ(a["sha256"], sha256_of(file));
    EXPECT_EQ(file.extension().string(), "." + a["type"].get<std::string>());
  }
  // The partitions the installed system looks for, by name.
  auto r = util::run_process({"sfdisk", "--json", artifact("raw").string()});
  ASSERT_EQ(r.status, 0) << r.output;
  auto table = nlohmann::json::parse(r.output)["partitiontable"];
  std::vector<std::string> names;
  for (const auto& p : table["partitions"]) names.push_back(p["name"]);
  EXPECT_EQ(names, (std::vector<std::string>{"BIOS", "COS_GRUB", "COS_OEM", "COS_RECOVERY",
                                             "COS_STATE", "COS_PERSISTENT"}));
  // qemu-img reads both conversions back as the same disk.
  // (A fixed VHD is raw data with a footer: named by its format, not probed.)
  for (const char* ext : {"qcow2", "vhd"}) {
    auto cmp = util::run_process({"qemu-img", "compare", "-q", "-f", "raw", "-F",
                                  std::string(ext) == "vhd" ? "vpc" : ext, artifact("raw").string(),
                                  artifact(ext).string()});
    EXPECT_EQ(cmp.status, 0) << ext << ": " << cmp.output;
  }
}

TEST_F(DiskImage, TheSameInputsBuildTheSameBytesFromAnEmptyCache) {
  util::Path w = work_->path();
  auto r = run_pok8s((w / "cache2").string(),
                     {"build", layout_ + ":" + kTag, "--artifact", "raw,qcow2,vhd", "--bios", "-o",
                      (w / "out2").string(), "--config", (w / "cloud.yaml").string()});
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* ext : {"raw", "qcow2", "vhd"})
    EXPECT_EQ(sha256_of(w / "out2" / (std::string(kBase) + "." + ext)), sha256_of(artifact(ext)))
        << ext;
}

TEST_F(DiskImage, ADiskTooSmallIsRefusedBeforeAnythingIsWritten) {
  util::Path w = work_->path();
  auto r = run_pok8s((w / "cache").string(), {"build", layout_ + ":" + kTag, "--artifact", "raw",
                                              "--disk-size", "600M", "-o", (w / "small").string()});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("the disk of 600 MiB is too small"), std::string::npos) << r.output;
  bool empty = !fs::exists(w / "small") || fs::is_empty(w / "small");
  EXPECT_TRUE(empty);
  r = run_pok8s((w / "cache").string(), {"build", layout_ + ":" + kTag, "--artifact", "raw",
                                         "--disk-size", "lots", "-o", (w / "small").string()});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--disk-size"), std::string::npos) << r.output;
}

}  // namespace
