// pok8s-init for real: a Debian bookworm image (mmdebstrap fixture with its kernel) imported
// with the pok8s CLI, its initramfs and kernel written by pok8s, its rootfs a squashfs on an
// ISO labelled COS_LIVE, booted in QEMU under TCG. The markers come from the serial console.
// An installed boot with a passphrase-encrypted COS_PERSISTENT gets pok8s-luks's bundle (what
// convert ships in an image) as a second initramfs archive.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "integration/qemu.h"
#include "integration/shell.h"
#include "pok8s/boot/disk_encryption.h"
#include "pok8s/boot/initramfs.h"
#include "pok8s/boot/kernel.h"
#include "pok8s/convert/sysimage_bundle.h"
#include "pok8s/image/verity.h"
#include "pok8s/oci/image.h"
#include "pok8s/rootfs/flat_tree.h"
#include "pok8s/util/file.h"

namespace fs = std::filesystem;
using namespace pok8s;

using pok8s::testing::sh;
using pok8s::testing::Shell;

namespace {

fs::path bin_dir() {
  const char* b = std::getenv("POK8S_BIN");
  return fs::path(b ? b : POK8S_TEST_BIN).parent_path();
}

// The init the test image boots into: it reports what pok8s-init set up, then powers off.
constexpr const char* kTestInit = R"(#!/bin/sh
exec >/dev/console 2>&1
root=none
while read -r dev mnt type opts rest; do
  [ "$mnt" = / ] && root="$type $opts"
done </proc/mounts
echo "pok8s-test: root $root"
if touch /etc/pok8s-probe 2>/dev/null; then echo "pok8s-test: etc writable"; else echo "pok8s-test: etc read-only"; fi
if touch /usr/pok8s-probe 2>/dev/null; then echo "pok8s-test: usr writable"; else echo "pok8s-test: usr read-only"; fi
if [ -f /run/pok8s/boot-state ]; then
  echo "pok8s-test: boot-state present"
  sed 's/^/pok8s-test: state /' /run/pok8s/boot-state
else
  echo "pok8s-test: boot-state missing"
fi
echo "pok8s-test: done"
echo o >/proc/sysrq-trigger
sleep 30
)";

constexpr const char* kPassphrase = "correct horse battery";

