// The installer's decisions, before anything is written: which disk `auto` takes and why the
// others are not taken, which named devices are refused, the layout checked against the disk,
// the sfdisk script, and when an automatic install happens. Disks are probed from a fake
// /sys/class/block and /dev made of files.
#include "pok8s/node/install.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "pok8s/image/disk_layout.h"
#include "pok8s/image/gpt.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "pok8s/util/process.h"

namespace fs = std::filesystem;
using namespace pok8s;
using namespace pok8s::node;

namespace {

constexpr std::uint64_t kGiB = 1024 * image::kMiB;

BlockDevice disk(const char* dev, std::uint64_t gib, std::string content = "") {
  BlockDevice d;
  d.device = dev;
  d.size = gib * kGiB;
  d.content = std::move(content);
  return d;
}

std::string error_of(std::string_view setting, const std::vector<BlockDevice>& devices) {
  try {
    choose_install_device(setting, "--device", devices);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    return e.what();
  }
  return "";
}

TEST(ChooseInstallDevice, AutoTakesTheOneBlankDisk) {
  BlockDevice sr0 = disk("/dev/sr0", 1);
  sr0.kind = BlockKind::kOther;
  sr0.boot_media = true;
  BlockDevice vda1 = disk("/dev/vda1", 1);
  vda1.kind = BlockKind::kPartition;
  std::vector<BlockDevice> devices = {disk("/dev/vda", 20, "a gpt partition table"), vda1,
                                      disk("/dev/vdb", 8), sr0};
  EXPECT_EQ(choose_install_device("auto", "--device", devices).device, "/dev/vdb");
}

TEST(ChooseInstallDevice, AutoRefusesTwoBlankDisksNamingBoth) {
  std::vector<BlockDevice> devices = {disk("/dev/vda", 8), disk("/dev/vdb", 8)};
  EXPECT_EQ(error_of("auto", devices),
            "Failed to choose the disk to install to: /dev/vda and /dev/vdb are both blank: set "
            "install.device or --device (--device)");
  devices.push_back(disk("/dev/nvme0n1", 8));
  EXPECT_NE(error_of("auto", devices).find("/dev/vda, /dev/vdb and /dev/nvme0n1 are all blank"),
            std::string::npos);
}

TEST(ChooseInstallDevice, AutoWithoutABlankDiskSaysWhyEachWasNotTaken) {
  BlockDevice usb = disk("/dev/sda", 16);
  usb.boot_media = true;
  BlockDevice ro = disk("/dev/sdb", 16);
  ro.read_only = true;
  BlockDevice busy = disk("/dev/sdc", 16);
  busy.in_use = "/dev/sdc1 is mounted on /data";
  BlockDevice empty = disk("/dev/sdd", 0);
  EXPECT_EQ(error_of("auto", {usb, ro, busy, empty, disk("/dev/vda", 20, "an ext4 file system")}),
            "Failed to choose the disk to install to: no blank disk (/dev/sda holds the boot "
            "medium; /dev/sdb is read-only; /dev/sdc is in use: /dev/sdc1 is mounted on /data; "
            "/dev/sdd is empty (no medium); /dev/vda holds an ext4 file system): set "
            "install.device or --device (--device)");
  BlockDevice loop = disk("/dev/loop0", 1);
  loop.kind = BlockKind::kOther;
  EXPECT_EQ(error_of("auto", {loop}),
            "Failed to choose the disk to install to: there are no disks");
}

TEST(ChooseInstallDevice, ANamedDiskMayHoldDataButMustBeAWholeFreeWritableDisk) {
  BlockDevice vda1 = disk("/dev/vda1", 1);
  vda1.kind = BlockKind::kPartition;
  BlockDevice usb = disk("/dev/sda", 16);
  usb.boot_media = true;
  BlockDevice busy = disk("/dev/sdc", 16);
  busy.in_use = "/dev/sdc is used as swap";
  BlockDevice ro = disk("/dev/sdb", 16);
  ro.read_only = true;
  BlockDevice loop = disk("/dev/loop0", 1);
  loop.kind = BlockKind::kOther;
  std::vector<BlockDevice> devices = {
      disk("/dev/vda", 20, "a gpt partition table"), vda1, usb, busy, ro, loop};
  EXPECT_EQ(choose_install_device("/dev/vda", "--device", devices).device, "/dev/vda");
  EXPECT_EQ(error_of("/dev/vda1", devices),
            "Failed to install to /dev/vda1 (--device): it is a partition, not a whole disk");
  EXPECT_EQ(error_of("/dev/sda", devices),
            "Failed to install to /dev/sda (--device): it holds the boot medium");
  EXPECT_EQ(error_of("/dev/sdc", devices),
            "Failed to install to /dev/sdc (--device): it is in use: /dev/sdc is used as swap");
  EXPECT_EQ(error_of("/dev/sdb", devices),
            "Failed to install to /dev/sdb (--device): it is read-only");
  EXPECT_NE(error_of("/dev/loop0", devices).find("it is not a disk"), std::string::npos);
  EXPECT_EQ(error_of("/dev/vdz", devices),
            "Failed to install to /dev/vdz (--device): no such block device");
}

TEST(BlockKindByName, LeavesOutVirtualOpticalAndEmmcBootAreas) {
  for (const char* name :
       {"loop0", "ram1", "zram0", "sr0", "dm-0", "md127", "nbd0", "mmcblk0boot0", "mmcblk0rpmb"})
    EXPECT_EQ(block_kind_by_name(name), BlockKind::kOther) << name;
  for (const char* name : {"vda", "sda", "nvme0n1", "mmcblk0", "xvda"})
    EXPECT_EQ(block_kind_by_name(name), BlockKind::kDisk) << name;
}

// A fake /sys/class/block and /dev: each disk a directory with dev, size and ro, each
// partition a subdirectory linked from the top as the kernel does, each /dev node a file.
class FakeBlockDevices : public ::testing::Test {
 protected:
  void SetUp() override {
    paths_.sys_class_block = dir_.path() / "sys/class/block";
    paths_.dev = dir_.path() / "dev";
    paths_.mountinfo = dir_.path() / "mountinfo";
    paths_.swaps = dir_.path() / "swaps";
    util::make_dirs(paths_.sys_class_block);
    util::make_dirs(paths_.dev);
    util::make_dirs(dir_.path() / "sys/devices");
    util::write_file_atomic(paths_.mountinfo,
                            "22 1 0:21 / /proc rw - proc proc rw\n"
                            "40 1 252:17 / /srv/my\\040data rw - ext4 /dev/vdb1 rw\n");
    util::write_file_atomic(paths_.swaps, "Filename Type Size Used Priority\n");
  }

