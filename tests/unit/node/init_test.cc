// pok8s-init off PID 1: the mount plan, the boot-state file, the module load list, and
// finding the media by label with libblkid on real file system images.
#include "pok8s/node/init.h"

#include <gtest/gtest.h>
#include <sys/mount.h>

#include <cstdlib>
#include <filesystem>
#include <set>

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

namespace fs = std::filesystem;
using namespace pok8s;
using namespace pok8s::node;

namespace {

std::vector<std::string> targets(const std::vector<MountStep>& steps) {
  std::vector<std::string> out;
  for (const auto& s : steps) out.push_back(s.target);
  return out;
}

void run(const std::string& cmd) {
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

}  // namespace

TEST(InitPlan, MountsTheKernelFileSystemsFirst) {
  auto steps = early_mounts();
  EXPECT_EQ(targets(steps), (std::vector<std::string>{"/proc", "/sys", "/dev", "/run"}));
  EXPECT_EQ(steps[2].fstype, "devtmpfs");
  EXPECT_EQ(steps[3].fstype, "tmpfs");
}

TEST(InitPlan, FindsTheImageFileOnTheMedia) {
  BootOptions options;
  EXPECT_EQ(image_file_on_media(options), "/run/pok8s/media/rootfs.squashfs");
  options = parse_boot_options("pok8s.image=boot/active.img");
  EXPECT_EQ(image_file_on_media(options), "/run/pok8s/media/boot/active.img");
}

TEST(InitPlan, RefusesAnImagePathLeavingTheMedia) {
  BootOptions options;
  options.image_path = "/../../etc/shadow";
  EXPECT_THROW(image_file_on_media(options), Error);
  options.image_path = "/";
  EXPECT_THROW(image_file_on_media(options), Error);
}

TEST(InitPlan, TheOtherABImageIsTheSwappedPath) {
  EXPECT_EQ(other_ab_image("/cOS/active/rootfs.img"), "/cOS/passive/rootfs.img");
  EXPECT_EQ(other_ab_image("cOS/passive/rootfs.img"), "/cOS/active/rootfs.img");
  EXPECT_EQ(other_ab_image("/cOS/recovery/rootfs.img"), std::nullopt);
  EXPECT_EQ(other_ab_image("/rootfs.squashfs"), std::nullopt);
  EXPECT_EQ(other_ab_image("/cOS/active/../passive/rootfs.img"), std::nullopt);
}

TEST(InitPlan, OverlaysOnlyTheWritableDirectoriesTheImageHas) {
  std::set<std::string> present = {"etc", "var", "root", "usr/local"};
  auto steps = overlay_mounts([&](std::string_view d) { return present.contains(std::string(d)); });
  EXPECT_EQ(targets(steps),
            (std::vector<std::string>{"/run/pok8s/overlay", "/sysroot/etc", "/sysroot/var",
                                      "/sysroot/root", "/sysroot/usr/local", "/sysroot/tmp"}));
  EXPECT_EQ(steps[0].fstype, "tmpfs");
  const MountStep& local = steps[4];
  EXPECT_EQ(local.fstype, "overlay");
  EXPECT_EQ(local.data,
            "lowerdir=/sysroot/usr/local,upperdir=/run/pok8s/overlay/usr-local/upper,"
            "workdir=/run/pok8s/overlay/usr-local/work");
  EXPECT_EQ(local.make_dirs, (std::vector<std::string>{"/run/pok8s/overlay/usr-local/upper",
                                                       "/run/pok8s/overlay/usr-local/work"}));
  EXPECT_EQ(local.attrs_from, "/sysroot/usr/local");
  EXPECT_EQ(steps.back().data, "mode=1777");
}

TEST(InitPlan, MovesTheInitramfsMountsIntoTheImage) {
  auto steps = move_mounts();
  EXPECT_EQ(targets(steps), (std::vector<std::string>{"/sysroot/dev", "/sysroot/proc",
                                                      "/sysroot/sys", "/sysroot/run"}));
  for (const auto& s : steps) {
    EXPECT_EQ(s.flags, static_cast<unsigned long>(MS_MOVE));
    EXPECT_EQ(s.target, "/sysroot" + s.source);
  }
}

TEST(BootState, IsOneKeyValueLineEach) {
  BootState state{BootMode::kRecovery, "COS_RECOVERY", "/dev/sr0",
                  "/rootfs.squashfs",  "/dev/vda2",    ""};
  EXPECT_EQ(boot_state_text(state),
            "mode=recovery\nmedia_label=COS_RECOVERY\nmedia_device=/dev/sr0\n"
            "image=/rootfs.squashfs\noem_device=/dev/vda2\npersistent_device=\n");
  state.media_label = "A\nmode=active";
  EXPECT_EQ(boot_state_text(state).find("\nmode=active"), std::string::npos);
}

TEST(PersistentMounts, BindEachDirectoryFromItsStateDirectory) {
  auto steps = persistent_mounts();
  ASSERT_EQ(steps.size(), kPersistentDirs.size());
  EXPECT_EQ(steps[0].source, "/run/pok8s/persistent/.state/etc-ssh");
  EXPECT_EQ(steps[0].target, "/sysroot/etc/ssh");
  EXPECT_EQ(steps[0].flags, static_cast<unsigned long>(MS_BIND));
  std::set<std::string> sources;
  for (const auto& s : steps) {
    EXPECT_TRUE(sources.insert(s.source).second) << s.source;  // no two share a state dir
    EXPECT_EQ(s.source.find(".."), std::string::npos);
  }
  EXPECT_EQ(persistent_state_dir("var/lib/kubelet"), ".state/var-lib-kubelet");
}

TEST(ModuleLoadList, KeepsOrderAndSkipsCommentsAndBlankLines) {
  auto paths = parse_module_load_list(
      "# Modules pok8s-init loads\n\n/lib/modules/6.1/a.ko\n  /lib/modules/6.1/b.ko \r\n"
      "/lib/modules/6.1/c.ko");
  EXPECT_EQ(paths, (std::vector<std::string>{"/lib/modules/6.1/a.ko", "/lib/modules/6.1/b.ko",
                                             "/lib/modules/6.1/c.ko"}));
  EXPECT_TRUE(parse_module_load_list("").empty());
}

TEST(ModuleLoadList, RefusesRelativePathsNamingTheLine) {
  try {
    parse_module_load_list("/a.ko\nkernel/b.ko\n");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_module_load_list("/lib/modules/../../etc/x.ko\n"), Error);
}

class MediaLabel : public ::testing::Test {
 protected:
  fs::path path(const std::string& name) const { return dir_.path() / name; }
  util::TempDir dir_ = util::TempDir::scratch("/var/tmp");
};

TEST_F(MediaLabel, ProbesLabelAndTypeOfExt4AndIso9660Images) {
  run("mke2fs -q -F -t ext4 -L COS_STATE " + path("state.img").string() + " 8M >/dev/null 2>&1");
  fs::create_directories(path("iso-root"));
  util::write_file_atomic(path("iso-root") / "rootfs.squashfs", "not really");
  run("xorriso -as mkisofs -quiet -V COS_LIVE -o " + path("live.iso").string() + " " +
      path("iso-root").string() + " 2>/dev/null");
  auto ext4 = probe_filesystem(path("state.img"));
  ASSERT_TRUE(ext4);
  EXPECT_EQ(ext4->type, "ext4");
  EXPECT_EQ(ext4->label, "COS_STATE");
  auto iso = probe_filesystem(path("live.iso"));
  ASSERT_TRUE(iso);
  EXPECT_EQ(iso->type, "iso9660");
  EXPECT_EQ(iso->label, "COS_LIVE");

  std::vector<util::Path> candidates = {path("missing"), path("state.img"), path("live.iso")};
  auto live = find_by_label("COS_LIVE", candidates);
  ASSERT_TRUE(live);
  EXPECT_EQ(live->device, path("live.iso"));
  EXPECT_EQ(live->filesystem.type, "iso9660");
  EXPECT_FALSE(find_by_label("COS_LIV", candidates)) << "labels match exactly";
  EXPECT_FALSE(find_by_label("cos_live", candidates)) << "labels match exactly";
}

TEST_F(MediaLabel, FindsNothingOnAnEmptyOrMissingDevice) {
  util::write_file_atomic(path("zeros"), std::string(1 << 20, '\0'));
  EXPECT_FALSE(probe_filesystem(path("zeros")));
  EXPECT_FALSE(probe_filesystem(path("missing")));
}

TEST_F(MediaLabel, ListsBlockDevicesButNotRamDisksOrLoopDevices) {
  for (const char* name : {"sr0", "vda", "vda1", "ram0", "loop3"})
    fs::create_directories(path("sys") / name);
  EXPECT_EQ(block_devices(path("sys"), "/dev"),
            (std::vector<util::Path>{"/dev/sr0", "/dev/vda", "/dev/vda1"}));
  EXPECT_TRUE(block_devices(path("no-sys")).empty());
}

namespace {

TEST(LayoutEnv, CustomBindMountsAreAddedTheWayKairosWritesThem) {
  auto paths = pok8s::node::parse_layout_env(
      "PERSISTENT_STATE_BIND=\"true\"\n"
      "CUSTOM_BIND_MOUNTS=\"/var/lib/foo /srv/data/\"\n"
      "export PERSISTENT_STATE_PATHS='/var/lib/foo /var/lib/longhorn/x /data'\n"
      "OTHER=/ignored\n");
  EXPECT_EQ(paths.dirs, (std::vector<std::string>{"var/lib/foo", "srv/data", "data"}));
  ASSERT_EQ(paths.refused.size(), 1u);
  EXPECT_EQ(paths.refused[0], "/var/lib/longhorn/x: in or above a path that is already persistent");
}

TEST(LayoutEnv, SystemAndMalformedPathsAreRefusedNamingThePath) {
  auto paths = pok8s::node::parse_layout_env(
      "CUSTOM_BIND_MOUNTS=relative /proc/x /run /var /var/../etc / /var/lib /ok\n");
  EXPECT_EQ(paths.dirs, (std::vector<std::string>{"ok"}));
  std::vector<std::string> expected = {"relative: not an absolute path",
                                       "/proc/x: a system directory",
                                       "/run: a system directory",
                                       "/var: a system directory",
                                       "/var/../etc: /, empty, . and .. parts are not allowed",
                                       "/: /, empty, . and .. parts are not allowed",
                                       "/var/lib: in or above a path that is already persistent"};
  EXPECT_EQ(paths.refused, expected);
}

}  // namespace