class InitBoot : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // A failure here must fail every test (gtest would otherwise report them as skipped).
    const char* src = std::getenv("POK8S_SOURCE_DIR");
    if (!src) src = POK8S_TEST_SOURCE_DIR;
    Shell fixture = sh(std::string(src) + "/tests/fixtures/debian-kernel.sh");
    if (fixture.status != 0) {
      setup_error_ = "could not build the Debian kernel fixture (mmdebstrap)";
      return;
    }
    std::string tarball = fixture.out.substr(0, fixture.out.find('\n'));
    work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
    const fs::path dir = work_->path();
    std::string layout = "oci:" + (dir / "layout").string() + ":kernel";
    if (sh((bin_dir() / "pok8s").string() + " -q --cache " + (dir / "cache").string() +
           " image import " + tarball + " " + layout)
            .status != 0) {
      setup_error_ = "pok8s image import of the fixture failed";
      return;
    }
    try {
      oci::BlobStore store(dir / "store");
      auto source = oci::open_source(oci::ImageName::parse(layout), {});
      oci::ResolvedImage image = oci::resolve_image(*source, store, std::nullopt);
      oci::fetch_layers(*source, image, store, {}, {});
      auto tree = rootfs::FlatTree::build(image, store);
      auto kernels = boot::find_kernels(tree);
      if (kernels.empty()) {
        setup_error_ = "find_kernels found no kernel in the fixture";
        return;
      }
      boot::InitramfsOptions options;
      options.init_binary = bin_dir() / "pok8s-init";
      options.mtime = 1700000000;
      result_ = boot::write_initramfs(tree, kernels[0], options, dir / "initrd", dir / "vmlinuz");
    } catch (const std::exception& e) {
      setup_error_ = std::string("building the initramfs failed: ") + e.what();
      return;
    }
    // The rootfs: the fixture's tree (extracted as root, owners kept) plus the test init. Its
    // kernel and modules stay out: the initramfs has what this boot needs.
    fs::path rootfs = dir / "rootfs", iso_root = dir / "iso-root";
    fs::create_directories(rootfs);
    fs::create_directories(iso_root);
    if (sh("tar --numeric-owner -xpf " + tarball + " -C " + rootfs.string()).status != 0) {
      setup_error_ = "extracting the fixture failed";
      return;
    }
    util::write_file_atomic(rootfs / "sbin/pok8s-test-init", kTestInit, 0755);
    if (sh("mksquashfs " + rootfs.string() + " " + (iso_root / "rootfs.squashfs").string() +
           " -noappend -quiet -no-progress -e boot usr/lib/modules >&2")
                .status != 0 ||
        sh("xorriso -as mkisofs -quiet -V COS_LIVE -o " + (dir / "live.iso").string() + " " +
           iso_root.string() + " >&2")
                .status != 0) {
      setup_error_ = "making the squashfs or the ISO failed";
      return;
    }
    util::remove_tree(rootfs);
    // pok8s-luks's bundle as a second, separately compressed archive after the initramfs (the
    // kernel unpacks them in turn), and a LUKS2 volume labelled COS_PERSISTENT that opens with
    // kPassphrase.
    try {
      fs::path staging = dir / "luks-root";
      for (const auto& f : convert::luks_bundle(bin_dir() / "pok8s-luks")) {
        fs::create_directories((staging / f.path).parent_path());
        fs::copy_file(f.source, staging / f.path);
      }
      if (sh("cd " + staging.string() + " && find . | LC_ALL=C sort | cpio -o -H newc --quiet " +
             "| zstd -q > " + (dir / "luks.cpio.zst").string() + " && cat " +
             (dir / "initrd").string() + " " + (dir / "luks.cpio.zst").string() + " > " +
             (dir / "initrd-luks").string())
              .status != 0) {
        setup_error_ = "making the initramfs with pok8s-luks failed";
        return;
      }
      util::write_file_atomic(dir / "persistent.img", std::string(32u << 20, '\0'));
      boot::EncryptRequest r;
      r.mode = boot::EncryptionMode::kPassphrase;
      r.passphrase = kPassphrase;
      r.passphrase_kdf_ms = 100;
      r.volumes = {{dir / "persistent.img", "COS_PERSISTENT"}};
      boot::encrypt_volumes(r);
    } catch (const std::exception& e) {
      setup_error_ = std::string("encrypting COS_PERSISTENT failed: ") + e.what();
      return;
    }
    // The same rootfs with a dm-verity tree, and a copy with one byte of its first block flipped.
    try {
      for (const char* name : {"verity", "tampered"}) {
        fs::path root = dir / (std::string(name) + "-root");
        fs::create_directories(root);
        fs::copy_file(iso_root / "rootfs.squashfs", root / "rootfs.squashfs");
        verity_ = image::append_verity_tree(root / "rootfs.squashfs", "0a0b0c0d");
        if (std::string(name) == "tampered") {
          std::fstream f(root / "rootfs.squashfs", std::ios::in | std::ios::out | std::ios::binary);
          f.seekg(2000);
          char c = 0;
          f.get(c);
          f.seekp(2000);
          f.put(static_cast<char>(c ^ 0x01));
        }
        if (sh("xorriso -as mkisofs -quiet -V COS_LIVE -o " +
               (dir / (std::string(name) + ".iso")).string() + " " + root.string() + " >&2")
                .status != 0) {
          setup_error_ = "making the verity ISOs failed";
          return;
        }
      }
      // Installed A/B images as an interrupted UKI upgrade leaves them: the verity image is
      // passive now, and active is another image (here the rootfs without a tree).
      fs::path ab = dir / "ab-root/cOS";
      fs::create_directories(ab / "active");
      fs::create_directories(ab / "passive");
      fs::copy_file(iso_root / "rootfs.squashfs", ab / "active/rootfs.img");
      fs::copy_file(dir / "verity-root/rootfs.squashfs", ab / "passive/rootfs.img");
      if (sh("xorriso -as mkisofs -quiet -V COS_LIVE -o " + (dir / "ab.iso").string() + " " +
             (dir / "ab-root").string() + " >&2")
              .status != 0) {
        setup_error_ = "making the A/B ISO failed";
        return;
      }
    } catch (const std::exception& e) {
      setup_error_ = std::string("making the verity tree failed: ") + e.what();
    }
  }
  static void TearDownTestSuite() {
    delete work_;
    work_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  static pok8s::testing::QemuOptions machine(const std::string& append) {
    pok8s::testing::QemuOptions options;
    options.kernel = work_->path() / "vmlinuz";
    options.initrd = work_->path() / "initrd";
    options.cdrom = work_->path() / "live.iso";
    options.append = "console=ttyS0 panic=-1 " + append;
    options.memory_mib = 1024;
    return options;
  }

  static inline std::string setup_error_;
  static inline util::TempDir* work_ = nullptr;
  static inline boot::InitramfsResult result_;
  static inline image::VerityTree verity_;
};

