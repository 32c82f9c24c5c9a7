// Upgrades on a real installed system: Debian bookworm (mmdebstrap) converted as v0.1.0 and v2,
// a raw disk of v0.1.0 booted in QEMU (TCG, OVMF), the images served by docker-registry on
// 127.0.0.1 (the guest reaches it through QEMU's restricted user network, 10.0.2.100:5000).
//   boot 1 (v0.1.0): an upgrade from a source with a corrupted layer is refused and leaves
//                    COS_STATE as it was; the upgrade to v2 succeeds.
//   boot 2 (v2):     the release file says v2 and passive holds v0.1.0; upgrade to a broken
//                    image (its /sbin/init exits at once).
//   boots 3, 4:      the broken active fails its one try (the disk is built with --boot-tries 1
//                    to spare two failing boots); GRUB falls back to passive (v2) by itself,
//                    and status says why.
// The cloud-config's config_url (a web server on 127.0.0.1, 10.0.2.100:8080 in the guest) is
// fetched by the network stage of boot 1, and the stage it adds runs.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "e2e/pok8s_cli.h"
#include "integration/file_server.h"
#include "integration/qemu.h"
#include "integration/registry_harness.h"
#include "pok8s/util/file.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::testing;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kV1 = "12-standard-amd64-generic-v0.1.0";
constexpr const char* kV2 = "12-standard-amd64-generic-v2";
constexpr const char* kBase = "debian-12-standard-amd64-generic-v0.1.0";

constexpr const char* kCloudConfig = R"yaml(#cloud-config
config_url: http://10.0.2.100:8080/node.yaml
stages:
  boot:
    - name: e2e upgrade probe
      commands:
        - |
          say() { echo "$*" > /dev/ttyS0; }
          . /etc/pok8s-release
          mode=$(sed -n 's/^mode=//p' /run/pok8s/boot-state)
          say "POK8S-BOOT version=$VERSION mode=$mode"
          say "POK8S-STATUS $(pok8s-agent status --json | tr -d '\n')"
          net() { for i in $(seq 120); do ip -4 addr | grep -q 'inet 10.0.2.15/' && return 0; sleep 1; done; return 1; }
          registry=docker://10.0.2.100:5000/pok8s/os
          upgrade() {
            say "POK8S-UPGRADING $1"
            out=$(pok8s-agent upgrade --source "$registry:$1" --tls-verify false --json 2>/tmp/upgrade.err); rc=$?
            sed 's/^/upgrade: /' /tmp/upgrade.err > /dev/ttyS0
            say "POK8S-UPGRADE-$1 rc=$rc err=$(grep 'pok8s' /tmp/upgrade.err | tr '\n' ' ') out=$(echo "$out" | tr -d '\n')"
          }
          if [ "$VERSION" = v0.1.0 ]; then
            net && say "POK8S-NETWORK $(ip -4 -o addr | grep -v ' lo ' | head -1)" || say "POK8S-NO-NETWORK"
            upgrade tampered
            say "POK8S-AFTER-TAMPERED dirs=$(ls /run/pok8s/media/cOS | tr '\n' ,)"
            upgrade v2
          elif [ "$mode" = active ]; then
            mkdir -p /tmp/passive
            mount -o loop,ro /run/pok8s/media/cOS/passive/rootfs.img /tmp/passive
            say "POK8S-PASSIVE $(. /tmp/passive/etc/pok8s-release; echo version=$VERSION)"
            umount /tmp/passive
            net || say "POK8S-NO-NETWORK"
            upgrade broken
          fi
          sync
          systemd-run --no-block sh -c 'until systemctl -q is-active pok8s-booted.service; do sleep 1; done; systemctl poweroff'
)yaml";

std::string sha256_hex_of(const std::string& bytes) {
  util::TempDir d = util::TempDir::scratch();
  util::write_file_atomic(d.path() / "f", bytes);
  return util::file_sha256(d.path() / "f");
}

