// The pok8s command line on a real Debian base (mmdebstrap fixture): import, inspect, unpack,
// and interoperability both ways with skopeo and umoci.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "integration/shell.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"
#include "tree_compare.h"

namespace fs = std::filesystem;
using namespace pok8s;

using pok8s::testing::sh;
using pok8s::testing::Shell;

namespace {

std::string pok8s_bin() {
  const char* b = std::getenv("POK8S_BIN");
  return b ? b : POK8S_TEST_BIN;
}

// The Debian fixture and a layout imported from it, made once per test process.
class DebianImage : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // A failure here must fail every test (gtest would otherwise report them as skipped).
    const char* src = std::getenv("POK8S_SOURCE_DIR");
    if (!src) src = POK8S_TEST_SOURCE_DIR;
    Shell fixture = sh(std::string(src) + "/tests/fixtures/debian-base.sh");
    if (fixture.status != 0) {
      setup_error_ =
          "could not build the Debian fixture (mmdebstrap; run scripts/install-deps.sh test)";
      return;
    }
    base_ = fixture.out.substr(0, fixture.out.find('\n'));
    work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
    cache_ = work_->path() / "cache";
    Shell imp = sh(
        cmd("image import " + base_ + " oci:" + (work_->path() / "layout").string() + ":bookworm"));
    if (imp.status != 0) setup_error_ = "pok8s image import of the fixture failed";
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }
  static void TearDownTestSuite() {
    delete work_;
    work_ = nullptr;
  }
  static std::string cmd(const std::string& args) {
    return pok8s_bin() + " -q --cache " + cache_.string() + " " + args;
  }
  static fs::path dir() { return work_->path(); }
  static std::string layout() { return "oci:" + (work_->path() / "layout").string() + ":bookworm"; }

  static inline std::string setup_error_;
  static inline std::string base_;
  static inline util::TempDir* work_ = nullptr;
  static inline fs::path cache_;
};

}  // namespace

TEST_F(DebianImage, InspectShowsLayersAndOsRelease) {
  Shell r = sh(cmd("--json image inspect " + layout()));
  ASSERT_EQ(r.status, 0);
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["platform"], "linux/amd64");
  EXPECT_EQ(j["layers"].size(), 1u);
  EXPECT_EQ(j["osRelease"]["ID"], "debian");
  EXPECT_EQ(j["osRelease"]["VERSION_ID"], "12");
}

TEST_F(DebianImage, UnpackGivesTheSameTreeAsTar) {
  fs::path ours = dir() / "unpack-ours", ref = dir() / "unpack-tar";
  ASSERT_EQ(sh(cmd("image unpack --devices " + layout() + " " + ours.string())).status, 0);
  fs::create_directories(ref);
  ASSERT_EQ(sh("tar --numeric-owner --xattrs -xpf " + base_ + " -C " + ref.string()).status, 0);
  EXPECT_EQ(test::compare_trees(ref, ours), "");
  util::remove_tree(ours);
  util::remove_tree(ref);
}

TEST_F(DebianImage, UnpackRefusesAnExistingNonEmptyDestination) {
  fs::path dest = dir() / "occupied";
  fs::create_directories(dest);
  util::write_file_atomic(dest / "keep", "mine");
  Shell r = sh(cmd("image unpack --devices " + layout() + " " + dest.string() + " 2>/dev/null"));
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(util::read_file(dest / "keep"), "mine");
}

TEST_F(DebianImage, SkopeoAndUmociReadWhatPok8sWrote) {
  Shell insp = sh("skopeo inspect " + layout());
  ASSERT_EQ(insp.status, 0);
  auto j = nlohmann::json::parse(insp.out);
  EXPECT_EQ(j["Layers"].size(), 1u);
  fs::path bundle = dir() / "umoci-bundle", ours = dir() / "unpack-ours2";
  std::string layout_dir = (dir() / "layout").string();
  ASSERT_EQ(
      sh("umoci unpack --image " + layout_dir + ":bookworm " + bundle.string() + " >/dev/null")
          .status,
      0);
  ASSERT_EQ(sh(cmd("image unpack --devices " + layout() + " " + ours.string())).status, 0);
  EXPECT_EQ(test::compare_trees(bundle / "rootfs", ours), "");
  util::remove_tree(bundle);
  util::remove_tree(ours);
}