  void add(const std::string& name, const std::string& dev, std::uint64_t mib,
           const std::string& parent = "") {
    util::Path real = parent.empty() ? dir_.path() / "sys/devices" / name
                                     : dir_.path() / "sys/devices" / parent / name;
    util::make_dirs(real);
    util::write_file_atomic(real / "dev", dev + "\n");
    util::write_file_atomic(real / "size", std::to_string(mib * 2048) + "\n");
    util::write_file_atomic(real / "ro", "0\n");
    if (!parent.empty()) util::write_file_atomic(real / "partition", name.substr(parent.size()));
    fs::create_directory_symlink(real, paths_.sys_class_block / name);
    // A sparse file of the size, so libblkid reads what a disk would hold.
    util::UniqueFd fd = util::open_file(paths_.dev / name, O_WRONLY | O_CREAT | O_TRUNC);
    ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(mib * image::kMiB)), 0);
  }

  const BlockDevice& find(const std::vector<BlockDevice>& devices, const std::string& name) {
    for (const auto& d : devices)
      if (d.device == paths_.dev / name) return d;
    throw std::runtime_error("no " + name);
  }

  util::TempDir dir_ = util::TempDir::scratch();
  BlockProbePaths paths_;
};

TEST_F(FakeBlockDevices, ProbesContentUseAndTheBootMedium) {
  add("vda", "252:0", 64);
  image::GptLayout gpt;
  gpt.disk_uuid = image::derived_uuid("t", "disk");
  gpt.disk_size = 64 * image::kMiB;
  gpt.partitions.push_back(
      {"DATA", image::kLinuxDataType, image::derived_uuid("t", "DATA"), 0, false});
  image::write_gpt(paths_.dev / "vda", gpt);
  add("vdb", "252:16", 64);
  add("vdb1", "252:17", 32, "vdb");
  add("vdc", "252:32", 64);
  add("sdd", "8:48", 64);
  add("sdd1", "8:49", 32, "sdd");
  add("loop0", "7:0", 8);

  auto devices = probe_block_devices({"/dev/sdd1"}, paths_);
  ASSERT_EQ(devices.size(), 7u);
  EXPECT_EQ(find(devices, "vda").content, "a gpt partition table");
  EXPECT_EQ(find(devices, "vda").size, 64 * image::kMiB);
  EXPECT_EQ(find(devices, "vdb").in_use,
            (paths_.dev / "vdb1").string() + " is mounted on /srv/my data");
  EXPECT_EQ(find(devices, "vdb1").kind, BlockKind::kPartition);
  EXPECT_EQ(find(devices, "vdc").content, "");
  EXPECT_EQ(find(devices, "vdc").in_use, "");
  EXPECT_FALSE(find(devices, "vdc").boot_media);
  EXPECT_TRUE(find(devices, "sdd").boot_media);  // through its partition
  EXPECT_EQ(find(devices, "loop0").kind, BlockKind::kOther);
  EXPECT_EQ(choose_install_device("auto", "--device", devices).device, paths_.dev / "vdc");

  // The medium's device number counts as well as its path.
  devices = probe_block_devices({"252:32"}, paths_);
  EXPECT_TRUE(find(devices, "vdc").boot_media);
  EXPECT_NE(error_of((paths_.dev / "vdc").string(), devices).find("it holds the boot medium"),
            std::string::npos);
}

