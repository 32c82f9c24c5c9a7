// Boot status from the boot state, the GRUB environment block and the release file: the
// reason for each way a system can come up, and marking a boot as good.
#include "pok8s/node/boot_status.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <functional>

#include "pok8s/node/grubenv.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

namespace fs = std::filesystem;
using namespace pok8s;
using namespace pok8s::node;

namespace {

class BootStatusFiles : public ::testing::Test {
 protected:
  // A boot state as pok8s-init writes it, plus a key from a later version.
  void boot_state(std::string_view mode) {
    util::write_file_atomic(state_,
                            fmt::format("mode={}\nmedia_label=COS_STATE\nmedia_device="
                                        "/dev/vda3\nimage=/cOS/{}.img\noem_device=/dev/"
                                        "vda2\npersistent_device=/dev/vda4\nfrom_the_future=1\n",
                                        mode, mode));
  }
  void grubenv(std::vector<std::pair<std::string, std::string>> vars) {
    write_new_grubenv(grubenv_, GrubEnv{std::move(vars)});
  }
  BootStatus status() { return read_boot_status(state_, grubenv_, release_); }

  util::TempDir dir_ = util::TempDir::scratch();
  fs::path state_ = dir_.path() / "boot-state";
  fs::path grubenv_ = dir_.path() / "grubenv";
  fs::path release_ = dir_.path() / "pok8s-release";
};

std::string format_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    return e.what();
  }
  return "";
}

}  // namespace

TEST(BootState, ReadsWhatInitWritesAndIgnoresUnknownKeys) {
  BootState written;
  written.mode = BootMode::kPassive;
  written.media_label = "COS_STATE";
  written.media_device = "/dev/vda3";
  written.image = "/cOS/passive.img";
  written.oem_device = "/dev/vda2";
  BootState read = parse_boot_state(boot_state_text(written) + "from_the_future=1\n\n", "f");
  EXPECT_EQ(read.mode, BootMode::kPassive);
  EXPECT_EQ(read.media_label, "COS_STATE");
  EXPECT_EQ(read.media_device, "/dev/vda3");
  EXPECT_EQ(read.image, "/cOS/passive.img");
  EXPECT_EQ(read.oem_device, "/dev/vda2");
  EXPECT_EQ(read.persistent_device, "");
}

TEST(BootState, RefusesMalformedLinesNamingFileAndLine) {
  EXPECT_EQ(format_error([] { parse_boot_state("mode=live\nmedia_device\n", "/run/bs"); }),
            "Failed to read /run/bs: line 2: \"media_device\" is not key=value");
  EXPECT_EQ(format_error([] { parse_boot_state("image=x\n=y\n", "/run/bs"); }),
            "Failed to read /run/bs: line 2: \"=y\" is not key=value");
  EXPECT_EQ(format_error([] { parse_boot_state("image=x\nmode=sideways\n", "/run/bs"); }),
            "Failed to read /run/bs: line 2: unknown mode \"sideways\"");
  EXPECT_EQ(format_error([] { parse_boot_state("image=x\n", "/run/bs"); }),
            "Failed to read /run/bs: no mode line");
}

TEST_F(BootStatusFiles, LiveBootIgnoresAnyGrubEnv) {
  boot_state("live");
  grubenv({{"pok8s_entry", "passive"}, {"pok8s_tries", "1"}});
  BootStatus s = status();
  EXPECT_EQ(s.mode, "live");
  EXPECT_EQ(s.reason, "booted the live medium");
  EXPECT_EQ(s.entry, std::nullopt);
  EXPECT_EQ(s.tries, std::nullopt);
  EXPECT_EQ(s.media_device, "/dev/vda3");
  EXPECT_EQ(s.image, "/cOS/live.img");
}

TEST_F(BootStatusFiles, ActiveBoot) {
  boot_state("active");
  grubenv({{"pok8s_entry", "active"},
           {"pok8s_tries", "2"},
           {"pok8s_max_tries", "3"},
           {"pok8s_fallback", ""}});
  BootStatus s = status();
  EXPECT_EQ(s.reason, "booted the active image");
  EXPECT_EQ(s.entry, "active");
  EXPECT_EQ(s.tries, 2);
  EXPECT_EQ(s.max_tries, 3);
  EXPECT_EQ(s.fallback, std::nullopt);
  EXPECT_EQ(next_boot_entry(s), "active");
}

