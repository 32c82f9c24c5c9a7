// Planning the installed system's disk: the Kairos partition labels, sizes that follow the
// system image, and refusals that say what does not fit before anything is written.
#include "pok8s/image/disk_layout.h"

#include <gtest/gtest.h>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::image;

namespace {

constexpr std::uint64_t kGiB = 1024 * kMiB;

DiskLayoutOptions options(std::uint64_t disk_gib, std::uint64_t image_mib) {
  DiskLayoutOptions o;
  o.disk_size = disk_gib * kGiB;
  o.image_size = image_mib * kMiB;
  o.seed = "0123456789abcdef";
  return o;
}

std::string error_of(const DiskLayoutOptions& o) {
  try {
    plan_disk(o);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    return e.what();
  }
  return "";
}

std::vector<std::string> names(const GptLayout& l) {
  std::vector<std::string> out;
  for (const auto& p : l.partitions) out.push_back(p.name);
  return out;
}

TEST(DiskLayout, HasTheKairosPartitionsSizedFromTheImage) {
  GptLayout l = plan_disk(options(16, 800));
  EXPECT_EQ(names(l), (std::vector<std::string>{"COS_GRUB", "COS_OEM", "COS_RECOVERY", "COS_STATE",
                                                "COS_PERSISTENT"}));
  EXPECT_EQ(l.partitions[0].type, kEspType);
  EXPECT_EQ(l.partitions[0].size, kDefaultGrubMiB * kMiB);
  EXPECT_EQ(l.partitions[2].size, partition_mib_for_images(800 * kMiB, 1) * kMiB);
  EXPECT_EQ(l.partitions[3].size, partition_mib_for_images(800 * kMiB, 3) * kMiB);
  EXPECT_EQ(l.partitions[4].size, 0u);  // the rest
  auto extents = plan_gpt(l);
  EXPECT_GT(extents[4].size, 8 * kGiB);
  // Room for three images and ext4's own needs.
  EXPECT_GE(partition_mib_for_images(800 * kMiB, 3), 3 * 800 + 3 * 800 / 10);
}

TEST(DiskLayout, BiosAddsABiosBootPartitionFirst) {
  auto o = options(16, 800);
  o.bios = true;
  GptLayout l = plan_disk(o);
  EXPECT_EQ(l.partitions[0].name, "BIOS");
  EXPECT_EQ(l.partitions[0].type, kBiosBootType);
  EXPECT_TRUE(l.partitions[0].legacy_bios_bootable);
  EXPECT_EQ(l.partitions.size(), 6u);
}

TEST(DiskLayout, TheExpandableLayoutStopsAtRecovery) {
  auto o = options(1, 300);
  o.expandable = true;
  o.disk_size = 0;
  EXPECT_NE(error_of(o).find("too small"), std::string::npos);
  o.disk_size =
      (2 + kDefaultGrubMiB + kDefaultOemMiB + partition_mib_for_images(300 * kMiB, 1)) * kMiB;
  GptLayout l = plan_disk(o);
  EXPECT_EQ(names(l), (std::vector<std::string>{"COS_GRUB", "COS_OEM", "COS_RECOVERY"}));
}

TEST(DiskLayout, UuidsComeFromTheSeed) {
  auto a = plan_disk(options(16, 800));
  auto b = plan_disk(options(16, 800));
  auto o = options(16, 800);
  o.seed = "fedcba9876543210";
  auto c = plan_disk(o);
  EXPECT_EQ(a.disk_uuid, b.disk_uuid);
  EXPECT_EQ(a.partitions[3].uuid, b.partitions[3].uuid);
  EXPECT_NE(a.partitions[3].uuid, c.partitions[3].uuid);
  EXPECT_NE(a.partitions[3].uuid, a.partitions[4].uuid);
}

TEST(DiskLayout, SizesThatCannotHoldTheImagesAreRefusedNamingThePartition) {
  auto o = options(16, 800);
  o.state_mib = 1000;
  std::string e = error_of(o);
  EXPECT_NE(e.find("COS_STATE of 1000 MiB cannot hold the active, passive and transition images "
                   "of 800 MiB each"),
            std::string::npos)
      << e;
  o = options(16, 800);
  o.recovery_mib = 500;
  EXPECT_NE(error_of(o).find("COS_RECOVERY of 500 MiB cannot hold the recovery image of 800 MiB"),
            std::string::npos);
  o = options(16, 800);
  o.persistent_mib = 10;
  EXPECT_NE(error_of(o).find("COS_PERSISTENT of 10 MiB"), std::string::npos);
}

TEST(DiskLayout, ADiskTooSmallIsRefusedWithWhatTheLayoutNeeds) {
  std::string e = error_of(options(2, 800));
  EXPECT_NE(e.find("the disk of 2048 MiB is too small: the layout needs"), std::string::npos) << e;
  EXPECT_NE(e.find("COS_STATE"), std::string::npos) << e;
  EXPECT_NE(e.find("system image of 800 MiB"), std::string::npos) << e;
}

}  // namespace
