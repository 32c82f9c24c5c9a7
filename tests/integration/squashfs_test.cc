// The squashfs writer on a real Debian base (mmdebstrap fixture): imported, flattened and
// written as a rootfs image, then read back with unsquashfs and compared with the tarball.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>

#include "pok8s/image/squashfs.h"
#include "pok8s/oci/blob_store.h"
#include "pok8s/rootfs/flat_tree.h"
#include "pok8s/rootfs/import.h"
#include "pok8s/util/file.h"
#include "tree_compare.h"
#include "unit/image/squashfs_check.h"

namespace fs = std::filesystem;
using namespace pok8s;
using pok8s::test::quote;
using pok8s::test::sh;

namespace {

// The fixture imported, flattened and written once per test process.
class DebianSquashfs : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* src = std::getenv("POK8S_SOURCE_DIR");
    if (!src) src = POK8S_TEST_SOURCE_DIR;
    test::Shell fixture = sh(std::string(src) + "/tests/fixtures/debian-base.sh");
    if (fixture.status != 0) {
      setup_error_ =
          "could not build the Debian fixture (mmdebstrap; run scripts/install-deps.sh test)";
      return;
    }
    base_ = fixture.out.substr(0, fixture.out.find('\n'));
    work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
    try {
      oci::BlobStore store(work_->path() / "store");
      oci::ResolvedImage image = rootfs::import_rootfs(base_, store, {});
      tree_ = new rootfs::FlatTree(rootfs::FlatTree::build(image, store));
      image::SquashfsOptions opts;
      opts.mkfs_time = 1'700'000'000;
      result_ = image::write_squashfs(*tree_, image_path(), opts);
    } catch (const std::exception& e) {
      setup_error_ = e.what();
    }
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }
  static void TearDownTestSuite() {
    delete tree_;
    tree_ = nullptr;
    delete work_;
    work_ = nullptr;
  }
  static fs::path dir() { return work_->path(); }
  static fs::path image_path() { return work_->path() / "rootfs.squashfs"; }

  static inline std::string setup_error_;
  static inline std::string base_;
  static inline util::TempDir* work_ = nullptr;
  static inline rootfs::FlatTree* tree_ = nullptr;
  static inline image::SquashfsResult result_;
};

}  // namespace

TEST_F(DebianSquashfs, ListsEveryEntryWithTheTreesMetadata) {
  test::TreeView expected = test::view_of_tree(*tree_);
  test::TreeView actual = test::view_of_image(image_path());
  EXPECT_GT(expected.entries.size(), 3000u);
  EXPECT_EQ(test::differences(expected, actual), "");
  EXPECT_EQ(result_.bytes, fs::file_size(image_path()));
}

TEST_F(DebianSquashfs, HoldsEveryPathOfTheTarball) {
  test::Shell listing = sh("tar -tf " + quote(base_));
  ASSERT_EQ(listing.status, 0);
  std::set<std::string> tar_paths;
  std::istringstream in(listing.out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("./")) line.erase(0, 2);
    if (line == ".") line.clear();
    while (line.ends_with('/')) line.pop_back();
    tar_paths.insert(line);
  }
  std::set<std::string> image_paths;
  for (const auto& [path, d] : test::view_of_image(image_path()).entries) image_paths.insert(path);
  EXPECT_EQ(tar_paths, image_paths);
}

TEST_F(DebianSquashfs, ExtractsToTheSameTreeAsTar) {
  if (::geteuid() != 0) GTEST_SKIP() << "restoring owners and device nodes needs root";
  fs::path ours = dir() / "unsquashfs", ref = dir() / "tar";
  ASSERT_EQ(sh("unsquashfs -q -n -d " + quote(ours.string()) + " " + quote(image_path().string()) +
               " >/dev/null")
                .status,
            0);
  fs::create_directories(ref);
  ASSERT_EQ(
      sh("tar --numeric-owner --xattrs -xpf " + quote(base_) + " -C " + quote(ref.string())).status,
      0);
  EXPECT_EQ(test::compare_trees(ref, ours), "");
  util::remove_tree(ours);
  util::remove_tree(ref);
}
