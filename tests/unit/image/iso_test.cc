// The hybrid ISO writer, checked with xorriso/osirrox: files and Rock Ridge attributes, El Torito
// entries, MBR and GPT, the appended EFI partition, and bit-for-bit reproducibility.
#include "pok8s/image/iso.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include <fmt/format.h>

#include "pok8s/image/fat.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"
#include "unit/expect_error.h"

namespace fs = std::filesystem;
using namespace pok8s;
using pok8s::testing::expect_error;

namespace {

constexpr std::int64_t kTimestamp = 1700000000;  // 2023-11-14 22:13:20 UTC

struct Shell {
  int status = -1;
  std::string out;
};

// Runs a shell command, capturing stdout and stderr.
Shell sh(const std::string& cmd) {
  Shell r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  return r;
}

std::string file_sha256(const fs::path& path) {
  return util::sha256_hex(util::read_file(path, 1ull << 32));
}

class IsoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = dir_.path() / "src";
    fs::create_directories(src_);
    util::write_file_atomic(src_ / "kernel", std::string(100000, 'k'), 0755);
    util::write_file_atomic(src_ / "grub.cfg", "echo hello\n");
    util::write_file_atomic(src_ / "long", "a file with a long name\n");
    // Stands in for GRUB's El Torito image: libisofs patches it but does not look inside.
    util::write_file_atomic(src_ / "eltorito.img", std::string(8192, '\x90'));
    files_ = {{"boot/kernel", src_ / "kernel"},
              {"boot/grub/grub.cfg", src_ / "grub.cfg"},
              {"boot/grub/i386-pc/eltorito.img", src_ / "eltorito.img"},
              {"A Long File Name With Spaces.txt", src_ / "long"}};
  }

  // A hybrid ISO with both boot entries and the EFI partition.
  image::IsoOptions hybrid_options() {
    util::write_file_atomic(src_ / "BOOTX64.EFI", std::string(70000, 'e'));
    fs::path efi = dir_.path() / "efi.img";
    if (!fs::exists(efi))
      image::write_fat_image({{"EFI/BOOT/BOOTX64.EFI", src_ / "BOOTX64.EFI"}}, "", kTimestamp, efi);
    image::IsoOptions o;
    o.timestamp = kTimestamp;
    o.bios_boot_image = "boot/grub/i386-pc/eltorito.img";
    o.hybrid_mbr = "/usr/lib/grub/i386-pc/boot_hybrid.img";
    o.efi_image = efi;
    return o;
  }

  util::TempDir dir_ = util::TempDir::scratch();
  fs::path src_;
  std::vector<image::IsoFile> files_;
};

TEST_F(IsoTest, WritesVolumeIdAndFilesWithRockRidgeNames) {
  image::IsoOptions o;
  o.timestamp = kTimestamp;
  fs::path iso = dir_.path() / "live.iso";
  // The hash is taken as the bytes go out: it is the written file's.
  std::string sha256 = image::write_iso(files_, o, iso);
  EXPECT_EQ(sha256, util::file_sha256(iso));

  Shell pvd = sh("xorriso -indev " + iso.string() + " -pvd_info");
  ASSERT_EQ(pvd.status, 0) << pvd.out;
  EXPECT_NE(pvd.out.find("Volume Id    : COS_LIVE"), std::string::npos) << pvd.out;
  EXPECT_NE(pvd.out.find("Creation Time: 2023111422132000"), std::string::npos) << pvd.out;

  fs::path out = dir_.path() / "extracted";
  Shell x = sh("osirrox -indev " + iso.string() + " -extract / " + out.string());
  ASSERT_EQ(x.status, 0) << x.out;
  EXPECT_EQ(util::read_file(out / "boot/kernel"), std::string(100000, 'k'));
  EXPECT_EQ(util::read_file(out / "boot/grub/grub.cfg"), "echo hello\n");
  EXPECT_EQ(util::read_file(out / "A Long File Name With Spaces.txt"), "a file with a long name\n");

  // Owned by root, read-only, executable only where the source was; dates from the timestamp.
  Shell ls = sh("xorriso -indev " + iso.string() + " -find / -exec lsdl");
  ASSERT_EQ(ls.status, 0) << ls.out;
  EXPECT_TRUE(std::regex_search(
      ls.out, std::regex(R"(-r-xr-xr-x +1 0 +0 +100000 Nov 14 +2023 '/boot/kernel')")))
      << ls.out;
  EXPECT_TRUE(std::regex_search(
      ls.out, std::regex(R"(-r--r--r-- +1 0 +0 +11 Nov 14 +2023 '/boot/grub/grub.cfg')")))
      << ls.out;
  EXPECT_TRUE(std::regex_search(ls.out, std::regex(R"(dr-xr-xr-x +\d+ 0 +0 .* '/boot/grub')")))
      << ls.out;
}

