// Bad inputs to `pok8s convert` and `pok8s build` are refused with one clear line, a non-zero
// exit, and nothing written: an image without os-release, an unknown family, a Kubernetes
// binary with the wrong sha256 (file and URL), a cloud-config with a typo.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "e2e/pok8s_cli.h"
#include "integration/registry_harness.h"
#include "pok8s/util/file.h"

using namespace pok8s;
using namespace pok8s::testing;
namespace fs = std::filesystem;

namespace {

class ConvertErrors : public ::testing::Test {
 protected:
  // A tiny root filesystem imported as oci:<work>/layout:<tag>.
  std::string image(const std::string& tag, const std::string& os_release,
                    const std::vector<std::string>& extra_args = {}) {
    util::Path tree = dir.path() / ("tree-" + tag);
    fs::create_directories(tree / "etc");
    fs::create_directories(tree / "bin");
    if (!os_release.empty()) util::write_file_atomic(tree / "etc/os-release", os_release);
    std::vector<std::string> args = {"image", "import", "dir:" + tree.string(), layout(tag)};
    args.insert(args.end(), extra_args.begin(), extra_args.end());
    auto r = run_pok8s(cache(), args);
    EXPECT_EQ(r.status, 0) << r.output;
    return layout(tag);
  }
  std::string layout(const std::string& tag) {
    return "oci:" + (dir.path() / "layout").string() + ":" + tag;
  }
  std::string cache() { return (dir.path() / "cache").string(); }
  // Nothing half-written: no destination layout, no leftovers in the cache's scratch space.
  void expect_nothing_written(const util::Path& dst) {
    EXPECT_FALSE(fs::exists(dst));
    util::Path tmp = dir.path() / "cache" / "tmp";
    if (fs::exists(tmp))
      for (const auto& e : fs::directory_iterator(tmp))
        ADD_FAILURE() << "left behind: " << e.path();
  }

  util::TempDir dir = util::TempDir::scratch();
};

TEST_F(ConvertErrors, RefusesAnImageWithoutOsRelease) {
  std::string src = image("bare", "");
  util::Path dst = dir.path() / "out";
  auto r = run_pok8s(cache(), {"convert", src, "oci:" + dst.string(), "--version", "v1"});
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("has no /etc/os-release"), std::string::npos) << r.output;
  expect_nothing_written(dst);
}

TEST_F(ConvertErrors, NamesAnUnknownFamily) {
  std::string src = image("gentoo", "ID=gentoo\nID_LIKE=funtoo\nNAME=Gentoo\n");
  util::Path dst = dir.path() / "out";
  auto r = run_pok8s(cache(), {"convert", src, "oci:" + dst.string(), "--version", "v1"});
  EXPECT_EQ(r.status, 7) << r.output;
  EXPECT_NE(r.output.find("gentoo"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("funtoo"), std::string::npos) << r.output;
  expect_nothing_written(dst);
}

TEST_F(ConvertErrors, RefusesAKubernetesBinaryWithTheWrongSha256) {
  std::string src = image("debian", "ID=debian\nVERSION_ID=12\n");
  util::write_file_atomic(dir.path() / "k3s", "#!/bin/sh\necho k3s\n", 0755);
  util::Path dst = dir.path() / "out";
  auto r =
      run_pok8s(cache(), {"convert", src, "oci:" + dst.string(), "--version", "v1", "--variant",
                          "standard", "--k8s-version", "v1.31.2+k3s1", "--k8s-binary",
                          (dir.path() / "k3s").string(), "--k8s-sha256", std::string(64, 'a')});
  EXPECT_EQ(r.status, 6) << r.output;
  EXPECT_NE(r.output.find("Failed to verify"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(std::string(64, 'a')), std::string::npos) << r.output;
  expect_nothing_written(dst);
}

TEST_F(ConvertErrors, RefusesADownloadWithTheWrongSha256AndKeepsNothing) {
  std::string src = image("debian", "ID=debian\nVERSION_ID=12\n");
  util::Path www = dir.path() / "www";
  fs::create_directories(www);
  util::write_file_atomic(www / "k3s", "#!/bin/sh\necho k3s\n", 0755);
  int port = free_port();
  ChildProcess server({"/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1",
                       "--directory", www.string(), std::to_string(port)},
                      dir.path() / "http.log");
  for (int i = 0; i < 100 && http_status(port, "/k3s") != 200; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  util::Path dst = dir.path() / "out";
  std::string url = "http://127.0.0.1:" + std::to_string(port) + "/k3s";
  auto r = run_pok8s(cache(), {"convert", src, "oci:" + dst.string(), "--version", "v1",
                               "--variant", "standard", "--k8s-version", "v1.31.2+k3s1",
                               "--k8s-binary", url, "--k8s-sha256", std::string(64, 'b')});
  EXPECT_EQ(r.status, 6) << r.output;
  EXPECT_NE(r.output.find("Failed to verify " + url), std::string::npos) << r.output;
  expect_nothing_written(dst);

  // A URL without a pinned sha256 is refused before anything is fetched.
  r = run_pok8s(cache(), {"convert", src, "oci:" + dst.string(), "--version", "v1", "--variant",
                          "standard", "--k8s-version", "v1", "--k8s-binary", url});
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("--k8s-sha256"), std::string::npos) << r.output;
}

TEST_F(ConvertErrors, BuildRefusesACloudConfigWithAWrongValueNamingFileLineAndKey) {
  // An image that says it is converted: the cloud-config is checked before any work.
  std::string src = image("converted", "ID=debian\n", {"--label", "io.pok8s.version=v1"});
  util::Path config = dir.path() / "cloud.yaml";
  util::write_file_atomic(config,
                          "#cloud-config\nstages:\n  boot:\n    - name: x\n      commands: true\n");
  util::Path out = dir.path() / "out";
  auto r = run_pok8s(cache(), {"build", src, "--artifact", "iso", "-o", out.string(), "--config",
                               config.string()});
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find(config.string() + ": line 5: stages.boot[0].commands must be a list"),
            std::string::npos)
      << r.output;
  expect_nothing_written(out);
}

TEST_F(ConvertErrors, BuildOfAnUnconvertedImageAsksForTheConvertOptions) {
  std::string src = image("plain", "ID=debian\n");
  util::Path out = dir.path() / "out";
  auto r = run_pok8s(cache(), {"build", src, "--artifact", "iso", "-o", out.string()});
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("pass --version"), std::string::npos) << r.output;
  expect_nothing_written(out);
}

}  // namespace
