// `pok8s convert` without root: run as an ordinary user with a subordinate id range, pok8s
// continues in a user namespace, and the Debian fixture is converted with its real apt. The
// result must carry the image's own owners (system groups), its file capabilities, and never
// one of the host's subordinate ids. A user without a range gets one clear line and nothing
// written.
#include <fmt/format.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "e2e/pok8s_cli.h"
#include "integration/registry_harness.h"
#include "integration/shell.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

using namespace pok8s;
using namespace pok8s::testing;
namespace fs = std::filesystem;

namespace {

// The test's own user, made once on the machine, with a subordinate range far from others'.
constexpr const char* kUser = "pok8s-rootless-test";
constexpr unsigned kSubStart = 3000000;

// name -> id from an image's /etc/passwd or /etc/group.
std::map<std::string, unsigned> ids(const util::Path& file) {
  std::map<std::string, unsigned> out;
  std::string text = util::read_file(file);
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text.size() : nl + 1;
    auto c1 = line.find(':');
    auto c2 = line.find(':', c1 + 1);
    auto c3 = line.find(':', c2 + 1);
    if (c3 == std::string::npos) continue;
    out[line.substr(0, c1)] = static_cast<unsigned>(std::stoul(line.substr(c2 + 1, c3 - c2 - 1)));
  }
  return out;
}

class Rootless : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ASSERT_EQ(::geteuid(), 0u) << "the rootless tests need root to make their user";
    if (!::getpwnam(kUser)) {
      ASSERT_EQ(
          sh(fmt::format("useradd --system --no-create-home --shell /usr/sbin/nologin {}", kUser))
              .status,
          0);
    }
    std::string subuid;
    try {
      subuid = util::read_file("/etc/subuid");
    } catch (const Error&) {
    }
    if (subuid.find(std::string(kUser) + ":") == std::string::npos) {
      ASSERT_EQ(sh(fmt::format("usermod --add-subuids {0}-{1} --add-subgids {0}-{1} {2}", kSubStart,
                               kSubStart + 65535, kUser))
                    .status,
                0);
    }
  }

  void SetUp() override {
    // What an installed pok8s looks like, where the user can reach it: the build tree may be
    // under a directory only root can enter.
    fs::permissions(dir.path(), fs::perms(0755));
    util::Path prefix = dir.path() / "prefix";
    fs::create_directories(prefix / "bin");
    util::Path bin = util::Path(POK8S_TEST_BIN).parent_path();
    for (const char* name : {"pok8s", "pok8s-agent", "pok8s-init"})
      fs::copy_file(bin / name, prefix / "bin" / name);
    fs::create_directories(prefix / "share");
    fs::copy(util::Path(POK8S_TEST_SOURCE_DIR) / "share/pok8s", prefix / "share/pok8s",
             fs::copy_options::recursive);
    pok8s_bin = (prefix / "bin/pok8s").string();
    fs::create_directories(dir.path() / "work");
  }

  // Runs pok8s as `user` (with the work directory its own), returning status and output.
  util::ProcessResult run_as(const std::string& user, const std::vector<std::string>& args) {
    sh(fmt::format("chown -R {0}: {1}", user, (dir.path() / "work").string()));
    const struct passwd* pw = ::getpwnam(user.c_str());
    if (!pw) throw std::runtime_error("no user " + user);
    std::vector<std::string> argv = {"setpriv",
                                     "--reuid",
                                     std::to_string(pw->pw_uid),
                                     "--regid",
                                     std::to_string(pw->pw_gid),
                                     "--init-groups",
                                     "env",
                                     "HOME=" + (dir.path() / "work").string(),
                                     "SOURCE_DATE_EPOCH=1700000000",
                                     pok8s_bin,
                                     "--cache",
                                     (dir.path() / "work/cache").string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return util::run_process(argv, {.env = std::nullopt, .output_limit = 4u << 20});
  }

  std::string layout(const std::string& tag) {
    return "oci:" + (dir.path() / "work/layout").string() + ":" + tag;
  }

  util::TempDir dir = util::TempDir::scratch("/var/tmp");
  std::string pok8s_bin;
};

