// The attack suite: one hostile layer per rule of safe unpacking. Every test also checks (in
// the fixture's TearDown) that a canary file and an empty directory next to the root are
// untouched.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "pok8s/rootfs/apply.h"
#include "pok8s/util/error.h"
#include "unit/rootfs/layer_builder.h"

namespace fs = std::filesystem;
using namespace pok8s;
using pok8s::test::Compression;
using pok8s::test::LayerBuilder;

namespace {

class Attack : public test::RootfsTest {
 protected:
  // Applies `layer`, expecting a refusal of `kind` whose message contains `needle`.
  void expect_refused(const LayerBuilder& layer, ErrorKind kind, const std::string& needle,
                      const rootfs::ApplyOptions& options = {}) {
    expect_refused_tar(layer.tar(), kind, needle, options);
  }
  void expect_refused_tar(const std::string& tar, ErrorKind kind, const std::string& needle,
                          const rootfs::ApplyOptions& options = {}) {
    try {
      apply_tar(tar, Compression::kNone, options);
      ADD_FAILURE() << "the layer was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), kind) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_TRUE(std::string(e.what()).starts_with("Failed to ")) << e.what();
    }
  }
  std::string outside() const { return (scratch() / "outside").string(); }
};

bool is_dir_nofollow(const fs::path& p) {
  return fs::is_directory(fs::symlink_status(p));
}

TEST_F(Attack, RefusesDotDotTraversal) {
  expect_refused(LayerBuilder().file("../outside/pwned", "x"), ErrorKind::kInvalidInput, "..");
  expect_refused(LayerBuilder().file("a/../../outside/pwned", "x"), ErrorKind::kInvalidInput,
                 "leaves the root");
  expect_refused(LayerBuilder().dir("a/.."), ErrorKind::kInvalidInput, "a/..");
  expect_refused(LayerBuilder().symlink("../outside/l", "/etc"), ErrorKind::kInvalidInput, "..");
  EXPECT_TRUE(fs::is_empty(scratch() / "outside"));
}

TEST_F(Attack, ScopesAbsolutePathsInsideRoot) {
  apply(LayerBuilder()
            .file(outside() + "/pwned", "x")
            .file("/etc/abs", "a")
            .file("./dot", "d")
            .file("//double//slash", "s"));
  EXPECT_EQ(read(fs::path(outside()).relative_path() / "pwned"), "x");
  EXPECT_EQ(read("etc/abs"), "a");
  EXPECT_EQ(read("dot"), "d");
  EXPECT_EQ(read("double/slash"), "s");
}

TEST_F(Attack, SymlinkEscapeInSameLayerStaysInside) {
  apply(LayerBuilder()
            .symlink("evil", "/")
            .file("evil" + outside() + "/pwned", "x")
            .symlink("up", "../../../..")
            .file("up/outside/pwned2", "y")
            .symlink("etc", outside())
            .file("etc/passwd", "root::0:0::/:/bin/sh"));
  EXPECT_EQ(read(fs::path(outside()).relative_path() / "pwned"), "x");
  EXPECT_EQ(read("outside/pwned2"), "y");
  // The absolute symlink is kept verbatim and what went through it stays inside.
  EXPECT_EQ(fs::read_symlink(root() / "etc"), outside());
  EXPECT_EQ(read(fs::path(outside()).relative_path() / "passwd"), "root::0:0::/:/bin/sh");
}

TEST_F(Attack, SymlinkEscapeThroughEarlierLayer) {
  apply(LayerBuilder().symlink("up", "..").symlink("host", scratch().string()));
  apply(LayerBuilder().file("up/outside/pwned", "x").file("host/canary", "overwritten"));
  EXPECT_EQ(read("outside/pwned"), "x");
  EXPECT_EQ(read(scratch().relative_path() / "canary"), "overwritten");
}

TEST_F(Attack, HardlinkToHostFileRefused) {
  struct stat before {};
  ASSERT_EQ(::stat("/etc/passwd", &before), 0);
  expect_refused(LayerBuilder().hardlink("pw", "/etc/passwd"), ErrorKind::kInvalidInput,
                 "does not exist inside the root");
  expect_refused(LayerBuilder().hardlink("pw", "../../x"), ErrorKind::kInvalidInput, "..");
  expect_refused(LayerBuilder().hardlink("c", canary().string()), ErrorKind::kInvalidInput,
                 "does not exist inside the root");
  struct stat after {};
  ASSERT_EQ(::stat("/etc/passwd", &after), 0);
  EXPECT_EQ(before.st_nlink, after.st_nlink);
  EXPECT_FALSE(fs::exists(root() / "pw"));
}

TEST_F(Attack, HardlinkThroughSymlinkedDirStaysInside) {
  apply(LayerBuilder()
            .file("etc/passwd", "inside")
            .symlink("d", "/etc")
            .symlink("up", "..")
            .hardlink("x", "d/passwd"));
  struct stat inside {
  }, linked{}, host{};
  ASSERT_EQ(::lstat((root() / "etc/passwd").c_str(), &inside), 0);
  ASSERT_EQ(::lstat((root() / "x").c_str(), &linked), 0);
  ASSERT_EQ(::stat("/etc/passwd", &host), 0);
  EXPECT_EQ(inside.st_ino, linked.st_ino);
  EXPECT_NE(host.st_ino, linked.st_ino);
  expect_refused(LayerBuilder().hardlink("y", "up/canary"), ErrorKind::kInvalidInput,
                 "does not exist inside the root");
}

TEST_F(Attack, HardlinkToDirectoryRefused) {
  apply(LayerBuilder().dir("etc"));
  expect_refused(LayerBuilder().hardlink("e", "etc"), ErrorKind::kInvalidInput, "is a directory");
  expect_refused(LayerBuilder().hardlink("r", "/"), ErrorKind::kInvalidInput, "root");
}

TEST_F(Attack, HardlinkToSymlinkLinksTheLinkNotItsTarget) {
  apply(LayerBuilder().symlink("s", canary().string()).hardlink("h", "s"));
  EXPECT_TRUE(fs::is_symlink(root() / "h"));
  EXPECT_EQ(fs::read_symlink(root() / "h"), canary());
}

TEST_F(Attack, WhiteoutEscapeRefused) {
  apply(LayerBuilder().file("a/keep", "k"));
  expect_refused(LayerBuilder().file(".wh..", ""), ErrorKind::kInvalidInput, "leave its directory");
  expect_refused(LayerBuilder().file("a/.wh..", ""), ErrorKind::kInvalidInput, "leave");
  expect_refused(LayerBuilder().file("a/.wh...", ""), ErrorKind::kInvalidInput, "leave");
  expect_refused(LayerBuilder().file("a/.wh.", ""), ErrorKind::kInvalidInput, "leave");
  expect_refused(LayerBuilder().file(".wh.a/keep", ""), ErrorKind::kInvalidInput, "whiteout");
  expect_refused(LayerBuilder().file("../.wh.canary", ""), ErrorKind::kInvalidInput, "..");
  EXPECT_EQ(read("a/keep"), "k");
}

TEST_F(Attack, WhiteoutThroughSymlinkStaysInside) {
  apply(LayerBuilder().symlink("up", "..").symlink("host", scratch().string()));
  apply(LayerBuilder().whiteout("up/canary").whiteout("host/canary").whiteout("up/outside"));
  EXPECT_TRUE(fs::is_symlink(root() / "up"));
}

TEST_F(Attack, WhiteoutOverSymlinkRemovesOnlyTheLink) {
  apply(LayerBuilder().symlink("s", scratch().string()).symlink("c", canary().string()));
  apply(LayerBuilder().whiteout("s").whiteout("c"));
  EXPECT_FALSE(fs::exists(fs::symlink_status(root() / "s")));
  EXPECT_FALSE(fs::exists(fs::symlink_status(root() / "c")));
}

TEST_F(Attack, OpaqueWhiteoutEscape) {
  apply(LayerBuilder().file("lower", "l").symlink("up", "..").symlink("host", scratch().string()));
  // Through "..", the opaque marker lands on the root itself and only hides lower entries.
  apply(LayerBuilder().opaque("up").file("mine", "m"));
  EXPECT_FALSE(fs::exists(root() / "lower"));
  EXPECT_EQ(read("mine"), "m");
  // The host path does not exist inside the root; following it anyway would empty scratch.
  apply(LayerBuilder().symlink("host", scratch().string()));
  try {
    apply(LayerBuilder().opaque("host"));
  } catch (const Error&) {
    // Refusing is as good as scoping; the canary check in TearDown is what matters.
  }
  EXPECT_TRUE(fs::exists(canary()));
}

TEST_F(Attack, SymlinkLoopDoesNotHang) {
  expect_refused(LayerBuilder().symlink("a", "b").symlink("b", "a").file("a/x", "x"),
                 ErrorKind::kInvalidInput, "symbolic links");
  expect_refused(LayerBuilder().symlink("self", "self/self").file("self/x", "x"),
                 ErrorKind::kInvalidInput, "self/x");
  expect_refused(LayerBuilder().symlink("l", "l").hardlink("h", "l/x"), ErrorKind::kInvalidInput,
                 "symbolic links");
}

TEST_F(Attack, SymlinkReplacingRootRefused) {
  expect_refused(LayerBuilder().symlink(".", "/"), ErrorKind::kInvalidInput, "root");
  expect_refused(LayerBuilder().symlink("./", outside()), ErrorKind::kInvalidInput, "root");
  expect_refused(LayerBuilder().file(".", "x"), ErrorKind::kInvalidInput, "root");
  expect_refused(LayerBuilder().fifo("."), ErrorKind::kInvalidInput, "root");
  EXPECT_TRUE(is_dir_nofollow(root()));
  // A directory entry for the root is fine: it carries the root's metadata.
  apply(LayerBuilder().dir("./", 0750));
  EXPECT_TRUE(is_dir_nofollow(root()));
  EXPECT_EQ(fs::status(root()).permissions(), fs::perms(0750));
}

TEST_F(Attack, FileOverSymlinkReplacesLink) {
  apply(LayerBuilder().symlink("abs", canary().string()).symlink("rel", "../canary"));
  apply(LayerBuilder().file("abs", "x").file("rel", "y"));
  EXPECT_FALSE(fs::is_symlink(root() / "abs"));
  EXPECT_EQ(read("abs"), "x");
  EXPECT_EQ(read("rel"), "y");
}

TEST_F(Attack, FileOverSymlinkInSameLayerReplacesLink) {
  apply(LayerBuilder().symlink("abs", canary().string()).file("abs", "x"));
  EXPECT_EQ(read("abs"), "x");
}

TEST_F(Attack, DirOverSymlink) {
  apply(LayerBuilder().symlink("d", outside()).symlink("e", "../outside"));
  apply(LayerBuilder().dir("d").file("d/pwned", "x").dir("e", 0700).file("e/pwned", "y"));
  EXPECT_TRUE(is_dir_nofollow(root() / "d"));
  EXPECT_TRUE(is_dir_nofollow(root() / "e"));
  EXPECT_EQ(read("d/pwned"), "x");
  EXPECT_EQ(read("e/pwned"), "y");
}

TEST_F(Attack, ReplacingADirectoryNeverFollowsSymlinksInside) {
  apply(LayerBuilder()
            .dir("d")
            .symlink("d/host", scratch().string())
            .symlink("d/canary", canary().string()));
  apply(LayerBuilder().file("d", "now a file"));
  EXPECT_EQ(read("d"), "now a file");
}

TEST_F(Attack, LyingHeaderRefused) {
  std::string tar = LayerBuilder().file("small", "hello").file("next", "n").tar();
  // Claims far more data than the whole archive holds: never a big allocation or a hang.
  expect_refused_tar(test::patch_size(tar, "small", 1ull << 33), ErrorKind::kFormat, "");
  // Claims a little more than follows: the next header is swallowed as data, then the end
  // comes too soon.
  expect_refused_tar(test::patch_size(tar, "small", 5000), ErrorKind::kFormat, "");
  // A header cut off in the middle of its data.
  std::string big = LayerBuilder().file("big", std::string(100000, 'b')).tar();
  big.resize(30000);
  expect_refused_tar(big, ErrorKind::kFormat, "big");
  EXPECT_FALSE(fs::exists(root() / "next"));
}

TEST_F(Attack, GarbageIsNotATar) {
  expect_refused_tar(std::string(4096, 'x'), ErrorKind::kFormat, "layer");
  expect_refused_tar("", ErrorKind::kFormat, "layer");
}

TEST_F(Attack, DoubleCompressionIsNotUnwrapped) {
  std::string inner = test::compress(LayerBuilder().file("a", "x").tar(), Compression::kGzip);
  try {
    apply_tar(inner, Compression::kGzip);
    ADD_FAILURE() << "a gzip inside a gzip was unpacked";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat) << e.what();
  }
  EXPECT_FALSE(fs::exists(root() / "a"));
}

