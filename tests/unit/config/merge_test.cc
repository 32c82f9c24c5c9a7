// `config show`: files merge in order — stage steps appended, maps key by key, the later file
// winning — and a broken file is refused as the agent refuses it.
#include "pok8s/config/merge.h"

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

using namespace pok8s;
using namespace pok8s::config;

namespace {

class Merge : public ::testing::Test {
 protected:
  util::Path file(const std::string& name, const std::string& text) {
    util::Path p = dir_.path() / name;
    util::write_file_atomic(p, text);
    return p;
  }
  util::TempDir dir_ = util::TempDir::scratch();
};

TEST_F(Merge, StepsAppendAndLaterFilesWinKeyByKey) {
  file("10_defaults.yaml",
       "#cloud-config\nhostname: first\ninstall:\n  device: auto\n  reboot: true\n"
       "k3s:\n  enabled: true\n  args: [--a]\nstages:\n  boot:\n    - name: one\n"
       "      commands: [echo 1]\n");
  file("20_user.yaml",
       "#cloud-config\nhostname: second\ninstall:\n  device: /dev/vdb\nk3s:\n  args: [--b]\n"
       "stages:\n  boot:\n    - name: two\n      commands: [echo 2]\n  network:\n"
       "    - name: three\n      commands: [echo 3]\n");
  file("30_notes.txt.yaml", "not a cloud-config: skipped in a directory\n");
  MergedConfig m = merge_cloud_config_files(expand_config_paths({dir_.path()}));
  ASSERT_EQ(m.sources.size(), 2u);
  EXPECT_EQ(m.yaml.rfind("#cloud-config\n", 0), 0u);
  YAML::Node y = YAML::Load(m.yaml);
  EXPECT_EQ(y["hostname"].as<std::string>(), "second");
  EXPECT_EQ(y["install"]["device"].as<std::string>(), "/dev/vdb");
  EXPECT_TRUE(y["install"]["reboot"].as<bool>());
  EXPECT_TRUE(y["k3s"]["enabled"].as<bool>());
  ASSERT_EQ(y["k3s"]["args"].size(), 1u);  // a list outside the stages is replaced whole
  EXPECT_EQ(y["k3s"]["args"][0].as<std::string>(), "--b");
  ASSERT_EQ(y["stages"]["boot"].size(), 2u);
  EXPECT_EQ(y["stages"]["boot"][0]["name"].as<std::string>(), "one");
  EXPECT_EQ(y["stages"]["boot"][1]["name"].as<std::string>(), "two");
  EXPECT_EQ(y["stages"]["network"][0]["name"].as<std::string>(), "three");
}

TEST_F(Merge, NothingToMergeIsAnEmptyDocument) {
  MergedConfig m = merge_cloud_config_files(expand_config_paths({dir_.path() / "missing"}));
  EXPECT_TRUE(m.sources.empty());
  EXPECT_TRUE(YAML::Load(m.yaml).IsMap());
}

TEST_F(Merge, ABrokenFileIsRefusedNamingFileAndLine) {
  file("10.yaml", "#cloud-config\nstages: [x]\n");
  try {
    merge_cloud_config_files(expand_config_paths({dir_.path()}));
    FAIL() << "a broken file was merged";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("10.yaml"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
}

}  // namespace
