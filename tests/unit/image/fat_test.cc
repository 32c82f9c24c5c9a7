// FAT images through mtools, read back with mdir/mcopy: contents, label, size, reproducibility.
#include "pok8s/image/fat.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>

#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"
#include "unit/expect_error.h"

namespace fs = std::filesystem;
using namespace pok8s;
using pok8s::testing::expect_error;

namespace {

constexpr std::int64_t kFatTimestamp = 1700000000;  // 2023-11-14 22:13:20 UTC

struct MtoolsRun {
  int status = -1;
  std::string out;
};

MtoolsRun mtools(const std::string& cmd) {
  MtoolsRun r;
  FILE* p =
      ::popen(("MTOOLSRC=/dev/null MTOOLS_SKIP_CHECK=1 TZ=UTC " + cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  return r;
}

class FatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = dir_.path() / "src";
    fs::create_directories(src_);
    util::write_file_atomic(src_ / "bootx64.efi", std::string(1500000, 'e'));
    util::write_file_atomic(src_ / "grub.cfg", "search --label COS_LIVE\n");
    files_ = {{"EFI/BOOT/BOOTX64.EFI", src_ / "bootx64.efi"},
              {"EFI/BOOT/grub.cfg", src_ / "grub.cfg"},
              {"loader/a rather long file name.conf", src_ / "grub.cfg"}};
  }
  util::TempDir dir_ = util::TempDir::scratch();
  fs::path src_;
  std::vector<image::FatFile> files_;
};

TEST_F(FatTest, WritesFilesThatMtoolsReadsBack) {
  fs::path img = dir_.path() / "efi.img";
  image::write_fat_image(files_, "EFIBOOT", kFatTimestamp, img);

  MtoolsRun dir = mtools("mdir -i " + img.string() + " -/ ::");
  ASSERT_EQ(dir.status, 0) << dir.out;
  EXPECT_NE(dir.out.find("Volume in drive : is EFIBOOT"), std::string::npos) << dir.out;
  EXPECT_NE(dir.out.find("Volume Serial Number is 6553-F100"), std::string::npos) << dir.out;
  EXPECT_NE(dir.out.find("BOOTX64  EFI   1500000 2023-11-14  22:13"), std::string::npos) << dir.out;
  EXPECT_NE(dir.out.find("a rather long file name.conf"), std::string::npos) << dir.out;

  fs::path out = dir_.path() / "out";
  fs::create_directories(out);
  MtoolsRun copy = mtools("mcopy -s -i " + img.string() + " ::/EFI ::/loader " + out.string());
  ASSERT_EQ(copy.status, 0) << copy.out;
  EXPECT_EQ(util::read_file(out / "EFI/BOOT/BOOTX64.EFI"), std::string(1500000, 'e'));
  EXPECT_EQ(util::read_file(out / "EFI/BOOT/grub.cfg"), "search --label COS_LIVE\n");
  EXPECT_EQ(util::read_file(out / "loader/a rather long file name.conf"),
            "search --label COS_LIVE\n");

  // Sized to fit: whole MiB, not much more than the content.
  auto size = fs::file_size(img);
  EXPECT_EQ(size % (1 << 20), 0u);
  EXPECT_LE(size, 3u << 20);
}

TEST_F(FatTest, IsBitForBitReproducible) {
  fs::path first = dir_.path() / "first.img";
  image::write_fat_image(files_, "EFIBOOT", kFatTimestamp, first);
  struct timespec times[2] = {{1000000000, 0}, {1000000000, 0}};
  ::utimensat(AT_FDCWD, (src_ / "grub.cfg").c_str(), times, 0);
  std::vector<image::FatFile> reversed(files_.rbegin(), files_.rend());
  fs::path second = dir_.path() / "second.img";
  image::write_fat_image(reversed, "EFIBOOT", kFatTimestamp, second);
  EXPECT_EQ(util::sha256_hex(util::read_file(first)), util::sha256_hex(util::read_file(second)));
}

TEST_F(FatTest, FitsManySmallFilesInDeepDirectories) {
  std::vector<image::FatFile> many;
  for (int d = 0; d < 6; ++d)
    for (int f = 0; f < 25; ++f)
      many.push_back({"modules/directory number " + std::to_string(d) +
                          "/a module with a long name " + std::to_string(f) + ".mod",
                      src_ / "grub.cfg"});
  many.push_back({"EFI/BOOT/BOOTX64.EFI", src_ / "bootx64.efi"});
  fs::path img = dir_.path() / "many.img";
  image::write_fat_image(many, "MANY", kFatTimestamp, img);
  MtoolsRun dir = mtools("mdir -i " + img.string() + " -/ -b ::");
  ASSERT_EQ(dir.status, 0) << dir.out;
  std::size_t mods = 0;
  for (std::size_t pos = 0; (pos = dir.out.find(".mod", pos)) != std::string::npos; ++pos) ++mods;
  EXPECT_EQ(mods, 150u);
}

TEST_F(FatTest, WritesIntoAPartitionOfADiskImage) {
  // A 4 MiB "disk" with the file system in its second and third MiB.
  util::Path disk = dir_.path() / "disk.img";
  {
    util::UniqueFd fd = util::open_file(disk, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_EQ(::ftruncate(fd.get(), 4 << 20), 0);
  }
  image::write_fat_partition(files_, "COS_GRUB", kFatTimestamp, disk, 1 << 20, 2 << 20);
  std::string at = disk.string() + "@@1048576";
  MtoolsRun r = mtools("mdir -i " + at + " -/ -b ::");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("::/EFI/BOOT/BOOTX64.EFI"), std::string::npos) << r.out;
  r = mtools("minfo -i " + at + " ::");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("disk label=\"COS_GRUB   \""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("hidden sectors: 2048"), std::string::npos) << r.out;
  // Nothing outside the partition was touched: the first and last MiB are still zero.
  std::string bytes = util::read_file(disk, 8 << 20);
  EXPECT_EQ(bytes.find_first_not_of('\0'), std::size_t{1} << 20);
  EXPECT_EQ(bytes.find_last_not_of('\0') < (std::size_t{3} << 20), true);

  expect_error(
      [&] {
        image::write_fat_partition(files_, "COS_GRUB", kFatTimestamp, disk, 1 << 20, 1 << 20);
      },
      ErrorKind::kInvalidInput, "the partition has 1 MiB");
}

TEST_F(FatTest, RefusesBadInputAndLeavesNothingBehind) {
  fs::path out_dir = dir_.path() / "out";
  fs::create_directories(out_dir);
  fs::path img = out_dir / "efi.img";
  expect_error([&] { image::write_fat_image(files_, "efi boot", kFatTimestamp, img); },
               ErrorKind::kInvalidInput, "invalid volume label 'efi boot'");
  expect_error([&] { image::write_fat_image(files_, "TOOLONGLABEL", kFatTimestamp, img); },
               ErrorKind::kInvalidInput, "invalid volume label");
  auto dup = files_;
  dup.push_back({"efi/boot/bootx64.efi", src_ / "grub.cfg"});
  expect_error([&] { image::write_fat_image(dup, "EFI", kFatTimestamp, img); },
               ErrorKind::kInvalidInput, "'efi/boot/bootx64.efi' is given twice");
  expect_error(
      [&] {
        image::write_fat_image({{"EFI/../x", src_ / "grub.cfg"}}, "EFI", kFatTimestamp, img);
      },
      ErrorKind::kInvalidInput, "invalid path 'EFI/../x'");
  expect_error(
      [&] {
        image::write_fat_image({{"a:b", src_ / "grub.cfg"}}, "EFI", kFatTimestamp, img);
      },
      ErrorKind::kInvalidInput, "invalid path 'a:b'");
  expect_error(
      [&] {
        image::write_fat_image({{"EFI", src_ / "grub.cfg"}, {"EFI/x", src_ / "grub.cfg"}}, "EFI",
                               kFatTimestamp, img);
      },
      ErrorKind::kInvalidInput, "'EFI' is both a file and a directory");
  expect_error(
      [&] {
        image::write_fat_image({{"x", src_ / "nope"}}, "EFI", kFatTimestamp, img);
      },
      ErrorKind::kNotFound, "nope");
  expect_error(
      [&] {
        image::write_fat_image({{"x", src_}}, "EFI", kFatTimestamp, img);
      },
      ErrorKind::kInvalidInput, "is not a regular file");
  EXPECT_TRUE(fs::is_empty(out_dir));
}

}  // namespace
