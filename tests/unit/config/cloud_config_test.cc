#include "pok8s/config/cloud_config.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

namespace pok8s::config {
namespace {

CloudConfig parse(const std::string& text) {
  return parse_cloud_config(text, "/oem/x.yaml");
}

// The one-line message parse_cloud_config throws for `text`, or "" when it parses.
std::string error_of(const std::string& text) {
  try {
    parse(text);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    return e.what();
  }
  return "";
}

TEST(CloudConfig, ParsesEveryStepKind) {
  auto c = parse(R"(#cloud-config
stages:
  boot:
    - name: everything
      if: test -e /etc/os-release
      environment:
        FOO: bar
        EMPTY: ""
      environment_file: /etc/pok8s/env
      hostname: node-1
      directories:
        - path: /var/lib/app
          permissions: 0750
          owner: 1000
          group: app
      files:
        - path: /etc/app.conf
          content: |
            key=value
          permissions: "600"
          owner: app
          group: 0
        - path: /etc/bin
          content: aGVsbG8=
          encoding: base64
      users:
        alice:
          passwd: secret
          groups: [wheel, docker]
          ssh_authorized_keys: ["ssh-ed25519 AAAA alice@host"]
          primary_group: staff
          homedir: /home/alice
          shell: /bin/bash
          uid: "1500"
          lock_passwd: false
      sysctl:
        net.ipv4.ip_forward: 1
      systemctl:
        enable: [sshd]
        disable: [getty@tty2]
        start: [chronyd.service]
        mask: [apt-daily.timer]
      commands:
        - echo hi
)");
  EXPECT_EQ(c.source, "/oem/x.yaml");
  ASSERT_EQ(c.stages.count("boot"), 1u);
  ASSERT_EQ(c.stages["boot"].size(), 1u);
  const Step& s = c.stages["boot"][0];
  EXPECT_EQ(s.name, "everything");
  EXPECT_EQ(s.line, 4);
  EXPECT_EQ(s.if_condition, "test -e /etc/os-release");
  ASSERT_EQ(s.environment.size(), 2u);
  EXPECT_EQ(s.environment[0], (std::pair<std::string, std::string>("FOO", "bar")));
  EXPECT_EQ(s.environment[1].second, "");
  EXPECT_EQ(s.environment_file, "/etc/pok8s/env");
  EXPECT_EQ(s.hostname, "node-1");
  ASSERT_EQ(s.directories.size(), 1u);
  EXPECT_EQ(s.directories[0].permissions, 0750u);
  EXPECT_EQ(s.directories[0].owner.id, 1000u);
  EXPECT_EQ(s.directories[0].group.name, "app");
  ASSERT_EQ(s.files.size(), 2u);
  EXPECT_EQ(s.files[0].content, "key=value\n");
  EXPECT_EQ(s.files[0].permissions, 0600u);
  EXPECT_EQ(s.files[0].owner.name, "app");
  EXPECT_EQ(s.files[0].group.id, 0u);
  EXPECT_EQ(s.files[1].encoding, FileEncoding::kBase64);
  EXPECT_EQ(s.files[1].content, "hello");
  ASSERT_EQ(s.users.size(), 1u);
  const UserSpec& u = s.users[0];
  EXPECT_EQ(u.name, "alice");
  EXPECT_EQ(u.passwd, "secret");
  EXPECT_EQ(u.groups, (std::vector<std::string>{"wheel", "docker"}));
  EXPECT_EQ(u.ssh_authorized_keys.size(), 1u);
  EXPECT_EQ(u.primary_group, "staff");
  EXPECT_EQ(u.homedir, "/home/alice");
  EXPECT_EQ(u.shell, "/bin/bash");
  EXPECT_EQ(u.uid, 1500u);
  EXPECT_EQ(u.lock_passwd, false);
  ASSERT_EQ(s.sysctl.size(), 1u);
  EXPECT_EQ(s.sysctl[0].first, "net.ipv4.ip_forward");
  EXPECT_EQ(s.sysctl[0].second, "1");
  EXPECT_EQ(s.systemctl.enable, std::vector<std::string>{"sshd"});
  EXPECT_EQ(s.systemctl.disable, std::vector<std::string>{"getty@tty2"});
  EXPECT_EQ(s.systemctl.start, std::vector<std::string>{"chronyd.service"});
  EXPECT_EQ(s.systemctl.mask, std::vector<std::string>{"apt-daily.timer"});
  EXPECT_EQ(s.commands, std::vector<std::string>{"echo hi"});
}

TEST(CloudConfig, ParsesKairosTopLevelUsersHostnameAndSections) {
  auto c = parse(R"(#cloud-config
hostname: edge-01
users:
  - name: kairos
    passwd: kairos
    groups: [admin]
    ssh_authorized_keys:
      - ssh-rsa AAAA
install:
  device: auto
  reboot: true
k3s:
  enabled: true
  args: [--disable=traefik]
)");
  EXPECT_EQ(c.hostname, "edge-01");
  ASSERT_EQ(c.users.size(), 1u);
  EXPECT_EQ(c.users[0].name, "kairos");
  EXPECT_EQ(c.users[0].line, 4);
  ASSERT_EQ(c.sections.count("install"), 1u);
  EXPECT_EQ(c.sections["install"]["device"].as<std::string>(), "auto");
  EXPECT_EQ(c.sections["install"]["device"].Mark().line + 1, 10);
  EXPECT_TRUE(c.sections["k3s"]["enabled"].as<bool>());
}

TEST(CloudConfig, AcceptsBeforeAndAfterOfEveryKnownStage) {
  for (auto base : known_stage_bases()) {
    EXPECT_TRUE(is_known_stage(base));
    EXPECT_TRUE(is_known_stage(std::string(base) + ".before"));
    EXPECT_TRUE(is_known_stage(std::string(base) + ".after"));
  }
  EXPECT_FALSE(is_known_stage("boot.during"));
  auto c = parse(
      "#cloud-config\nstages:\n  network.after:\n    - commands: [true]\n"
      "  kairos-install.pre.before: []\n  after-install: ~\n");
  EXPECT_EQ(c.stages.size(), 3u);
}

TEST(CloudConfig, HeaderOnlyIsAnEmptyConfig) {
  auto c = parse("#cloud-config\n");
  EXPECT_TRUE(c.stages.empty());
  EXPECT_TRUE(c.users.empty());
}

TEST(CloudConfig, RefusesAMissingHeader) {
  EXPECT_EQ(error_of("stages: {}\n"),
            "Failed to read cloud-config /oem/x.yaml: line 1: the file does not start with "
            "\"#cloud-config\"");
  EXPECT_NE(error_of("#cloud-configs\n"), "");
  EXPECT_EQ(error_of("#cloud-config  \r\n"), "");
}

// The parse warnings of `text`, which must parse.
std::vector<std::string> warnings_of(const std::string& text) {
  return parse(text).warnings;
}

std::string at(int line) {
  return fmt::format("cloud-config /oem/x.yaml: line {}: ", line);
}

using Lines = std::vector<std::string>;

TEST(CloudConfig, ATypoInAStepIsIgnoredAsKairosDoesAndNamedWithFileLineAndPath) {
  auto c = parse("#cloud-config\nstages:\n  boot:\n    - name: x\n\n\n      comands: [ls]\n");
  EXPECT_EQ(c.warnings, Lines{at(7) + "unknown key \"comands\" in stages.boot[0] is ignored; did "
                                      "you mean \"commands\"?"});
  ASSERT_EQ(c.stages["boot"].size(), 1u);
  EXPECT_TRUE(c.stages["boot"][0].commands.empty());
}

TEST(CloudConfig, NamesTyposAtEveryLevelInWarnings) {
  EXPECT_EQ(warnings_of("#cloud-config\nstage:\n  boot: []\n"),
            Lines{at(2) + "unknown top-level key \"stage\" is kept but not read by pok8s; did "
                          "you mean \"stages\"?"});
  EXPECT_EQ(warnings_of("#cloud-config\nstages:\n  bot: []\n"),
            Lines{at(3) + "stage \"bot\" is never run; did you mean \"boot\"?"});
  EXPECT_EQ(warnings_of("#cloud-config\nstages:\n  boot:\n    - files:\n        - path: /a\n"
                        "          premissions: 0644\n"),
            Lines{at(6) + "unknown key \"premissions\" in stages.boot[0].files[0] is ignored; "
                          "did you mean \"permissions\"?"});
  EXPECT_EQ(warnings_of("#cloud-config\nstages:\n  boot:\n    - directories:\n        - path: /a\n"
                        "          ownr: 1\n"),
            Lines{at(6) + "unknown key \"ownr\" in stages.boot[0].directories[0] is ignored; "
                          "did you mean \"owner\"?"});
  EXPECT_EQ(warnings_of("#cloud-config\nstages:\n  boot:\n    - users:\n        bob:\n"
                        "          passwrd: x\n"),
            Lines{at(6) + "unknown key \"passwrd\" in stages.boot[0].users.bob is ignored; did "
                          "you mean \"passwd\"?"});
  EXPECT_EQ(warnings_of("#cloud-config\nusers:\n  - name: a\n    group: [x]\n"),
            Lines{at(4) + "unknown key \"group\" in users[0] is ignored; did you mean "
                          "\"groups\"?"});
  EXPECT_EQ(
      warnings_of("#cloud-config\nstages:\n  boot:\n    - systemctl:\n        enabled: [a]\n"),
      Lines{at(5) + "unknown key \"enabled\" in stages.boot[0].systemctl is ignored; did "
                    "you mean \"enable\"?"});
}

TEST(CloudConfig, GivesNoHintForAFarOffKey) {
  EXPECT_EQ(warnings_of("#cloud-config\nstages:\n  boot:\n    - zzzzzz: 1\n"),
            Lines{at(4) + "unknown key \"zzzzzz\" in stages.boot[0] is ignored"});
}

TEST(CloudConfig, NamesYipFeaturesItDoesNotActOnYet) {
  EXPECT_EQ(
      warnings_of("#cloud-config\nstages:\n  boot:\n    - dns:\n        nameservers: [1.1.1.1]\n"),
      Lines{at(4) + "key \"dns\" in stages.boot[0] is accepted but pok8s does not act on it yet"});
  EXPECT_EQ(warnings_of("#cloud-config\nstages:\n  boot:\n    - systemctl:\n        overrides:\n"
                        "          - service: a.service\n"),
            Lines{at(5) + "key \"overrides\" in stages.boot[0].systemctl is accepted but pok8s "
                          "does not act on it yet"});
}

TEST(CloudConfig, KeepsProviderAndBundleSectionsAndNamesThemInOneWarning) {
  auto c = parse(R"(#cloud-config
hostname: node
cluster:
  cluster_token: abc
  role: worker
metallb:
  version: 0.13.7
kcrypt:
  challenger: {server: "http://10.0.0.1"}
)");
  EXPECT_EQ(c.warnings, Lines{at(2) + "kept for providers and bundles, not read by pok8s: "
                                      "cluster (line 3), metallb (line 6), kcrypt (line 8)"});
  ASSERT_TRUE(c.sections.contains("cluster"));
  EXPECT_EQ(c.sections["cluster"]["role"].as<std::string>(), "worker");
  EXPECT_TRUE(c.sections.contains("metallb"));
  // A stray key inside a file entry is ignored, as Kairos does, and named.
  EXPECT_EQ(warnings_of("#cloud-config\nstages:\n  boot:\n    - files:\n        - path: /a\n"
                        "          name: the a file\n"),
            Lines{at(6) + "unknown key \"name\" in stages.boot[0].files[0] is ignored"});
}

TEST(CloudConfig, AppliesYamlMergeKeys) {
  auto c = parse(R"(#cloud-config
x-defaults: &file
  permissions: 0600
  owner: 0
stages:
  boot:
    - files:
        - <<: *file
          path: /etc/a
          content: a
        - <<: [{permissions: 0640}, *file]
          path: /etc/b
          permissions: 0644
)");
  const auto& files = c.stages["boot"][0].files;
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].permissions, 0600u);
  EXPECT_EQ(files[0].owner.id, 0u);
  EXPECT_EQ(files[1].permissions, 0644u);  // the map's own key wins
  EXPECT_EQ(error_of("#cloud-config\nstages:\n  <<: 3\n"),
            "Failed to read cloud-config /oem/x.yaml: line 3: a merge key (<<) takes a map or a "
            "list of maps, not a string");
}