TEST_F(Attack, EntryCountLimit) {
  rootfs::ApplyOptions options;
  options.limits.max_entries = 3;
  LayerBuilder layer;
  for (int i = 0; i < 5; ++i) layer.file("f" + std::to_string(i), "x");
  expect_refused(layer, ErrorKind::kInvalidInput, "limit of 3 entries", options);
}

TEST_F(Attack, ExpandedBytesLimit) {
  rootfs::ApplyOptions options;
  options.limits.max_layer_bytes = 64 << 10;
  // One header declaring too much, refused before any data is written.
  expect_refused(LayerBuilder().file("big", std::string(100 << 10, 'b')), ErrorKind::kInvalidInput,
                 "limit", options);
  EXPECT_FALSE(fs::exists(root() / "big"));
  // Many small entries adding up; and a compression bomb (zeros compress ~1000:1).
  LayerBuilder many;
  for (int i = 0; i < 40; ++i) many.file("f" + std::to_string(i), std::string(4096, 'm'));
  expect_refused(many, ErrorKind::kInvalidInput, "expands to more than", options);
  std::string bomb = LayerBuilder().file("zeros", std::string(8 << 20, '\0')).tar();
  try {
    apply_tar(bomb, Compression::kZstd, options);
    ADD_FAILURE() << "the bomb was unpacked";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput) << e.what();
  }
}

