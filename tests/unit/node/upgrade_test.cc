// The A/B rotation of pok8s-agent upgrade on a real directory tree (renameat2 exchanges), the
// list of installed images, and the refusals that come before any partition is touched.
#include "pok8s/node/upgrade.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "pok8s/node/reset.h"

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

namespace fs = std::filesystem;
using namespace pok8s;
using namespace pok8s::node;

namespace {

class Rotation : public ::testing::Test {
 protected:
  // An image directory whose rootfs.img says which image it is.
  void image(const std::string& name, const std::string& says) {
    util::make_dirs(images_ / name);
    util::write_file_atomic(images_ / name / "rootfs.img", says);
  }
  std::string says(const std::string& name) {
    return util::read_file(images_ / name / "rootfs.img");
  }
  std::vector<std::string> names() {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(images_)) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }

  util::TempDir dir_ = util::TempDir::scratch();
  fs::path images_ = dir_.path() / "cOS";
};

TEST_F(Rotation, TheNewImageBecomesActiveAndTheOldActiveBecomesPassive) {
  image("active", "v1");
  image("passive", "v0");
  image("recovery", "r");
  image("transition", "v2");
  rotate_images(images_, "active", true);
  EXPECT_EQ(says("active"), "v2");
  EXPECT_EQ(says("passive"), "v1");
  EXPECT_EQ(says("recovery"), "r");
  EXPECT_EQ(names(), (std::vector<std::string>{"active", "passive", "recovery"}));
}

TEST_F(Rotation, ASystemRunningItsPassiveKeepsIt) {
  image("active", "broken");
  image("passive", "good");
  image("transition", "v3");
  rotate_images(images_, "active", false);
  EXPECT_EQ(says("active"), "v3");
  EXPECT_EQ(says("passive"), "good");
  EXPECT_EQ(names(), (std::vector<std::string>{"active", "passive"}));
}

TEST_F(Rotation, RecoveryIsReplacedAlone) {
  image("active", "v1");
  image("passive", "v0");
  image("recovery", "r1");
  image("transition", "r2");
  rotate_images(images_, "recovery", false);
  EXPECT_EQ(says("recovery"), "r2");
  EXPECT_EQ(says("active"), "v1");
  EXPECT_EQ(says("passive"), "v0");
  EXPECT_EQ(names(), (std::vector<std::string>{"active", "passive", "recovery"}));
}

TEST_F(Rotation, MissingImagesAreCreated) {
  image("transition", "v1");
  rotate_images(images_, "active", true);
  EXPECT_EQ(names(), (std::vector<std::string>{"active"}));
  image("transition", "v2");
  rotate_images(images_, "active", true);
  EXPECT_EQ(says("active"), "v2");
  EXPECT_EQ(says("passive"), "v1");
}

TEST_F(Rotation, WithoutATransitionNothingMoves) {
  image("active", "v1");
  EXPECT_THROW(rotate_images(images_, "active", true), Error);
  EXPECT_EQ(says("active"), "v1");
}

