// The static pok8s-agent binary as the node runs it: validate, stage boot on a temp root, and
// boot status and mark-booted on a boot state and a GRUB environment block.
#include <elf.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "integration/file_server.h"
#include "pok8s/util/file.h"

namespace fs = std::filesystem;
using namespace pok8s;
using pok8s::testing::FileServer;

namespace {

struct AgentRun {
  int status = -1;
  std::string out;
  std::string err;
};

std::string agent_bin() {
  if (const char* b = std::getenv("POK8S_AGENT_BIN")) return b;
  return (fs::path(POK8S_TEST_BIN).parent_path() / "pok8s-agent").string();
}

// Runs pok8s-agent with `args` (shell words), capturing stdout and stderr.
AgentRun agent(const std::string& args, const fs::path& scratch) {
  AgentRun r;
  fs::path out = scratch / "stdout", err = scratch / "stderr";
  std::string cmd = agent_bin() + " " + args + " >" + out.string() + " 2>" + err.string();
  int st = std::system(cmd.c_str());
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  r.out = util::read_file(out);
  r.err = util::read_file(err);
  return r;
}

class Agent : public ::testing::Test {
 protected:
  fs::path write(const std::string& rel, const std::string& text) {
    fs::path p = dir_.path() / rel;
    util::make_dirs(p.parent_path());
    util::write_file_atomic(p, text);
    return p;
  }
  fs::path root() {
    util::make_dirs(dir_.path() / "root");
    return dir_.path() / "root";
  }
  std::string read(const std::string& rel) { return util::read_file(root() / rel); }
  util::TempDir dir_ = util::TempDir::scratch();
};

TEST_F(Agent, IsAStaticExecutable) {
  // A static ELF has no PT_INTERP program header (no dynamic loader).
  std::string elf = util::read_file(agent_bin(), 256u << 20);
  ASSERT_GE(elf.size(), sizeof(Elf64_Ehdr));
  Elf64_Ehdr eh;
  std::memcpy(&eh, elf.data(), sizeof eh);
  ASSERT_EQ(std::string(reinterpret_cast<char*>(eh.e_ident), 4),
            "\x7f"
            "ELF");
  bool dynamic = false;
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    std::size_t off = eh.e_phoff + std::size_t(i) * eh.e_phentsize;
    ASSERT_LE(off + sizeof ph, elf.size());
    std::memcpy(&ph, elf.data() + off, sizeof ph);
    if (ph.p_type == PT_INTERP || ph.p_type == PT_DYNAMIC) dynamic = true;
  }
  EXPECT_FALSE(dynamic);
}

TEST_F(Agent, ValidatePrintsTheOneLineErrorAndExits2) {
  fs::path bad = write("bad.yaml", "#cloud-config\nstages:\n  boot:\n    - commands: ls\n");
  fs::path good = write("good.yaml", "#cloud-config\nstages:\n  boot:\n    - commands: [ls]\n");
  AgentRun r = agent("validate " + good.string() + " " + bad.string(), dir_.path());
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.out, good.string() + ": ok\n");
  EXPECT_EQ(r.err, "pok8s-agent: Failed to read cloud-config " + bad.string() +
                       ": line 4: stages.boot[0].commands must be a list of strings, not a "
                       "string\n");
  EXPECT_EQ(agent("validate " + good.string(), dir_.path()).status, 0);
  // A typo is what Kairos ignores: accepted, and named.
  fs::path typo = write("typo.yaml", "#cloud-config\nstages:\n  boot:\n    - comands: [ls]\n");
  r = agent("validate " + typo.string(), dir_.path());
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out, typo.string() + ": ok\n");
  EXPECT_EQ(r.err, "pok8s-agent: cloud-config " + typo.string() +
                       ": line 4: unknown key \"comands\" in stages.boot[0] is ignored; did you "
                       "mean \"commands\"?\n");
  EXPECT_EQ(agent("validate " + (dir_.path() / "missing.yaml").string(), dir_.path()).status, 2);
}

