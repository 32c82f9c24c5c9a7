// GRUB images from the host's grub-mkimage (built once, then from the cache) and the live menu.
#include "pok8s/boot/grub.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "pok8s/util/error.h"
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