// install.encryption is refused before anything is written: tpm from a medium that is not a
// uki-iso (no signed PCR policy to seal to), and either mode without pok8s-luks's bundle.
TEST_F(FakeBlockDevices, EncryptionItCannotDoIsRefusedBeforeTheDiskIsTouched) {
  add("vda", "252:0", 8192);
  util::Path media = dir_.path() / "media";
  for (const char* f : {"boot/kernel", "boot/initrd", "rootfs.squashfs", "install/grubenv"}) {
    util::make_dirs((media / f).parent_path());
    util::write_file_atomic(media / f, std::string(1000, 'x'));
  }
  util::make_dirs(media / "install/EFI/BOOT");
  util::make_dirs(media / "install/grub");
  InstallRequest request;
  request.media = media;
  request.boot_state = dir_.path() / "no-boot-state";
  request.work_dir = dir_.path() / "work";
  request.efi_firmware = dir_.path();  // booted by UEFI
  request.luks_dir = dir_.path() / "no-luks";
  request.probe_paths = paths_;
  auto refusal = [&](const config::InstallConfig& config) {
    try {
      run_install(request, {}, config);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("installed");
  };
  config::InstallConfig config;
  config.encryption = "tpm";
  config.encryption_origin = "/oem/90_custom.yaml:4";
  EXPECT_EQ(refusal(config),
            fmt::format("Failed to install with encryption: tpm (install.encryption in "
                        "/oem/90_custom.yaml:4): {} is not a uki-iso, and the disk key is sealed "
                        "to its signed UKIs' PCR policy (use encryption: passphrase)",
                        media.string()));
  config.encryption = "passphrase";
  config.passphrase = "correct horse";
  EXPECT_NE(refusal(config).find("Failed to run pok8s-luks: " + (dir_.path() / "no-luks").string() +
                                 " has no dynamic loader"),
            std::string::npos);
  // Nothing was written: the disk is still blank.
  std::string head(1u << 20, 'x');
  util::UniqueFd fd = util::open_file(paths_.dev / "vda", O_RDONLY);
  ASSERT_EQ(::pread(fd.get(), head.data(), head.size(), 0), static_cast<ssize_t>(head.size()));
  EXPECT_EQ(head.find_first_not_of('\0'), std::string::npos);
}

TEST(PlanInstall, ADiskTooSmallIsRefusedNamingTheDiskAndTheSizes) {
  BlockDevice small = disk("/dev/vda", 1);
  try {
    plan_install({}, small, 400 * image::kMiB);
    FAIL() << "planned";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(m.find("Failed to plan the disk /dev/vda: the disk of 1024 MiB is too small: the "
                     "layout needs"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("for a system image of 400 MiB"), std::string::npos) << m;
  }
}

TEST(PlanInstall, SizesFollowTheImageAndTheConfig) {
  config::InstallConfig c;
  c.oem_mib = 128;
  image::GptLayout l = plan_install(c, disk("/dev/vda", 8), 400 * image::kMiB);
  ASSERT_EQ(l.partitions.size(), 5u);
  EXPECT_EQ(l.partitions[1].size, 128 * image::kMiB);
  EXPECT_EQ(l.partitions[3].size,
            image::partition_mib_for_images(400 * image::kMiB, 3) * image::kMiB);
  EXPECT_EQ(l.partitions[4].size, 0u);
  EXPECT_TRUE(l.partitions[0].uuid.empty());  // sfdisk makes them
  EXPECT_EQ(layout_summary(l), fmt::format("COS_GRUB 64 MiB, COS_OEM 128 MiB, COS_RECOVERY {} MiB, "
                                           "COS_STATE {} MiB, COS_PERSISTENT the rest",
                                           image::partition_mib_for_images(400 * image::kMiB, 1),
                                           image::partition_mib_for_images(400 * image::kMiB, 3)));
}

TEST(SfdiskScript, NamesTypesAndSizesEveryPartitionTheLastTakingTheRest) {
  image::GptLayout l = plan_install({}, disk("/dev/vda", 8), 100 * image::kMiB);
  std::string expected = fmt::format(
      "label: gpt\n"
      "size=64MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"COS_GRUB\"\n"
      "size=64MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"COS_OEM\"\n"
      "size={}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"COS_RECOVERY\"\n"
      "size={}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"COS_STATE\"\n"
      "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"COS_PERSISTENT\"\n",
      image::partition_mib_for_images(100 * image::kMiB, 1),
      image::partition_mib_for_images(100 * image::kMiB, 3));
  EXPECT_EQ(sfdisk_script(l), expected);
}

TEST(PlanInstall, BiosPutsABiosBootPartitionFirst) {
  image::GptLayout l = plan_install({}, disk("/dev/vda", 8), 100 * image::kMiB, true);
  ASSERT_EQ(l.partitions.size(), 6u);
  EXPECT_EQ(l.partitions[0].name, image::kBiosBootName);
  EXPECT_EQ(sfdisk_script(l).substr(0, 105),
            "label: gpt\nsize=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=\"BIOS\", "
            "attrs=\"LegacyBIOSBootable\"\n");
}

TEST(PlanInstall, BiosBootFollowsTheFirmwareSettingElseHowTheInstallerBooted) {
  util::TempDir dir = util::TempDir::scratch();
  util::Path efi = dir.path() / "efi";
  config::InstallConfig c;
  EXPECT_TRUE(wants_bios_boot(c, efi));  // booted by BIOS: no /sys/firmware/efi
  util::make_dirs(efi);
  EXPECT_FALSE(wants_bios_boot(c, efi));
  c.firmware = "bios";
  EXPECT_TRUE(wants_bios_boot(c, efi));
  c.firmware = "efi";
  std::filesystem::remove(efi);
  EXPECT_FALSE(wants_bios_boot(c, efi));
}

// The script is what sfdisk takes: written to a disk image file, read back by name and size.
TEST(SfdiskScript, SfdiskWritesItAsPlanned) {
  if (util::run_process({"sh", "-c", "command -v sfdisk"}).status != 0) GTEST_SKIP() << "no sfdisk";
  util::TempDir dir = util::TempDir::scratch();
  util::Path file = dir.path() / "disk.img";
  {
    util::UniqueFd fd = util::open_file(file, O_WRONLY | O_CREAT | O_TRUNC);
    ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(2 * kGiB)), 0);
  }
  image::GptLayout l = plan_install({}, disk("/dev/vda", 2), 100 * image::kMiB);
  util::write_file_atomic(dir.path() / "script", sfdisk_script(l));
  util::ProcessOptions o;
  o.stdin_file = (dir.path() / "script").string();
  auto r = util::run_process({"sfdisk", "--no-reread", "--no-tell-kernel", file.string()}, o);
  ASSERT_EQ(r.status, 0) << r.output;
  r = util::run_process({"sfdisk", "--dump", file.string()});
  ASSERT_EQ(r.status, 0) << r.output;
  auto extents = image::plan_gpt([&] {
    image::GptLayout with_uuids = l;
    with_uuids.disk_size = 2 * kGiB;
    with_uuids.disk_uuid = image::derived_uuid("t", "disk");
    for (auto& p : with_uuids.partitions) p.uuid = image::derived_uuid("t", p.name);
    return with_uuids;
  }());
  for (std::size_t i = 0; i < l.partitions.size(); ++i) {
    std::string line = fmt::format("start={:>12}, size={:>12}, type={}", extents[i].offset / 512,
                                   extents[i].size / 512, l.partitions[i].type);
    // The last partition ends before the backup GPT: sfdisk gives it up to the last usable LBA.
    if (i + 1 == l.partitions.size())
      line = fmt::format("start={:>12}, size=", extents[i].offset / 512);
    EXPECT_NE(r.output.find(line), std::string::npos) << line << "\n" << r.output;
    EXPECT_NE(r.output.find(fmt::format("name=\"{}\"", l.partitions[i].name)), std::string::npos);
  }
}

