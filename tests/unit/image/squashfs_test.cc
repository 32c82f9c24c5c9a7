// The squashfs writer against the real unsquashfs: every entry type of a multi-layer image
// with its exact metadata and content, hardlinks, xattrs, reproducible bytes, compressors,
// and nothing left behind on failure.
#include "pok8s/image/squashfs.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"
#include "unit/image/squashfs_check.h"
#include "unit/rootfs/layer_builder.h"

namespace fs = std::filesystem;
using namespace pok8s;
using pok8s::test::Compression;
using pok8s::test::LayerBuilder;
using pok8s::test::quote;
using pok8s::test::sh;

namespace {

constexpr std::uint32_t kBlock = 128 * 1024;

// Incompressible bytes, the same for the same seed.
std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(gen() & 0xff);
  return s;
}

// A file capability (VFS_CAP_REVISION_2: cap_net_raw permitted and effective).
const std::string kCapability(
    "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00",
    20);

class Squashfs : public ::testing::Test {
 protected:
  Squashfs() : scratch_(util::TempDir::scratch()) {}

  fs::path dir() const { return scratch_.path(); }

  rootfs::FlatTree build(const std::vector<LayerBuilder>& layers) {
    std::vector<rootfs::LayerBlob> blobs;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      auto w = test::write_layer(dir(), "layer" + std::to_string(i), layers[i].tar(),
                                 i % 2 == 0 ? Compression::kGzip : Compression::kZstd);
      blobs.push_back({w.path, "layer " + std::to_string(i + 1), w.diff_id});
    }
    return rootfs::FlatTree::build(blobs);
  }

  // A two-layer image with every entry type, whiteouts, an opaque directory, hardlinks,
  // xattrs, a file over three blocks, an empty file, an all-zero file and duplicate data.
  rootfs::FlatTree sample() {
    LayerBuilder base;
    base.dir("etc").mtime(1'500'000'000);
    base.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n").mtime(1'500'000'001);
    base.dir("usr");
    base.dir("usr/bin");
    base.file("usr/bin/tool", big_, 0755).xattr("security.capability", kCapability);
    base.file("usr/bin/gone", "whited out");
    base.dir("opt/old");
    base.file("opt/old/a", "hidden by the opaque directory");
    base.file("empty", "");
    base.file("zeros", std::string(3 * kBlock + 17, '\0'));
    base.file("dup1", dup_);
    base.file("dup2", dup_);
    LayerBuilder top;
    top.whiteout("usr/bin/gone");
    top.opaque("opt/old");
    top.file("opt/old/b", "kept");
    top.hardlink("usr/bin/tool-link", "usr/bin/tool");
    top.hardlink("etc/passwd-link", "etc/passwd");
    top.symlink("bin", "usr/bin");
    top.symlink("abs", "/etc/passwd");
    top.dir("dev");
    top.device("dev/null", false, 1, 3);
    top.device("dev/sda", true, 8, 0);
    top.device("dev/big", false, 300, 70000);
    top.fifo("run/fifo", 0600);
    top.dir("home/user", 0700).owner(1000, 1000).xattr("user.note", "hello").mtime(1'700'000'000);
    top.file("home/user/notes", "mine", 0600).owner(1000, 1000).mtime(1'700'000'001);
    top.file("usr/bin/su", "setuid", 04755);
    top.dir("tmp", 01777);
    return build({base, top});
  }

  // The data of every regular file of the tree.
  static std::map<std::string, std::string> contents(const rootfs::FlatTree& tree) {
    std::map<std::string, std::string> data;
    tree.read_files([&](const rootfs::FlatEntry& e, rootfs::LayerReader& r) {
      std::string out;
      std::byte buf[65536];
      while (std::size_t n = r.read(buf)) out.append(reinterpret_cast<const char*>(buf), n);
      data[e.path] = out;
    });
    return data;
  }

  static std::string cat(const fs::path& image, const std::string& path) {
    return sh("unsquashfs -cat " + quote(image.string()) + " " + quote(path)).out;
  }

  static std::string file_sha256(const fs::path& p) {
    return util::sha256_hex(util::read_file(p, 1u << 30));
  }

  static std::string stat_line(const fs::path& image, const std::string& key) {
    std::string out = sh("unsquashfs -s " + quote(image.string())).out;
    std::size_t at = out.find(key);
    if (at == std::string::npos) return "";
    return out.substr(at, out.find('\n', at) - at);
  }

  // What the output directory holds besides the layers.
  std::vector<std::string> outputs() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir() / "out"))
      names.push_back(e.path().filename());
    return names;
  }

  util::TempDir scratch_;
  std::string big_ = random_bytes(3 * kBlock + 1234, 1);
  std::string dup_ = random_bytes(kBlock + 999, 2);
};

