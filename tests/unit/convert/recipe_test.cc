// Every supported family, from a real os-release, selects a recipe that installs a kernel with
// the family's own package manager; recipes are strict data.
#include "pok8s/convert/recipe.h"

#include <gtest/gtest.h>

#include "pok8s/rootfs/image_file.h"
#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::convert;

namespace {

const util::Path kData = util::Path(POK8S_TEST_SOURCE_DIR) / "share/pok8s";
const util::Path kOsRelease = util::Path(POK8S_TEST_SOURCE_DIR) / "tests/fixtures/os-release";

struct Case {
  const char* os_release;
  Family family;
  const char* package_manager;
  InitSystem init;
  const char* kernel;
};

class RecipeSelection : public ::testing::TestWithParam<Case> {};

TEST_P(RecipeSelection, PicksTheFamilysRecipeWithAKernel) {
  const Case& c = GetParam();
  auto os = rootfs::parse_os_release(util::read_file(kOsRelease / c.os_release));
  Distro distro = detect_distro(os, c.os_release);
  EXPECT_EQ(distro.family, c.family);
  Recipe recipe = load_recipe(distro.family, kData);
  EXPECT_EQ(recipe.family, c.family);
  EXPECT_EQ(recipe.install.at(0), c.package_manager);
  EXPECT_EQ(recipe.init, c.init);
  auto packages = recipe.packages_for("amd64");
  EXPECT_NE(std::find(packages.begin(), packages.end(), c.kernel), packages.end())
      << "no kernel package " << c.kernel << " in " << recipe.name;
  EXPECT_FALSE(recipe.services.empty());
}

INSTANTIATE_TEST_SUITE_P(
    Families, RecipeSelection,
    ::testing::Values(Case{"debian-12", Family::kDebian, "apt-get", InitSystem::kSystemd,
                           "linux-image-amd64"},
                      Case{"ubuntu-24.04", Family::kUbuntu, "apt-get", InitSystem::kSystemd,
                           "linux-image-generic"},
                      Case{"alpine-3.20", Family::kAlpine, "apk", InitSystem::kOpenrc, "linux-lts"},
                      Case{"fedora-40", Family::kFedora, "dnf", InitSystem::kSystemd, "kernel"},
                      Case{"rocky-9", Family::kRhel, "dnf", InitSystem::kSystemd, "kernel"},
                      Case{"almalinux-9", Family::kRhel, "dnf", InitSystem::kSystemd, "kernel"},
                      Case{"centos-stream-9", Family::kRhel, "dnf", InitSystem::kSystemd, "kernel"},
                      Case{"opensuse-leap-15.6", Family::kOpensuse, "zypper", InitSystem::kSystemd,
                           "kernel-default"},
                      Case{"opensuse-tumbleweed", Family::kOpensuse, "zypper", InitSystem::kSystemd,
                           "kernel-default"},
                      Case{"arch", Family::kArch, "pacman", InitSystem::kSystemd, "linux"}),
    [](const auto& info) {
      std::string name = info.param.os_release;
      for (char& ch : name)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return name;
    });

TEST(RecipeSelection, RefusesAnUnknownFamilyNamingIt) {
  auto os = rootfs::parse_os_release(util::read_file(kOsRelease / "gentoo"));
  try {
    detect_distro(os, "oci:gentoo:latest");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("gentoo"), std::string::npos);
  }
}

TEST(ParseRecipe, ArchitecturePackagesFollowTheCommonOnes) {
  Recipe r = parse_recipe(
      "family: debian\npackage_manager: {install: [apt-get, install]}\n"
      "packages: {all: [a, b], arm64: [k-arm]}\n",
      "t.yaml");
  EXPECT_EQ(r.packages_for("arm64"), (std::vector<std::string>{"a", "b", "k-arm"}));
  EXPECT_EQ(r.packages_for("amd64"), (std::vector<std::string>{"a", "b"}));
}

TEST(ParseRecipe, RefusesUnknownKeysWithTheirLine) {
  try {
    parse_recipe("family: debian\npackage_manager: {install: [apt]}\npackgaes: {all: [a]}\n",
                 "bad.yaml");
    FAIL();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("bad.yaml"), std::string::npos) << msg;
    EXPECT_NE(msg.find("line 3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("packgaes"), std::string::npos) << msg;
  }
}

TEST(ParseRecipe, RefusesRelativeOrEscapingPaths) {
  EXPECT_THROW(parse_recipe("family: debian\npackage_manager: {install: [apt]}\n"
                            "files: [{path: etc/x, content: y}]\n",
                            "t"),
               Error);
  EXPECT_THROW(parse_recipe("family: debian\npackage_manager: {install: [apt]}\n"
                            "remove: [/var/../../etc]\n",
                            "t"),
               Error);
  EXPECT_THROW(parse_recipe("family: debian\npackage_manager: {install: [apt]}\n"
                            "files: [{path: /x, mode: '999'}]\n",
                            "t"),
               Error);
  EXPECT_THROW(parse_recipe("family: beos\npackage_manager: {install: [x]}\n", "t"), Error);
  EXPECT_THROW(parse_recipe("family: debian\n", "t"), Error);
  EXPECT_THROW(parse_recipe("[unclosed", "t"), Error);
}

}  // namespace
