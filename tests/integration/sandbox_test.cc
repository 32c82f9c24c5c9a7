// The sandbox runs the image's own programs as pid 1 of a private namespace, chrooted in the
// tree, with /proc /dev /tmp /run of its own; nothing it mounts or writes there reaches the host.
#include "pok8s/convert/sandbox.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "integration/registry_harness.h"
#include "pok8s/util/error.h"

using namespace pok8s;
namespace fs = std::filesystem;

namespace {

// The Debian fixture extracted into a fresh directory (as root, owners kept).
class Sandbox : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "the sandbox tests need root";
    std::string tar = pok8s::testing::run(
        {"bash", std::string(POK8S_TEST_SOURCE_DIR) + "/tests/fixtures/debian-base.sh"});
    tar.erase(tar.find_last_not_of('\n') + 1);
    root = dir.path() / "root";
    fs::create_directories(root);
    pok8s::testing::run({"tar", "-xf", tar, "-C", root.string()});
  }
  util::TempDir dir = util::TempDir::scratch();
  util::Path root;
};

TEST_F(Sandbox, RunsAsPidOneChrootedWithItsOwnApiFilesystems) {
  std::vector<std::string> lines;
  convert::SandboxOptions options;
  options.env = {{"POK8S_PROBE", "yes"}};
  options.output = [&](std::string_view line) { lines.emplace_back(line); };
  auto r = convert::run_in_root(
      root,
      {"/bin/sh", "-c",
       "echo pid=$$; echo probe=$POK8S_PROBE; grep ^ID= /etc/os-release; "
       "test -c /dev/null && echo devnull; touch /tmp/t /run/r /dev/d && echo wrote; "
       "echo x > /dev/null && echo null-ok; exit 3"},
      options);
  EXPECT_EQ(r.exit_code, 3);
  auto has = [&](const std::string& s) {
    return std::find(lines.begin(), lines.end(), s) != lines.end();
  };
  EXPECT_TRUE(has("pid=1")) << r.tail;
  EXPECT_TRUE(has("probe=yes")) << r.tail;
  EXPECT_TRUE(has("ID=debian")) << r.tail;
  EXPECT_TRUE(has("devnull")) << r.tail;
  EXPECT_TRUE(has("wrote")) << r.tail;
  EXPECT_TRUE(has("null-ok")) << r.tail;
  // The tmpfs mounts and device nodes went away with the namespace.
  EXPECT_FALSE(fs::exists(root / "tmp/t"));
  EXPECT_FALSE(fs::exists(root / "run/r"));
  EXPECT_FALSE(fs::exists(root / "dev/d"));
  std::string mounts = util::read_file("/proc/self/mounts");
  EXPECT_EQ(mounts.find(root.string()), std::string::npos);
}

TEST_F(Sandbox, WritesToTheTreeStay) {
  auto r = convert::run_in_root(root, {"/bin/sh", "-c", "echo hello > /etc/pok8s-probe"}, {});
  EXPECT_EQ(r.exit_code, 0) << r.tail;
  EXPECT_EQ(util::read_file(root / "etc/pok8s-probe"), "hello\n");
  fs::remove(root / "etc/pok8s-probe");
}

TEST_F(Sandbox, NamesAMissingCommandAndItsExitCode) {
  try {
    convert::run_in_root_checked(root, {"no-such-tool", "--flag"}, {}, "install packages");
    FAIL();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("Failed to install packages: no-such-tool exited with 125"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("No such file or directory"), std::string::npos) << msg;
  }
}

TEST_F(Sandbox, GivesTheHostsResolvConfWithoutChangingTheImagesFile) {
  std::string before = util::read_file(root / "etc/resolv.conf");
  util::write_file_atomic(dir.path() / "resolv.conf", "nameserver 192.0.2.53\n");
  std::vector<std::string> lines;
  convert::SandboxOptions options;
  options.resolv_conf = dir.path() / "resolv.conf";
  options.output = [&](std::string_view line) { lines.emplace_back(line); };
  auto r = convert::run_in_root(root, {"cat", "/etc/resolv.conf"}, options);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(lines, std::vector<std::string>{"nameserver 192.0.2.53"});
  EXPECT_EQ(util::read_file(root / "etc/resolv.conf"), before);

  // A missing file is provided for the run and removed after.
  fs::remove(root / "etc/resolv.conf");
  lines.clear();
  r = convert::run_in_root(root, {"cat", "/etc/resolv.conf"}, options);
  EXPECT_EQ(lines, std::vector<std::string>{"nameserver 192.0.2.53"});
  EXPECT_FALSE(fs::exists(fs::symlink_status(root / "etc/resolv.conf")));
  util::write_file_atomic(root / "etc/resolv.conf", before);
}

}  // namespace