TEST(CloudConfig, TurnsCloudInitKeysIntoTheFirstBootStep) {
  auto c = parse(R"(#cloud-config
name: my node
users:
  - name: kairos
    ssh_authorized_keys: [ssh-ed25519 AAAA kairos]
ssh_authorized_keys:
  - ssh-ed25519 BBBB ops
stages:
  boot:
    - commands: [echo yip]
runcmd:
  - echo run
  - [touch, "/tmp/it's here"]
bootcmd:
  - echo early
write_files:
  - path: /etc/motd
    content: aGVsbG8=
    encoding: b64
    owner: root:adm
  - path: /etc/x.conf
    content: x
    permissions: '0600'
)");
  EXPECT_TRUE(c.warnings.empty()) << c.warnings[0];
  ASSERT_EQ(c.stages["boot"].size(), 2u);
  const Step& first = c.stages["boot"][0];
  EXPECT_EQ(first.line, 6);  // the first cloud-init key
  EXPECT_EQ(first.commands, (Lines{"echo early", "echo run", "'touch' '/tmp/it'\\''s here'"}));
  ASSERT_EQ(first.files.size(), 2u);
  EXPECT_EQ(first.files[0].content, "hello");
  EXPECT_EQ(first.files[0].owner.name, "root");
  EXPECT_EQ(first.files[0].group.name, "adm");
  EXPECT_EQ(first.files[0].permissions, 0644u);
  EXPECT_EQ(first.files[1].permissions, 0600u);
  EXPECT_EQ(c.stages["boot"][1].commands, Lines{"echo yip"});
  ASSERT_EQ(c.users.size(), 1u);
  EXPECT_EQ(c.users[0].ssh_authorized_keys,
            (Lines{"ssh-ed25519 AAAA kairos", "ssh-ed25519 BBBB ops"}));
  EXPECT_EQ(warnings_of("#cloud-config\nwrite_files:\n  - path: /a\n    append: true\n"),
            Lines{at(4) + "write_files[0].append: true is accepted but pok8s does not act on it "
                          "yet"});
  EXPECT_EQ(error_of("#cloud-config\nruncmd: ls\n"),
            "Failed to read cloud-config /oem/x.yaml: line 2: runcmd must be a list, not a "
            "string");
}