TEST_F(Agent, StageBootAppliesFilesAndUsersToARoot) {
  fs::path config = write("boot.yaml", R"(#cloud-config
stages:
  boot.before:
    - name: motd
      files:
        - path: /etc/motd
          content: "welcome to pok8s\n"
          permissions: 0640
  boot:
    - name: admin user
      users:
        admin:
          passwd: admin
          groups: [wheel]
          ssh_authorized_keys: [ssh-ed25519 AAAAC3 admin@laptop]
)");
  AgentRun r =
      agent("stage boot --no-defaults --root " + root().string() + " --config " + config.string(),
            dir_.path());
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(read("etc/motd"), "welcome to pok8s\n");
  EXPECT_NE(read("etc/passwd").find("admin:x:1000:1000::/home/admin:/bin/sh\n"), std::string::npos);
  EXPECT_NE(read("etc/shadow").find("admin:$6$"), std::string::npos);
  EXPECT_NE(read("etc/group").find("wheel:x:1001:admin\n"), std::string::npos);
  EXPECT_EQ(read("home/admin/.ssh/authorized_keys"), "ssh-ed25519 AAAAC3 admin@laptop\n");
  EXPECT_NE(r.err.find("pok8s-agent: boot.before: \"motd\" (" + config.string() + ":4)\n"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("pok8s-agent: stage boot: 2 steps run, 0 failed, 0 skipped\n"),
            std::string::npos)
      << r.err;
}

TEST_F(Agent, ReadsTheDefaultSourcesBelowTheRoot) {
  write("root/usr/lib/pok8s/stages/00-defaults.yaml",
        "#cloud-config\nstages:\n  network:\n    - files: [{path: /from-defaults, content: a}]\n");
  write("root/oem/90-user.yaml",
        "#cloud-config\nstages:\n  network:\n    - files: [{path: /from-oem, content: b}]\n");
  write("root/oem/README.yaml", "not a cloud-config, skipped\n");
  write("root/run/pok8s/media/config.yaml",
        "#cloud-config\nstages:\n  network:\n    - files: [{path: /from-media, content: c}]\n");
  AgentRun r = agent("stage network --root " + root().string(), dir_.path());
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(read("from-defaults"), "a");
  EXPECT_EQ(read("from-oem"), "b");
  EXPECT_EQ(read("from-media"), "c");
}

TEST_F(Agent, ConfigShowPrintsTheMergedCloudConfigAndItsFiles) {
  write("root/usr/lib/pok8s/stages/00-defaults.yaml",
        "#cloud-config\nstages:\n  boot:\n    - name: defaults\n      commands: [true]\n");
  write("root/oem/90_custom.yaml",
        "#cloud-config\nhostname: edge-1\nstages:\n  boot:\n    - name: oem\n"
        "      commands: [true]\n");
  write("root/run/pok8s/datasource/cidata-user-data.yaml", "#cloud-config\nhostname: edge-2\n");
  AgentRun r = agent("config show --root " + root().string(), dir_.path());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind("#cloud-config\n# from " + root().string() +
                            "/usr/lib/pok8s/stages/00-defaults.yaml\n",
                        0),
            0u)
      << r.out;
  EXPECT_NE(r.out.find("hostname: edge-2"), std::string::npos) << r.out;  // the datasource last
  auto defaults = r.out.find("name: defaults"), oem = r.out.find("name: oem");
  EXPECT_NE(defaults, std::string::npos) << r.out;
  EXPECT_NE(oem, std::string::npos) << r.out;
  EXPECT_LT(defaults, oem) << r.out;
}

// The root's pok8s-sysimage bundle, as convert ships it, made of the host's loader and the
// build's binary (the host's libraries are where the loader looks anyway).
void add_sysimage_bundle(const fs::path& root) {
  fs::path dir = root / "usr/lib/pok8s/sysimage";
  util::make_dirs(dir / "lib");
  fs::create_symlink("/lib64/ld-linux-x86-64.so.2", dir / "lib/ld-linux-x86-64.so.2");
  fs::create_symlink(fs::path(POK8S_TEST_BIN).parent_path() / "pok8s-sysimage",
                     dir / "pok8s-sysimage");
}

