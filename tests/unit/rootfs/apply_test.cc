// Normal layer application: files, metadata, links, whiteouts across layers, compression,
// diffID verification, and unpack_image's all-or-nothing rename.
#include "pok8s/rootfs/apply.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <filesystem>

#include "pok8s/oci/blob_store.h"
#include "pok8s/util/error.h"
#include "unit/rootfs/layer_builder.h"

namespace fs = std::filesystem;
using namespace pok8s;
using pok8s::test::Compression;
using pok8s::test::LayerBuilder;

namespace {

struct stat lstat_of(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
  return st;
}

class Apply : public test::RootfsTest {};

TEST_F(Apply, WritesFilesDirectoriesAndModes) {
  auto stats = apply(LayerBuilder()
                         .dir("etc", 0755)
                         .file("etc/hostname", "pok8s\n", 0644)
                         .file("usr/bin/passwd", "#!/bin/true\n", 04755)
                         .file("usr/bin/wall", "x", 02755)
                         .dir("tmp", 01777)
                         .fifo("run/initctl", 0600));
  EXPECT_EQ(read("etc/hostname"), "pok8s\n");
  EXPECT_EQ(lstat_of(root() / "usr/bin/passwd").st_mode & 07777, 04755u);
  EXPECT_EQ(lstat_of(root() / "usr/bin/wall").st_mode & 07777, 02755u);
  EXPECT_EQ(lstat_of(root() / "tmp").st_mode & 07777, 01777u);
  EXPECT_TRUE(S_ISDIR(lstat_of(root() / "usr/bin").st_mode));
  EXPECT_TRUE(S_ISFIFO(lstat_of(root() / "run/initctl").st_mode));
  EXPECT_EQ(stats.files, 3u);
  EXPECT_EQ(stats.directories, 2u);
  EXPECT_EQ(stats.bytes, 6u + 12u + 1u);
}

TEST_F(Apply, KeepsOwnershipAsRootAndRecordsItOtherwise) {
  apply(LayerBuilder()
            .dir("home/user", 0700)
            .owner(1000, 1000)
            .file("home/user/.profile", "x", 0600)
            .owner(1000, 1001)
            .file("usr/bin/sudo", "x", 04755)
            .owner(0, 0)
            .symlink("home/user/link", "/etc")
            .owner(1000, 1001));
  auto profile = lstat_of(root() / "home/user/.profile");
  if (test::is_root()) {
    EXPECT_EQ(profile.st_uid, 1000u);
    EXPECT_EQ(profile.st_gid, 1001u);
    EXPECT_EQ(lstat_of(root() / "home/user/link").st_uid, 1000u);
    EXPECT_EQ(lstat_of(root() / "home/user").st_gid, 1000u);
    // chown would have cleared setuid had the mode been set first.
    EXPECT_EQ(lstat_of(root() / "usr/bin/sudo").st_mode & 07777, 04755u);
  } else {
    char buf[64] = {};
    ssize_t n =
        ::getxattr((root() / "home/user/.profile").c_str(), "user.pok8s.owner", buf, sizeof buf);
    if (n >= 0) {
      EXPECT_EQ(std::string(buf, static_cast<std::size_t>(n)), "1000:1001");
    }
    EXPECT_EQ(profile.st_uid, ::geteuid());
  }
  EXPECT_EQ(profile.st_mode & 07777, 0600u);
}

TEST_F(Apply, KeepsMtimesOfFilesSymlinksAndDirectories) {
  apply(LayerBuilder()
            .dir("var", 0755)
            .mtime(1'000'000'000)
            .file("var/log", "x")
            .mtime(1'100'000'000)
            .symlink("var/run", "/run")
            .mtime(1'200'000'000));
  EXPECT_EQ(lstat_of(root() / "var").st_mtime, 1'000'000'000);
  EXPECT_EQ(lstat_of(root() / "var/log").st_mtime, 1'100'000'000);
  EXPECT_EQ(lstat_of(root() / "var/run").st_mtime, 1'200'000'000);
}

TEST_F(Apply, KeepsSymlinksVerbatimIncludingAbsoluteOnes) {
  apply(LayerBuilder()
            .dir("usr/lib64")
            .symlink("lib64", "/usr/lib64")
            .symlink("bin", "usr/bin")
            .symlink("dangling", "../../../nowhere"));
  EXPECT_EQ(fs::read_symlink(root() / "lib64"), "/usr/lib64");
  EXPECT_EQ(fs::read_symlink(root() / "bin"), "usr/bin");
  EXPECT_EQ(fs::read_symlink(root() / "dangling"), "../../../nowhere");
}

TEST_F(Apply, ResolvesSymlinkedParentsInsideTheRoot) {
  apply(LayerBuilder().dir("usr/lib64").symlink("lib64", "/usr/lib64"));
  apply(LayerBuilder().file("lib64/ld-linux.so", "ld"));
  EXPECT_EQ(read("usr/lib64/ld-linux.so"), "ld");
  EXPECT_TRUE(fs::is_symlink(root() / "lib64"));
}

TEST_F(Apply, CreatesHardlinksToEarlierEntries) {
  apply(LayerBuilder().file("usr/bin/gzip", "gz", 0755));
  auto stats = apply(LayerBuilder()
                         .hardlink("usr/bin/gunzip", "usr/bin/gzip")
                         .hardlink("/usr/bin/zcat", "/usr/bin/gzip"));
  EXPECT_EQ(stats.hardlinks, 2u);
  auto a = lstat_of(root() / "usr/bin/gzip");
  EXPECT_EQ(a.st_ino, lstat_of(root() / "usr/bin/gunzip").st_ino);
  EXPECT_EQ(a.st_ino, lstat_of(root() / "usr/bin/zcat").st_ino);
  EXPECT_EQ(a.st_nlink, 3u);
}

TEST_F(Apply, ReplacingAHardlinkedFileLeavesTheOtherNameAlone) {
  apply(LayerBuilder().file("a", "old").hardlink("b", "a"));
  apply(LayerBuilder().file("a", "new"));
  EXPECT_EQ(read("a"), "new");
  EXPECT_EQ(read("b"), "old");
}

TEST_F(Apply, WhiteoutRemovesLowerEntries) {
  apply(LayerBuilder().file("etc/motd", "hi").file("var/cache/apt/a", "1").file("keep", "k"));
  auto stats = apply(LayerBuilder().whiteout("etc/motd").whiteout("var/cache").whiteout("absent"));
  EXPECT_FALSE(fs::exists(root() / "etc/motd"));
  EXPECT_FALSE(fs::exists(root() / "var/cache"));
  EXPECT_TRUE(fs::exists(root() / "var"));
  EXPECT_EQ(read("keep"), "k");
  EXPECT_FALSE(fs::exists(root() / "etc/.wh.motd"));
  EXPECT_EQ(stats.whiteouts, 3u);
}

TEST_F(Apply, WhiteoutKeepsEntriesOfItsOwnLayerInAnyOrder) {
  apply(LayerBuilder().file("a", "lower").file("b", "lower").file("d/old", "lower"));
  apply(LayerBuilder()
            .file("a", "upper")
            .whiteout("a")  // after the same-layer entry
            .whiteout("b")  // before it
            .file("b", "upper")
            .file("d/new", "upper")
            .whiteout("d"));
  EXPECT_EQ(read("a"), "upper");
  EXPECT_EQ(read("b"), "upper");
  EXPECT_EQ(read("d/new"), "upper");
  EXPECT_FALSE(fs::exists(root() / "d/old"));
}

TEST_F(Apply, OpaqueDirectoryHidesLowerChildrenAndKeepsItsOwn) {
  apply(LayerBuilder()
            .file("etc/apt/a", "1")
            .file("etc/apt/sub/b", "2")
            .file("etc/apt/sub/c", "3")
            .file("etc/other", "o"));
  apply(LayerBuilder().file("etc/apt/sub/mine", "m").opaque("etc/apt").file("etc/apt/later", "l"));
  EXPECT_FALSE(fs::exists(root() / "etc/apt/a"));
  EXPECT_FALSE(fs::exists(root() / "etc/apt/sub/b"));
  EXPECT_FALSE(fs::exists(root() / "etc/apt/sub/c"));
  EXPECT_EQ(read("etc/apt/sub/mine"), "m");
  EXPECT_EQ(read("etc/apt/later"), "l");
  EXPECT_EQ(read("etc/other"), "o");
  EXPECT_FALSE(fs::exists(root() / "etc/apt/.wh..wh..opq"));
}

TEST_F(Apply, FileReplacesDirectoryAndDirectoryReplacesFile) {
  apply(LayerBuilder().file("x/deep/file", "1").file("y", "2"));
  apply(LayerBuilder().file("x", "now a file").dir("y"));
  EXPECT_EQ(read("x"), "now a file");
  EXPECT_TRUE(fs::is_directory(root() / "y"));
}

class ApplyCompression : public test::RootfsTest,
                         public ::testing::WithParamInterface<Compression> {};

TEST_P(ApplyCompression, ReadsTheLayerAndVerifiesItsDiffId) {
  std::string tar = LayerBuilder().file("hello", std::string(100000, 'h')).tar();
  apply_tar(tar, GetParam(), {}, oci::Digest::sha256_of(tar));
  EXPECT_EQ(read("hello"), std::string(100000, 'h'));
}

TEST_P(ApplyCompression, RefusesADiffIdMismatch) {
  std::string tar = LayerBuilder().file("hello", "x").tar();
  try {
    apply_tar(tar, GetParam(), {}, oci::Digest::sha256_of("something else"));
    FAIL() << "a wrong diffID was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kSignature);
    EXPECT_NE(std::string(e.what()).find("layer 1"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(AllCompressions, ApplyCompression,
                         ::testing::Values(Compression::kNone, Compression::kGzip,
                                           Compression::kZstd));

TEST_F(Apply, RefusesTruncatedGzip) {
  std::string blob =
      test::compress(LayerBuilder().file("a", std::string(50000, 'a')).tar(), Compression::kGzip);
  blob.resize(blob.size() / 2);
  fs::path p = scratch() / "cut.gz";
  util::write_file_atomic(p, blob);
  EXPECT_THROW(rootfs::apply_layer(root_fd(), p, "cut", std::nullopt, {}), Error);
}

TEST_F(Apply, AcceptsAnEmptyTar) {
  std::string tar(1024, '\0');
  auto stats = apply_tar(tar, Compression::kNone, {}, oci::Digest::sha256_of(tar));
  EXPECT_EQ(stats.entries, 0u);
}

// An image of `layers` in a blob store under scratch().
struct TestImage {
  oci::ResolvedImage image;
  std::unique_ptr<oci::BlobStore> store;
};

TestImage make_image(const fs::path& dir, const std::vector<std::string>& tars) {
  TestImage t;
  t.store = std::make_unique<oci::BlobStore>(dir / "store");
  t.image.source_name = "oci:test";
  for (const auto& tar : tars) {
    std::string blob = test::compress(tar, Compression::kGzip);
    oci::Descriptor d;
    d.media_type = "application/vnd.oci.image.layer.v1.tar+gzip";
    d.digest = oci::Digest::sha256_of(blob);
    d.size = static_cast<std::int64_t>(blob.size());
    t.store->put(d.digest, blob, "test layer");
    t.image.manifest.layers.push_back(d);
    t.image.config.diff_ids.push_back(oci::Digest::sha256_of(tar));
  }
  return t;
}

TEST_F(Apply, UnpackImageAppliesEveryLayerAndRenamesIntoPlace) {
  auto t =
      make_image(scratch(), {LayerBuilder().dir("etc", 0700).mtime(1234).file("etc/a", "1").tar(),
                             LayerBuilder().file("etc/b", "2").whiteout("etc/a").tar()});
  fs::path dest = scratch() / "tree";
  rootfs::unpack_image(t.image, *t.store, dest, {});
  EXPECT_FALSE(fs::exists(dest / "etc/a"));
  EXPECT_EQ(util::read_file(dest / "etc/b"), "2");
  // The directory's mode and mtime survive a later layer writing into it.
  EXPECT_EQ(lstat_of(dest / "etc").st_mtime, 1234);
  EXPECT_EQ(lstat_of(dest / "etc").st_mode & 07777, 0700u);
  for (const auto& e : fs::directory_iterator(scratch()))
    EXPECT_FALSE(e.path().filename().string().starts_with(".tree")) << "leftover " << e.path();
}

TEST_F(Apply, UnpackImageReplacesAnEmptyDirectory) {
  auto t = make_image(scratch(), {LayerBuilder().file("a", "1").tar()});
  fs::path dest = scratch() / "tree";
  fs::create_directory(dest);
  rootfs::unpack_image(t.image, *t.store, dest, {});
  EXPECT_EQ(util::read_file(dest / "a"), "1");
}

TEST_F(Apply, UnpackImageRefusesANonEmptyDestination) {
  auto t = make_image(scratch(), {LayerBuilder().file("a", "1").tar()});
  fs::path dest = scratch() / "tree";
  fs::create_directory(dest);
  util::write_file_atomic(dest / "precious", "p");
  EXPECT_THROW(rootfs::unpack_image(t.image, *t.store, dest, {}), Error);
  EXPECT_EQ(util::read_file(dest / "precious"), "p");
}

TEST_F(Apply, UnpackImageLeavesNothingOnFailure) {
  auto t = make_image(scratch(),
                      {LayerBuilder().file("a", "1").tar(), LayerBuilder().file("b", "2").tar()});
  t.image.config.diff_ids[1] = oci::Digest::sha256_of("not this layer");
  fs::path dest = scratch() / "tree";
  EXPECT_THROW(rootfs::unpack_image(t.image, *t.store, dest, {}), Error);
  EXPECT_FALSE(fs::exists(dest));
  for (const auto& e : fs::directory_iterator(scratch()))
    EXPECT_FALSE(e.path().filename().string().starts_with(".tree")) << "leftover " << e.path();
}

TEST_F(Apply, UnpackImageNamesAMissingBlob) {
  auto t = make_image(scratch(), {LayerBuilder().file("a", "1").tar()});
  t.image.manifest.layers[0].digest = oci::Digest::sha256_of("missing");
  try {
    rootfs::unpack_image(t.image, *t.store, scratch() / "tree", {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("layer 1/1"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(scratch() / "tree"));
}

}  // namespace