TEST_F(Rotation, InstalledImagesListWhatEachImageIs) {
  image("active", "v2");
  image("passive", "v1");
  util::write_file_atomic(images_ / "active" / "image.json",
                          R"({"source": "docker://r/os:v2", "version": "v2"})");
  auto listed = installed_images(images_);
  EXPECT_EQ(listed["active"]["version"], "v2");
  EXPECT_TRUE(listed["passive"].is_null());  // installed from a disk image: nothing recorded
  EXPECT_FALSE(listed.contains("recovery"));
  util::write_file_atomic(images_ / "passive" / "image.json", "{not json");
  try {
    installed_images(images_);
    FAIL() << "a broken image.json was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("passive/image.json"), std::string::npos) << e.what();
  }
}

TEST(Upgrade, ALiveSystemIsRefusedBeforeAnythingIsTouched) {
  util::TempDir dir = util::TempDir::scratch();
  util::write_file_atomic(dir.path() / "boot-state",
                          "mode=live\nmedia_label=COS_LIVE\nmedia_device=/dev/sr0\nimage=/"
                          "rootfs.squashfs\n");
  UpgradeOptions o;
  o.source = "docker://127.0.0.1:1/os:v2";
  o.boot_state_file = dir.path() / "boot-state";
  try {
    upgrade_system(o);
    FAIL() << "a live system was upgraded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("runs live from /dev/sr0"), std::string::npos) << e.what();
  }
}

// A UKI system upgrades from a uki-iso only, and a uki-iso upgrades a UKI system only: refused
// before any partition is looked for.
TEST(Upgrade, UkiSystemsAndUkiIsosGoTogetherAndTheMismatchIsRefusedBeforeAnythingIsTouched) {
  util::TempDir dir = util::TempDir::scratch();
  util::write_file_atomic(dir.path() / "boot-state",
                          "mode=active\nmedia_label=COS_STATE\nmedia_device=/dev/vda4\nimage=/"
                          "cOS/active/rootfs.img\n");
  util::write_file_atomic(dir.path() / "uki-cmdline",
                          "console=ttyS0 pok8s.mode=active pok8s.verity=ab,cd,1,4096\n");
  util::write_file_atomic(dir.path() / "grub-cmdline", "console=ttyS0 pok8s.mode=active\n");
  UpgradeOptions o;
  o.boot_state_file = dir.path() / "boot-state";
  auto refusal = [&](const std::string& source, const char* cmdline) {
    o.source = source;
    o.kernel_cmdline = dir.path() / cmdline;
    try {
      upgrade_system(o);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
      return std::string(e.what());
    }
    ADD_FAILURE() << source << " was taken";
    return std::string();
  };
  EXPECT_NE(refusal("docker://127.0.0.1:1/os:v2", "uki-cmdline")
                .find("boots signed UKIs whose command line carries its image's dm-verity root "
                      "hash; upgrade it from a uki-iso built with its keys (--source "
                      "uki-iso:FILE)"),
            std::string::npos);
  EXPECT_NE(refusal("uki-iso:/dev/sr1", "grub-cmdline")
                .find("a uki-iso upgrades a system installed from one; this system boots with "
                      "GRUB"),
            std::string::npos);
}

TEST(Upgrade, TheInstalledUkisAreKnownByTheirFileNames) {
  EXPECT_EQ(installed_uki_mode("pok8s-active+3.efi"), "active");
  EXPECT_EQ(installed_uki_mode("pok8s-active+0-3.efi"), "active");
  EXPECT_EQ(installed_uki_mode("pok8s-active.efi"), "active");
  EXPECT_EQ(installed_uki_mode("pok8s-passive.efi"), "passive");
  EXPECT_EQ(installed_uki_mode("pok8s-recovery.efi"), "recovery");
  for (const char* other : {"pok8s-active", "pok8s-active+x.efi", ".active.new", "debian.efi",
                            "pok8s-live.efi", "rootfs.img", "pok8s-passive.efi.partial"})
    EXPECT_EQ(installed_uki_mode(other), "") << other;
}

}  // namespace

namespace {

TEST(Reset, OnlyTheRecoveryImageResetsAndNothingIsTouchedOtherwise) {
  util::TempDir dir = util::TempDir::scratch();
  util::write_file_atomic(dir.path() / "boot-state",
                          "mode=active\nmedia_label=COS_STATE\nmedia_device=/dev/vda4\nimage=/"
                          "cOS/active/rootfs.img\n");
  ResetRequest r;
  r.boot_state = dir.path() / "boot-state";
  r.media = dir.path() / "media";
  try {
    run_reset(r, {});
    FAIL() << "reset ran on the active image";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("runs its active image"), std::string::npos) << e.what();
  }
  // Recovery, but its medium lacks the image: named, before any partition is looked for.
  util::write_file_atomic(dir.path() / "boot-state",
                          "mode=recovery\nmedia_label=COS_RECOVERY\nmedia_device=/dev/vda3\n"
                          "image=/cOS/recovery/rootfs.img\n");
  try {
    run_reset(r, {});
    FAIL() << "reset ran without a recovery image";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("media/cOS/recovery/rootfs.img"), std::string::npos)
        << e.what();
  }
}

}  // namespace

namespace {

TEST(Expand, NothingHappensOutsideTheRecoveryImage) {
  util::TempDir dir = util::TempDir::scratch();
  util::write_file_atomic(dir.path() / "boot-state",
                          "mode=active\nmedia_label=COS_STATE\nmedia_device=/dev/vda4\nimage=/"
                          "cOS/active/rootfs.img\n");
  ExpandRequest r;
  r.boot_state = dir.path() / "boot-state";
  r.sys_class_block = dir.path() / "sys";
  r.dev = dir.path() / "dev";
  EXPECT_FALSE(expand_disk(r));
}

TEST(Expand, ARecoveryImageWithoutItsFilesIsRefusedByName) {
  util::TempDir dir = util::TempDir::scratch();
  util::write_file_atomic(dir.path() / "boot-state",
                          "mode=recovery\nmedia_label=COS_RECOVERY\nmedia_device=/dev/vda3\n"
                          "image=/cOS/recovery/rootfs.img\n");
  util::make_dirs(dir.path() / "sys");
  ExpandRequest r;
  r.boot_state = dir.path() / "boot-state";
  r.media = dir.path() / "media";
  r.sys_class_block = dir.path() / "sys";
  r.dev = dir.path() / "dev";
  try {
    expand_disk(r);
    FAIL() << "expanded without a recovery image";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the recovery image has no"), std::string::npos)
        << e.what();
  }
}

}  // namespace
