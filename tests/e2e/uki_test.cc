// Trusted boot end to end: the Debian fixture converted, a key set from pok8s keys, then
// pok8s build --artifact uki,uki-iso --keys. The ISO's systemd-boot enrolls the keys in OVMF's
// Secure Boot variables (setup mode), the machine resets, and with Secure Boot enforced boots
// the signed UKI to the cloud-config's boot stage through the dm-verity root. The firmware
// refuses the same UKI with one byte changed, unsigned, and signed by other keys; a flipped byte
// in the rootfs stops the boot with pok8s-init's verity error. Bad keys are refused before
// anything is written; the same inputs sign the same bytes.
//
// Installed from the ISO (install.auto, built with --encryption tpm) on a machine with a TPM
// (swtpm), the disk's COS_OEM and COS_PERSISTENT are LUKS2 with the key sealed to the UKIs'
// signed PCR policy and PCR 7; the disk boots alone through its own signed systemd-boot into
// the active image's UKI, a boot-counted entry (built with --boot-tries 1) that pok8s-agent
// mark-booted blesses, and the TPM unlocks COS_PERSISTENT without a passphrase. That boot
// upgrades itself with pok8s-agent upgrade from a v2 uki-iso built with the same keys (on a
// second drive); the next boot runs v2 (its root hash) from the new active UKI and the TPM
// unlocks it as well. Armed again with its rootfs broken, the active boot stops on dm-verity,
// systemd-boot has no tries left for it, and the next boot is passive: v1, through the passive UKI
// the upgrade moved to the ESP, which unlocks too. A passive UKI whose PCR policy is signed by
// another key (its Secure Boot signature still ours) does not unlock: the recovery key printed
// at install, typed on the console, does.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "bmp.h"
#include "e2e/pok8s_cli.h"
#include "integration/qemu.h"
#include "pok8s/image/fat.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::testing;
namespace fs = std::filesystem;