TEST(AutoInstall, HappensOnlyOnALiveBootWhoseConfigAsks) {
  config::InstallConfig yes;
  yes.auto_install = true;
  BootState live;
  live.mode = BootMode::kLive;
  BootState active;
  active.mode = BootMode::kActive;
  EXPECT_EQ(why_no_auto_install(live, yes), std::nullopt);
  EXPECT_EQ(why_no_auto_install(active, yes), "this is not a live boot (mode active)");
  EXPECT_EQ(why_no_auto_install(live, config::InstallConfig{}),
            "the cloud-config does not set install.auto: true");
  EXPECT_EQ(why_no_auto_install(std::nullopt, yes),
            "no /run/pok8s/boot-state: not booted by pok8s-init");
}

TEST(FindInstallMedia, NamesTheFirstMissingFile) {
  util::TempDir dir = util::TempDir::scratch();
  try {
    find_install_media(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("no " + (dir.path() / "boot/kernel").string()),
              std::string::npos);
  }
  for (const char* f : {"boot/kernel", "boot/initrd", "rootfs.squashfs", "install/grubenv"}) {
    util::make_dirs((dir.path() / f).parent_path());
    util::write_file_atomic(dir.path() / f, std::string(1000, 'x'));
  }
  util::make_dirs(dir.path() / "install/EFI/BOOT");
  util::make_dirs(dir.path() / "install/grub");
  InstallMedia m = find_install_media(dir.path());
  EXPECT_EQ(m.image_size, 3000u);
  EXPECT_FALSE(m.config);
  EXPECT_FALSE(m.bios_core);
  util::write_file_atomic(dir.path() / "config.yaml", "#cloud-config\n");
  EXPECT_TRUE(find_install_media(dir.path()).config);
  // GRUB's BIOS boot code counts only whole: core.img and boot.img.
  util::make_dirs(dir.path() / "install/bios");
  util::write_file_atomic(dir.path() / "install/bios/core.img", "core");
  EXPECT_FALSE(find_install_media(dir.path()).bios_core);
  util::write_file_atomic(dir.path() / "install/bios/boot.img", "boot");
  EXPECT_EQ(find_install_media(dir.path()).bios_boot, dir.path() / "install/bios/boot.img");
}

