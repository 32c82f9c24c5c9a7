// GRUB's BIOS boot code on a GPT disk image: boot.img's code in the MBR pointing at core.img in
// the BIOS boot partition, whose block list points at its own second sector; the partition table
// untouched; refusals before the MBR changes. The QEMU boot of a --bios disk is in e2e_disk.
#include "pok8s/image/bios_boot.h"

#include <gtest/gtest.h>

#include <fstream>

#include "pok8s/boot/grub.h"
#include "pok8s/image/disk_layout.h"
#include "pok8s/image/gpt.h"
#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::image;

namespace {

std::uint64_t le(std::string_view b, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
  return v;
}

// A boot sector shaped like GRUB's boot.img: code bytes, the signature.
std::string fake_boot_img() {
  std::string b(kBiosSector, '\xb8');
  b[510] = '\x55';
  b[511] = '\xaa';
  return b;
}

// A core image of `sectors` sectors whose first (diskboot) sector lists the rest at segment
// 0x820, as grub-mkimage -O i386-pc writes it.
std::string fake_core_img(std::size_t sectors) {
  std::string c(sectors * kBiosSector - 100, '\xc3');
  c[0x1f4] = 2;  // grub-mkimage's placeholder start
  for (int i = 1; i < 8; ++i) c[0x1f4 + i] = 0;
  c[0x1fc] = static_cast<char>(sectors - 1);
  c[0x1fd] = 0;
  c[0x1fe] = 0x20;
  c[0x1ff] = 0x08;
  return c;
}

struct Disk {
  util::TempDir dir = util::TempDir::scratch();
  util::Path file = dir.path() / "disk.raw";
  std::vector<PartitionExtent> extents;

  Disk() {
    DiskLayoutOptions o;
    o.disk_size = 512 * kMiB;
    o.image_size = 10 * kMiB;
    o.bios = true;
    o.expandable = true;
    o.seed = "bios-test";
    extents = write_gpt(file, plan_disk(o));
  }
  const PartitionExtent& bios() const { return extents.at(0); }
  std::string read(std::uint64_t offset, std::size_t size) const {
    std::ifstream in(file, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(offset));
    std::string out(size, '\0');
    in.read(out.data(), static_cast<std::streamsize>(size));
    EXPECT_TRUE(in.good());
    return out;
  }
};

TEST(BiosBoot, ChainsTheMbrToCoreImgInTheBiosBootPartitionAndKeepsTheGpt) {
  Disk d;
  ASSERT_EQ(d.bios().name, kBiosBootName);
  std::string mbr_before = d.read(0, kBiosSector);
  std::string gpt_before = d.read(kBiosSector, kBiosSector);
  std::string core = fake_core_img(5);
  write_bios_boot(d.file, d.bios().offset, d.bios().size, fake_boot_img(), core);

  std::string mbr = d.read(0, kBiosSector);
  const std::uint64_t lba = d.bios().offset / kBiosSector;
  EXPECT_EQ(le(mbr, 0x5c, 8), lba);            // boot.img reads core.img's first sector
  EXPECT_EQ(mbr.substr(0x66, 2), "\x90\x90");  // the hard disk drive fix-up enabled
  EXPECT_EQ(mbr.substr(0, 0x5c), fake_boot_img().substr(0, 0x5c));
  EXPECT_EQ(mbr.substr(440), mbr_before.substr(440));  // disk signature, partitions, 55aa
  EXPECT_EQ(d.read(kBiosSector, kBiosSector), gpt_before);

  std::string written = d.read(d.bios().offset, core.size());
  EXPECT_EQ(le(written, 0x1f4, 8), lba + 1);  // diskboot reads the rest from the next sector
  EXPECT_EQ(le(written, 0x1fc, 2), 4u);
  EXPECT_EQ(written.substr(0, 0x1f4), core.substr(0, 0x1f4));
  EXPECT_EQ(written.substr(kBiosSector), core.substr(kBiosSector));
}

std::string refusal(const Disk& d, std::uint64_t offset, std::uint64_t size, std::string boot,
                    std::string core) {
  std::string mbr_before = d.read(0, kBiosSector);
  try {
    write_bios_boot(d.file, offset, size, boot, core);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_EQ(d.read(0, kBiosSector), mbr_before);  // the MBR is written last, or not at all
    return e.what();
  }
  ADD_FAILURE() << "written";
  return "";
}

TEST(BiosBoot, RefusesImagesThatAreNotGrubsOrDoNotFitBeforeTheMbrChanges) {
  Disk d;
  const std::string prefix = "Failed to write GRUB's BIOS boot code to " + d.file.string() + ": ";
  EXPECT_EQ(refusal(d, d.bios().offset, d.bios().size, fake_boot_img(), fake_core_img(2049)),
            prefix + "core.img of 1048988 bytes is not a GRUB i386-pc core image");
  EXPECT_EQ(refusal(d, d.bios().offset, 8 * kBiosSector, fake_boot_img(), fake_core_img(9)),
            prefix + "core.img of 4508 bytes does not fit the BIOS boot partition of 4096 bytes");
  std::string no_list = fake_core_img(4);
  no_list[0x1fe] = 0;
  EXPECT_EQ(refusal(d, d.bios().offset, d.bios().size, fake_boot_img(), no_list),
            prefix + "core.img has no diskboot block list covering it (not made with -O i386-pc?)");
  EXPECT_EQ(refusal(d, d.bios().offset, d.bios().size, std::string(512, '\0'), fake_core_img(4)),
            prefix + "boot.img is not a 512-byte boot sector");

  util::write_file_atomic(d.file, std::string(kMiB * 2, '\0'));
  EXPECT_EQ(refusal(d, kMiB, kMiB, fake_boot_img(), fake_core_img(4)),
            prefix + "its first sector is not a GPT protective MBR");
}

// GRUB's own images, as pok8s builds them for COS_GRUB, pass the checks and fit.
TEST(BiosBoot, TakesTheCoreImagePok8sBuildsForDisks) {
  Disk d;
  util::TempDir cache = util::TempDir::scratch();
  boot::GrubImages grub = boot::make_grub_images(cache.path(), kGrubLabel, "/grub");
  std::string core = util::read_file(grub.bios_core, kMaxCoreImage);
  write_bios_boot(d.file, d.bios().offset, d.bios().size,
                  util::read_file(grub.bios_boot, kBiosSector), core);
  EXPECT_EQ(d.read(0, 3), util::read_file(grub.bios_boot, kBiosSector).substr(0, 3));
  EXPECT_LE(core.size(), kBiosBootMiB * kMiB);
}

}  // namespace