TEST(CloudConfig, RefusesWrongTypes) {
  EXPECT_EQ(error_of("#cloud-config\nstages:\n  boot:\n    - commands: ls\n"),
            "Failed to read cloud-config /oem/x.yaml: line 4: stages.boot[0].commands must be a "
            "list of strings, not a string");
  EXPECT_EQ(error_of("#cloud-config\nstages:\n  boot:\n    commands: [ls]\n"),
            "Failed to read cloud-config /oem/x.yaml: line 4: stages.boot must be a list of "
            "steps, not a map");
  EXPECT_EQ(error_of("#cloud-config\nstages:\n  boot:\n    - commands: [[ls]]\n"),
            "Failed to read cloud-config /oem/x.yaml: line 4: stages.boot[0].commands[0] must be "
            "a string, not a list");
  EXPECT_EQ(error_of("#cloud-config\nusers:\n  name: a\n"),
            "Failed to read cloud-config /oem/x.yaml: line 3: users must be a list, not a map");
  EXPECT_EQ(error_of("#cloud-config\nusers:\n  - name: a\n    lock_passwd: maybe\n"),
            "Failed to read cloud-config /oem/x.yaml: line 4: users[0].lock_passwd must be true "
            "or false, not \"maybe\"");
  EXPECT_EQ(error_of("#cloud-config\nusers:\n  - name: a\n    uid: -1\n"),
            "Failed to read cloud-config /oem/x.yaml: line 4: users[0].uid must be a number from "
            "0 to 4294967294, not \"-1\"");
  EXPECT_NE(error_of("#cloud-config\n- a\n- b\n").find("the document must be a map"),
            std::string::npos);
}