TEST_F(Agent, TheNetworkStageFetchesConfigUrlAndWhatItNamesInTurn) {
  FileServer server({});
  FileServer web(
      {{"/a.yaml", "#cloud-config\nconfig_url: " + server.url("/none") +
                       "\nstages:\n  network:\n    - files: [{path: /from-a, content: a}]\n"},
       {"/b.yaml", "#cloud-config\nconfig_url: ../b\n"}});
  add_sysimage_bundle(root());
  write("root/oem/90_custom.yaml", "#cloud-config\nconfig_url: " + web.url("/a.yaml") + "\n");
  write("root/oem/91_more.yaml",
        "#cloud-config\nconfig_url: \"\"\nstages:\n  network:\n    - files: [{path: /from-oem, "
        "content: o}]\n");
  AgentRun r = agent("stage network --root " + root().string(), dir_.path());
  // a.yaml's config_url is a 404 (named with where it was set); the stage still ran a.yaml.
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_EQ(read("from-a"), "a");
  EXPECT_EQ(read("from-oem"), "o");
  EXPECT_NE(r.err.find("pok8s-agent: config_url: fetched " + web.url("/a.yaml") + " (" +
                       root().string() + "/oem/90_custom.yaml:2) to " + root().string() +
                       "/run/pok8s/datasource/config_url-01.yaml"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("pok8s-agent: Failed to fetch config_url " + server.url("/none") + " (" +
                       web.url("/a.yaml") + ":2): Failed to download " + server.url("/none") +
                       ": The requested URL returned error: 404"),
            std::string::npos)
      << r.err;
  struct stat st {};
  ASSERT_EQ(::stat((root() / "run/pok8s/datasource/config_url-01.yaml").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // Served again without the broken link: a clean run, and the old file replaced.
  write("root/oem/90_custom.yaml", "#cloud-config\nconfig_url: " + web.url("/b.yaml") + "\n");
  r = agent("stage network --root " + root().string(), dir_.path());
  EXPECT_EQ(r.status, 2) << r.err;  // b.yaml's own config_url is not a URL
  EXPECT_NE(r.err.find("Failed to read cloud-config " + web.url("/b.yaml") +
                       ": line 2: config_url must be an http:// or https:// URL"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(root() / "run/pok8s/datasource/config_url-01.yaml"));
}

TEST_F(Agent, ConfigUrlThatIsNotACloudConfigIsLeftOutAndNamed) {
  FileServer web({{"/page", "<html>not a config</html>\n"},
                  {"/ok.yaml", "#cloud-config\nhostname: fetched-host\n"}});
  add_sysimage_bundle(root());
  write("root/oem/90_custom.yaml", "#cloud-config\nconfig_url: " + web.url("/page") + "\n");
  write("root/etc/pok8s/10.yaml", "#cloud-config\nconfig_url: " + web.url("/ok.yaml") + "\n");
  AgentRun r = agent("stage network --root " + root().string(), dir_.path());
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("Failed to read cloud-config " + web.url("/page") + ":"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("(config_url in " + root().string() + "/oem/90_custom.yaml:2)"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(util::read_file(root() / "run/pok8s/datasource/config_url-01.yaml"),
            "#cloud-config\nhostname: fetched-host\n");
  EXPECT_FALSE(fs::exists(root() / "run/pok8s/datasource/config_url-02.yaml"));
  // config show has it, last.
  r = agent("config show --root " + root().string(), dir_.path());
  EXPECT_NE(r.out.find("hostname: fetched-host"), std::string::npos) << r.out;
}

TEST_F(Agent, UpgradeRefusesALiveSystemBeforeAnyStage) {
  write("boot-state", "mode=live\nmedia_label=COS_LIVE\nmedia_device=/dev/sr0\n");
  AgentRun r = agent("upgrade --source docker://127.0.0.1:1/os:v2 --boot-state " +
                         (dir_.path() / "boot-state").string(),
                     dir_.path());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("this system runs live from /dev/sr0; install it first"), std::string::npos)
      << r.err;
}

TEST_F(Agent, KubernetesConfiguresTheEnabledSectionsService) {
  write("root/usr/lib/systemd/systemd", "");
  write("root/oem/90_custom.yaml",
        "#cloud-config\nk3s:\n  enabled: true\n  args: [--disable=traefik]\n"
        "  env: {K3S_NODE_NAME: edge-1}\n");
  // No binary: refused, naming what to do.
  AgentRun r = agent("kubernetes --no-start --root " + root().string(), dir_.path());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("the image has no /usr/bin/k3s (convert it with --k8s k3s)"),
            std::string::npos)
      << r.err;
  write("root/usr/bin/k3s", "#!/bin/sh\n");
  r = agent("kubernetes --no-start --root " + root().string(), dir_.path());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(
      r.err.find("configured k3s.service (k3s from " + (root() / "oem/90_custom.yaml").string() +
                 ":3): /usr/bin/k3s server --disable=traefik"),
      std::string::npos)
      << r.err;
  std::string dropin = read("run/systemd/system/k3s.service.d/60-pok8s-cloud-config.conf");
  EXPECT_NE(dropin.find("Environment=\"K3S_NODE_NAME=edge-1\"\n"), std::string::npos) << dropin;
  EXPECT_NE(dropin.find("ExecStart=\n"
                        "ExecStart=\"/usr/bin/k3s\" \"server\" \"--disable=traefik\"\n"),
            std::string::npos)
      << dropin;
  // Nothing enabled: nothing to do.
  write("root/oem/90_custom.yaml", "#cloud-config\nk3s: {enabled: false}\n");
  r = agent("kubernetes --no-start --root " + root().string(), dir_.path());
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("no k3s, k3s-agent, k0s or k0s-worker section is enabled"),
            std::string::npos);
  // A typo in the section is an error naming file, line and key.
  write("root/oem/90_custom.yaml", "#cloud-config\nk3s:\n  enable: true\n");
  r = agent("kubernetes --no-start --root " + root().string(), dir_.path());
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("line 3"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("did you mean \"enabled\""), std::string::npos) << r.err;
}

TEST_F(Agent, AFailingStepExits1AndNamesFileStageAndStep) {
  fs::path config = write("x.yaml", R"(#cloud-config
stages:
  boot:
    - name: owned by a ghost
      files: [{path: /a, content: x, owner: ghost}]
    - name: still runs
      files: [{path: /b, content: y}]
)");
  AgentRun r =
      agent("stage boot --no-defaults --root " + root().string() + " --config " + config.string(),
            dir_.path());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("pok8s-agent: boot: \"owned by a ghost\" (" + config.string() +
                       ":4) failed: Failed to write file /a: Failed to resolve user \"ghost\""),
            std::string::npos)
      << r.err;
  EXPECT_EQ(read("b"), "y");
}

TEST_F(Agent, ABrokenConfigExits2ButTheOthersStillRun) {
  write("root/oem/10-bad.yaml", "#cloud-config\nstages:\n  boot:\n    - files: {}\n");
  write("root/oem/20-good.yaml",
        "#cloud-config\nstages:\n  boot:\n    - files: [{path: /good, content: g}]\n");
  AgentRun r = agent("stage boot --root " + root().string(), dir_.path());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("10-bad.yaml: line 4: stages.boot[0].files must be a list, not a map"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(read("good"), "g");
}

TEST_F(Agent, EmitsJsonEventsOnRequest) {
  fs::path config = write("j.yaml", "#cloud-config\nstages:\n  boot:\n    - name: j\n");
  AgentRun r = agent(
      "stage boot --json --no-defaults --root " + root().string() + " --config " + config.string(),
      dir_.path());
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("\"event\":\"started\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"event\":\"succeeded\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"step\":\"j\""), std::string::npos) << r.out;
}

TEST_F(Agent, ReportsTheBootStatusAndMarksTheBootGood) {
  fs::path state = write("run/boot-state",
                         "mode=passive\nmedia_label=COS_STATE\nmedia_device=/dev/vda3\n"
                         "image=/cOS/passive.img\noem_device=/dev/vda2\n");
  fs::path release = write("etc/pok8s-release", "NAME=pok8s\nVERSION=\"1.2.0\"\n");
  fs::path grubenv = dir_.path() / "oem/grubenv";
  util::make_dirs(grubenv.parent_path());
  // The block as grub-editenv makes it, and as grub.cfg leaves it after falling back.
  std::string editenv = "grub-editenv " + grubenv.string();
  ASSERT_EQ(std::system((editenv + " create && " + editenv +
                         " set saved_entry=x pok8s_entry=passive pok8s_tries=1 "
                         "pok8s_max_tries=3 pok8s_fallback=active")
                            .c_str()),
            0);
  std::string files = " --boot-state " + state.string() + " --grubenv " + grubenv.string() +
                      " --release " + release.string();

  AgentRun r = agent("status --json" + files, dir_.path());
  ASSERT_EQ(r.status, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["mode"], "passive");
  EXPECT_EQ(j["entry"], "passive");
  EXPECT_EQ(j["tries"], 1);
  EXPECT_EQ(j["max_tries"], 3);
  EXPECT_EQ(j["fallback"], "active");
  EXPECT_EQ(j["version"], "1.2.0");
  EXPECT_EQ(j["reason"],
            "the active image did not finish booting after 3 tries; booted the passive image");

  r = agent("status" + files, dir_.path());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("Booted:     the passive image, /cOS/passive.img on /dev/vda3\n"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("Tries left: 1 of 3\n"), std::string::npos) << r.out;

  struct stat before {};
  ASSERT_EQ(::stat(grubenv.c_str(), &before), 0);
  r = agent("mark-booted" + files, dir_.path());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "marked this boot as good: pok8s_tries=3 in " + grubenv.string() + "\n");
  struct stat after {};
  ASSERT_EQ(::stat(grubenv.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino);
  EXPECT_EQ(after.st_size, 1024);
  // GRUB's own tool reads the result, unknown variables and the fallback untouched.
  std::string list = (dir_.path() / "list").string();
  ASSERT_EQ(std::system((editenv + " list >" + list).c_str()), 0);
  EXPECT_EQ(util::read_file(list),
            "saved_entry=x\npok8s_entry=passive\npok8s_tries=3\npok8s_max_tries=3\n"
            "pok8s_fallback=active\n");
}

TEST_F(Agent, MarkBootedLeavesALiveBootAloneAndStatusFailsWithoutABootState) {
  fs::path state = write("run/boot-state", "mode=live\nmedia_device=/dev/sr0\n");
  AgentRun r = agent("mark-booted --boot-state " + state.string() + " --grubenv " +
                         (dir_.path() / "missing").string(),
                     dir_.path());
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "nothing to mark: a live boot\n");
  // Installed, with neither GRUB's boot assessment nor a boot-counted systemd-boot entry.
  write("run/boot-state", "mode=active\nmedia_device=/dev/vda3\n");
  fs::create_directories(dir_.path() / "efivars");
  r = agent("mark-booted --boot-state " + state.string() + " --grubenv " +
                (dir_.path() / "missing").string() + " --efivars " +
                (dir_.path() / "efivars").string(),
            dir_.path());
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "nothing to mark: no " + (dir_.path() / "missing").string() +
                       " and no boot-counted systemd-boot entry, so no boot assessment\n");
  r = agent("status --boot-state " + (dir_.path() / "none").string(), dir_.path());
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(r.err, "pok8s-agent: Failed to open " + (dir_.path() / "none").string() +
                       ": No such file or directory\n");
}

}  // namespace