// The lines pok8s-init and the test init printed, and the kernel's words about init, for a
// failure message that shows what happened before the console's tail.
std::string boot_story(const std::string& serial) {
  std::string out;
  std::size_t start = 0;
  while (start < serial.size()) {
    auto end = serial.find('\n', start);
    if (end == std::string::npos) end = serial.size();
    std::string line = serial.substr(start, end - start);
    if (line.find("pok8s") != std::string::npos || line.find("init") != std::string::npos ||
        line.find("Kernel panic") != std::string::npos)
      out += line + "\n";
    start = end + 1;
  }
  return out;
}

}  // namespace

TEST_F(InitBoot, BootsTheImageReadOnlyWithWritableOverlays) {
  EXPECT_FALSE(result_.modules_included.empty());
  auto vm_dir = util::TempDir::scratch(work_->path());
  pok8s::testing::Qemu vm(machine("pok8s.init=/sbin/pok8s-test-init pok8s.debug"), vm_dir.path());
  ASSERT_TRUE(
      vm.wait_for("pok8s-test: done", pok8s::testing::boot_timeout(std::chrono::seconds(600))))
      << boot_story(vm.serial()) << "---\n"
      << vm.tail(30);
  std::string serial = vm.serial();
  EXPECT_NE(serial.find("pok8s-test: root squashfs ro,"), std::string::npos) << vm.tail(80);
  EXPECT_NE(serial.find("pok8s-test: etc writable"), std::string::npos) << vm.tail(80);
  EXPECT_NE(serial.find("pok8s-test: usr read-only"), std::string::npos) << vm.tail(80);
  EXPECT_NE(serial.find("pok8s-test: boot-state present"), std::string::npos) << vm.tail(80);
  EXPECT_NE(serial.find("pok8s-test: state media_label=COS_LIVE"), std::string::npos)
      << vm.tail(80);
  EXPECT_NE(serial.find("pok8s-test: state image=/rootfs.squashfs"), std::string::npos)
      << vm.tail(80);
  EXPECT_TRUE(vm.wait_exit(pok8s::testing::boot_timeout(std::chrono::seconds(120)))) << vm.tail(20);
}

// pok8s.verity: the image is mounted through dm-verity with the command line's root hash.
TEST_F(InitBoot, MountsTheImageThroughDmVerity) {
  auto vm_dir = util::TempDir::scratch(work_->path());
  auto options =
      machine("pok8s.init=/sbin/pok8s-test-init pok8s.debug " + image::verity_cmdline(verity_));
  options.cdrom = work_->path() / "verity.iso";
  pok8s::testing::Qemu vm(options, vm_dir.path());
  ASSERT_TRUE(
      vm.wait_for("pok8s-test: done", pok8s::testing::boot_timeout(std::chrono::seconds(600))))
      << boot_story(vm.serial()) << "---\n"
      << vm.tail(30);
  EXPECT_NE(vm.serial().find("through dm-verity (root hash " + verity_.root_hash + ") as /dev/dm-"),
            std::string::npos)
      << boot_story(vm.serial());
}

// One flipped byte: the kernel's verity target refuses the block and pok8s-init says why.
TEST_F(InitBoot, RefusesAnImageWhoseBlocksDoNotMatchTheRootHash) {
  auto vm_dir = util::TempDir::scratch(work_->path());
  auto options = machine("pok8s.init=/sbin/pok8s-test-init " + image::verity_cmdline(verity_));
  options.cdrom = work_->path() / "tampered.iso";
  pok8s::testing::Qemu vm(options, vm_dir.path());
  EXPECT_TRUE(
      vm.wait_for("pok8s-init: Failed to mount the image /rootfs.squashfs: dm-verity "
                  "refused it: its blocks do not match the root hash",
                  pok8s::testing::boot_timeout(std::chrono::seconds(600))))
      << boot_story(vm.serial()) << "---\n"
      << vm.tail(40);
  EXPECT_NE(vm.serial().find("device-mapper: verity"), std::string::npos) << vm.tail(40);
  EXPECT_EQ(vm.serial().find("pok8s-test: done"), std::string::npos);
}

