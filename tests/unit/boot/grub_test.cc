// GRUB images from the host's grub-mkimage (built once, then from the cache) and the live menu.
#include "pok8s/boot/grub.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include <fmt/format.h>

#include "pok8s/util/error.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"

namespace fs = std::filesystem;
using namespace pok8s;

namespace {

TEST(LiveGrubConfig, UsesSerialAndScreenAndBootsTheFirstEntry) {
  std::string cfg = boot::live_grub_config(
      {{"pok8s live", "/boot/kernel", "/boot/initrd", "console=ttyS0 pok8s.media=COS_LIVE"},
       {"pok8s live (debug)", "/boot/kernel", "", "pok8s.debug"}},
      5);
  EXPECT_NE(cfg.find("serial --unit=0 --speed=115200"), std::string::npos) << cfg;
  EXPECT_NE(cfg.find("terminal_output serial console\n"), std::string::npos) << cfg;
  EXPECT_NE(cfg.find("terminal_input serial console\n"), std::string::npos) << cfg;
  EXPECT_NE(cfg.find("set default=0\nset timeout=5\n"), std::string::npos) << cfg;
  EXPECT_NE(cfg.find("menuentry 'pok8s live' {\n"
                     "  linux '/boot/kernel' 'console=ttyS0' 'pok8s.media=COS_LIVE'\n"
                     "  initrd '/boot/initrd'\n"
                     "}\n"),
            std::string::npos)
      << cfg;
  EXPECT_NE(cfg.find("menuentry 'pok8s live (debug)' {\n"
                     "  linux '/boot/kernel' 'pok8s.debug'\n"
                     "}\n"),
            std::string::npos)
      << cfg;
}

TEST(LiveGrubConfig, QuotesValuesSoTheyCannotRunCommands) {
  std::string cfg = boot::live_grub_config({{"it's $(evil); reboot", "/boot/vmlinuz",
                                             "/boot/initrd", "quiet foo=\"a b\"  x=$root it's"}},
                                           -1);
  EXPECT_NE(cfg.find("menuentry 'it'\\''s $(evil); reboot' {"), std::string::npos) << cfg;
  EXPECT_NE(cfg.find("linux '/boot/vmlinuz' 'quiet' 'foo=\"a b\"' 'x=$root' 'it'\\''s'\n"),
            std::string::npos)
      << cfg;
  EXPECT_NE(cfg.find("set timeout=-1\n"), std::string::npos) << cfg;
}

TEST(LiveGrubConfig, RefusesAnEmptyMenu) {
  EXPECT_THROW(boot::live_grub_config({}, 5), Error);
  EXPECT_THROW(boot::live_grub_config({{"", "/boot/kernel", "", ""}}, 5), Error);
}

TEST(GrubEarlyConfig, FindsTheMediumByLabel) {
  EXPECT_EQ(boot::grub_early_config("COS_LIVE"),
            "search --no-floppy --set=root --label COS_LIVE\n"
            "set prefix=($root)/boot/grub\n");
  try {
    boot::grub_early_config("COS LIVE; reboot");
    ADD_FAILURE() << "accepted a label with a space";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
  }
}

TEST(GrubEarlyConfig, TakesThePrefixOfAnInstalledSystem) {
  EXPECT_EQ(boot::grub_early_config("COS_GRUB", "/grub"),
            "search --no-floppy --set=root --label COS_GRUB\n"
            "set prefix=($root)/grub\n");
  EXPECT_THROW(boot::grub_early_config("COS_GRUB", "grub"), Error);
  EXPECT_THROW(boot::grub_early_config("COS_GRUB", "/grub; reboot"), Error);
}

TEST(DiskGrubConfig, OffersActivePassiveAndRecoveryFromTheirPartitions) {
  std::string cfg = boot::disk_grub_config({"console=ttyS0 panic=10", 3});
  for (const char* needle :
       {"menuentry 'pok8s (active)' --id active {\n"
        "  search --no-floppy --label COS_STATE --set=root\n"
        "  linux '/cOS/active/vmlinuz' 'console=ttyS0' 'panic=10' 'pok8s.mode=active' "
        "'pok8s.media=COS_STATE' 'pok8s.image=/cOS/active/rootfs.img'\n"
        "  initrd '/cOS/active/initrd'\n}",
        "--id passive", "linux '/cOS/passive/vmlinuz'", "--label COS_RECOVERY --set=root",
        "'pok8s.mode=recovery'", "set timeout=3\n", "set default=\"$pok8s_entry\"",
        "load_env -f \"$pok8s_env\"",
        "save_env -f \"$pok8s_env\" pok8s_entry pok8s_tries pok8s_fallback"})
    EXPECT_NE(cfg.find(needle), std::string::npos) << needle << "\n" << cfg;
}

TEST(DiskGrubConfig, IsAScriptGrubAccepts) {
  util::TempDir dir = util::TempDir::scratch();
  util::write_file_atomic(dir.path() / "grub.cfg", boot::disk_grub_config({"quiet", 5}));
  auto r = util::run_process({"grub-script-check", (dir.path() / "grub.cfg").string()});
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(DiskGrubConfig, CountsTriesDownAndFallsBackInOrder) {
  std::string cfg = boot::disk_grub_config({"", 3});
  // One try taken per boot, from 9 down to 0.
  for (int n = 9; n >= 1; --n)
    EXPECT_NE(cfg.find(fmt::format("if [ \"$pok8s_tries\" = {} ]; then\n      set pok8s_tries={}\n",
                                   n, n - 1)),
              std::string::npos)
        << n;
  // Out of tries: active hands over to passive, passive to recovery.
  auto active = cfg.find("set pok8s_fallback=active\n        set pok8s_entry=passive");
  auto passive = cfg.find("set pok8s_fallback=passive\n        set pok8s_entry=recovery");
  EXPECT_NE(active, std::string::npos);
  EXPECT_NE(passive, std::string::npos);
}

TEST(InitialGrubEnv, StartsOnActiveWithEveryTry) {
  EXPECT_EQ(boot::initial_grubenv_vars(3),
            "pok8s_entry=active\npok8s_tries=3\npok8s_max_tries=3\npok8s_fallback=\n");
  EXPECT_THROW(boot::initial_grubenv_vars(0), Error);
  EXPECT_THROW(boot::initial_grubenv_vars(10), Error);
}

TEST(GrubImages, BuildsReproduciblyAndReusesTheCache) {
  auto dir = util::TempDir::scratch();
  boot::GrubImages images = boot::make_grub_images(dir.path() / "cache", "COS_LIVE");

  std::string efi = util::read_file(images.efi_binary);
  EXPECT_EQ(efi.substr(0, 2), "MZ");  // a PE image
  EXPECT_NE(efi.find("search --no-floppy --set=root --label COS_LIVE"), std::string::npos);
  std::string eltorito = util::read_file(images.bios_eltorito);
  EXPECT_GT(eltorito.size(), 2048u);  // cdboot.img and the core image
  std::string mbr = util::read_file(images.bios_hybrid_mbr);
  ASSERT_EQ(mbr.size(), 512u);

  // A second call finds the same files and does not rebuild them.
  struct stat before {};
  ASSERT_EQ(::stat(images.efi_binary.c_str(), &before), 0);
  boot::GrubImages again = boot::make_grub_images(dir.path() / "cache", "COS_LIVE");
  EXPECT_EQ(again.efi_binary, images.efi_binary);
  struct stat after {};
  ASSERT_EQ(::stat(again.efi_binary.c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);

  // Another cache builds the same bytes; another label is another cache entry.
  boot::GrubImages other = boot::make_grub_images(dir.path() / "other", "COS_LIVE");
  EXPECT_EQ(util::sha256_hex(util::read_file(other.efi_binary)), util::sha256_hex(efi));
  EXPECT_EQ(util::sha256_hex(util::read_file(other.bios_eltorito)), util::sha256_hex(eltorito));
  boot::GrubImages relabelled = boot::make_grub_images(dir.path() / "cache", "OTHER");
  EXPECT_NE(relabelled.efi_binary.parent_path(), images.efi_binary.parent_path());
}

}  // namespace
