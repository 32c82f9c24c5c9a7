// The pok8s-sysimage bundle: ldd's output read strictly, and the real bundle of the built
// binary runs with nothing but its own loader and libraries.
#include "pok8s/convert/sysimage_bundle.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "pok8s/util/error.h"
#include "pok8s/util/install_paths.h"
#include "pok8s/util/process.h"

using namespace pok8s;
using namespace pok8s::convert;

namespace {

TEST(SysimageBundle, LddOutputNamesEachLibraryBySonameAndTheLoaderByItsFileName) {
  auto libs = parse_ldd(
      "\tlinux-vdso.so.1 (0x00007ffd)\n"
      "\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f38)\n"
      "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f38)\n"
      "\t/lib64/ld-linux-x86-64.so.2 (0x00007f38)\n",
      "pok8s-sysimage");
  EXPECT_EQ(libs, (std::vector<std::pair<std::string, std::string>>{
                      {"libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"},
                      {"libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"},
                      {"ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2"}}));
}

TEST(SysimageBundle, AMissingLibraryIsRefusedByName) {
  try {
    parse_ldd("\tlibgone.so.3 => not found\n", "pok8s-sysimage");
    FAIL() << "a missing library was bundled";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the host has no libgone.so.3"), std::string::npos)
        << e.what();
  }
}

// The bundle copied to a directory runs from there: its loader, its libraries, no others.
TEST(SysimageBundle, TheBundleRunsOnItsOwn) {
  util::Path binary = util::node_binary("pok8s-sysimage");
  util::TempDir dir = util::TempDir::scratch();
  std::string loader;
  for (const auto& f : sysimage_bundle(binary)) {
    util::Path to = dir.path() / f.path;
    util::make_dirs(to.parent_path());
    std::filesystem::copy_file(f.source, to);
    if (to.filename().string().starts_with("ld-linux")) loader = to;
  }
  ASSERT_FALSE(loader.empty());
  util::Path root = dir.path() / "usr/lib/pok8s/sysimage";
  // --library-path replaces LD_LIBRARY_PATH: only the bundle's libraries are found.
  auto r = util::run_process({loader, "--library-path", (root / "lib").string(),
                              (root / "pok8s-sysimage").string(), "--version"});
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("pok8s-sysimage"), std::string::npos) << r.output;
}

}  // namespace