TEST_F(IsoTest, HasJolietNamesForOtherSystems) {
  image::IsoOptions o;
  o.timestamp = kTimestamp;
  fs::path iso = dir_.path() / "live.iso";
  image::write_iso(files_, o, iso);
  Shell ls = sh("xorriso -read_fs norock -indev " + iso.string() + " -find / -name '*Spaces*'");
  ASSERT_EQ(ls.status, 0) << ls.out;
  EXPECT_NE(ls.out.find("A Long File Name With Spaces.txt"), std::string::npos) << ls.out;
}

TEST_F(IsoTest, WritesBiosAndUefiBootEntriesAndHybridPartitionTables) {
  image::IsoOptions o = hybrid_options();
  fs::path iso = dir_.path() / "live.iso";
  image::write_iso(files_, o, iso);

  Shell r =
      sh("xorriso -indev " + iso.string() + " -report_el_torito plain -report_system_area plain");
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string& out = r.out;
  auto has = [&](const std::string& re) {
    EXPECT_TRUE(std::regex_search(out, std::regex(re))) << "missing /" << re << "/ in\n" << out;
  };
  has(R"(El Torito boot img : +1 +BIOS +y +none +0x0000 +0x00 +4 )");
  has(R"(El Torito boot img : +2 +UEFI +y +none )");
  has(R"(El Torito img path : +1 +/boot/grub/i386-pc/eltorito.img)");
  has(R"(El Torito img opts : +1 +boot-info-table grub2-boot-info)");
  has(R"(El Torito cat path : +/boot.catalog)");
  has(R"(System area summary: MBR protective-msdos-label grub2-mbr cyl-align-off GPT)");
  has(R"(Partition offset +: +16)");
  has(R"(MBR partition +: +1 +0x00 +0xee )");
  has(R"(GPT partname local : +1 +ISO9660)");
  // EFI System Partition type GUID C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as stored on disk.
  has(R"(GPT type GUID +: +2 +28732ac11ff8d211ba4b00a0c93ec93b)");

  // The UEFI entry and partition 2 both point at the FAT image, unchanged.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex(R"(GPT start and size : +2 +(\d+) +(\d+))")));
  std::uint64_t start = std::stoull(m[1]) * 512;
  std::uint64_t size = std::stoull(m[2]) * 512;
  std::string efi = util::read_file(*o.efi_image);
  ASSERT_GE(size, efi.size());
  std::ifstream in(iso, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(start));
  std::string part(efi.size(), '\0');
  in.read(part.data(), static_cast<std::streamsize>(part.size()));
  EXPECT_TRUE(part == efi) << "partition 2 differs from the EFI image";
  ASSERT_TRUE(std::regex_search(out, m, std::regex(R"(El Torito boot img : +2 +UEFI .* (\d+)\n)")));
  EXPECT_EQ(std::stoull(m[1]) * 2048, start);

  // The GRUB2 boot provisions: the MBR carries the El Torito image's 512-byte address + 4.
  ASSERT_TRUE(std::regex_search(out, m, std::regex(R"(El Torito boot img : +1 +BIOS .* (\d+)\n)")));
  std::uint64_t eltorito_lba = std::stoull(m[1]);
  std::string mbr = util::read_file(iso, 1ull << 32).substr(0, 512);
  std::uint64_t patched = 0;
  for (int i = 7; i >= 0; --i) patched = patched << 8 | static_cast<unsigned char>(mbr[0x1b0 + i]);
  EXPECT_EQ(patched, eltorito_lba * 4 + 4);
  EXPECT_EQ(static_cast<unsigned char>(mbr[510]), 0x55);
  EXPECT_EQ(static_cast<unsigned char>(mbr[511]), 0xaa);
}