TEST_F(Attack, PathLengthLimit) {
  rootfs::ApplyOptions options;
  options.limits.max_path = 100;
  expect_refused(LayerBuilder().file(std::string(150, 'p'), "x"), ErrorKind::kInvalidInput,
                 "exceeds the limit of 100", options);
  expect_refused(LayerBuilder().symlink("s", std::string(150, 't')), ErrorKind::kInvalidInput,
                 "symlink target", options);
  expect_refused(LayerBuilder().hardlink("h", std::string(150, 't')), ErrorKind::kInvalidInput,
                 "hardlink target", options);
}

TEST_F(Attack, XattrBytesLimit) {
  rootfs::ApplyOptions options;
  options.limits.max_xattr_bytes = 1000;
  expect_refused(LayerBuilder().file("f", "x").xattr("user.big", std::string(2000, 'v')),
                 ErrorKind::kInvalidInput, "xattrs exceed", options);
}

TEST_F(Attack, DevicesSkippedWithoutFlag) {
  auto stats = apply(LayerBuilder().device("dev/mem", false, 1, 1).device("dev/sda", true, 8, 0));
  EXPECT_EQ(stats.devices_skipped, 2u);
  EXPECT_FALSE(fs::exists(fs::symlink_status(root() / "dev/mem")));
  rootfs::ApplyOptions options;
  options.devices = true;
  stats = apply(LayerBuilder().device("dev/null", false, 1, 3), Compression::kNone, options);
  if (test::is_root()) {
    EXPECT_EQ(stats.devices_skipped, 0u);
    struct stat st {};
    ASSERT_EQ(::lstat((root() / "dev/null").c_str(), &st), 0);
    EXPECT_TRUE(S_ISCHR(st.st_mode));
  } else {
    EXPECT_EQ(stats.devices_skipped, 1u);
  }
}

