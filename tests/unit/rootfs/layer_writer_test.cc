// A layer of what changed in a tree since a snapshot: base + diff must give the final tree.
#include "pok8s/rootfs/layer_writer.h"

#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "pok8s/rootfs/flat_tree.h"

using namespace pok8s;
using namespace pok8s::rootfs;
namespace fs = std::filesystem;

namespace {

void write(const fs::path& p, const std::string& data) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << data;
}

// The entry names of a gzip layer in the store, in order.
std::vector<std::string> layer_names(const util::Path& blob) {
  archive* a = archive_read_new();
  archive_read_support_filter_gzip(a);
  archive_read_support_format_tar(a);
  EXPECT_EQ(archive_read_open_filename(a, blob.c_str(), 1 << 16), ARCHIVE_OK);
  std::vector<std::string> names;
  archive_entry* e = nullptr;
  while (archive_read_next_header(a, &e) == ARCHIVE_OK)
    names.emplace_back(archive_entry_pathname(e));
  archive_read_free(a);
  return names;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

class DiffLayer : public ::testing::Test {
 protected:
  void SetUp() override {
    tree = dir.path() / "tree";
    write(tree / "etc/os-release", "ID=debian\n");
    write(tree / "etc/hostname", "base\n");
    write(tree / "etc/keep", "same\n");
    write(tree / "usr/share/doc/a/copyright", "a\n");
    write(tree / "usr/share/doc/a/changelog", "a\n");
    write(tree / "var/cache/apt/pkgcache.bin", "cache\n");
    write(tree / "opt/app/old", "old\n");
    fs::create_directories(tree / "srv");
  }
  util::TempDir dir = util::TempDir::scratch();
  util::Path tree;
  oci::BlobStore store{dir.path() / "store"};
};

TEST_F(DiffLayer, HoldsOnlyChangesWithWhiteoutsForRemovals) {
  auto base = write_tree_layer(tree, store, "base", {.source_date_epoch = 1700000000});
  TreeSnapshot snap = snapshot_tree(tree);
  EXPECT_TRUE(snap.contains("usr/share/doc/a/copyright"));

  write(tree / "etc/hostname", "converted\n");       // rewritten in place
  write(tree / "usr/bin/pok8s-agent", "agent\n");    // new, in a new directory
  ::chmod((tree / "etc/os-release").c_str(), 0600);  // metadata only
  fs::remove_all(tree / "usr/share/doc");            // a whole subtree
  fs::remove(tree / "var/cache/apt/pkgcache.bin");   // one file
  // A directory replaced by a new one. The old one is moved out, not removed: a removed
  // directory's inode number may be given to the new one, and then it is the same directory
  // with its children changed (whiteouts, no opaque marker; the flattening check below holds
  // either way).
  fs::rename(tree / "opt/app", dir.path() / "old-app");
  write(tree / "opt/app/new", "new\n");

  TreeLayerOptions options{.source_date_epoch = 1700000000, .since = &snap};
  auto diff = write_tree_layer(tree, store, "diff", options);
  auto names = layer_names(store.path_for(diff.digest));

  EXPECT_TRUE(contains(names, "etc/hostname"));
  EXPECT_TRUE(contains(names, "etc/os-release"));
  EXPECT_TRUE(contains(names, "usr/bin/pok8s-agent"));
  EXPECT_FALSE(contains(names, "etc/keep"));
  EXPECT_TRUE(contains(names, "usr/share/.wh.doc"));
  EXPECT_FALSE(contains(names, "usr/share/doc/.wh.a"));  // only the topmost removal
  EXPECT_TRUE(contains(names, "var/cache/apt/.wh.pkgcache.bin"));
  EXPECT_TRUE(contains(names, "opt/app/.wh..wh..opq"));
  EXPECT_TRUE(contains(names, "opt/app/new"));

  // The base and the diff flatten to exactly the tree written whole.
  auto whole = write_tree_layer(tree, store, "whole", {.source_date_epoch = 1700000000});
  auto stacked = rootfs::FlatTree::build(
      std::vector<rootfs::LayerBlob>{{store.path_for(base.digest), "base", base.diff_id},
                                     {store.path_for(diff.digest), "diff", diff.diff_id}});
  auto single = rootfs::FlatTree::build(
      std::vector<rootfs::LayerBlob>{{store.path_for(whole.digest), "whole", whole.diff_id}});
  std::vector<std::string> a, b;
  for (const auto& [path, e] : stacked.entries())
    a.push_back(path + " " + std::to_string(e.meta.mode) + " " + std::to_string(e.meta.size));
  for (const auto& [path, e] : single.entries())
    b.push_back(path + " " + std::to_string(e.meta.mode) + " " + std::to_string(e.meta.size));
  EXPECT_EQ(a, b);
}

TEST_F(DiffLayer, UntouchedTreeGivesAnEmptyLayer) {
  TreeSnapshot snap = snapshot_tree(tree);
  auto diff =
      write_tree_layer(tree, store, "diff", {.source_date_epoch = std::nullopt, .since = &snap});
  EXPECT_TRUE(layer_names(store.path_for(diff.digest)).empty());
}

TEST_F(DiffLayer, SameChangesGiveTheSameBlob) {
  TreeSnapshot snap = snapshot_tree(tree);
  write(tree / "etc/pok8s-release", "ID=pok8s\n");
  TreeLayerOptions options{.source_date_epoch = 1700000000, .since = &snap};
  auto first = write_tree_layer(tree, store, "diff", options);
  auto second = write_tree_layer(tree, store, "diff", options);
  EXPECT_EQ(first.digest, second.digest);
}

}  // namespace