// A new tag in the OCI layout: `from` plus one gzip layer holding `files` (path → content,
// executable). Written as a user would with tar and gzip; returns the new layer's digest.
std::string add_layer(const util::Path& layout, const std::string& from, const std::string& to,
                      const std::map<std::string, std::string>& files) {
  auto blob = [&](const std::string& digest) {
    return layout / "blobs" / "sha256" / digest.substr(7);
  };
  auto put = [&](const std::string& bytes) {
    std::string digest = "sha256:" + sha256_hex_of(bytes);
    util::write_file_atomic(blob(digest), bytes);
    return digest;
  };
  json index = json::parse(util::read_file(layout / "index.json"));
  json desc;
  for (const auto& m : index["manifests"])
    if (m["annotations"]["org.opencontainers.image.ref.name"] == from) desc = m;
  if (desc.is_null()) throw std::runtime_error("no tag " + from + " in " + layout.string());
  json manifest = json::parse(util::read_file(blob(desc["digest"])));
  json config = json::parse(util::read_file(blob(manifest["config"]["digest"])));

  util::TempDir d = util::TempDir::scratch();
  for (const auto& [path, content] : files) {
    util::make_dirs((d.path() / "tree" / path).parent_path());
    util::write_file_atomic(d.path() / "tree" / path, content, 0755);
  }
  auto r = util::run_process({"tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
                              "--mtime=@1700000000", "-C", (d.path() / "tree").string(), "-cf",
                              (d.path() / "layer.tar").string(), "."});
  if (r.status != 0) throw std::runtime_error("tar: " + r.output);
  std::string tar = util::read_file(d.path() / "layer.tar", 1u << 30);
  r = util::run_process({"gzip", "-n", (d.path() / "layer.tar").string()});
  if (r.status != 0) throw std::runtime_error("gzip: " + r.output);
  std::string gz = util::read_file(d.path() / "layer.tar.gz", 1u << 30);

  config["rootfs"]["diff_ids"].push_back("sha256:" + sha256_hex_of(tar));
  std::string config_bytes = config.dump();
  std::string layer_digest = put(gz);
  manifest["layers"].push_back({{"mediaType", "application/vnd.oci.image.layer.v1.tar+gzip"},
                                {"digest", layer_digest},
                                {"size", gz.size()}});
  manifest["config"]["digest"] = put(config_bytes);
  manifest["config"]["size"] = config_bytes.size();
  std::string manifest_bytes = manifest.dump();
  desc["digest"] = put(manifest_bytes);
  desc["size"] = manifest_bytes.size();
  desc["annotations"]["org.opencontainers.image.ref.name"] = to;
  index["manifests"].push_back(desc);
  util::write_file_atomic(layout / "index.json", index.dump());
  return layer_digest;
}