TEST_F(Attack, XattrsFiltered) {
  // A valid VFS_CAP_REVISION_2 value granting cap_net_raw (bit 13), effective.
  std::string cap(20, '\0');
  const std::uint32_t words[5] = {0x02000001u, 1u << 13, 0, 0, 0};
  std::memcpy(cap.data(), words, sizeof words);
  auto stats = apply(LayerBuilder()
                         .file("usr/bin/ping", "elf", 0755)
                         .owner(0, 0)
                         .xattr("security.capability", cap)
                         .xattr("user.comment", "kept")
                         .xattr("security.selinux", "system_u:object_r:bin_t:s0")
                         .xattr("trusted.overlay.opaque", "y")
                         .xattr("user.pok8s.owner", "0:0"));
  EXPECT_GE(stats.xattrs_dropped, 3u);
  fs::path ping = root() / "usr/bin/ping";
  char buf[64];
  EXPECT_LT(::lgetxattr(ping.c_str(), "security.selinux", buf, sizeof buf), 0);
  EXPECT_LT(::lgetxattr(ping.c_str(), "trusted.overlay.opaque", buf, sizeof buf), 0);
  if (test::is_root()) {
    ssize_t n = ::lgetxattr(ping.c_str(), "security.capability", buf, sizeof buf);
    ASSERT_EQ(n, 20) << std::strerror(errno);
    EXPECT_EQ(std::string(buf, 20), cap);
    n = ::lgetxattr(ping.c_str(), "user.comment", buf, sizeof buf);
    if (n >= 0) {
      EXPECT_EQ(std::string(buf, static_cast<std::size_t>(n)), "kept");
    }
    EXPECT_LT(::lgetxattr(ping.c_str(), "user.pok8s.owner", buf, sizeof buf), 0);
  }
}

}  // namespace
