// The hybrid ISO boots GRUB for real: as a CD and as a disk (USB stick), with SeaBIOS and OVMF,
// under TCG. GRUB finds the medium by its label, reads /boot/grub/grub.cfg from it, prints a
// marker on the serial console and powers off.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "integration/qemu.h"
#include "pok8s/boot/grub.h"
#include "pok8s/image/fat.h"
#include "pok8s/image/iso.h"

namespace fs = std::filesystem;

namespace pok8s::testing {
namespace {

constexpr std::string_view kMarker = "POK8S-GRUB-OK";
constexpr std::int64_t kTimestamp = 1700000000;

class GrubBoot : public ::testing::Test {
 protected:
  // One ISO for every boot: GRUB images, the EFI system partition, the ISO itself.
  static void SetUpTestSuite() {
    dir_ = std::make_unique<util::TempDir>(util::TempDir::scratch());
    const fs::path& d = dir_->path();
    boot::GrubImages grub = boot::make_grub_images(d / "cache", "COS_LIVE");
    // The marker is assembled by GRUB so that the config's own text can never match it.
    util::write_file_atomic(d / "grub.cfg",
                            "serial --unit=0 --speed=115200\n"
                            "terminal_output serial console\n"
                            "set part=GRUB-OK\n"
                            "echo POK8S-$part\n"
                            "halt\n");
    image::write_fat_image({{"EFI/BOOT/BOOTX64.EFI", grub.efi_binary}}, "", kTimestamp,
                           d / "efi.img");
    image::IsoOptions options;
    options.timestamp = kTimestamp;
    options.bios_boot_image = "boot/grub/i386-pc/eltorito.img";
    options.hybrid_mbr = grub.bios_hybrid_mbr;
    options.efi_image = d / "efi.img";
    image::write_iso({{"boot/grub/grub.cfg", d / "grub.cfg"},
                      {"boot/grub/i386-pc/eltorito.img", grub.bios_eltorito}},
                     options, d / "live.iso");
  }
  static void TearDownTestSuite() { dir_.reset(); }

  // Boots the ISO and expects the marker, then the machine switching itself off.
  void expect_boot(Firmware firmware, bool as_disk) {
    auto work = util::TempDir::scratch();
    QemuOptions options;
    options.firmware = firmware;
    options.memory_mib = 256;
    if (as_disk) {
      // A private copy: QEMU opens disks writable.
      fs::copy_file(dir_->path() / "live.iso", work.path() / "stick.img");
      options.disks.push_back(work.path() / "stick.img");
    } else {
      options.cdrom = dir_->path() / "live.iso";
    }
    Qemu vm(options, work.path());
    EXPECT_TRUE(vm.wait_for(kMarker, boot_timeout(std::chrono::seconds(300)))) << vm.tail();
    EXPECT_TRUE(vm.wait_exit(boot_timeout(std::chrono::seconds(60)))) << vm.tail();
  }

  static std::unique_ptr<util::TempDir> dir_;
};

std::unique_ptr<util::TempDir> GrubBoot::dir_;

TEST_F(GrubBoot, BootsAsCdromWithSeaBiosThroughElTorito) {
  expect_boot(Firmware::kBios, false);
}

TEST_F(GrubBoot, BootsAsCdromWithOvmfThroughTheElToritoEfiEntry) {
  expect_boot(Firmware::kUefi, false);
}

TEST_F(GrubBoot, BootsAsDiskWithSeaBiosThroughTheHybridMbr) {
  expect_boot(Firmware::kBios, true);
}

TEST_F(GrubBoot, BootsAsDiskWithOvmfThroughTheEfiSystemPartition) {
  expect_boot(Firmware::kUefi, true);
}

}  // namespace
}  // namespace pok8s::testing
