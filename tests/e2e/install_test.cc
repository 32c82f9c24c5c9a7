// Installing to disk on a real base: Debian bookworm (mmdebstrap) → import → convert → pok8s
// build --artifact iso with a cloud-config that says install: {auto: true, device: auto,
// poweroff: true}. Booted in QEMU (TCG, OVMF) with a blank disk, the live system installs
// itself and powers off; the disk then boots alone into the active image, read-only. Booted with
// two blank disks, the automatic install is refused naming both, and an install to the second,
// too small, is refused naming the sizes (one live boot for both refusals); both disks stay all
// zeros. The same install booted by SeaBIOS makes a disk that boots by BIOS (GRUB's boot code, a
// BIOS boot partition).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "e2e/pok8s_cli.h"
#include "integration/qemu.h"
#include "pok8s/util/file.h"

using namespace pok8s;
using namespace pok8s::testing;
namespace fs = std::filesystem;

namespace {

constexpr const char* kTag = "12-standard-amd64-generic-v0.1.0";
constexpr const char* kIsoName = "debian-12-standard-amd64-generic-v0.1.0.iso";
constexpr std::uint64_t kMiB = 1 << 20;

// Every boot: one line with what it sees and the agent's status. An installed system then powers
// off; the live one leaves that to the installer.
constexpr const char* kCloudConfig = R"yaml(#cloud-config
install:
  auto: true
  device: auto
  poweroff: true
stages:
  boot:
    - name: e2e install probe
      commands:
        - |
          r=ro; touch /pok8s-probe 2>/dev/null && r=rw
          . /etc/pok8s-release
          mode=$(sed -n 's/^mode=//p' /run/pok8s/boot-state)
          oem=no; [ -f /oem/90_custom.yaml ] && oem=yes
          echo "POK8S-INSTALL mode=$mode root=$r version=$VERSION oem=$oem" > /dev/ttyS0
          echo "POK8S-STATUS $(pok8s-agent status --json | tr -d '\n')" > /dev/ttyS0
          if [ "$mode" != live ]; then sync; systemctl --no-block poweroff; fi
          # A second disk: the refusals' boot. An install to it, named, must refuse it too.
          if [ "$mode" = live ] && [ -b /dev/vdb ]; then
            echo "POK8S-SECOND $(pok8s-agent install --device /dev/vdb 2>&1 | grep 'Failed to' | head -1)" > /dev/ttyS0
          fi
)yaml";

// A sparse raw disk of `mib` MiB, all zeros.
util::Path blank_disk(const util::Path& dir, const std::string& name, std::uint64_t mib) {
  util::Path p = dir / name;
  util::UniqueFd fd = util::open_file(p, O_WRONLY | O_CREAT | O_TRUNC);
  if (::ftruncate(fd.get(), static_cast<off_t>(mib * kMiB)) != 0)
    throw std::runtime_error("ftruncate " + p.string());
  return p;
}

// Whether the first and the last MiB of `disk` (where a partition table goes) are all zeros.
bool starts_and_ends_blank(const util::Path& disk) {
  util::UniqueFd fd = util::open_file(disk, O_RDONLY);
  std::string buf(kMiB, '\1');
  for (off_t at : {off_t{0}, static_cast<off_t>(fs::file_size(disk) - kMiB)}) {
    if (::pread(fd.get(), buf.data(), buf.size(), at) != static_cast<ssize_t>(buf.size()))
      return false;
    if (buf.find_first_not_of('\0') != std::string::npos) return false;
  }
  return true;
}

class Install : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto fail = [](std::string why) { setup_error_ = std::move(why); };
    work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
    util::Path w = work_->path();
    std::string layout = "oci:" + (w / "layout").string();
    if (convert_debian_fixture(w, w / "layout", "v0.1.0", setup_error_).empty()) return;
    util::write_file_atomic(w / "cloud.yaml", kCloudConfig);
    auto r = run_pok8s((w / "cache").string(),
                       {"build", layout + ":" + kTag, "--artifact", "iso", "-o",
                        (w / "out").string(), "--config", (w / "cloud.yaml").string()});
    if (r.status != 0) return fail("build failed:\n" + r.output);
    iso_ = w / "out" / kIsoName;
  }
  static void TearDownTestSuite() {
    delete work_;
    work_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  static inline std::string setup_error_;
  static inline util::TempDir* work_ = nullptr;
  static inline util::Path iso_;
};

