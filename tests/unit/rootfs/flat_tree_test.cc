// The flat view of an image against the unpacked tree: the same paths, types, modes, link
// targets, hardlink groups and file contents, for multi-layer images with whiteouts.
#include "pok8s/rootfs/flat_tree.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <map>
#include <set>

#include "pok8s/rootfs/apply.h"
#include "pok8s/util/error.h"
#include "unit/rootfs/layer_builder.h"

namespace fs = std::filesystem;
using namespace pok8s;
using pok8s::test::Compression;
using pok8s::test::LayerBuilder;

namespace {

// What both views must agree on for one path.
struct Node {
  char type = '?';  // f d l p c b
  unsigned mode = 0;
  std::string target;   // symlink target
  std::string content;  // file data
  bool operator==(const Node&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Node& n) {
  return os << n.type << " " << std::oct << n.mode << std::dec << " ->" << n.target << " ["
            << n.content.size() << " bytes]";
}

struct View {
  std::map<std::string, Node> nodes;
  std::set<std::set<std::string>> link_groups;  // paths sharing one file, 2 or more
};

View view_of_disk(const fs::path& root) {
  View v;
  std::map<ino_t, std::set<std::string>> by_inode;
  auto visit = [&](const fs::path& p, const std::string& rel) {
    struct stat st {};
    EXPECT_EQ(::lstat(p.c_str(), &st), 0);
    Node n;
    n.mode = st.st_mode & 07777;
    if (S_ISREG(st.st_mode)) {
      n.type = 'f';
      n.content = util::read_file(p);
      by_inode[st.st_ino].insert(rel);
    } else if (S_ISDIR(st.st_mode)) {
      n.type = 'd';
    } else if (S_ISLNK(st.st_mode)) {
      n.type = 'l';
      n.mode = 0;
      n.target = fs::read_symlink(p).string();
      by_inode[st.st_ino].insert(rel);
    } else if (S_ISFIFO(st.st_mode)) {
      n.type = 'p';
    }
    v.nodes[rel] = n;
  };
  visit(root, "");
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it)
    visit(it->path(), it->path().lexically_relative(root).string());
  for (auto& [ino, paths] : by_inode)
    if (paths.size() > 1) v.link_groups.insert(paths);
  return v;
}

View view_of_flat(const rootfs::FlatTree& tree) {
  View v;
  std::map<std::string, std::set<std::string>> groups;
  std::map<std::string, std::string> data;
  tree.read_files([&](const rootfs::FlatEntry& e, rootfs::LayerReader& r) {
    std::string out;
    std::byte buf[4096];
    while (std::size_t n = r.read(buf)) out.append(reinterpret_cast<const char*>(buf), n);
    data[e.path] = out;
  });
  for (const auto& [path, e] : tree.entries()) {
    const rootfs::FlatEntry& inode =
        e.meta.type == rootfs::EntryType::kHardlink ? tree.entries().at(e.meta.link_target) : e;
    Node n;
    n.mode = inode.meta.mode & 07777;
    switch (inode.meta.type) {
      case rootfs::EntryType::kFile:
        n.type = 'f';
        n.content = data.at(inode.path);
        break;
      case rootfs::EntryType::kDirectory:
        n.type = 'd';
        break;
      case rootfs::EntryType::kSymlink:
        n.type = 'l';
        n.mode = 0;
        n.target = inode.meta.link_target;
        break;
      case rootfs::EntryType::kFifo:
        n.type = 'p';
        break;
      default:
        n.type = '?';
    }
    v.nodes[path] = n;
    if (e.meta.type == rootfs::EntryType::kHardlink) {
      groups[inode.path].insert(inode.path);
      groups[inode.path].insert(path);
    }
  }
  for (auto& [primary, paths] : groups) v.link_groups.insert(paths);
  return v;
}

class Flat : public test::RootfsTest {
 protected:
  // Writes the layers as blobs, unpacks them into dest and builds the flat view.
  std::pair<View, View> both(const std::vector<std::string>& tars) {
    std::vector<rootfs::LayerBlob> blobs;
    fs::path dest = scratch() / "unpacked";
    fs::create_directory(dest);
    util::UniqueFd fd = util::open_file(dest, O_RDONLY | O_DIRECTORY);
    for (std::size_t i = 0; i < tars.size(); ++i) {
      Compression c = i % 3 == 0   ? Compression::kGzip
                      : i % 3 == 1 ? Compression::kZstd
                                   : Compression::kNone;
      auto w = test::write_layer(scratch(), "flat" + std::to_string(i), tars[i], c);
      blobs.push_back({w.path, "layer " + std::to_string(i + 1), w.diff_id});
    }
    // Applied one by one the tree is the same as unpack_image's; only directory mtimes,
    // which neither view compares here, would differ.
    for (const auto& b : blobs) rootfs::apply_layer(fd.get(), b.path, b.what, b.diff_id, {});
    return {view_of_disk(dest), view_of_flat(rootfs::FlatTree::build(blobs))};
  }
};

TEST_F(Flat, EqualsTheUnpackedTreeForLayersWithWhiteouts) {
  auto [disk, flat] = both({
      LayerBuilder()
          .dir("etc", 0755)
          .file("etc/passwd", "root:x:0:0\n", 0644)
          .file("etc/shadow", "root:*:\n", 0640)
          .dir("usr/lib64", 0755)
          .symlink("lib64", "/usr/lib64")
          .file("usr/bin/gzip", "gzip-binary", 0755)
          .hardlink("usr/bin/gunzip", "usr/bin/gzip")
          .hardlink("usr/bin/zcat", "usr/bin/gzip")
          .file("var/cache/apt/pkgcache.bin", std::string(70000, 'c'))
          .file("opt/app/old", "old")
          .file("opt/app/sub/deep", "deep")
          .dir("swap")
          .file("swap/inside", "i")
          .file("becomes-dir", "f")
          .file("usr/bin/sudo", "sudo", 04755)
          .tar(),
      LayerBuilder()
          .file("lib64/ld-linux-x86-64.so.2", "ld")  // through the absolute symlink
          .whiteout("etc/shadow")
          .whiteout("var/cache")
          .file("opt/app/new", "new")
          .opaque("opt/app")
          .file("opt/app/sub/mine", "mine")
          .file("swap", "now a file")
          .dir("becomes-dir", 0700)
          .file("becomes-dir/x", "x")
          .file("usr/bin/gzip", "gzip-v2", 0755)  // the old inode lives on in gunzip and zcat
          .fifo("run/initctl", 0600)
          .tar(),
      LayerBuilder()
          .whiteout("usr/bin/gunzip")
          .file("etc/passwd", "root:x:0:0\nuser:x:1000:1000\n")
          .hardlink("etc/passwd-", "etc/passwd")
          .symlink("usr/lib64/libc.so.6", "libc-2.36.so")
          .tar(),
  });
  EXPECT_EQ(disk.nodes, flat.nodes);
  EXPECT_EQ(disk.link_groups, flat.link_groups);
  // Spot checks that the comparison is about something.
  ASSERT_TRUE(flat.nodes.contains("usr/lib64/ld-linux-x86-64.so.2"));
  EXPECT_FALSE(flat.nodes.contains("etc/shadow"));
  EXPECT_FALSE(flat.nodes.contains("var/cache"));
  EXPECT_FALSE(flat.nodes.contains("opt/app/old"));
  EXPECT_FALSE(flat.nodes.contains("opt/app/sub/deep"));
  EXPECT_EQ(flat.nodes.at("opt/app/new").content, "new");
  EXPECT_EQ(flat.nodes.at("usr/bin/zcat").content, "gzip-binary");
  EXPECT_EQ(flat.nodes.at("usr/bin/gzip").content, "gzip-v2");
  EXPECT_EQ(flat.nodes.at("usr/bin/sudo").mode, 04755u);
}

TEST_F(Flat, ReadFilesDeliversEachSurvivingFileOnce) {
  std::vector<rootfs::LayerBlob> blobs;
  auto a = test::write_layer(
      scratch(), "a",
      LayerBuilder().file("a", "1").file("b", "2").file("c", std::string(300000, 'c')).tar());
  auto b = test::write_layer(scratch(), "b",
                             LayerBuilder().file("a", "one").whiteout("b").hardlink("d", "c").tar(),
                             Compression::kZstd);
  blobs.push_back({a.path, "layer 1", a.diff_id});
  blobs.push_back({b.path, "layer 2", b.diff_id});
  auto tree = rootfs::FlatTree::build(blobs);
  std::map<std::string, std::string> seen;
  tree.read_files([&](const rootfs::FlatEntry& e, rootfs::LayerReader& r) {
    EXPECT_FALSE(seen.contains(e.path));
    std::string out;
    std::byte buf[1000];
    while (std::size_t n = r.read(buf)) out.append(reinterpret_cast<const char*>(buf), n);
    seen[e.path] = out;
  });
  std::map<std::string, std::string> expected{{"a", "one"}, {"c", std::string(300000, 'c')}};
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(tree.entries().at("d").meta.type, rootfs::EntryType::kHardlink);
  EXPECT_EQ(tree.entries().at("d").meta.link_target, "c");
}

TEST_F(Flat, ReadFilesForSomePathsOpensOnlyTheLayersHoldingThem) {
  auto a = test::write_layer(scratch(), "a", LayerBuilder().file("a", "1").file("b", "2").tar());
  auto b = test::write_layer(scratch(), "b", LayerBuilder().file("x", "new").file("y", "y").tar());
  auto tree =
      rootfs::FlatTree::build({{a.path, "layer 1", a.diff_id}, {b.path, "layer 2", b.diff_id}});
  // Layer 1 is gone: asking only for files of layer 2 must not touch it.
  fs::remove(a.path);
  std::map<std::string, std::string> seen;
  tree.read_files({"x", "no-such-file"}, [&](const rootfs::FlatEntry& e, rootfs::LayerReader& r) {
    std::string out;
    std::byte buf[100];
    while (std::size_t n = r.read(buf)) out.append(reinterpret_cast<const char*>(buf), n);
    seen[e.path] = out;
  });
  EXPECT_EQ(seen, (std::map<std::string, std::string>{{"x", "new"}}));
  EXPECT_THROW(tree.read_files({"a"}, [](const rootfs::FlatEntry&, rootfs::LayerReader&) {}),
               Error);
}

TEST_F(Flat, KeepsDevicesAndOwnershipFromHeadersWithoutRoot) {
  auto w = test::write_layer(scratch(), "dev",
                             LayerBuilder()
                                 .device("dev/null", false, 1, 3)
                                 .file("home/u/f", "x", 0600)
                                 .owner(1000, 1000)
                                 .mtime(42)
                                 .xattr("user.keep", "k")
                                 .xattr("security.selinux", "drop")
                                 .tar());
  auto tree = rootfs::FlatTree::build({{w.path, "layer 1", w.diff_id}});
  const auto& dev = tree.entries().at("dev/null").meta;
  EXPECT_EQ(dev.type, rootfs::EntryType::kCharDevice);
  EXPECT_EQ(dev.dev_major, 1u);
  EXPECT_EQ(dev.dev_minor, 3u);
  const auto& f = tree.entries().at("home/u/f").meta;
  EXPECT_EQ(f.uid, 1000u);
  EXPECT_EQ(f.mtime_sec, 42);
  ASSERT_EQ(f.xattrs.size(), 1u) << f.xattrs[0].first << " " << f.xattrs[1].first;
  EXPECT_EQ(f.xattrs[0].first, "user.keep");
  EXPECT_EQ(tree.entries().at("home").meta.type, rootfs::EntryType::kDirectory);
}

TEST_F(Flat, RefusesWhatApplyRefuses) {
  auto refuse = [&](const LayerBuilder& layer, const std::string& needle) {
    auto w = test::write_layer(scratch(), "bad", layer.tar());
    try {
      rootfs::FlatTree::build({{w.path, "layer 1", w.diff_id}});
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  refuse(LayerBuilder().file("../x", "x"), "leaves the root");
  refuse(LayerBuilder().symlink(".", "/"), "root");
  refuse(LayerBuilder().hardlink("pw", "/etc/passwd"), "does not exist inside the root");
  refuse(LayerBuilder().dir("d").hardlink("h", "d"), "is a directory");
  refuse(LayerBuilder().file("a/.wh..", ""), "leave");
  refuse(LayerBuilder().symlink("a", "b").symlink("b", "a").file("a/x", ""), "symbolic links");
}

TEST_F(Flat, RefusesADiffIdMismatch) {
  auto w =
      test::write_layer(scratch(), "l", LayerBuilder().file("a", "x").tar(), Compression::kGzip);
  try {
    rootfs::FlatTree::build({{w.path, "layer 1", oci::Digest::sha256_of("other")}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kSignature);
  }
}

}  // namespace