// A UKI names its image by path and by root hash. After an upgrade swapped the A/B images and
// before it replaced the UKIs, the active UKI's path holds the new image: pok8s-init boots the
// other one, whose tree matches the root hash.
TEST_F(InitBoot, BootsTheOtherABImageWhenOnlyItMatchesTheRootHash) {
  auto vm_dir = util::TempDir::scratch(work_->path());
  auto options = machine(
      "pok8s.mode=active pok8s.media=COS_LIVE pok8s.image=/cOS/active/rootfs.img "
      "pok8s.init=/sbin/pok8s-test-init " +
      image::verity_cmdline(verity_));
  options.cdrom = work_->path() / "ab.iso";
  pok8s::testing::Qemu vm(options, vm_dir.path());
  ASSERT_TRUE(
      vm.wait_for("pok8s-test: done", pok8s::testing::boot_timeout(std::chrono::seconds(600))))
      << boot_story(vm.serial()) << "---\n"
      << vm.tail(30);
  std::string serial = vm.serial();
  EXPECT_NE(serial.find("the image of root hash " + verity_.root_hash +
                        " is /cOS/passive/rootfs.img, not /cOS/active/rootfs.img (an upgrade "
                        "was interrupted): booting it"),
            std::string::npos)
      << boot_story(serial);
  EXPECT_NE(serial.find("pok8s-test: state image=/cOS/passive/rootfs.img"), std::string::npos)
      << boot_story(serial);
}

// An installed boot (active) whose COS_PERSISTENT is LUKS2 with a passphrase: pok8s-init runs
// pok8s-luks from the initramfs, which asks on the console; a wrong passphrase is said so and
// asked again, the right one opens the volume with dm-crypt. (It holds no file system: that is
// made by the installer on the opened volume, which this host cannot open.)
TEST_F(InitBoot, AsksForThePassphraseOfAnEncryptedPartitionAndOpensIt) {
  auto vm_dir = util::TempDir::scratch(work_->path());
  auto options = machine(
      "pok8s.mode=active pok8s.media=COS_LIVE pok8s.image=/rootfs.squashfs "
      "pok8s.init=/sbin/pok8s-test-init");
  options.initrd = work_->path() / "initrd-luks";
  options.disks = {work_->path() / "persistent.img"};
  pok8s::testing::Qemu vm(options, vm_dir.path());
  const auto timeout = pok8s::testing::boot_timeout(std::chrono::seconds(600));
  ASSERT_TRUE(vm.wait_for("Passphrase or recovery key for /dev/vda (COS_PERSISTENT): ", timeout))
      << boot_story(vm.serial()) << "---\n"
      << vm.tail(30);
  vm.send("not the passphrase\r");
  ASSERT_TRUE(vm.wait_for("That key opens none of them", timeout)) << vm.tail(30);
  vm.send(std::string(kPassphrase) + "\r");
  ASSERT_TRUE(vm.wait_for("Opened /dev/vda as /dev/mapper/COS_PERSISTENT", timeout)) << vm.tail(30);
  ASSERT_TRUE(vm.wait_for("pok8s-test: done", timeout)) << boot_story(vm.serial());
  std::string serial = vm.serial();
  EXPECT_NE(serial.find("pok8s-test: state mode=active"), std::string::npos) << vm.tail(40);
  // The passphrase was not echoed.
  EXPECT_EQ(serial.find(kPassphrase), std::string::npos) << vm.tail(40);
}

TEST_F(InitBoot, SaysClearlyWhenTheMediaIsMissing) {
  auto vm_dir = util::TempDir::scratch(work_->path());
  pok8s::testing::Qemu vm(machine("pok8s.media=NOPE pok8s.wait=2"), vm_dir.path());
  EXPECT_TRUE(
      vm.wait_for("pok8s-init: Failed to find the boot media: no block device with the label NOPE",
                  pok8s::testing::boot_timeout(std::chrono::seconds(600))))
      << vm.tail(40);
}