class Upgrade : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto fail = [](std::string why) { setup_error_ = std::move(why); };
    work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
    util::Path w = work_->path();
    util::Path layout = w / "layout";
    std::string oci = "oci:" + layout.string();
    if (convert_debian_fixture(w, layout, "v0.1.0", setup_error_).empty()) return;
    if (convert_debian_fixture(w, layout, "v2", setup_error_).empty()) return;
    try {
      // The pause lets the serial port send the line before the kernel panics on init's exit
      // (a panic drops what the UART has not sent yet).
      add_layer(layout, kV2, "broken",
                {{"usr/sbin/init",
                  "#!/bin/sh\necho 'POK8S-BROKEN-INIT: this init fails'\nsleep 2\nexit 1\n"}});
      tampered_layer_ = add_layer(layout, kV2, "tampered", {{"etc/pok8s-tampered", "x\n"}});
    } catch (const std::exception& e) {
      return fail(std::string("making the broken images failed: ") + e.what());
    }
    registry_ = new TestRegistry();
    // What config_url names: a stage that reports the file the agent fetched it to.
    web_ = new FileServer(std::map<std::string, std::string>{
        {"/node.yaml",
         "#cloud-config\nstages:\n  network:\n    - name: e2e config_url probe\n"
         "      commands:\n        - echo \"POK8S-CONFIG-URL from=$(ls "
         "/run/pok8s/datasource/config_url-*.yaml)\" > /dev/ttyS0\n"}});
    for (auto [tag, name] :
         {std::pair{kV2, "v2"}, {"broken", "broken"}, {"tampered", "tampered"}}) {
      auto r =
          run_pok8s((w / "cache").string(),
                    {"image", "copy", oci + ":" + tag,
                     registry_->docker(std::string("pok8s/os:") + name), "--tls-verify", "false"});
      if (r.status != 0) return fail("push failed:\n" + r.output);
    }
    // One byte of the tampered layer changes in the registry's storage: its digest no longer
    // verifies.
    util::Path data = registry_->blob_data(oci::Digest::parse(tampered_layer_));
    std::string bytes = util::read_file(data, 1u << 30);
    bytes[bytes.size() / 2] ^= 0x01;
    util::write_file_atomic(data, bytes);

    util::write_file_atomic(w / "cloud.yaml", kCloudConfig);
    auto r = run_pok8s((w / "cache").string(),
                       {"build", oci + ":" + kV1, "--artifact", "raw", "--boot-tries", "1", "-o",
                        (w / "out").string(), "--config", (w / "cloud.yaml").string()});
    if (r.status != 0) return fail("build failed:\n" + r.output);
  }
  static void TearDownTestSuite() {
    delete web_;
    web_ = nullptr;
    delete registry_;
    registry_ = nullptr;
    delete work_;
    work_ = nullptr;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  static inline std::string setup_error_;
  static inline std::string tampered_layer_;
  static inline util::TempDir* work_ = nullptr;
  static inline TestRegistry* registry_ = nullptr;
  static inline FileServer* web_ = nullptr;
};