// A uki-iso's installer files: systemd-boot, loader.conf and the UKIs; no kernel, initramfs,
// GRUB or grubenv. COS_GRUB is sized for twice the UKIs.
TEST(FindInstallMedia, ReadsAUkiIsoAndSizesTheEspForItsUkis) {
  util::TempDir dir = util::TempDir::scratch();
  auto put = [&](const std::string& f, std::size_t size) {
    util::make_dirs((dir.path() / f).parent_path());
    util::write_file_atomic(dir.path() / f, std::string(size, 'x'));
  };
  put("rootfs.squashfs", 5000);
  put("install/EFI/BOOT/BOOTX64.EFI", 100);
  put("install/EFI/Linux/pok8s-passive.efi", 1000);
  try {
    find_install_media(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("install/loader/loader.conf"), std::string::npos)
        << e.what();
  }
  put("install/loader/loader.conf", 10);
  try {
    find_install_media(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("install/EFI/Linux/pok8s-active.efi"), std::string::npos)
        << e.what();
  }
  put("install/EFI/Linux/pok8s-active+3.efi", 1000);
  InstallMedia m = find_install_media(dir.path());
  EXPECT_TRUE(m.uki);
  // Each image keeps its UKIs next to its rootfs.
  EXPECT_EQ(m.image_size, 7000u);
  EXPECT_EQ(m.efi_size, 2100u);
  EXPECT_EQ(m.grub_dir, dir.path() / "install/loader");

  // Three 40 MiB UKIs: 240 MiB for two sets plus FAT's own.
  image::GptLayout l =
      plan_install({}, disk("/dev/vda", 8), 100 * image::kMiB, false, 120 * image::kMiB);
  EXPECT_EQ(l.partitions[0].size, 248 * image::kMiB);
  EXPECT_EQ(plan_install({}, disk("/dev/vda", 8), 100 * image::kMiB, false, m.efi_size)
                .partitions[0]
                .size,
            image::kDefaultGrubMiB * image::kMiB);
}

}  // namespace