TEST_F(BootStatusFiles, PassiveAfterTheActiveImageUsedUpItsTries) {
  boot_state("passive");
  grubenv({{"pok8s_entry", "passive"},
           {"pok8s_tries", "4"},
           {"pok8s_max_tries", "5"},
           {"pok8s_fallback", "active"}});
  BootStatus s = status();
  EXPECT_EQ(s.reason,
            "the active image did not finish booting after 5 tries; booted the passive image");
  EXPECT_EQ(s.fallback, "active");
}

TEST_F(BootStatusFiles, PassiveChosenInTheMenu) {
  boot_state("passive");
  grubenv({{"pok8s_entry", "active"},
           {"pok8s_tries", "2"},
           {"pok8s_max_tries", "3"},
           {"pok8s_fallback", ""}});
  EXPECT_EQ(status().reason, "booted the passive image (chosen in the boot menu)");
}

TEST_F(BootStatusFiles, PassiveWithoutGrubEnvClaimsNoCause) {
  boot_state("passive");
  BootStatus s = status();
  EXPECT_EQ(s.reason, "booted the passive image");
  EXPECT_EQ(s.entry, std::nullopt);
  EXPECT_EQ(next_boot_entry(s), std::nullopt);
}

TEST_F(BootStatusFiles, RecoveryAfterActiveAndPassiveFailed) {
  boot_state("recovery");
  grubenv({{"pok8s_entry", "recovery"},
           {"pok8s_tries", "2"},
           {"pok8s_max_tries", "3"},
           {"pok8s_fallback", "passive"}});
  EXPECT_EQ(status().reason, "active and passive did not finish booting; booted recovery");
}

TEST_F(BootStatusFiles, RecoveryChosenInTheMenu) {
  boot_state("recovery");
  grubenv({{"pok8s_entry", "active"}, {"pok8s_tries", "3"}, {"pok8s_max_tries", "3"}});
  EXPECT_EQ(status().reason, "booted recovery (chosen in the boot menu)");
  boot_state("recovery");
  grubenv({{"pok8s_entry", "passive"}, {"pok8s_fallback", "active"}});
  EXPECT_EQ(status().reason, "booted recovery (chosen in the boot menu)");
}

TEST_F(BootStatusFiles, InvalidTriesAreUnknown) {
  boot_state("active");
  grubenv({{"pok8s_entry", "active"}, {"pok8s_tries", "10"}, {"pok8s_max_tries", "0"}});
  BootStatus s = status();
  EXPECT_EQ(s.tries, std::nullopt);
  EXPECT_EQ(s.max_tries, std::nullopt);
  grubenv({{"pok8s_tries", "x"}, {"pok8s_max_tries", ""}});
  s = status();
  EXPECT_EQ(s.tries, std::nullopt);
  EXPECT_EQ(s.max_tries, std::nullopt);
  grubenv({{"pok8s_tries", "0"}, {"pok8s_max_tries", "9"}});
  s = status();
  EXPECT_EQ(s.tries, 0);
  EXPECT_EQ(s.max_tries, 9);
}

TEST_F(BootStatusFiles, NextBootMovesOnWhenTheTriesAreUsedUp) {
  BootStatus s;
  s.entry = "active";
  s.tries = 0;
  EXPECT_EQ(next_boot_entry(s), "passive");
  s.entry = "passive";
  EXPECT_EQ(next_boot_entry(s), "recovery");
  s.entry = "recovery";
  EXPECT_EQ(next_boot_entry(s), "recovery");
  s.tries = 1;
  s.entry = "active";
  EXPECT_EQ(next_boot_entry(s), "active");
}

TEST_F(BootStatusFiles, ReadsTheVersionFromTheReleaseFile) {
  boot_state("active");
  EXPECT_EQ(status().version, "");
  util::write_file_atomic(release_, "# pok8s\nNAME=\"pok8s\"\nVERSION=\"1.2.0 \\\"lts\\\"\"\n");
  EXPECT_EQ(status().version, "1.2.0 \"lts\"");
  util::write_file_atomic(release_, "VERSION=1.3.0\nVERSION_ID=1.3\n");
  EXPECT_EQ(status().version, "1.3.0");
  util::write_file_atomic(release_, "VERSION='1.4 $x'\n");
  EXPECT_EQ(status().version, "1.4 $x");
  util::write_file_atomic(release_, "NAME=pok8s\nVERSION=\"1.5\n");
  EXPECT_EQ(format_error([&] { status(); }),
            "Failed to read " + release_.string() + ": line 2: VERSION has no closing \"");
}