TEST(SquashfsCompressionName, ParsesTheThreeNamesAndRefusesOthers) {
  EXPECT_EQ(image::parse_squashfs_compression("zstd"), image::SquashfsCompression::kZstd);
  EXPECT_EQ(image::parse_squashfs_compression("xz"), image::SquashfsCompression::kXz);
  EXPECT_EQ(image::parse_squashfs_compression("gzip"), image::SquashfsCompression::kGzip);
  try {
    image::parse_squashfs_compression("lz4");
    FAIL() << "lz4 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("lz4"), std::string::npos);
  }
}

TEST_F(Squashfs, ListsEveryEntryWithTheTreesTypeModeOwnerMtimeTargetAndDevice) {
  rootfs::FlatTree tree = sample();
  fs::path img = dir() / "rootfs.squashfs";
  image::SquashfsOptions opts;
  opts.jobs = 2;
  image::SquashfsResult r = image::write_squashfs(tree, img, opts);

  test::TreeView expected = test::view_of_tree(tree);
  EXPECT_EQ(test::differences(expected, test::view_of_image(img)), "");
  // The sample really has what the comparison is meant to cover.
  EXPECT_FALSE(expected.entries.contains("usr/bin/gone"));
  EXPECT_FALSE(expected.entries.contains("opt/old/a"));
  EXPECT_EQ(expected.entries.at("dev/big"), "C 1600000000 600 0 0 300 70000");
  EXPECT_EQ(expected.link_groups.size(), 2u);

  EXPECT_EQ(r.bytes, fs::file_size(img));
  EXPECT_EQ(r.bytes % 4096, 0u);
  // Hardlinks share their inode: 2 fewer inodes than entries.
  EXPECT_EQ(r.inodes, tree.entries().size() - 2);
  EXPECT_EQ(stat_line(img, "Number of inodes"), "Number of inodes " + std::to_string(r.inodes));
  EXPECT_EQ(stat_line(img, "Compression"), "Compression zstd");
}

TEST_F(Squashfs, HoldsTheContentOfEveryFile) {
  rootfs::FlatTree tree = sample();
  fs::path img = dir() / "rootfs.squashfs";
  image::SquashfsResult r = image::write_squashfs(tree, img, {});
  std::uint64_t total = 0;
  for (const auto& [path, data] : contents(tree)) {
    EXPECT_EQ(cat(img, path), data) << path;
    total += data.size();
  }
  EXPECT_EQ(r.data_bytes, total);
  EXPECT_EQ(cat(img, "usr/bin/tool-link"), big_);
  EXPECT_EQ(cat(img, "empty"), "");
  EXPECT_EQ(cat(img, "zeros"), std::string(3 * kBlock + 17, '\0'));
}

TEST_F(Squashfs, StoresDuplicateDataOnce) {
  rootfs::FlatTree tree = sample();
  fs::path img = dir() / "rootfs.squashfs";
  image::write_squashfs(tree, img, {});
  // Random data does not compress: without deduplication dup2 would add its whole size.
  std::uint64_t incompressible = big_.size() + dup_.size();
  EXPECT_LT(fs::file_size(img), incompressible + dup_.size() / 2);
  EXPECT_EQ(cat(img, "dup2"), dup_);
}

