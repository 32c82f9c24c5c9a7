// A root filesystem becomes one deterministic gzip layer whose entries keep what a rootfs needs.
#include "pok8s/rootfs/import.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
namespace fs = std::filesystem;

namespace {

void write_file(const fs::path& p, const std::string& data, mode_t mode = 0644) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << data;
  ::chmod(p.c_str(), mode);
}

// A small rootfs with the things that are easy to lose: setuid bits, hardlinks, symlinks,
// a fifo, an empty directory, a socket (to be skipped) and a user xattr where supported.
bool make_tree(const fs::path& root) {
  write_file(root / "etc/os-release", "ID=pok8s\n");
  write_file(root / "bin/su", "#!/bin/true\n", 04755);
  fs::create_hard_link(root / "bin/su", root / "bin/su-again");
  fs::create_symlink("su", root / "bin/sh");
  fs::create_directories(root / "var/empty");
  ::chmod((root / "var/empty").c_str(), 01777);
  ::mkfifo((root / "var/fifo").c_str(), 0600);
  int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string sock = (root / "var/sock").string();
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock.c_str());
  ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::close(s);
  return ::setxattr((root / "etc/os-release").c_str(), "user.pok8s", "yes", 3, 0) == 0;
}

struct LayerEntry {
  int type = 0;
  unsigned mode = 0;
  std::string hardlink, symlink, data;
  std::map<std::string, std::string> xattrs;
  std::int64_t mtime = 0;
};

std::map<std::string, LayerEntry> read_layer(const fs::path& blob) {
  std::map<std::string, LayerEntry> out;
  archive* a = archive_read_new();
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  EXPECT_EQ(archive_read_open_filename(a, blob.c_str(), 1 << 16), ARCHIVE_OK);
  archive_entry* e = nullptr;
  while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
    LayerEntry le;
    le.type = archive_entry_filetype(e);
    le.mode = archive_entry_perm(e);
    le.mtime = archive_entry_mtime(e);
    if (auto h = archive_entry_hardlink(e)) le.hardlink = h;
    if (auto s = archive_entry_symlink(e)) le.symlink = s;
    archive_entry_xattr_reset(e);
    const char* n;
    const void* v;
    size_t sz;
    while (archive_entry_xattr_next(e, &n, &v, &sz) == ARCHIVE_OK)
      le.xattrs[n] = std::string(static_cast<const char*>(v), sz);
    char buf[4096];
    la_ssize_t got;
    while ((got = archive_read_data(a, buf, sizeof buf)) > 0)
      le.data.append(buf, static_cast<size_t>(got));
    std::string name = archive_entry_pathname(e);
    if (name.ends_with('/')) name.pop_back();
    out[name] = le;
  }
  archive_read_free(a);
  return out;
}

std::string gunzip(const fs::path& blob) {
  archive* a = archive_read_new();
  archive_read_support_filter_all(a);
  archive_read_support_format_raw(a);
  archive_read_open_filename(a, blob.c_str(), 1 << 16);
  archive_entry* e;
  archive_read_next_header(a, &e);
  std::string out;
  char buf[4096];
  la_ssize_t got;
  while ((got = archive_read_data(a, buf, sizeof buf)) > 0)
    out.append(buf, static_cast<size_t>(got));
  archive_read_free(a);
  return out;
}

struct Tree : ::testing::Test {
  util::TempDir dir = util::TempDir::scratch();
  fs::path root = dir.path() / "root";
  bool xattrs = false;
  void SetUp() override { xattrs = make_tree(root); }
  oci::BlobStore store(const std::string& name) { return oci::BlobStore(dir.path() / name); }
};

}  // namespace

TEST_F(Tree, ImportingTheSameTreeTwiceWithSourceDateEpochGivesTheSameDigest) {
  rootfs::ImportOptions opts;
  opts.platform = oci::Platform::parse("linux/amd64");
  opts.source_date_epoch = 1000;
  auto s1 = store("s1");
  auto first = rootfs::import_rootfs("dir:" + root.string(), s1, opts);
  // A later touch changes nothing: every mtime is clamped to the epoch.
  write_file(root / "etc/os-release", "ID=pok8s\n");
  auto s2 = store("s2");
  auto second = rootfs::import_rootfs("dir:" + root.string(), s2, opts);
  EXPECT_EQ(first.manifest_digest(), second.manifest_digest());
  EXPECT_EQ(first.config.created, "1970-01-01T00:16:40Z");
  EXPECT_EQ(first.source_name, "dir:" + root.string());

  write_file(root / "etc/os-release", "ID=changed\n");
  auto third = rootfs::import_rootfs("dir:" + root.string(), s2, opts);
  EXPECT_NE(first.manifest_digest(), third.manifest_digest());
}