TEST_F(BootStatusFiles, AMissingBootStateIsAnError) {
  EXPECT_THROW(status(), Error);
}

TEST_F(BootStatusFiles, JsonHasNullsForWhatIsUnknown) {
  boot_state("passive");
  util::write_file_atomic(release_, "VERSION=1.0\n");
  nlohmann::json j = boot_status_json(status());
  EXPECT_EQ(j["mode"], "passive");
  EXPECT_EQ(j["image"], "/cOS/passive.img");
  EXPECT_EQ(j["media_device"], "/dev/vda3");
  EXPECT_TRUE(j["entry"].is_null());
  EXPECT_TRUE(j["tries"].is_null());
  EXPECT_TRUE(j["next_entry"].is_null());
  EXPECT_EQ(j["reason"], "booted the passive image");
  EXPECT_EQ(j["version"], "1.0");

  grubenv({{"pok8s_entry", "passive"},
           {"pok8s_tries", "0"},
           {"pok8s_max_tries", "3"},
           {"pok8s_fallback", "active"}});
  j = boot_status_json(status());
  EXPECT_EQ(j["entry"], "passive");
  EXPECT_EQ(j["tries"], 0);
  EXPECT_EQ(j["max_tries"], 3);
  EXPECT_EQ(j["fallback"], "active");
  EXPECT_EQ(j["next_entry"], "recovery");
}