TEST(CloudConfig, ReadsModesTheWayYipDoes) {
  auto mode = [](const std::string& value) {
    auto c = parse(
        "#cloud-config\nstages:\n  boot:\n    - files:\n        - path: /a\n"
        "          permissions: " +
        value + "\n");
    return *c.stages["boot"][0].files[0].permissions;
  };
  EXPECT_EQ(mode("0644"), 0644u);
  EXPECT_EQ(mode("0o755"), 0755u);
  EXPECT_EQ(mode("420"), 0644u);  // a plain decimal integer, as YAML reads it
  EXPECT_EQ(mode("\"644\""), 0644u);
  EXPECT_EQ(mode("'0600'"), 0600u);
  EXPECT_NE(error_of("#cloud-config\nstages:\n  boot:\n    - files:\n        - path: /a\n"
                     "          permissions: 0999\n")
                .find("must be a file mode like 0644"),
            std::string::npos);
  EXPECT_NE(error_of("#cloud-config\nstages:\n  boot:\n    - files:\n        - path: /a\n"
                     "          permissions: 99999\n"),
            "");
}

TEST(CloudConfig, RefusesPathsThatLeaveTheRoot) {
  for (std::string path : {"etc/x", "/etc/../../x", "/etc/./x", ""}) {
    std::string err = error_of("#cloud-config\nstages:\n  boot:\n    - files:\n        - path: \"" +
                               path + "\"\n");
    EXPECT_NE(err.find("stages.boot[0].files[0].path must be an absolute path"), std::string::npos)
        << path << ": " << err;
  }
}