TEST_F(IsoTest, IsBitForBitReproducibleForTheSameTimestamp) {
  for (int i = 0; i < 30; ++i) {
    fs::path source = src_ / ("f" + std::to_string(i));
    util::write_file_atomic(source, std::string(1000 + 700 * static_cast<std::size_t>(i),
                                                static_cast<char>('a' + i % 26)));
    files_.push_back({fmt::format("data/d{}/f{}", i % 3, i), source});
  }
  image::IsoOptions o = hybrid_options();
  fs::path first = dir_.path() / "first.iso";
  image::write_iso(files_, o, first);

  // Sources written again (new inodes, in another order, other times), inputs in another
  // order, another output name: the same bytes.
  std::vector<image::IsoFile> reversed(files_.rbegin(), files_.rend());
  for (const auto& f : reversed) {
    std::string content = util::read_file(f.source);
    fs::remove(f.source);
    util::write_file_atomic(f.source, content,
                            fs::path(f.source).filename() == "kernel" ? 0755 : 0644);
    struct timespec times[2] = {{1000000000, 0}, {1000000000, 0}};
    ::utimensat(AT_FDCWD, f.source.c_str(), times, 0);
  }
  fs::path second = dir_.path() / "second.iso";
  image::write_iso(reversed, o, second);
  EXPECT_EQ(file_sha256(first), file_sha256(second));

  o.timestamp = kTimestamp + 1;
  fs::path third = dir_.path() / "third.iso";
  image::write_iso(files_, o, third);
  EXPECT_NE(file_sha256(first), file_sha256(third));
}

TEST_F(IsoTest, ReportsProgressUpToTheImageSize) {
  image::IsoOptions o;
  o.timestamp = kTimestamp;
  std::uint64_t last_done = 0, last_total = 0;
  bool monotonic = true;
  o.progress = [&](std::uint64_t done, std::uint64_t total) {
    monotonic = monotonic && done >= last_done;
    last_done = done;
    last_total = total;
  };
  fs::path iso = dir_.path() / "live.iso";
  image::write_iso(files_, o, iso);
  EXPECT_TRUE(monotonic);
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(last_total, fs::file_size(iso));
}

TEST_F(IsoTest, RefusesBadInputAndLeavesNothingBehind) {
  fs::path out_dir = dir_.path() / "out";
  fs::create_directories(out_dir);
  fs::path iso = out_dir / "live.iso";
  image::IsoOptions o;
  o.timestamp = kTimestamp;

  auto dup = files_;
  dup.push_back({"/boot/kernel", src_ / "grub.cfg"});
  expect_error([&] { image::write_iso(dup, o, iso); }, ErrorKind::kInvalidInput,
               "'boot/kernel' is given twice");

  expect_error(
      [&] {
        image::write_iso({{"../etc/passwd", src_ / "grub.cfg"}}, o, iso);
      },
      ErrorKind::kInvalidInput, "invalid path '../etc/passwd'");

  expect_error(
      [&] {
        image::write_iso({{"a", src_ / "grub.cfg"}, {"a/b", src_ / "grub.cfg"}}, o, iso);
      },
      ErrorKind::kInvalidInput, "'a' is both a file and a directory");

  expect_error(
      [&] {
        image::write_iso({{"boot/missing", src_ / "missing"}}, o, iso);
      },
      ErrorKind::kNotFound, "missing");

  image::IsoOptions bad_label = o;
  bad_label.volume_id = "cos live";
  expect_error([&] { image::write_iso(files_, bad_label, iso); }, ErrorKind::kInvalidInput,
               "invalid volume id 'cos live'");

  image::IsoOptions mbr_only = o;
  mbr_only.hybrid_mbr = "/usr/lib/grub/i386-pc/boot_hybrid.img";
  expect_error([&] { image::write_iso(files_, mbr_only, iso); }, ErrorKind::kInvalidInput,
               "needs a BIOS boot image");

  image::IsoOptions no_boot_file = o;
  no_boot_file.bios_boot_image = "boot/grub/missing.img";
  expect_error([&] { image::write_iso(files_, no_boot_file, iso); }, ErrorKind::kInvalidInput,
               "/boot/grub/missing.img is not one of the files");

  EXPECT_TRUE(fs::is_empty(out_dir));
}

}  // namespace