TEST_F(BootStatusFiles, MarkBootedResetsTheTriesInPlace) {
  boot_state("passive");
  grubenv({{"saved_entry", "x"},
           {"pok8s_entry", "passive"},
           {"pok8s_tries", "1"},
           {"pok8s_max_tries", "4"},
           {"pok8s_fallback", "active"}});
  struct stat before {};
  ASSERT_EQ(::stat(grubenv_.c_str(), &before), 0);
  EXPECT_TRUE(mark_booted(state_, grubenv_));
  struct stat after {};
  ASSERT_EQ(::stat(grubenv_.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino);
  EXPECT_EQ(read_grubenv(grubenv_)->vars,
            (std::vector<std::pair<std::string, std::string>>{{"saved_entry", "x"},
                                                              {"pok8s_entry", "passive"},
                                                              {"pok8s_tries", "4"},
                                                              {"pok8s_max_tries", "4"},
                                                              {"pok8s_fallback", "active"}}));
}

TEST_F(BootStatusFiles, MarkBootedDefaultsToThreeTries) {
  boot_state("active");
  grubenv({{"pok8s_entry", "active"}, {"pok8s_tries", "0"}, {"pok8s_max_tries", "many"}});
  EXPECT_TRUE(mark_booted(state_, grubenv_));
  GrubEnv env = *read_grubenv(grubenv_);
  EXPECT_EQ(env.get("pok8s_tries"), "3");
  EXPECT_EQ(env.get("pok8s_max_tries"), "many");  // not ours to fix
  grubenv({{"pok8s_entry", "active"}});
  EXPECT_TRUE(mark_booted(state_, grubenv_));
  EXPECT_EQ(read_grubenv(grubenv_)->vars, (std::vector<std::pair<std::string, std::string>>{
                                              {"pok8s_entry", "active"}, {"pok8s_tries", "3"}}));
}

TEST_F(BootStatusFiles, MarkBootedDoesNothingOnALiveBootOrWithoutGrubEnv) {
  boot_state("live");
  grubenv({{"pok8s_entry", "active"}, {"pok8s_tries", "1"}});
  std::string before = util::read_file(grubenv_);
  EXPECT_FALSE(mark_booted(state_, grubenv_));
  EXPECT_EQ(util::read_file(grubenv_), before);
  boot_state("active");
  EXPECT_FALSE(mark_booted(state_, dir_.path() / "missing"));
  EXPECT_FALSE(fs::exists(dir_.path() / "missing"));
}

TEST_F(BootStatusFiles, AnUpgradeArmsTheNewActiveWithFullTriesAndForgetsTheFallback) {
  grubenv({{"pok8s_entry", "passive"},
           {"pok8s_tries", "0"},
           {"pok8s_max_tries", "5"},
           {"pok8s_fallback", "active"}});
  struct stat before {};
  ASSERT_EQ(::stat(grubenv_.c_str(), &before), 0);
  EXPECT_TRUE(arm_new_active(grubenv_));
  struct stat after {};
  ASSERT_EQ(::stat(grubenv_.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino);  // GRUB's save_env writes into these blocks
  EXPECT_EQ(read_grubenv(grubenv_)->vars,
            (std::vector<std::pair<std::string, std::string>>{{"pok8s_entry", "active"},
                                                              {"pok8s_tries", "5"},
                                                              {"pok8s_max_tries", "5"},
                                                              {"pok8s_fallback", ""}}));
  EXPECT_FALSE(arm_new_active(dir_.path() / "missing"));
  EXPECT_FALSE(fs::exists(dir_.path() / "missing"));
}

namespace {

TEST(BootCounter, ComesOffTheNameOfACountedEntryOnly) {
  EXPECT_EQ(without_boot_counter("pok8s-active+3.efi"), "pok8s-active.efi");
  EXPECT_EQ(without_boot_counter("pok8s-active+0-3.efi"), "pok8s-active.efi");
  EXPECT_EQ(without_boot_counter("a+b+2-1.conf"), "a+b.conf");
  EXPECT_EQ(without_boot_counter("pok8s-active.efi"), std::nullopt);
  EXPECT_EQ(without_boot_counter("pok8s-active+.efi"), std::nullopt);
  EXPECT_EQ(without_boot_counter("pok8s-active+x-1.efi"), std::nullopt);
  EXPECT_EQ(without_boot_counter("pok8s-active+1-.efi"), std::nullopt);
  EXPECT_EQ(without_boot_counter("+1.efi"), std::nullopt);
  EXPECT_EQ(without_boot_counter(".+2-1."), std::nullopt);  // found by fuzz_boot_count_path
}

// efivarfs' file: four bytes of attributes, then the UTF-16LE string with its NUL.
void write_efivar(const fs::path& dir, std::string_view value) {
  std::string raw("\x06\0\0\0", 4);
  for (char c : value) raw += std::string{c, '\0'};
  raw += std::string(2, '\0');
  util::write_file_atomic(dir / fmt::format("LoaderBootCountPath-{}", kLoaderVarsGuid), raw);
}

TEST(BootCounter, TheBootedEntryIsRenamedWithoutItsCounter) {
  util::TempDir dir = util::TempDir::scratch();
  fs::path efivars = dir.path() / "efivars", esp = dir.path() / "esp";
  util::make_dirs(efivars);
  EXPECT_EQ(loader_boot_count_path(efivars), std::nullopt);
  write_efivar(efivars, "\\EFI\\Linux\\pok8s-active+2-1.efi");
  auto counted = loader_boot_count_path(efivars);
  ASSERT_EQ(counted, "EFI/Linux/pok8s-active+2-1.efi");
  util::make_dirs(esp / "EFI/Linux");
  util::write_file_atomic(esp / *counted, "uki");
  EXPECT_EQ(bless_boot_entry(esp, *counted), "EFI/Linux/pok8s-active.efi");
  EXPECT_EQ(util::read_file(esp / "EFI/Linux/pok8s-active.efi"), "uki");
  EXPECT_FALSE(fs::exists(esp / *counted));
  // Gone already (blessed twice): named.
  try {
    bless_boot_entry(esp, *counted);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pok8s-active+2-1.efi as good"), std::string::npos)
        << e.what();
  }
}

TEST(BootCounter, AVariableThatIsNotACountedEntryPathIsRefused) {
  util::TempDir dir = util::TempDir::scratch();
  for (std::string_view bad :
       {"\\EFI\\Linux\\pok8s-active.efi", "\\EFI\\..\\x+1.efi", "\\EFI/x+1.efi", ""}) {
    SCOPED_TRACE(bad);
    write_efivar(dir.path(), bad);
    try {
      loader_boot_count_path(dir.path());
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kFormat);
      EXPECT_NE(std::string(e.what()).find("LoaderBootCountPath"), std::string::npos) << e.what();
    }
  }
  util::write_file_atomic(dir.path() / fmt::format("LoaderBootCountPath-{}", kLoaderVarsGuid),
                          "abc");
  EXPECT_THROW(loader_boot_count_path(dir.path()), Error);
}

TEST_F(BootStatusFiles, MarkingAnEntryBootedDoesNothingLiveOrUncounted) {
  util::Path efivars = dir_.path() / "efivars";
  util::make_dirs(efivars);
  boot_state("active");
  EXPECT_EQ(mark_entry_booted(state_, efivars, dir_.path()), std::nullopt);
  write_efivar(efivars, "\\EFI\\Linux\\pok8s-active+2-1.efi");
  boot_state("live");
  EXPECT_EQ(mark_entry_booted(state_, efivars, dir_.path()), std::nullopt);
}

}  // namespace
