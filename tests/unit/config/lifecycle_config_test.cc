// The Kairos upgrade and reset blocks: what pok8s-agent takes from them, what it names as
// ignored, and typos refused with the file, the line and a did-you-mean.
#include "pok8s/config/lifecycle_config.h"

#include <gtest/gtest.h>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::config;

namespace {

std::vector<CloudConfig> parse(std::initializer_list<const char*> docs) {
  std::vector<CloudConfig> out;
  int i = 0;
  for (const char* d : docs) out.push_back(parse_cloud_config(d, "c" + std::to_string(++i)));
  return out;
}

TEST(LifecycleConfig, DefaultsWithoutTheBlocks) {
  auto configs = parse({"#cloud-config\nhostname: x\n"});
  UpgradeConfig u = read_upgrade_config(configs);
  EXPECT_FALSE(u.recovery || u.reboot || u.poweroff);
  ResetConfig r = read_reset_config(configs);
  EXPECT_TRUE(r.reset_persistent);
  EXPECT_FALSE(r.reset_oem || r.reboot || r.poweroff);
}

TEST(LifecycleConfig, LaterFilesWinKeyByKeyAndKairosExtrasAreNamed) {
  auto configs =
      parse({"#cloud-config\nupgrade:\n  reboot: true\n  recovery: true\n"
             "reset:\n  reset-persistent: false\n  reset-oem: true\n",
             "#cloud-config\nupgrade:\n  recovery: false\n  system:\n    uri: x\n"
             "reset:\n  poweroff: true\n"});
  UpgradeConfig u = read_upgrade_config(configs);
  EXPECT_TRUE(u.reboot);
  EXPECT_FALSE(u.recovery);
  ASSERT_EQ(u.warnings.size(), 1u);
  EXPECT_EQ(u.warnings[0],
            "cloud-config c2: line 4: upgrade.system is ignored: pok8s does not implement it");
  ResetConfig r = read_reset_config(configs);
  EXPECT_FALSE(r.reset_persistent);
  EXPECT_TRUE(r.reset_oem);
  EXPECT_TRUE(r.poweroff);
  EXPECT_TRUE(r.warnings.empty());
  // Both sections are read now: no "not implemented yet" warning for them.
  EXPECT_TRUE(ignored_section_warnings(configs[0]).empty());
}

TEST(LifecycleConfig, TyposAndWrongTypesAreRefusedNamingFileAndLine) {
  auto expect_refused = [](const char* doc, const std::string& want, bool reset) {
    auto configs = parse({doc});
    try {
      if (reset)
        read_reset_config(configs);
      else
        read_upgrade_config(configs);
      FAIL() << "accepted: " << doc;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  expect_refused("#cloud-config\nreset:\n  reset-persistant: false\n",
                 "c1: line 3: unknown key \"reset-persistant\" in reset; did you mean "
                 "\"reset-persistent\"?",
                 true);
  expect_refused("#cloud-config\nupgrade:\n  reboot: sometimes\n", "c1: line 3", false);
  expect_refused("#cloud-config\nupgrade:\n  reboot: true\n  poweroff: true\n",
                 "upgrade.reboot and upgrade.poweroff are both true", false);
  expect_refused("#cloud-config\nreset: [a]\n", "c1: line 2", true);
}

}  // namespace