TEST(CloudConfig, RefusesBadValues) {
  EXPECT_NE(error_of("#cloud-config\nhostname: bad_name!\n").find("not a valid host name"),
            std::string::npos);
  EXPECT_NE(error_of("#cloud-config\nstages:\n  boot:\n    - files:\n        - path: /a\n"
                     "          content: '!!!'\n          encoding: base64\n")
                .find("stages.boot[0].files[0].content is not valid base64"),
            std::string::npos);
  EXPECT_NE(error_of("#cloud-config\nstages:\n  boot:\n    - files:\n        - path: /a\n"
                     "          encoding: gzip\n")
                .find("not supported by pok8s"),
            std::string::npos);
  EXPECT_NE(error_of("#cloud-config\nusers:\n  - name: \"a:b\"\n").find("not a valid user"),
            std::string::npos);
  EXPECT_NE(error_of("#cloud-config\nstages:\n  boot:\n    - sysctl:\n        ../x: 1\n")
                .find("invalid key"),
            std::string::npos);
  EXPECT_NE(error_of("#cloud-config\nstages:\n  boot:\n    - systemctl:\n        enable: [a/b]\n")
                .find("not a valid unit name"),
            std::string::npos);
  EXPECT_NE(error_of("#cloud-config\nstages:\n  boot:\n    - environment:\n        1X: y\n")
                .find("invalid variable name"),
            std::string::npos);
  EXPECT_NE(error_of("#cloud-config\nusers:\n  - passwd: x\n").find("users[0] has no name"),
            std::string::npos);
  EXPECT_NE(error_of("#cloud-config\nstages:\n  boot:\n    - files:\n        - content: x\n")
                .find("has no path"),
            std::string::npos);
}