TEST_F(DebianImage, Pok8sUnpacksWhatSkopeoWroteLikeUmoci) {
  // skopeo writes its own layout (and a docker-archive); pok8s and umoci unpack it alike.
  std::string theirs = (dir() / "skopeo-layout").string();
  ASSERT_EQ(sh("skopeo copy -q " + layout() + " oci:" + theirs + ":copied").status, 0);
  fs::path bundle = dir() / "umoci-bundle2", ours = dir() / "unpack-ours3";
  ASSERT_EQ(
      sh("umoci unpack --image " + theirs + ":copied " + bundle.string() + " >/dev/null").status,
      0);
  ASSERT_EQ(sh(cmd("image unpack --devices oci:" + theirs + ":copied " + ours.string())).status, 0);
  EXPECT_EQ(test::compare_trees(bundle / "rootfs", ours), "");
  util::remove_tree(ours);
  std::string archive = (dir() / "skopeo-docker.tar").string();
  ASSERT_EQ(
      sh("skopeo copy -q " + layout() + " docker-archive:" + archive + ":pok8s/debian:12").status,
      0);
  ASSERT_EQ(
      sh(cmd("image unpack --devices docker-archive:" + archive + " " + ours.string())).status, 0);
  EXPECT_EQ(test::compare_trees(bundle / "rootfs", ours), "");
  util::remove_tree(bundle);
  util::remove_tree(ours);
}

TEST_F(DebianImage, CopyRoundTripsThroughArchivesWithTheSameTree) {
  std::string oa = (dir() / "img.oci.tar").string(), da = (dir() / "img.docker.tar").string();
  ASSERT_EQ(sh(cmd("image copy " + layout() + " oci-archive:" + oa + ":v1")).status, 0);
  ASSERT_EQ(
      sh(cmd("image copy oci-archive:" + oa + ":v1 docker-archive:" + da + ":pok8s/debian:v1"))
          .status,
      0);
  ASSERT_EQ(sh("skopeo inspect docker-archive:" + da + " >/dev/null").status, 0);
  fs::path a = dir() / "from-layout", b = dir() / "from-docker-archive";
  ASSERT_EQ(sh(cmd("image unpack --devices " + layout() + " " + a.string())).status, 0);
  ASSERT_EQ(sh(cmd("image unpack --devices docker-archive:" + da + " " + b.string())).status, 0);
  EXPECT_EQ(test::compare_trees(a, b), "");
  util::remove_tree(a);
  util::remove_tree(b);
}

TEST(Cli, RefusalsAreOneLineWithNonZeroExit) {
  Shell r = sh(pok8s_bin() + " image inspect docker://registry.example/UPPER:tag 2>&1");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  EXPECT_NE(r.out.find("Invalid image reference"), std::string::npos) << r.out;
  Shell missing = sh(pok8s_bin() + " image inspect oci:/nonexistent/layout 2>&1");
  EXPECT_NE(missing.status, 0);
  EXPECT_EQ(std::count(missing.out.begin(), missing.out.end(), '\n'), 1) << missing.out;
}

TEST(Cli, KeysGenerateThenCheckAndRefuseAnIncompleteSetInOneLine) {
  util::TempDir tmp = util::TempDir::scratch();
  std::string dir = (tmp.path() / "keys").string();
  Shell gen = sh(pok8s_bin() + " --json keys generate " + dir + " --name Edge 2>/dev/null");
  ASSERT_EQ(gen.status, 0) << gen.out;
  auto j = nlohmann::json::parse(gen.out);
  EXPECT_EQ(j["certificates"]["db"]["subject"], "/CN=Edge db");
  Shell check = sh(pok8s_bin() + " keys check " + dir + " 2>&1");
  EXPECT_EQ(check.status, 0) << check.out;
  EXPECT_NE(check.out.find("are complete and valid"), std::string::npos) << check.out;

  Shell again = sh(pok8s_bin() + " -q keys generate " + dir + " 2>&1");
  EXPECT_EQ(again.status, 2);
  EXPECT_EQ(again.out, "pok8s: Failed to generate keys in " + dir +
                           ": it exists and is not an empty directory\n");
  fs::remove(tmp.path() / "keys/tpm2-pcr-public.pem");
  Shell bad = sh(pok8s_bin() + " keys check " + dir + " 2>&1");
  EXPECT_EQ(bad.status, 3);
  EXPECT_EQ(bad.out, "pok8s: Failed to use the keys in " + dir +
                         ": tpm2-pcr-public.pem: missing (make a key set with pok8s keys "
                         "generate)\n");
}