TEST_F(Tree, LayerKeepsHardlinksSetuidSymlinksFifosAndXattrs) {
  rootfs::ImportOptions opts;
  opts.source_date_epoch = 1000;
  opts.labels["org.example"] = "yes";
  auto s = store("s");
  auto img = rootfs::import_rootfs("dir:" + root.string(), s, opts);
  ASSERT_EQ(img.manifest.layers.size(), 1u);
  EXPECT_EQ(img.manifest.layers[0].media_type, oci::media_type::kOciLayerGzip);
  EXPECT_EQ(img.config.labels.at("org.example"), "yes");
  auto entries = read_layer(s.path_for(img.manifest.layers[0].digest));

  ASSERT_TRUE(entries.count("bin/su"));
  EXPECT_EQ(entries["bin/su"].mode, 04755u);
  EXPECT_EQ(entries["bin/su"].data, "#!/bin/true\n");
  ASSERT_TRUE(entries.count("bin/su-again"));
  EXPECT_EQ(entries["bin/su-again"].hardlink, "bin/su");
  EXPECT_EQ(entries["bin/sh"].type, AE_IFLNK);
  EXPECT_EQ(entries["bin/sh"].symlink, "su");
  EXPECT_EQ(entries["var/empty"].type, AE_IFDIR);
  EXPECT_EQ(entries["var/empty"].mode, 01777u);
  EXPECT_EQ(entries["var/fifo"].type, AE_IFIFO);
  EXPECT_FALSE(entries.count("var/sock"));
  for (const auto& [name, e] : entries) EXPECT_LE(e.mtime, 1000) << name;
  if (xattrs) {
    EXPECT_EQ(entries["etc/os-release"].xattrs["user.pok8s"], "yes");
  }
  // Hardlink order is deterministic: the first in sorted order carries the data.
  EXPECT_LT(std::string("bin/su"), std::string("bin/su-again"));
}

TEST_F(Tree, DigestAndDiffIdDescribeTheStoredBlob) {
  auto s = store("s");
  auto img = rootfs::import_rootfs("dir:" + root.string(), s, {});
  fs::path blob = s.path_for(img.manifest.layers[0].digest);
  std::string gz = util::read_file(blob);
  EXPECT_EQ(oci::Digest::sha256_of(gz), img.manifest.layers[0].digest);
  EXPECT_EQ(static_cast<std::int64_t>(gz.size()), img.manifest.layers[0].size);
  ASSERT_EQ(img.config.diff_ids.size(), 1u);
  EXPECT_EQ(oci::Digest::sha256_of(gunzip(blob)), img.config.diff_ids[0]);
  EXPECT_EQ(s.verified_diff_id(img.manifest.layers[0].digest), img.config.diff_ids[0]);
  // A gzip header without a timestamp: bytes 4..7 are zero.
  ASSERT_GT(gz.size(), 10u);
  EXPECT_EQ(gz.substr(4, 4), std::string(4, '\0'));
}

namespace {
void make_import_tar(const fs::path& out,
                     const std::vector<std::pair<std::string, std::string>>& files,
                     const std::string& symlink_name = {}, const std::string& symlink_target = {}) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  archive_write_add_filter_xz(a);
  archive_write_open_filename(a, out.c_str());
  for (const auto& [name, data] : files) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0640);
    archive_entry_set_uname(e, "someone");
    archive_entry_set_mtime(e, 5000, 0);
    archive_entry_set_size(e, static_cast<la_int64_t>(data.size()));
    archive_write_header(a, e);
    archive_write_data(a, data.data(), data.size());
    archive_entry_free(e);
  }
  if (!symlink_name.empty()) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, symlink_name.c_str());
    archive_entry_set_filetype(e, AE_IFLNK);
    archive_entry_set_perm(e, 0777);
    archive_entry_set_symlink(e, symlink_target.c_str());
    archive_write_header(a, e);
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
}
}  // namespace

TEST_F(Tree, ReStreamsACompressedTarballIntoAGzipLayer) {
  fs::path tar = dir.path() / "rootfs.tar.xz";
  make_import_tar(tar, {{"./etc/hostname", "box\n"}, {"/usr/bin/tool", "x"}}, "lib", "usr/lib");
  rootfs::ImportOptions opts;
  opts.source_date_epoch = 1000;
  auto s = store("s");
  auto img = rootfs::import_rootfs(tar.string(), s, opts);
  auto entries = read_layer(s.path_for(img.manifest.layers[0].digest));
  ASSERT_TRUE(entries.count("./etc/hostname"));
  EXPECT_EQ(entries["./etc/hostname"].data, "box\n");
  EXPECT_EQ(entries["./etc/hostname"].mode, 0640u);
  EXPECT_EQ(entries["./etc/hostname"].mtime, 1000);
  ASSERT_TRUE(entries.count("usr/bin/tool"));  // made relative
  EXPECT_EQ(entries["lib"].symlink, "usr/lib");
  EXPECT_EQ(img.manifest_digest(), rootfs::import_rootfs(tar.string(), s, opts).manifest_digest());
}

TEST_F(Tree, RefusesATarballEntryWithDotDot) {
  fs::path tar = dir.path() / "evil.tar.xz";
  make_import_tar(tar, {{"ok", "1"}, {"a/../../escape", "2"}});
  auto s = store("s");
  try {
    rootfs::import_rootfs(tar.string(), s, {});
    FAIL() << "imported a tarball with ..";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("a/../../escape"), std::string::npos) << e.what();
  }
}

TEST_F(Tree, RefusesASourceThatIsNeitherADirectoryNorATarball) {
  auto s = store("s");
  EXPECT_THROW(rootfs::import_rootfs("dir:" + (root / "etc/os-release").string(), s, {}), Error);
  EXPECT_THROW(rootfs::import_rootfs((dir.path() / "missing").string(), s, {}), Error);
}
