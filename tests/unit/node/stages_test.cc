#include "pok8s/node/stages.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "pok8s/node/command.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

namespace pok8s::node {
namespace {

using Kind = StageEvent::Kind;

class Stages : public ::testing::Test {
 protected:
  void SetUp() override {
    context_.root = root();
    context_.proc_sys = root() / "proc-sys";
    context_.sink = [this](const StageEvent& e) { events_.push_back(e); };
  }
  const util::Path& root() const { return dir_.path(); }

  StageResult run(const std::string& stage, const std::vector<std::string>& texts) {
    std::vector<config::CloudConfig> configs;
    for (std::size_t i = 0; i < texts.size(); ++i)
      configs.push_back(config::parse_cloud_config(texts[i], fmt::format("/oem/{}.yaml", i)));
    return run_stage(stage, configs, context_);
  }

  // A root with a static busybox as /bin/sh, so commands can run chrooted into it.
  void install_shell() {
    const char* busybox = "/usr/bin/busybox";
    if (::access(busybox, X_OK) != 0 || ::geteuid() != 0)
      GTEST_SKIP() << "needs root and a static /usr/bin/busybox";
    util::make_dirs(root() / "bin");
    std::filesystem::copy_file(busybox, root() / "bin/busybox");
    for (const char* applet : {"sh", "echo", "cat", "test", "["})
      std::filesystem::create_symlink("busybox", root() / "bin" / applet);
  }

  std::vector<std::string> failures() const {
    std::vector<std::string> out;
    for (const auto& e : events_)
      if (e.kind == Kind::kStepFailed) out.push_back(e.message);
    return out;
  }

  std::string read(const std::string& rel) { return util::read_file(root() / rel); }
  unsigned mode_of(const std::string& rel) {
    struct stat st {};
    EXPECT_EQ(::lstat((root() / rel).c_str(), &st), 0) << rel;
    return st.st_mode & 07777;
  }