TEST(CloudConfig, RefusesDuplicateKeys) {
  EXPECT_EQ(error_of("#cloud-config\nhostname: a\nhostname: b\n"),
            "Failed to read cloud-config /oem/x.yaml: line 3: duplicate key \"hostname\"");
}

TEST(CloudConfig, ReportsYamlSyntaxErrorsWithTheirLine) {
  std::string err = error_of("#cloud-config\nstages:\n  boot:\n    - [unclosed\n");
  EXPECT_TRUE(err.starts_with("Failed to read cloud-config /oem/x.yaml: line ")) << err;
}

TEST(CloudConfig, EnforcesSizeAndNodeLimits) {
  std::string big = "#cloud-config\n# " + std::string(kMaxCloudConfigBytes, 'x') + "\n";
  EXPECT_NE(error_of(big).find("exceeds the limit"), std::string::npos);
  std::string long_list = "#cloud-config\nstages:\n  boot:\n    - commands:\n";
  for (std::size_t i = 0; i <= kMaxCloudConfigListLength; ++i) long_list += "      - x\n";
  EXPECT_NE(error_of(long_list).find("more than the limit"), std::string::npos);
  std::string deep = "#cloud-config\ninstall: ";
  for (std::size_t i = 0; i <= kMaxCloudConfigDepth; ++i) deep += "[";
  for (std::size_t i = 0; i <= kMaxCloudConfigDepth; ++i) deep += "]";
  EXPECT_NE(error_of(deep + "\n").find("nests deeper than"), std::string::npos);
}

TEST(CloudConfig, AliasesCannotMultiplyTheWork) {
  // Each level refers to the previous one ten times: a billion leaves if walked naively.
  std::string text = "#cloud-config\ninstall:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 9; ++i) {
    text += fmt::format("  a{}: &a{} [", i, i);
    for (int j = 0; j < 10; ++j) text += fmt::format("{}*a{}", j ? ", " : "", i - 1);
    text += "]\n";
  }
  EXPECT_NE(error_of(text).find("more than"), std::string::npos);
}

class CloudConfigFiles : public ::testing::Test {
 protected:
  util::TempDir dir_ = util::TempDir::scratch();
  util::Path write(const std::string& name, const std::string& text) {
    util::Path p = dir_.path() / name;
    util::make_dirs(p.parent_path());
    util::write_file_atomic(p, text);
    return p;
  }
};

TEST_F(CloudConfigFiles, DirectoriesGiveTheirYamlFilesInNameOrderAndSkipHeaderlessOnes) {
  write("d/20-b.yaml", "#cloud-config\nhostname: b\n");
  write("d/10-a.yml", "#cloud-config\nhostname: a\n");
  write("d/15-notes.yaml", "just: yaml\n");
  write("d/30-c.txt", "#cloud-config\nhostname: c\n");
  util::Path named = write("named.yaml", "#cloud-config\nhostname: n\n");
  auto configs = load_cloud_configs({dir_.path() / "d", dir_.path() / "missing", named});
  ASSERT_EQ(configs.size(), 3u);
  EXPECT_EQ(configs[0].hostname, "a");
  EXPECT_EQ(configs[1].hostname, "b");
  EXPECT_EQ(configs[2].hostname, "n");
  EXPECT_EQ(configs[2].source, named.string());
}

TEST_F(CloudConfigFiles, AFileNamedDirectlyNeedsTheHeader) {
  util::Path p = write("x.yaml", "hostname: a\n");
  EXPECT_THROW(load_cloud_configs({p}), Error);
  try {
    validate_cloud_config(p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "Failed to read cloud-config " + p.string() +
                  ": line 1: the file does not start with \"#cloud-config\"");
  }
  EXPECT_THROW(validate_cloud_config(dir_.path() / "nope.yaml"), Error);
}

}  // namespace
}  // namespace pok8s::config