namespace {

constexpr const char* kTag = "12-standard-amd64-generic-v0.1.0";
constexpr const char* kName = "debian-12-standard-amd64-generic-v0.1.0";
constexpr const char* kV2Name = "debian-12-standard-amd64-generic-v2";

constexpr std::uint64_t kMiB = 1 << 20;

// The boot stage says what it sees: the root hash it booted, the mode, the root read-only,
// Secure Boot on (the firmware's SecureBoot variable), and the device-mapper device the root is
// read through. A live system with a disk installs itself; an installed one waits for
// mark-booted (its line reaches the console: StandardOutput=journal+console), upgrades itself
// from a uki-iso on a second drive when there is one, then powers off. The upgrade's output is
// copied to the serial line afterwards: serial-getty's vhangup cuts off whoever holds ttyS0 open
// while it starts.
constexpr const char* kCloudConfig = R"yaml(#cloud-config
install:
  auto: true
  device: auto
  poweroff: true
stages:
  boot:
    - name: e2e trusted boot probe
      commands:
        - |
          r=ro; touch /pok8s-probe 2>/dev/null && r=rw
          mode=$(sed -n 's/^mode=//p' /run/pok8s/boot-state)
          sb=$(od -An -tu1 -j4 -N1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c | tr -d ' ')
          p=$(sed -n 's/^persistent_device=//p' /run/pok8s/boot-state); pn=
          [ -n "$p" ] && pn=$(cat /sys/class/block/${p#/dev/}/dm/name 2>/dev/null || echo "$p")
          echo "POK8S-VERITY $(sed -n 's/.*pok8s\.verity=\([0-9a-f]*\),.*/\1/p' /proc/cmdline)" > /dev/ttyS0
          echo "POK8S-UKI mode=$mode root=$r secureboot=$sb dm=$(cat /sys/block/dm-0/dm/name) persistent=$pn" > /dev/ttyS0
          if [ "$mode" != live ]; then
            systemd-run --no-block sh -c 'until systemctl is-active -q pok8s-booted.service || systemctl is-failed -q pok8s-booted.service; do sleep 1; done; if [ -b /dev/vdb ]; then pok8s-agent upgrade --source uki-iso:/dev/vdb > /tmp/upgrade.out 2>&1; rc=$?; sed "s/^/upgrade: /" /tmp/upgrade.out > /dev/ttyS0; echo "POK8S-UPGRADED rc=$rc" > /dev/ttyS0; fi; sync; systemctl poweroff'
          fi
)yaml";
constexpr const char* kExpected =
    "POK8S-UKI mode=live root=ro secureboot=1 dm=pok8s-root persistent=";

class Uki : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto fail = [](std::string why) { setup_error_ = std::move(why); };
    work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
    util::Path w = work_->path();
    layout_ = "oci:" + (w / "layout").string();
    if (convert_debian_fixture(w, w / "layout", "v0.1.0", setup_error_).empty()) return;
    for (const char* set : {"keys", "other"}) {
      auto r = run_pok8s((w / "cache").string(), {"keys", "generate", (w / set).string()});
      if (r.status != 0) return fail(std::string("keys generate failed:\n") + r.output);
    }
    util::write_file_atomic(w / "cloud.yaml", kCloudConfig);
    // The UKIs' splash: systemd-stub measures it into PCR 11, so every TPM unlock below also
    // checks that the signed policy covers it.
    util::write_file_atomic(w / "splash.bmp", bmp(64, 32));
    auto r = build(w / "cache", w / "out");
    if (r.status != 0) return fail("build failed:\n" + r.output);
  }
  static void TearDownTestSuite() {
    delete work_;
    work_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  static util::ProcessResult build(const util::Path& cache, const util::Path& out,
                                   const std::string& keys = "keys",
                                   const std::string& tag = kTag) {
    util::Path w = work_->path();
    return run_pok8s(
        cache.string(),
        {"build", layout_ + ":" + tag, "--artifact", "uki,uki-iso", "--keys", (w / keys).string(),
         "--boot-tries", "1", "--encryption", "tpm", "--splash", (w / "splash.bmp").string(), "-o",
         out.string(), "--config", (w / "cloud.yaml").string()});
  }
  static util::Path out(const std::string& suffix) {
    return work_->path() / "out" / (std::string(kName) + suffix);
  }
  static nlohmann::json manifest() {
    return nlohmann::json::parse(util::read_file(out(".manifest.json")));
  }

  static QemuOptions secure_machine(const std::optional<util::Path>& vars) {
    QemuOptions o;
    o.firmware = Firmware::kUefiSecureBoot;
    o.uefi_vars = vars;
    return o;
  }
  // The machine the disk is installed on and boots in: its TPM is the same across boots.
  static QemuOptions installed_machine() {
    QemuOptions o = secure_machine(work_->path() / "enrolled.fd");
    o.tpm_state = work_->path() / "tpm";
    return o;
  }

  // OVMF's variables after the uki-iso's systemd-boot enrolled the keys from setup mode: made by
  // the first test that needs them.
  static util::Path enrolled_vars() {
    static std::once_flag once;
    std::call_once(once, [] {
      util::Path dir = work_->path() / "enroll";
      util::make_dirs(dir);
      QemuOptions o = secure_machine(std::nullopt);
      o.cdrom = out(".uki.iso");
      Qemu vm(o, dir);
      if (!vm.wait_for("Enrolling secure boot keys from directory: \\loader\\keys\\auto",
                       boot_timeout(std::chrono::seconds(300)))) {
        enroll_error_ = "systemd-boot did not enroll the keys:\n" + vm.tail(30);
        return;
      }
      // systemd-boot resets the machine after enrolling; with -no-reboot QEMU exits.
      if (!vm.wait_exit(boot_timeout(std::chrono::seconds(120)))) {
        enroll_error_ = "the machine did not reset after enrolling:\n" + vm.tail(30);
        return;
      }
      fs::copy_file(dir / "OVMF_VARS.fd", work_->path() / "enrolled.fd");
    });
    EXPECT_EQ(enroll_error_, "");
    return work_->path() / "enrolled.fd";
  }

  // An ESP whose only boot loader, EFI/BOOT/BOOTX64.EFI, is `efi`.
  static util::Path esp_with(const util::Path& efi, const std::string& name) {
    util::Path img = work_->path() / (name + ".esp.img");
    image::write_fat_image({{"EFI/BOOT/BOOTX64.EFI", efi}}, "", 1700000000, img);
    return img;
  }

  // Boots `disk` alone with the enrolled keys until the probe line, which must be `expected`;
  // then waits for `then` on the console (if not empty) and for the power off.
  static std::string boot_disk(const util::Path& disk, const std::string& expected,
                               const std::string& then,
                               const std::optional<util::Path>& second = std::nullopt) {
    util::TempDir dir = util::TempDir::scratch(work_->path());
    QemuOptions o = installed_machine();
    o.disks = {disk};
    if (second) o.disks.push_back(*second);
    Qemu vm(o, dir.path());
    auto line = vm.wait_for_line("POK8S-UKI", boot_timeout(std::chrono::seconds(420)));
    EXPECT_TRUE(line) << "the disk did not boot:\n" << vm.tail(60);
    if (!line) return vm.serial();
    EXPECT_EQ(*line, expected);
    // The TPM opened them: nobody was asked.
    EXPECT_NE(vm.serial().find("Opened"), std::string::npos) << vm.tail(60);
    EXPECT_EQ(vm.serial().find("The TPM did not unlock"), std::string::npos) << vm.tail(60);
    if (!then.empty()) {
      EXPECT_TRUE(vm.wait_for(then, std::chrono::seconds(180))) << vm.tail(40);
    }
    EXPECT_TRUE(vm.wait_exit(std::chrono::seconds(second ? 600 : 180))) << vm.tail(40);
    return vm.serial();
  }

  static inline std::string setup_error_;
  static inline std::string enroll_error_;
  static inline util::TempDir* work_ = nullptr;
  static inline std::string layout_;
};

// The lines of `serial` that contain `word`, for a failure message.
std::string lines_with(const std::string& serial, std::string_view word) {
  std::string out;
  for (std::size_t at = 0; at < serial.size();) {
    std::size_t end = serial.find('\n', at);
    if (end == std::string::npos) end = serial.size();
    std::string_view line(serial.data() + at, end - at);
    if (line.find(word) != std::string_view::npos) out.append(line).push_back('\n');
    at = end + 1;
  }
  return out;
}

// The byte offset of the partition named `name` on `disk`, as sfdisk reads the GPT.
std::uint64_t partition_offset(const util::Path& disk, std::string_view name) {
  auto r = util::run_process({"sfdisk", "--json", disk.string()});
  if (r.status != 0) throw std::runtime_error("sfdisk --json: " + r.output);
  // Kept in a variable: a range-for over a member of a temporary would dangle.
  nlohmann::json table = nlohmann::json::parse(r.output);
  for (const auto& p : table["partitiontable"]["partitions"])
    if (p.value("name", std::string()) == name) return p["start"].get<std::uint64_t>() * 512;
  throw std::runtime_error(fmt::format("no partition {} on {}", name, disk.string()));
}

// The file names in EFI/Linux on the disk's COS_GRUB, read with mtools.
std::vector<std::string> entries(const util::Path& disk) {
  std::string image = fmt::format("{}@@{}", disk.string(), partition_offset(disk, "COS_GRUB"));
  auto r = util::run_process({"mdir", "-b", "-i", image, "::/EFI/Linux"});
  if (r.status != 0) throw std::runtime_error("mdir: " + r.output);
  std::vector<std::string> out;
  for (std::size_t at = 0; at < r.output.size();) {
    std::size_t end = r.output.find('\n', at);
    if (end == std::string::npos) end = r.output.size();
    std::string line = r.output.substr(at, end - at);
    if (!line.empty()) out.push_back(util::Path(line).filename().string());
    at = end + 1;
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Flips a byte of the first block of `file` in the ext4 file system labelled `label` on `disk`,
// where debugfs says that block is.
void flip_first_block(const util::Path& disk, std::string_view label, const std::string& file) {
  std::uint64_t offset = partition_offset(disk, label);
  std::string fs_name = fmt::format("{}?offset={}", disk.string(), offset);
  auto r = util::run_process({"debugfs", "-R", "bmap " + file + " 0", fs_name});
  if (r.status != 0) throw std::runtime_error("debugfs bmap: " + r.output);
  std::uint64_t block = std::stoull(util::last_line(r.output));
  r = util::run_process({"debugfs", "-R", "stats", fs_name});
  auto at = r.output.find("Block size:");
  if (r.status != 0 || at == std::string::npos)
    throw std::runtime_error("debugfs stats: " + r.output);
  std::uint64_t block_size = std::stoull(r.output.substr(at + 11));
  util::UniqueFd fd = util::open_file(disk, O_RDWR);
  off_t where = static_cast<off_t>(offset + block * block_size + 1000);
  char c = 0;
  if (::pread(fd.get(), &c, 1, where) != 1) throw std::runtime_error("pread");
  c ^= 0x01;
  if (::pwrite(fd.get(), &c, 1, where) != 1 || ::fsync(fd.get()) != 0)
    throw std::runtime_error("pwrite");
}

TEST_F(Uki, TheUkiIsSignedSmallAndCarriesTheRootHashOfItsRootfs) {
  util::Path w = work_->path();
  util::Path uki = out(".efi");
  auto ok = util::run_process({"sbverify", "--cert", (w / "keys/db.crt").string(), uki.string()});
  EXPECT_EQ(ok.status, 0) << ok.output;
  auto other =
      util::run_process({"sbverify", "--cert", (w / "other/db.crt").string(), uki.string()});
  EXPECT_NE(other.status, 0) << other.output;

  auto m = manifest();
  std::vector<std::string> types;
  for (const auto& a : m["artifacts"]) types.push_back(a["type"]);
  EXPECT_EQ(types, (std::vector<std::string>{"uki", "rootfs-verity", "uki-iso"}));
  std::set<std::string> sections;
  for (const auto& s : m["uki"]["sections"]) sections.insert(s["name"].get<std::string>());
  for (const char* s : {".osrel", ".cmdline", ".uname", ".sbat", ".splash", ".pcrpkey", ".pcrsig",
                        ".initrd", ".linux"})
    EXPECT_TRUE(sections.count(s)) << s;
  // Kernel and initramfs only: the rootfs stays outside.
  std::uint64_t uki_size = fs::file_size(uki), rootfs_size = fs::file_size(out(".rootfs.img"));
  EXPECT_EQ(m["uki"]["size"].get<std::uint64_t>(), uki_size);
  EXPECT_LT(uki_size, rootfs_size / 4);
  std::cout << "UKI: " << uki_size << " bytes; rootfs image: " << rootfs_size << " bytes\n";

  // The signed command line's verity parameters are what veritysetup verifies the image with.
  std::string cmdline = m["uki"]["cmdline"];
  auto at = cmdline.find("pok8s.verity=");
  ASSERT_NE(at, std::string::npos) << cmdline;
  std::string v = cmdline.substr(at + 13, cmdline.find(' ', at) - at - 13);
  std::vector<std::string> f;
  for (std::size_t from = 0;;) {
    auto comma = v.find(',', from);
    f.push_back(v.substr(from, comma - from));
    if (comma == std::string::npos) break;
    from = comma + 1;
  }
  ASSERT_EQ(f.size(), 4u) << v;
  EXPECT_EQ(f[0], m["uki"]["rootHash"]);
  std::string img = out(".rootfs.img").string();
  auto verify =
      util::run_process({"veritysetup", "verify", img, img, f[0], "--no-superblock",
                         "--hash-offset=" + f[3], "--data-blocks=" + f[2], "--salt=" + f[1]});
  EXPECT_EQ(verify.status, 0) << verify.output;
}

TEST_F(Uki, TheFirmwareRefusesAChangedAnUnsignedAndAForeignSignedUki) {
  util::Path vars = enrolled_vars();
  ASSERT_EQ(enroll_error_, "");
  util::Path w = work_->path();
  std::string signed_uki = util::read_file(out(".efi"), 256u << 20);
  std::string changed = signed_uki;
  changed[changed.size() / 2] ^= 0x01;  // inside .linux
  util::write_file_atomic(w / "changed.efi", changed);
  util::write_file_atomic(w / "unsigned.efi", signed_uki);
  auto r = util::run_process({"sbattach", "--remove", (w / "unsigned.efi").string()});
  ASSERT_EQ(r.status, 0) << r.output;
  r = util::run_process({"sbsign", "--key", (w / "other/db.key").string(), "--cert",
                         (w / "other/db.crt").string(), "--output", (w / "foreign.efi").string(),
                         (w / "unsigned.efi").string()});
  ASSERT_EQ(r.status, 0) << r.output;

  // The signed UKI, alone on an ESP, starts: the refusals below are the signatures'.
  {
    util::TempDir vm_dir = util::TempDir::scratch(w);
    QemuOptions o = secure_machine(vars);
    o.disks.push_back(esp_with(out(".efi"), "signed"));
    Qemu vm(o, vm_dir.path());
    EXPECT_TRUE(vm.wait_for("EFI stub: UEFI Secure Boot is enabled.",
                            boot_timeout(std::chrono::seconds(240))))
        << vm.tail(30);
  }
  for (const char* name : {"changed", "unsigned", "foreign"}) {
    SCOPED_TRACE(name);
    util::TempDir vm_dir = util::TempDir::scratch(w);
    QemuOptions o = secure_machine(vars);
    o.disks.push_back(esp_with(w / (std::string(name) + ".efi"), name));
    Qemu vm(o, vm_dir.path());
    EXPECT_TRUE(vm.wait_for("No bootable option or device was found",
                            boot_timeout(std::chrono::seconds(240))))
        << vm.tail(30);
    std::string serial = vm.serial();
    EXPECT_NE(serial.find("Access Denied"), std::string::npos) << vm.tail(30);
    EXPECT_EQ(serial.find("EFI stub"), std::string::npos) << vm.tail(30);
  }
}

TEST_F(Uki, AFlippedByteInTheRootfsStopsTheBootWithAVerityError) {
  util::Path vars = enrolled_vars();
  ASSERT_EQ(enroll_error_, "");
  util::Path w = work_->path();
  util::Path iso = w / "tampered.uki.iso";
  fs::copy_file(out(".uki.iso"), iso, fs::copy_options::overwrite_existing);
  // Where the ISO keeps the rootfs image: "File data lba: 0 , START , BLOCKS , SIZE , 'PATH'".
  auto r = util::run_process({"xorriso", "-indev", iso.string(), "-find", "/rootfs.squashfs",
                              "-exec", "report_lba", "--"});
  ASSERT_EQ(r.status, 0) << r.output;
  auto at = r.output.find("File data lba:");
  ASSERT_NE(at, std::string::npos) << r.output;
  auto first = r.output.find(',', at);
  std::uint64_t lba = std::stoull(r.output.substr(first + 1));
  {
    // A byte of the squashfs' first block, which the mount reads.
    std::string bytes = util::read_file(iso, 1ull << 30);
    bytes[lba * 2048 + 1000] ^= 0x01;
    util::write_file_atomic(iso, bytes);
  }
  util::TempDir vm_dir = util::TempDir::scratch(w);
  QemuOptions o = secure_machine(vars);
  o.cdrom = iso;
  Qemu vm(o, vm_dir.path());
  EXPECT_TRUE(vm.wait_for("Failed to mount the image /rootfs.squashfs: dm-verity refused it",
                          boot_timeout(std::chrono::seconds(420))))
      << vm.tail(40);
  EXPECT_EQ(vm.serial().find("POK8S-UKI"), std::string::npos);
}

// The live boot that installs is also the check of the ISO itself: with the keys it enrolled
// (setup mode, enrolled_vars) and Secure Boot enforced, it boots the signed UKI to the boot stage
// through the dm-verity root, and does not enroll again.
TEST_F(Uki, TheEnrolledIsoBootsUnderSecureBootAndInstallsADiskThatFallsBackToPassive) {
  util::Path vars = enrolled_vars();
  ASSERT_EQ(enroll_error_, "");
  util::Path disk = work_->path() / "disk.raw";
  {
    util::UniqueFd fd = util::open_file(disk, O_WRONLY | O_CREAT | O_TRUNC);
    ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(4096 * kMiB)), 0);
  }
  // Secure Boot enforced: the live UKI installs to the blank disk, encrypting COS_OEM and
  // COS_PERSISTENT with a key sealed to the machine's TPM, and powers off.
  std::string recovery_key;
  {
    util::TempDir dir = util::TempDir::scratch(work_->path());
    QemuOptions o = installed_machine();
    o.cdrom = out(".uki.iso");
    o.disks = {disk};
    Qemu vm(o, dir.path());
    auto done = vm.wait_for_line("pok8s-agent: install: installed to",
                                 boot_timeout(std::chrono::seconds(1200)));
    ASSERT_TRUE(done) << "the install did not finish:\n" << vm.tail(80);
    EXPECT_TRUE(vm.wait_exit(std::chrono::seconds(180))) << vm.tail(40);
    std::string serial = vm.serial();
    auto line = vm.wait_for_line("POK8S-UKI", std::chrono::seconds(1));
    ASSERT_TRUE(line) << "no probe line from the live boot:\n" << vm.tail(60);
    EXPECT_EQ(*line, kExpected) << vm.tail(60);
    EXPECT_NE(serial.find("EFI stub: UEFI Secure Boot is enabled."), std::string::npos);
    EXPECT_EQ(serial.find("Enrolling secure boot keys"), std::string::npos);
    for (const char* step : {"install: copying systemd-boot and the signed UKIs to COS_GRUB",
                             "install: copied 1 cloud-config to COS_OEM",
                             "install: making COS_OEM and COS_PERSISTENT LUKS2, their key sealed "
                             "to the TPM against the PCR 11 policy signed by pok8s-active+1.efi's "
                             ".pcrpkey and PCR 7",
                             "install: making an ext4 file system labelled COS_PERSISTENT on "
                             "/dev/mapper/COS_PERSISTENT"})
      EXPECT_NE(serial.find(step), std::string::npos) << step << "\n" << vm.tail(60);
    constexpr std::string_view kKeyLine = "pok8s-agent: install: recovery key: ";
    auto at = serial.find(kKeyLine);
    ASSERT_NE(at, std::string::npos) << vm.tail(60);
    recovery_key = serial.substr(at + kKeyLine.size(), 71);
    ASSERT_EQ(std::count(recovery_key.begin(), recovery_key.end(), '-'), 7) << recovery_key;
  }
  // Both are LUKS2 volumes carrying the sealed key: cryptsetup reads their headers.
  for (const char* label : {"COS_OEM", "COS_PERSISTENT"}) {
    std::uint64_t offset = partition_offset(disk, label);
    util::Path header = work_->path() / (std::string(label) + ".header");
    {
      util::UniqueFd in = util::open_file(disk, O_RDONLY);
      std::string bytes(16 * kMiB, '\0');
      ASSERT_EQ(::pread(in.get(), bytes.data(), bytes.size(), static_cast<off_t>(offset)),
                static_cast<ssize_t>(bytes.size()));
      util::write_file_atomic(header, bytes);
    }
    auto r = util::run_process({"cryptsetup", "luksDump", header.string()});
    ASSERT_EQ(r.status, 0) << label << ": " << r.output;
    EXPECT_NE(r.output.find(std::string("\t") + label + "\n"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("pok8s-tpm2"), std::string::npos) << r.output;
  }
  EXPECT_EQ(entries(disk), (std::vector<std::string>{"pok8s-active+1.efi", "pok8s-passive.efi",
                                                     "pok8s-recovery.efi"}));

  // v2: the image converted again with another version (so another rootfs and root hash),
  // built with the same keys.
  util::Path w = work_->path();
  std::string v2_error;
  ASSERT_FALSE(convert_debian_fixture(w, w / "layout", "v2", v2_error).empty()) << v2_error;
  auto built = build(w / "cache", w / "out-v2", "keys", "12-standard-amd64-generic-v2");
  ASSERT_EQ(built.status, 0) << built.output;
  util::Path v2_iso = w / "out-v2" / (std::string(kV2Name) + ".uki.iso");
  std::string v1_hash = manifest()["uki"]["rootHash"];
  std::string v2_hash = nlohmann::json::parse(
      util::read_file(w / "out-v2" / (std::string(kV2Name) + ".manifest.json")))["uki"]["rootHash"];
  ASSERT_NE(v1_hash, v2_hash);

  // The disk alone boots the active UKI; systemd-boot took its one try, mark-booted gives the
  // entry its counter-less name. Then the system upgrades itself from the v2 uki-iso on its
  // second drive.
  std::string esp = fmt::format("{}@@{}", disk.string(), partition_offset(disk, "COS_GRUB"));
  std::string serial = boot_disk(
      disk, "POK8S-UKI mode=active root=ro secureboot=1 dm=pok8s-root persistent=COS_PERSISTENT",
      "marked this boot as good: systemd-boot's entry is now EFI/Linux/pok8s-active.efi on "
      "COS_GRUB",
      v2_iso);
  EXPECT_NE(serial.find("POK8S-VERITY " + v1_hash), std::string::npos);
  EXPECT_NE(serial.find("POK8S-UPGRADED rc=0"), std::string::npos) << serial;
  for (const std::string& said : std::vector<std::string>{
           "upgrade: systemd-boot boots the new active image as pok8s-active+1.efi on COS_GRUB",
           "upgrade: systemd-boot boots the new passive image as pok8s-passive.efi on COS_GRUB",
           "upgrade: upgraded the active image to v2 (uki-iso:/dev/vdb, root hash " + v2_hash +
               "); the previous one is now passive"})
    EXPECT_NE(serial.find(said), std::string::npos) << said << "\n"
                                                    << lines_with(serial, "upgrade: ");
  EXPECT_EQ(entries(disk), (std::vector<std::string>{"pok8s-active+1.efi", "pok8s-passive.efi",
                                                     "pok8s-recovery.efi"}));
  // The passive entry is v1's own passive UKI, kept next to its rootfs since the install.
  {
    util::Path from_iso = w / "v1-passive.efi", from_esp = w / "esp-passive.efi";
    auto r =
        util::run_process({"xorriso", "-osirrox", "on", "-indev", out(".uki.iso").string(),
                           "-extract", "/install/EFI/Linux/pok8s-passive.efi", from_iso.string()});
    ASSERT_EQ(r.status, 0) << r.output;
    r = util::run_process(
        {"mcopy", "-n", "-i", esp, "::/EFI/Linux/pok8s-passive.efi", from_esp.string()});
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(util::file_sha256(from_esp), util::file_sha256(from_iso));
  }

  // v2 boots from the new active UKI, another UKI signed with the same PCR key: the TPM unlocks.
  serial = boot_disk(
      disk, "POK8S-UKI mode=active root=ro secureboot=1 dm=pok8s-root persistent=COS_PERSISTENT",
      "marked this boot as good: systemd-boot's entry is now EFI/Linux/pok8s-active.efi on "
      "COS_GRUB");
  EXPECT_NE(serial.find("POK8S-VERITY " + v2_hash), std::string::npos);
  EXPECT_EQ(entries(disk), (std::vector<std::string>{"pok8s-active.efi", "pok8s-passive.efi",
                                                     "pok8s-recovery.efi"}));

  // Armed again with one try (as an upgrade leaves it), with a broken rootfs: dm-verity stops the
  // boot, and pok8s-init reboots (QEMU exits on -no-reboot).
  auto r = util::run_process(
      {"mren", "-i", esp, "::/EFI/Linux/pok8s-active.efi", "::/EFI/Linux/pok8s-active+1.efi"});
  ASSERT_EQ(r.status, 0) << r.output;
  flip_first_block(disk, "COS_STATE", "/cOS/active/rootfs.img");
  {
    util::TempDir dir = util::TempDir::scratch(work_->path());
    QemuOptions o = installed_machine();
    o.disks = {disk};
    Qemu vm(o, dir.path());
    EXPECT_TRUE(
        vm.wait_for("Failed to mount the image /cOS/active/rootfs.img: dm-verity refused it",
                    boot_timeout(std::chrono::seconds(420))))
        << vm.tail(40);
    EXPECT_TRUE(vm.wait_exit(std::chrono::seconds(120))) << vm.tail(20);
  }
  EXPECT_EQ(entries(disk), (std::vector<std::string>{"pok8s-active+0-1.efi", "pok8s-passive.efi",
                                                     "pok8s-recovery.efi"}));

  // Out of tries, active sorts last: systemd-boot boots passive, which has no counter: v1 again.
  // It is another UKI (its command line, so PCR 11, differ) signed with the same keys: it
  // unlocks.
  serial = boot_disk(
      disk, "POK8S-UKI mode=passive root=ro secureboot=1 dm=pok8s-root persistent=COS_PERSISTENT",
      "nothing to mark");
  EXPECT_NE(serial.find("POK8S-VERITY " + v1_hash), std::string::npos);
  EXPECT_EQ(entries(disk), (std::vector<std::string>{"pok8s-active+0-1.efi", "pok8s-passive.efi",
                                                     "pok8s-recovery.efi"}));

  // A passive UKI from the same image whose PCR policy is signed by another key set's PCR key,
  // its Secure Boot signature ours (so PCR 7 is unchanged): the TPM refuses the policy, and the
  // recovery key typed on the console opens the volumes.
  fs::copy(w / "keys", w / "foreign-pcr", fs::copy_options::recursive);
  for (const char* f : {"tpm2-pcr-private.pem", "tpm2-pcr-public.pem"})
    fs::copy_file(w / "other" / f, w / "foreign-pcr" / f, fs::copy_options::overwrite_existing);
  r = build(w / "cache", w / "out-foreign-pcr", "foreign-pcr");
  ASSERT_EQ(r.status, 0) << r.output;
  util::Path foreign = w / "foreign-passive.efi";
  r = util::run_process({"xorriso", "-osirrox", "on", "-indev",
                         (w / "out-foreign-pcr" / (std::string(kName) + ".uki.iso")).string(),
                         "-extract", "/install/EFI/Linux/pok8s-passive.efi", foreign.string()});
  ASSERT_EQ(r.status, 0) << r.output;
  r = util::run_process(
      {"mcopy", "-o", "-i", esp, foreign.string(), "::/EFI/Linux/pok8s-passive.efi"});
  ASSERT_EQ(r.status, 0) << r.output;
  {
    util::TempDir dir = util::TempDir::scratch(work_->path());
    QemuOptions o = installed_machine();
    o.disks = {disk};
    Qemu vm(o, dir.path());
    ASSERT_TRUE(
        vm.wait_for("Passphrase or recovery key for", boot_timeout(std::chrono::seconds(420))))
        << vm.tail(40);
    std::string serial = vm.serial();
    EXPECT_NE(serial.find("The TPM did not unlock"), std::string::npos) << vm.tail(40);
    EXPECT_NE(serial.find("the TPM refused the policy"), std::string::npos) << vm.tail(40);
    vm.send(recovery_key + "\r");
    auto line = vm.wait_for_line("POK8S-UKI", boot_timeout(std::chrono::seconds(420)));
    ASSERT_TRUE(line) << "the recovery key did not open the volumes:\n" << vm.tail(60);
    EXPECT_EQ(*line,
              "POK8S-UKI mode=passive root=ro secureboot=1 dm=pok8s-root "
              "persistent=COS_PERSISTENT");
    EXPECT_TRUE(vm.wait_exit(std::chrono::seconds(180))) << vm.tail(40);
  }
}

TEST_F(Uki, BadKeysAreRefusedInOneLineBeforeAnythingIsWritten) {
  util::Path w = work_->path();
  std::string cache = (w / "cache").string();
  auto refused = [&](const std::vector<std::string>& args, const std::string& expect) {
    util::Path o = w / "refused";
    std::vector<std::string> argv = {"build", layout_ + ":" + kTag, "-o", o.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = run_pok8s(cache, argv);
    EXPECT_NE(r.status, 0) << r.output;
    std::string last = util::last_line(r.output);
    EXPECT_NE(last.find(expect), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(o)) << "the output directory was made";
  };
  refused({"--artifact", "uki"}, "the uki artifact is signed: pass --keys DIR");
  refused({"--artifact", "iso", "--keys", (w / "keys").string()},
          "--keys signs the uki and uki-iso artifacts");
  refused({"--artifact", "iso", "--splash", (w / "splash.bmp").string()},
          "--splash is shown by the uki and uki-iso artifacts' UKIs");
  refused({"--artifact", "uki", "--keys", (w / "keys").string(), "--splash",
           (w / "cloud.yaml").string()},
          "Failed to use the splash image " + (w / "cloud.yaml").string() +
              ": not a BMP image (systemd-stub shows BMP only)");
  // A key set whose db key is another set's.
  fs::copy(w / "keys", w / "mixed", fs::copy_options::recursive);
  fs::copy_file(w / "other/db.key", w / "mixed/db.key", fs::copy_options::overwrite_existing);
  refused({"--artifact", "uki-iso", "--keys", (w / "mixed").string()},
          "Failed to use the keys in " + (w / "mixed").string() + ": db.key:");
  // The PCR key without its public half.
  fs::copy(w / "keys", w / "nopub", fs::copy_options::recursive);
  fs::remove(w / "nopub/tpm2-pcr-public.pem");
  refused({"--artifact", "uki", "--keys", (w / "nopub").string()}, "tpm2-pcr-public.pem: missing");
}

TEST_F(Uki, TheSameInputsSignTheSameBytesFromAnEmptyCache) {
  util::Path w = work_->path();
  auto r = build(w / "cache2", w / "out2");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* suffix : {".efi", ".rootfs.img", ".uki.iso"})
    EXPECT_EQ(util::file_sha256(w / "out2" / (std::string(kName) + suffix)),
              util::file_sha256(out(suffix)))
        << suffix;
}

}  // namespace