TEST_F(Upgrade, ToV2FromARegistryThenABrokenImageFallsBackToPassive) {
  util::Path disk = work_->path() / "node.raw";
  fs::copy_file(work_->path() / "out" / (std::string(kBase) + ".raw"), disk);
  auto machine = [&](const util::Path& dir) {
    QemuOptions options;
    options.firmware = Firmware::kUefi;
    options.disks.push_back(disk);
    options.cpus = 2;
    options.memory_mib = 2048;
    options.forward_ports = {{5000, registry_->port()}, {8080, web_->port()}};
    return std::make_unique<Qemu>(options, dir);
  };
  const auto kUpgradeTimeout = boot_timeout(std::chrono::seconds(1800));
  {
    SCOPED_TRACE("boot 1: v0.1.0");
    util::TempDir dir = util::TempDir::scratch("/var/tmp");
    auto vm = machine(dir.path());
    auto boot = vm->wait_for_line("POK8S-BOOT ", boot_timeout(std::chrono::seconds(420)));
    ASSERT_TRUE(boot) << vm->tail(60);
    EXPECT_EQ(*boot, "POK8S-BOOT version=v0.1.0 mode=active");
    auto tampered = vm->wait_for_line("POK8S-UPGRADE-tampered ", kUpgradeTimeout);
    ASSERT_TRUE(tampered) << vm->tail(60);
    EXPECT_EQ(tampered->find("POK8S-UPGRADE-tampered rc=0"), std::string::npos) << *tampered;
    // pok8s-sysimage names the blob that does not verify; the agent says nothing changed.
    EXPECT_NE(tampered->find("Failed to verify blob " + tampered_layer_.substr(0, 19)),
              std::string::npos)
        << *tampered;
    EXPECT_NE(tampered->find("the installed images are unchanged"), std::string::npos) << *tampered;
    auto dirs = vm->wait_for_line("POK8S-AFTER-TAMPERED ", std::chrono::seconds(60));
    ASSERT_TRUE(dirs) << vm->tail(60);
    EXPECT_EQ(*dirs, "POK8S-AFTER-TAMPERED dirs=active,passive,") << *dirs;
    auto v2 = vm->wait_for_line("POK8S-UPGRADE-v2 ", kUpgradeTimeout);
    ASSERT_TRUE(v2) << vm->tail(60);
    EXPECT_EQ(v2->find("POK8S-UPGRADE-v2 rc=0 "), 0u) << *v2 << "\n" << vm->tail(60);
    // The network stage fetched config_url and ran the stage it brought.
    auto fetched = vm->wait_for_line("POK8S-CONFIG-URL ", std::chrono::seconds(300));
    ASSERT_TRUE(fetched) << vm->tail(60);
    EXPECT_EQ(*fetched, "POK8S-CONFIG-URL from=/run/pok8s/datasource/config_url-01.yaml");
    EXPECT_TRUE(vm->wait_exit(std::chrono::seconds(180))) << vm->tail(40);
  }
  {
    SCOPED_TRACE("boot 2: v2");
    util::TempDir dir = util::TempDir::scratch("/var/tmp");
    auto vm = machine(dir.path());
    auto boot = vm->wait_for_line("POK8S-BOOT ", boot_timeout(std::chrono::seconds(420)));
    ASSERT_TRUE(boot) << vm->tail(60);
    EXPECT_EQ(*boot, "POK8S-BOOT version=v2 mode=active");
    auto status = vm->wait_for_line("POK8S-STATUS ", std::chrono::seconds(60));
    ASSERT_TRUE(status);
    json s = json::parse(status->substr(13), nullptr, false);
    EXPECT_EQ(s["images"]["active"]["version"], "v2") << s.dump();
    EXPECT_EQ(s["images"]["active"]["source"], "docker://10.0.2.100:5000/pok8s/os:v2") << s.dump();
    auto passive = vm->wait_for_line("POK8S-PASSIVE ", std::chrono::seconds(120));
    ASSERT_TRUE(passive) << vm->tail(40);
    EXPECT_EQ(*passive, "POK8S-PASSIVE version=v0.1.0");
    auto broken = vm->wait_for_line("POK8S-UPGRADE-broken ", kUpgradeTimeout);
    ASSERT_TRUE(broken) << vm->tail(60);
    EXPECT_EQ(broken->find("POK8S-UPGRADE-broken rc=0 "), 0u) << *broken;
    EXPECT_TRUE(vm->wait_exit(std::chrono::seconds(180))) << vm->tail(40);
  }
  // The broken active uses up its try (the boot ends in a kernel panic and a reboot, which ends
  // QEMU here); then GRUB boots passive by itself.
  bool fell_back = false;
  int failed_boots = 0;
  for (int attempt = 0; attempt < 5 && !fell_back; ++attempt) {
    SCOPED_TRACE(fmt::format("boot {}", attempt + 3));
    util::TempDir dir = util::TempDir::scratch("/var/tmp");
    auto vm = machine(dir.path());
    auto boot = vm->wait_for_line("POK8S-BOOT ", boot_timeout(std::chrono::seconds(300)));
    if (!boot) {
      EXPECT_TRUE(vm->serial().find("POK8S-BROKEN-INIT") != std::string::npos) << vm->tail(40);
      ++failed_boots;
      continue;
    }
    fell_back = true;
    EXPECT_EQ(*boot, "POK8S-BOOT version=v2 mode=passive");
    auto status = vm->wait_for_line("POK8S-STATUS ", std::chrono::seconds(60));
    ASSERT_TRUE(status);
    json s = json::parse(status->substr(13), nullptr, false);
    EXPECT_EQ(s["mode"], "passive") << s.dump();
    EXPECT_EQ(s["fallback"], "active") << s.dump();
    EXPECT_NE(s["reason"].get<std::string>().find("the active image did not finish booting"),
              std::string::npos)
        << s.dump();
    EXPECT_TRUE(vm->wait_exit(std::chrono::seconds(180))) << vm->tail(40);
  }
  EXPECT_TRUE(fell_back);
  // The build's one try carried over to the upgraded image.
  EXPECT_EQ(failed_boots, 1);
}

}  // namespace