// Installs from the ISO booted by `firmware` and boots the disk by the same firmware. Under BIOS
// the installer adds a BIOS boot partition and writes GRUB's boot code (install.firmware unset:
// it follows how the live system booted).
void install_and_boot_active(const util::Path& iso, const util::Path& disk, Firmware firmware) {
  const bool bios = firmware == Firmware::kBios;
  auto part = [&](int n) { return fmt::format("/dev/vda{}", bios ? n + 1 : n); };
  {
    util::TempDir vm_dir = util::TempDir::scratch("/var/tmp");
    QemuOptions options;
    options.firmware = firmware;
    options.cdrom = iso;
    options.disks = {disk};
    Qemu vm(options, vm_dir.path());
    auto live = vm.wait_for_line("POK8S-INSTALL", boot_timeout(std::chrono::seconds(600)));
    ASSERT_TRUE(live) << "no probe line on the live boot:\n" << vm.tail(60);
    EXPECT_EQ(*live, "POK8S-INSTALL mode=live root=ro version=v0.1.0 oem=no");
    auto done = vm.wait_for_line("pok8s-agent: install: installed to",
                                 boot_timeout(std::chrono::seconds(1200)));
    ASSERT_TRUE(done) << "the install did not finish:\n" << vm.tail(80);
    EXPECT_EQ(*done, "pok8s-agent: install: installed to /dev/vda");
    EXPECT_TRUE(vm.wait_exit(std::chrono::seconds(180))) << "no power off:\n" << vm.tail(40);
    std::string serial = vm.serial();
    // One line per step, in order.
    std::size_t at = 0;
    std::vector<std::string> steps = {
        "install: installing to /dev/vda (8192 MiB, blank)",
        bios ? "install: BIOS 1 MiB, COS_GRUB 64 MiB, COS_OEM"
             : "install: COS_GRUB 64 MiB, COS_OEM",
        "install: writing a GPT to /dev/vda with sfdisk",
        "install: making a FAT file system labelled COS_GRUB on " + part(1),
        "install: making an ext4 file system labelled COS_PERSISTENT on " + part(5),
        "install: copied grubenv and 1 cloud-config to COS_OEM",
        "install: copying the active and passive images to COS_STATE"};
    if (bios) steps.push_back("install: writing GRUB's BIOS boot code to /dev/vda and /dev/vda1");
    steps.push_back("install: powering off");
    for (const auto& step : steps) {
      std::size_t found = serial.find(step, at);
      EXPECT_NE(found, std::string::npos) << step << "\n" << vm.tail(60);
      if (found != std::string::npos) at = found;
    }
  }

  // The partitions the installed system looks for, by name, as sfdisk reads them back.
  auto r = util::run_process({"sfdisk", "--json", disk.string()});
  ASSERT_EQ(r.status, 0) << r.output;
  auto table = nlohmann::json::parse(r.output)["partitiontable"];
  EXPECT_EQ(table["label"], "gpt");
  std::vector<std::string> names;
  for (const auto& p : table["partitions"]) names.push_back(p["name"]);
  std::vector<std::string> expected = {"COS_GRUB", "COS_OEM", "COS_RECOVERY", "COS_STATE",
                                       "COS_PERSISTENT"};
  if (bios) expected.insert(expected.begin(), "BIOS");
  EXPECT_EQ(names, expected);

  // The disk alone: GRUB from COS_GRUB, the active image from COS_STATE, /oem from COS_OEM.
  util::TempDir vm_dir = util::TempDir::scratch("/var/tmp");
  QemuOptions options;
  options.firmware = firmware;
  options.disks = {disk};
  Qemu vm(options, vm_dir.path());
  auto line = vm.wait_for_line("POK8S-INSTALL", boot_timeout(std::chrono::seconds(600)));
  ASSERT_TRUE(line) << "the installed disk did not boot:\n" << vm.tail(60);
  EXPECT_EQ(*line, "POK8S-INSTALL mode=active root=ro version=v0.1.0 oem=yes");
  auto status = vm.wait_for_line("POK8S-STATUS ", std::chrono::seconds(60));
  ASSERT_TRUE(status) << vm.tail(40);
  auto j = nlohmann::json::parse(status->substr(13), nullptr, false);
  ASSERT_TRUE(j.is_object()) << *status;
  EXPECT_EQ(j["mode"], "active");
  EXPECT_EQ(j["entry"], "active");
  EXPECT_EQ(j["version"], "v0.1.0");
  EXPECT_TRUE(vm.wait_exit(std::chrono::seconds(180))) << vm.tail(40);
}

TEST_F(Install, TheLiveMediumInstallsToTheBlankDiskWhichThenBootsActive) {
  install_and_boot_active(iso_, blank_disk(work_->path(), "installed.raw", 8192), Firmware::kUefi);
}

TEST_F(Install, BootedByBiosItInstallsADiskThatBootsByBios) {
  install_and_boot_active(iso_, blank_disk(work_->path(), "bios.raw", 8192), Firmware::kBios);
}

// Two blank disks: the automatic install refuses to choose; an install to the second, 1 GiB and
// too small for the layout, is refused before anything is written. One live boot for both.
TEST_F(Install, TwoBlankDisksAreRefusedNamingBothADiskTooSmallNamingTheSizesAndAllStayBlank) {
  util::Path a = blank_disk(work_->path(), "a.raw", 8192);
  util::Path small = blank_disk(work_->path(), "small.raw", 1024);
  util::TempDir vm_dir = util::TempDir::scratch("/var/tmp");
  QemuOptions options;
  options.firmware = Firmware::kUefi;
  options.cdrom = iso_;
  options.disks = {a, small};
  Qemu vm(options, vm_dir.path());
  auto both =
      vm.wait_for_line("Failed to choose the disk", boot_timeout(std::chrono::seconds(600)));
  ASSERT_TRUE(both) << vm.tail(60);
  EXPECT_EQ(both->substr(0, both->find(" (install.device")),
            "Failed to choose the disk to install to: /dev/vda and /dev/vdb are both blank: set "
            "install.device or --device");
  EXPECT_NE(both->find("(install.device in /run/pok8s/media/config.yaml:4)"), std::string::npos)
      << *both;
  auto too_small = vm.wait_for_line("POK8S-SECOND ", std::chrono::seconds(300));
  ASSERT_TRUE(too_small) << vm.tail(60);
  EXPECT_NE(too_small->find("Failed to plan the disk /dev/vdb: the disk of 1024 MiB is too small: "
                            "the layout needs"),
            std::string::npos)
      << *too_small;
  EXPECT_NE(too_small->find("COS_STATE"), std::string::npos) << *too_small;
  EXPECT_TRUE(starts_and_ends_blank(a));
  EXPECT_TRUE(starts_and_ends_blank(small));
}

}  // namespace