TEST_F(Rootless, ConvertsTheDebianBaseWithTheImagesOwnOwners) {
  std::string tar =
      run({"bash", std::string(POK8S_TEST_SOURCE_DIR) + "/tests/fixtures/debian-base.sh"});
  tar.erase(tar.find_last_not_of('\n') + 1);
  auto imported = run_pok8s((dir.path() / "work/cache").string(),
                            {"-q", "image", "import", tar, layout("base")});
  ASSERT_EQ(imported.status, 0) << imported.output;

  auto r = run_as(kUser, {"convert", layout("base"), "oci:" + (dir.path() / "work/layout").string(),
                          "--version", "v0.1.0"});
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("Converted"), std::string::npos) << r.output;
  // Everything the user namespace made was cleaned up inside it.
  util::Path scratch = dir.path() / "work/cache/tmp";
  if (fs::exists(scratch))
    for (const auto& e : fs::directory_iterator(scratch)) ADD_FAILURE() << "left: " << e.path();

  util::Path root = dir.path() / "rootfs";
  auto unpacked =
      run_pok8s((dir.path() / "cache").string(),
                {"-q", "image", "unpack", layout("12-core-amd64-generic-v0.1.0"), root.string()});
  ASSERT_EQ(unpacked.status, 0) << unpacked.output;
  EXPECT_NE(util::read_file(root / "etc/pok8s-release").find("VERSION=\"v0.1.0\""),
            std::string::npos);

  auto groups = ids(root / "etc/group");
  auto owner = [&](const char* path) {
    struct stat st {};
    EXPECT_EQ(::lstat((root / path).c_str(), &st), 0) << path;
    return st;
  };
  struct stat journal = owner("var/log/journal");
  EXPECT_EQ(journal.st_gid, groups.at("systemd-journal"));
  EXPECT_TRUE(journal.st_mode & S_ISGID);
  struct stat helper = owner("usr/lib/dbus-1.0/dbus-daemon-launch-helper");
  EXPECT_EQ(helper.st_gid, groups.at("messagebus"));
  EXPECT_EQ(helper.st_mode & 07777, 04754u);
  EXPECT_EQ(owner("etc/shadow").st_gid, groups.at("shadow"));
  // File capabilities are written in the namespace as the kernel's v2 form, as root writes them.
  unsigned char cap[24] = {};
  ssize_t n = ::getxattr((root / "usr/bin/ping").c_str(), "security.capability", cap, sizeof cap);
  ASSERT_EQ(n, 20) << "usr/bin/ping has no v2 file capability";
  EXPECT_EQ(cap[3], 0x02);                       // VFS_CAP_REVISION_2
  EXPECT_TRUE(cap[4 + 13 / 8] & (1 << 13 % 8));  // CAP_NET_RAW permitted

  // No host id leaked into the image: every owner is one of the image's ids.
  std::size_t checked = 0;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it) {
    struct stat st {};
    ASSERT_EQ(::lstat(it->path().c_str(), &st), 0);
    ++checked;
    EXPECT_LT(st.st_uid, 65536u) << it->path();
    EXPECT_LT(st.st_gid, 65536u) << it->path();
    if (st.st_uid >= 65536 || st.st_gid >= 65536) break;
  }
  EXPECT_GT(checked, 5000u);
}

TEST_F(Rootless, AUserWithoutASubordinateRangeIsToldHowToAddOne) {
  // nobody has no range on any sane machine; the source need not even exist to be refused
  // first.
  ASSERT_EQ(util::read_file("/etc/subuid").find("nobody:"), std::string::npos);
  util::Path dst = dir.path() / "work/out";
  auto r = run_as("nobody", {"convert", layout("base"), "oci:" + dst.string(), "--version", "v1"});
  EXPECT_EQ(r.status, 7) << r.output;
  EXPECT_NE(r.output.find("user nobody has no subordinate id range in /etc/subuid"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("usermod --add-subuids"), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_FALSE(fs::exists(dst));
}

TEST_F(Rootless, BuildConvertsThroughTheSameNamespace) {
  // `pok8s build` of an unconverted image converts first, so it takes the same way in.
  util::Path tree = dir.path() / "tree";
  fs::create_directories(tree / "etc");
  util::write_file_atomic(tree / "etc/os-release", "ID=debian\nVERSION_ID=12\n");
  auto imported = run_pok8s((dir.path() / "work/cache").string(),
                            {"-q", "image", "import", "dir:" + tree.string(), layout("tiny")});
  ASSERT_EQ(imported.status, 0) << imported.output;
  util::Path out = dir.path() / "work/iso";
  auto r = run_as("nobody", {"build", layout("tiny"), "-o", out.string(), "--version", "v1"});
  EXPECT_EQ(r.status, 7) << r.output;
  EXPECT_NE(r.output.find("Converting without root: continuing in a user namespace"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("user nobody has no subordinate id range"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