TEST_F(Squashfs, HardlinksShareOneInodeWithTheRightLinkCount) {
  rootfs::FlatTree tree = sample();
  fs::path img = dir() / "rootfs.squashfs";
  image::write_squashfs(tree, img, {});
  fs::path out = dir() / "extracted";
  ASSERT_EQ(sh("unsquashfs -q -n -no-xattrs -d " + quote(out.string()) + " " + quote(img.string()) +
               " >/dev/null")
                .status,
            0);
  struct stat a {
  }, b{}, c{};
  ASSERT_EQ(::lstat((out / "usr/bin/tool").c_str(), &a), 0);
  ASSERT_EQ(::lstat((out / "usr/bin/tool-link").c_str(), &b), 0);
  ASSERT_EQ(::lstat((out / "usr/bin/su").c_str(), &c), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
  EXPECT_EQ(a.st_nlink, 2u);
  EXPECT_EQ(c.st_nlink, 1u);
  // Directories count "." and each subdirectory's "..".
  struct stat usr {};
  ASSERT_EQ(::lstat((out / "usr").c_str(), &usr), 0);
  EXPECT_EQ(usr.st_nlink, 3u);
}

TEST_F(Squashfs, EncodesDeviceNumbersAsTheKernelDecodesThem) {
  if (::geteuid() != 0) GTEST_SKIP() << "extracting device nodes needs root";
  rootfs::FlatTree tree = sample();
  fs::path img = dir() / "rootfs.squashfs";
  image::write_squashfs(tree, img, {});
  fs::path out = dir() / "extracted";
  ASSERT_EQ(sh("unsquashfs -q -n -no-xattrs -d " + quote(out.string()) + " " + quote(img.string()) +
               " >/dev/null")
                .status,
            0);
  struct stat big {
  }, sda{};
  ASSERT_EQ(::lstat((out / "dev/big").c_str(), &big), 0);
  ASSERT_EQ(::lstat((out / "dev/sda").c_str(), &sda), 0);
  EXPECT_TRUE(S_ISCHR(big.st_mode));
  EXPECT_EQ(major(big.st_rdev), 300u);
  EXPECT_EQ(minor(big.st_rdev), 70000u);
  EXPECT_TRUE(S_ISBLK(sda.st_mode));
  EXPECT_EQ(sda.st_rdev, makedev(8, 0));
}

TEST_F(Squashfs, KeepsXattrsOfFilesAndDirectories) {
  if (::geteuid() != 0) GTEST_SKIP() << "extracting security.capability needs root";
  rootfs::FlatTree tree = sample();
  fs::path img = dir() / "rootfs.squashfs";
  image::write_squashfs(tree, img, {});
  fs::path out = dir() / "extracted";
  ASSERT_EQ(
      sh("unsquashfs -q -n -d " + quote(out.string()) + " " + quote(img.string()) + " >/dev/null")
          .status,
      0);
  auto get = [](const fs::path& p, const char* name) {
    char buf[256];
    ssize_t n = ::lgetxattr(p.c_str(), name, buf, sizeof buf);
    return n < 0 ? std::string("<none>") : std::string(buf, static_cast<std::size_t>(n));
  };
  EXPECT_EQ(get(out / "usr/bin/tool", "security.capability"), kCapability);
  EXPECT_EQ(get(out / "home/user", "user.note"), "hello");
  EXPECT_EQ(get(out / "usr/bin/su", "security.capability"), "<none>");
}

TEST_F(Squashfs, IsBitForBitReproducibleWhateverTheThreads) {
  rootfs::FlatTree tree = sample();
  image::SquashfsOptions opts;
  opts.jobs = 2;
  opts.mkfs_time = 1'700'000'000;
  image::write_squashfs(tree, dir() / "a.squashfs", opts);
  image::write_squashfs(tree, dir() / "b.squashfs", opts);
  opts.jobs = 1;
  image::write_squashfs(tree, dir() / "c.squashfs", opts);
  EXPECT_EQ(file_sha256(dir() / "a.squashfs"), file_sha256(dir() / "b.squashfs"));
  EXPECT_EQ(file_sha256(dir() / "a.squashfs"), file_sha256(dir() / "c.squashfs"));
}

TEST_F(Squashfs, TakesTheSuperblockTimeFromTheOptions) {
  rootfs::FlatTree tree = sample();
  image::SquashfsOptions opts;
  opts.mkfs_time = 1'234'567'890;
  image::write_squashfs(tree, dir() / "t.squashfs", opts);
  EXPECT_EQ(sh("unsquashfs -mkfs-time " + quote((dir() / "t.squashfs").string())).out,
            "1234567890\n");
}

TEST_F(Squashfs, WritesXzAndGzipImagesUnsquashfsReads) {
  rootfs::FlatTree tree = sample();
  for (auto [c, name] : {std::pair{image::SquashfsCompression::kXz, "xz"},
                         std::pair{image::SquashfsCompression::kGzip, "gzip"}}) {
    fs::path img = dir() / (std::string(name) + ".squashfs");
    image::SquashfsOptions opts;
    opts.compression = c;
    opts.level = 1;
    image::write_squashfs(tree, img, opts);
    EXPECT_EQ(stat_line(img, "Compression"), std::string("Compression ") + name);
    EXPECT_EQ(test::differences(test::view_of_tree(tree), test::view_of_image(img)), "") << name;
    EXPECT_EQ(cat(img, "usr/bin/tool"), big_) << name;
  }
}

TEST_F(Squashfs, ReportsProgressUpToTheTotalOfFileData) {
  rootfs::FlatTree tree = sample();
  std::uint64_t last_done = 0, last_total = 0;
  bool monotonic = true;
  image::SquashfsOptions opts;
  opts.progress = [&](std::uint64_t done, std::uint64_t total) {
    monotonic = monotonic && done >= last_done;
    last_done = done;
    last_total = total;
  };
  image::SquashfsResult r = image::write_squashfs(tree, dir() / "p.squashfs", opts);
  EXPECT_TRUE(monotonic);
  EXPECT_EQ(last_done, last_total);
  EXPECT_EQ(last_total, r.data_bytes);
}

TEST_F(Squashfs, LeavesNoFileBehindWhenAnOptionIsRefused) {
  rootfs::FlatTree tree = sample();
  fs::create_directory(dir() / "out");
  image::SquashfsOptions opts;
  opts.level = 99;
  try {
    image::write_squashfs(tree, dir() / "out/rootfs.squashfs", opts);
    FAIL() << "level 99 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("Failed to write squashfs image"), std::string::npos);
  }
  opts = {};
  opts.block_size = 1000;
  EXPECT_THROW(image::write_squashfs(tree, dir() / "out/rootfs.squashfs", opts), Error);
  EXPECT_TRUE(outputs().empty());
}

TEST_F(Squashfs, NamesTheEntryAndLeavesNoFileWhenAnEntryCannotBeWritten) {
  LayerBuilder layer;
  layer.file("usr/bin/tool", big_, 0755);
  layer.device("dev/huge", true, 5000, 1);  // squashfs holds 12-bit majors
  rootfs::FlatTree tree = build({layer});
  fs::create_directory(dir() / "out");
  try {
    image::write_squashfs(tree, dir() / "out/rootfs.squashfs", {});
    FAIL() << "major 5000 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    std::string msg = e.what();
    EXPECT_NE(msg.find("Failed to write squashfs image"), std::string::npos) << msg;
    EXPECT_NE(msg.find("entry dev/huge"), std::string::npos) << msg;
  }
  EXPECT_TRUE(outputs().empty());
}

TEST_F(Squashfs, LeavesNoFileWhenALayerChangedUnderneath) {
  LayerBuilder layer;
  layer.file("a", "first");
  layer.file("usr/bin/tool", big_, 0755);
  rootfs::FlatTree tree = build({layer});
  // The blob now holds the same headers with other sizes: reading the data fails.
  LayerBuilder other;
  other.file("a", "first");
  other.file("usr/bin/tool", "short", 0755);
  test::write_layer(dir(), "layer0.new", other.tar(), Compression::kGzip);
  fs::rename(dir() / "layer0.new", dir() / "layer0");
  fs::create_directory(dir() / "out");
  try {
    image::write_squashfs(tree, dir() / "out/rootfs.squashfs", {});
    FAIL() << "a changed layer accepted";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_TRUE(msg.starts_with("Failed to write squashfs image ")) << msg;
    EXPECT_NE(msg.find("usr/bin/tool"), std::string::npos) << msg;
  }
  EXPECT_TRUE(outputs().empty());
}

}  // namespace