  util::TempDir dir_ = util::TempDir::scratch();
  StageContext context_;
  std::vector<StageEvent> events_;
};

TEST_F(Stages, WritesFilesWithModeAndOwnerResolvedInTheRoot) {
  util::make_dirs(root() / "etc");
  util::write_file_atomic(root() / "etc/passwd", "app:x:1234:1234::/home/app:/bin/sh\n");
  util::write_file_atomic(root() / "etc/group", "app:x:1234:\nstaff:x:50:\n");
  auto result = run("boot", {R"(#cloud-config
stages:
  boot:
    - files:
        - path: /etc/app/app.conf
          content: "a=1\n"
          permissions: 0600
          owner: app
          group: staff
        - path: /etc/app/blob
          content: aGVsbG8=
          encoding: base64
)"});
  EXPECT_TRUE(result.ok()) << ::testing::PrintToString(failures());
  EXPECT_EQ(read("etc/app/app.conf"), "a=1\n");
  EXPECT_EQ(mode_of("etc/app/app.conf"), 0600u);
  EXPECT_EQ(mode_of("etc/app/blob"), 0644u);
  EXPECT_EQ(read("etc/app/blob"), "hello");
  struct stat st {};
  ASSERT_EQ(::stat((root() / "etc/app/app.conf").c_str(), &st), 0);
  if (::geteuid() == 0) {
    EXPECT_EQ(st.st_uid, 1234u);
    EXPECT_EQ(st.st_gid, 50u);
  }
}

TEST_F(Stages, AnOwnerMissingFromTheRootFailsThatFileOnly) {
  auto result = run("boot", {R"(#cloud-config
stages:
  boot:
    - files:
        - {path: /a, content: x, owner: nobody-here}
        - {path: /b, content: y}
)"});
  EXPECT_EQ(result.steps_failed, 1u);
  ASSERT_EQ(failures().size(), 1u);
  EXPECT_EQ(failures()[0],
            "Failed to write file /a: Failed to resolve user \"nobody-here\": not in " +
                root().string() + "/etc/passwd");
  EXPECT_FALSE(std::filesystem::exists(root() / "a"));
  EXPECT_EQ(read("b"), "y");
}

TEST_F(Stages, CreatesDirectoriesWithModeAndOwner) {
  auto result = run("boot", {R"(#cloud-config
stages:
  boot:
    - directories:
        - {path: /var/lib/app/data, permissions: 0710, owner: 1234, group: 4321}
        - {path: /srv}
)"});
  EXPECT_TRUE(result.ok()) << ::testing::PrintToString(failures());
  EXPECT_EQ(mode_of("var/lib/app/data"), 0710u);
  EXPECT_EQ(mode_of("srv"), 0755u);
  struct stat st {};
  ASSERT_EQ(::stat((root() / "var/lib/app/data").c_str(), &st), 0);
  if (::geteuid() == 0) {
    EXPECT_EQ(st.st_uid, 1234u);
    EXPECT_EQ(st.st_gid, 4321u);
  }
}

TEST_F(Stages, UsersStepWritesAccountFilesAndKeys) {
  auto result = run("initramfs", {R"(#cloud-config
stages:
  initramfs:
    - users:
        kairos:
          passwd: kairos
          groups: [admin]
          ssh_authorized_keys: [ssh-ed25519 AAAA k@h]
)"});
  EXPECT_TRUE(result.ok()) << ::testing::PrintToString(failures());
  EXPECT_NE(read("etc/passwd").find("kairos:x:1000:1000::/home/kairos:/bin/sh\n"),
            std::string::npos);
  EXPECT_NE(read("etc/shadow").find("kairos:$6$"), std::string::npos);
  EXPECT_NE(read("etc/group").find("admin:x:1001:kairos\n"), std::string::npos);
  EXPECT_EQ(read("home/kairos/.ssh/authorized_keys"), "ssh-ed25519 AAAA k@h\n");
  EXPECT_EQ(mode_of("home/kairos/.ssh/authorized_keys"), 0600u);
}

TEST_F(Stages, InitramfsAppliesTopLevelUsersAndHostnameFirst) {
  auto result = run("initramfs", {R"(#cloud-config
hostname: edge-1
users:
  - name: kairos
    passwd: "$6$s$h"
stages:
  initramfs:
    - files: [{path: /after, content: x, owner: kairos}]
)"});
  EXPECT_TRUE(result.ok()) << ::testing::PrintToString(failures());
  EXPECT_EQ(result.steps_run, 2u);
  EXPECT_EQ(read("etc/hostname"), "edge-1\n");
  EXPECT_NE(read("etc/shadow").find("kairos:$6$s$h:"), std::string::npos);
  ASSERT_FALSE(events_.empty());
  EXPECT_EQ(events_[0].step, "users");
  EXPECT_EQ(events_[0].line, 4);
}

TEST_F(Stages, TopLevelUsersBelongToInitramfsOnly) {
  auto result = run("boot", {"#cloud-config\nhostname: edge-1\nusers: [{name: kairos}]\n"});
  EXPECT_EQ(result.steps_run, 0u);
  EXPECT_FALSE(std::filesystem::exists(root() / "etc"));
}

TEST_F(Stages, HostnameStepWritesEtcHostname) {
  auto result = run("network", {"#cloud-config\nstages:\n  network:\n    - hostname: node-7\n"});
  EXPECT_TRUE(result.ok());
  EXPECT_EQ(read("etc/hostname"), "node-7\n");
  EXPECT_EQ(mode_of("etc/hostname"), 0644u);
}

TEST_F(Stages, EnvironmentIsMergedIntoTheEnvironmentFile) {
  util::make_dirs(root() / "etc");
  util::write_file_atomic(root() / "etc/environment", "# keep me\nPATH=/usr/bin\nFOO=old\n");
  auto result = run("boot", {R"(#cloud-config
stages:
  boot:
    - environment:
        FOO: new
        GREETING: hello world
    - environment: {A: b}
      environment_file: /etc/pok8s/env
)"});
  EXPECT_TRUE(result.ok()) << ::testing::PrintToString(failures());
  EXPECT_EQ(read("etc/environment"),
            "# keep me\nPATH=/usr/bin\nFOO=new\nGREETING=\"hello world\"\n");
  EXPECT_EQ(read("etc/pok8s/env"), "A=b\n");
}

TEST_F(Stages, CommandsRunChrootedWithTheStepEnvironment) {
  install_shell();
  auto result = run("boot", {R"(#cloud-config
stages:
  boot:
    - environment: {GREETING: hi there}
      commands:
        - echo "$GREETING" > /out
        - test -e /bin/busybox && echo chrooted >> /out
)"});
  EXPECT_TRUE(result.ok()) << ::testing::PrintToString(failures());
  EXPECT_EQ(read("out"), "hi there\nchrooted\n");
}

TEST_F(Stages, AFailingCommandEndsItsStepButNotTheStage) {
  install_shell();
  auto result = run("boot", {R"(#cloud-config
stages:
  boot:
    - name: broken
      commands: ["exit 3", "echo never > /never"]
    - name: fine
      commands: ["echo ran > /ran"]
)"});
  EXPECT_FALSE(result.ok());
  EXPECT_EQ(result.steps_run, 2u);
  EXPECT_EQ(result.steps_failed, 1u);
  ASSERT_EQ(failures().size(), 1u);
  EXPECT_EQ(failures()[0], "Failed to run commands[0] (exit 3): exit status 3");
  EXPECT_FALSE(std::filesystem::exists(root() / "never"));
  EXPECT_EQ(read("ran"), "ran\n");
  auto failed = std::find_if(events_.begin(), events_.end(),
                             [](const StageEvent& e) { return e.kind == Kind::kStepFailed; });
  EXPECT_EQ(failed->step, "broken");
  EXPECT_EQ(failed->source, "/oem/0.yaml");
  EXPECT_EQ(failed->stage, "boot");
  EXPECT_EQ(failed->line, 4);
}

TEST_F(Stages, IfConditionDecidesWhetherTheStepRuns) {
  install_shell();
  auto result = run("boot", {R"(#cloud-config
stages:
  boot:
    - if: "[ -e /bin/busybox ]"
      files: [{path: /yes, content: "1"}]
    - if: "[ -e /nowhere ]"
      files: [{path: /no, content: "1"}]
)"});
  EXPECT_TRUE(result.ok());
  EXPECT_EQ(result.steps_run, 1u);
  EXPECT_EQ(result.steps_skipped, 1u);
  EXPECT_TRUE(std::filesystem::exists(root() / "yes"));
  EXPECT_FALSE(std::filesystem::exists(root() / "no"));
  auto skipped = std::find_if(events_.begin(), events_.end(),
                              [](const StageEvent& e) { return e.kind == Kind::kStepSkipped; });
  ASSERT_NE(skipped, events_.end());
  EXPECT_EQ(skipped->message, "if: [ -e /nowhere ] exited with status 1");
}

TEST_F(Stages, RunsBeforeMainAndAfterAcrossConfigsInOrder) {
  install_shell();
  std::string a = R"(#cloud-config
stages:
  boot.after: [{commands: ["echo a-after >> /order"]}]
  boot: [{commands: ["echo a-main >> /order"]}]
  boot.before: [{commands: ["echo a-before >> /order"]}]
  network: [{commands: ["echo a-network >> /order"]}]
)";
  std::string b = R"(#cloud-config
stages:
  boot.before: [{commands: ["echo b-before >> /order"]}]
  boot: [{commands: ["echo b-main-1 >> /order"]}, {commands: ["echo b-main-2 >> /order"]}]
)";
  auto result = run("boot", {a, b});
  EXPECT_TRUE(result.ok());
  EXPECT_EQ(read("order"), "a-before\nb-before\na-main\nb-main-1\nb-main-2\na-after\n");
  EXPECT_EQ(events_.front().stage, "boot.before");
}

TEST_F(Stages, SysctlWritesUnderProcSys) {
  util::make_dirs(root() / "proc-sys/net/ipv4");
  util::make_dirs(root() / "proc-sys/vm");
  util::write_file_atomic(root() / "proc-sys/net/ipv4/ip_forward", "0\n");
  util::write_file_atomic(root() / "proc-sys/vm/max_map_count", "0\n");
  auto result = run("boot", {R"(#cloud-config
stages:
  boot:
    - sysctl:
        net.ipv4.ip_forward: 1
        vm/max_map_count: "262144"
        kernel.no_such_key: 1
)"});
  EXPECT_EQ(read("proc-sys/net/ipv4/ip_forward"), "1\n");
  EXPECT_EQ(read("proc-sys/vm/max_map_count"), "262144\n");
  EXPECT_EQ(result.steps_failed, 1u);
  ASSERT_EQ(failures().size(), 1u);
  EXPECT_TRUE(failures()[0].starts_with("Failed to set sysctl kernel.no_such_key: no such key"));
  EXPECT_FALSE(std::filesystem::exists(root() / "proc-sys/kernel"));
}

TEST_F(Stages, SystemctlEnablesAndMasksUnitsInAnotherRoot) {
  if (find_program("systemctl").empty()) GTEST_SKIP() << "needs systemctl";
  util::make_dirs(root() / "etc/systemd/system");
  util::write_file_atomic(root() / "etc/systemd/system/pok8s-test.service",
                          "[Unit]\nDescription=test\n[Service]\nExecStart=/bin/true\n"
                          "[Install]\nWantedBy=multi-user.target\n");
  auto result = run("boot", {R"(#cloud-config
stages:
  boot:
    - systemctl:
        enable: [pok8s-test.service]
        mask: [getty@tty1.service]
        start: [pok8s-test]
)"});
  EXPECT_TRUE(result.ok()) << ::testing::PrintToString(failures());
  EXPECT_EQ(std::filesystem::read_symlink(
                root() / "etc/systemd/system/multi-user.target.wants/pok8s-test.service"),
            "/etc/systemd/system/pok8s-test.service");
  EXPECT_EQ(std::filesystem::read_symlink(root() / "etc/systemd/system/getty@tty1.service"),
            "/dev/null");
  auto note = std::find_if(events_.begin(), events_.end(),
                           [](const StageEvent& e) { return e.kind == Kind::kNote; });
  ASSERT_NE(note, events_.end());
  EXPECT_EQ(note->message, "not starting pok8s-test: systemd is not running on the target root");
}

TEST_F(Stages, SystemctlReportsAUnitThatDoesNotExist) {
  if (find_program("systemctl").empty()) GTEST_SKIP() << "needs systemctl";
  util::make_dirs(root() / "etc/systemd/system");
  auto result =
      run("boot", {"#cloud-config\nstages:\n  boot:\n    - systemctl: {enable: [nope]}\n"});
  EXPECT_FALSE(result.ok());
  ASSERT_EQ(failures().size(), 1u);
  EXPECT_TRUE(failures()[0].starts_with("Failed to enable nope: systemctl exited with status"))
      << failures()[0];
}

TEST_F(Stages, OpenRCServicesAreLinkedIntoTheDefaultRunlevel) {
  util::make_dirs(root() / "sbin");
  util::make_dirs(root() / "etc/init.d");
  util::write_file_atomic(root() / "sbin/openrc", "", 0755);
  util::write_file_atomic(root() / "etc/init.d/sshd", "#!/sbin/openrc-run\n", 0755);
  auto result = run("boot", {R"(#cloud-config
stages:
  boot:
    - systemctl:
        enable: [sshd.service, missing]
        mask: [x]
)"});
  EXPECT_EQ(std::filesystem::read_symlink(root() / "etc/runlevels/default/sshd"),
            "/etc/init.d/sshd");
  EXPECT_EQ(result.steps_failed, 1u);
  auto f = failures();
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0], "Failed to mask x: OpenRC has no masking");
  EXPECT_EQ(f[1], "Failed to enable missing: no /etc/init.d/missing in the target root");
}

TEST_F(Stages, EveryFailingActionIsReportedAndTheRestOfTheStepRuns) {
  util::write_file_atomic(root() / "blocker", "a file, not a directory");
  auto result = run("boot", {R"(#cloud-config
stages:
  boot:
    - directories: [{path: /blocker}]
      files: [{path: /blocker/x, content: ""}, {path: /ok, content: fine}]
      hostname: still-set
)"});
  EXPECT_EQ(result.steps_failed, 1u);
  EXPECT_EQ(failures().size(), 2u);
  EXPECT_EQ(read("ok"), "fine");
  EXPECT_EQ(read("etc/hostname"), "still-set\n");
}

TEST_F(Stages, RunsOnlyTheNamedPartOfAStage) {
  auto result = run("boot.after", {R"(#cloud-config
stages:
  boot: [{files: [{path: /main, content: x}]}]
  boot.after: [{files: [{path: /after, content: x}]}]
)"});
  EXPECT_EQ(result.steps_run, 1u);
  EXPECT_TRUE(std::filesystem::exists(root() / "after"));
  EXPECT_FALSE(std::filesystem::exists(root() / "main"));
}

TEST_F(Stages, RefusesAnUnknownStage) {
  EXPECT_THROW(run("bot", {}), Error);
}

}  // namespace
}  // namespace pok8s::node
