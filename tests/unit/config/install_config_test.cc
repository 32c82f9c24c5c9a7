// The Kairos install block: what pok8s reads, how later files override earlier ones, which
// Kairos keys are left alone with a warning, and which settings and typos are refused.
#include "pok8s/config/install_config.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "pok8s/util/error.h"

namespace pok8s::config {
namespace {

std::vector<CloudConfig> parse_install_files(
    const std::vector<std::pair<std::string, std::string>>& files) {
  std::vector<CloudConfig> out;
  for (const auto& [name, text] : files) out.push_back(parse_cloud_config(text, name));
  return out;
}

InstallConfig read_install(const std::string& text) {
  return read_install_config(parse_install_files({{"/oem/90_custom.yaml", text}}));
}

std::string install_error_of(const std::vector<std::pair<std::string, std::string>>& files) {
  try {
    read_install_config(parse_install_files(files));
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    return e.what();
  }
  return "";
}

std::string install_error_of(const std::string& text) {
  return install_error_of({{"/oem/90_custom.yaml", text}});
}

TEST(InstallConfig, WithoutAnInstallBlockTheDefaultsHold) {
  InstallConfig c = read_install("#cloud-config\nhostname: node\n");
  EXPECT_EQ(c.device, "auto");
  EXPECT_EQ(c.device_origin, "");
  EXPECT_FALSE(c.auto_install);
  EXPECT_FALSE(c.reboot);
  EXPECT_FALSE(c.poweroff);
  EXPECT_EQ(c.persistent_mib, 0u);
  EXPECT_EQ(c.firmware, "");
  EXPECT_TRUE(c.warnings.empty());
  EXPECT_EQ(read_install("#cloud-config\ninstall:\n").device, "auto");
  EXPECT_EQ(read_install("#cloud-config\ninstall:\n  firmware: bios\n").firmware, "bios");
}

TEST(InstallConfig, ReadsTheKeysPok8sImplements) {
  InstallConfig c = read_install(R"(#cloud-config
install:
  device: /dev/vdb
  auto: true
  poweroff: yes
  firmware: efi
  part-table: gpt
  no-format: false
  partitions:
    oem: {size: 128, fs: ext4}
    recovery:
      size: 4096
    state: {size: 12000}
    persistent: {size: 0}
)");
  EXPECT_EQ(c.device, "/dev/vdb");
  EXPECT_EQ(c.device_origin, "/oem/90_custom.yaml:3");
  EXPECT_EQ(c.firmware, "efi");
  EXPECT_TRUE(c.auto_install);
  EXPECT_TRUE(c.poweroff);
  EXPECT_FALSE(c.reboot);
  EXPECT_EQ(c.oem_mib, 128u);
  EXPECT_EQ(c.recovery_mib, 4096u);
  EXPECT_EQ(c.state_mib, 12000u);
  EXPECT_EQ(c.persistent_mib, 0u);
  EXPECT_TRUE(c.warnings.empty());
}

TEST(InstallConfig, TakesKairosDottedKeys) {
  InstallConfig c = read_install(R"(#cloud-config
install:
  partitions.oem.size: 60
  partitions.recovery:
    size: 5000
  system.size: 4096
)");
  EXPECT_EQ(c.oem_mib, 60u);
  EXPECT_EQ(c.recovery_mib, 5000u);
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_EQ(c.warnings[0],
            "cloud-config /oem/90_custom.yaml: line 6: install.system.size is ignored: pok8s does "
            "not implement it");
}

TEST(InstallConfig, ALaterFileOverridesAnEarlierOnesKeys) {
  auto configs =
      parse_install_files({{"/usr/lib/pok8s/stages/00.yaml",
                            "#cloud-config\ninstall:\n  device: /dev/vda\n  reboot: true\n"
                            "  partitions: {oem: {size: 100}, state: {size: 9000}}\n"},
                           {"/run/pok8s/media/config.yaml",
                            "#cloud-config\ninstall:\n  auto: true\n  reboot: false\n"
                            "  poweroff: true\n  partitions: {oem: {size: 200}}\n"}});
  InstallConfig c = read_install_config(configs);
  EXPECT_EQ(c.device, "/dev/vda");  // the later file does not say
  EXPECT_EQ(c.device_origin, "/usr/lib/pok8s/stages/00.yaml:3");
  EXPECT_TRUE(c.auto_install);
  EXPECT_FALSE(c.reboot);
  EXPECT_TRUE(c.poweroff);
  EXPECT_EQ(c.oem_mib, 200u);
  EXPECT_EQ(c.state_mib, 9000u);
}

TEST(InstallConfig, KairosKeysPok8sDoesNotImplementAreIgnoredWithOneWarningEach) {
  InstallConfig c = read_install(R"(#cloud-config
install:
  auto: true
  grub-entry-name: Kairos
  extra-partitions:
    - name: data
      size: 100
  bind_mounts: [/mnt/a]
  encrypted_partitions: [COS_PERSISTENT]
  image: docker:foo
  recovery-system: {size: 5000}
  partitions:
    oem: {size: 64, label: MY_OEM}
)");
  EXPECT_TRUE(c.auto_install);
  std::vector<std::string> expected;
  for (auto [line, key] :
       std::vector<std::pair<int, std::string>>{{4, "install.grub-entry-name"},
                                                {5, "install.extra-partitions"},
                                                {8, "install.bind_mounts"},
                                                {9, "install.encrypted_partitions"},
                                                {10, "install.image"},
                                                {11, "install.recovery-system"},
                                                {13, "install.partitions.oem.label"}})
    expected.push_back("cloud-config /oem/90_custom.yaml: line " + std::to_string(line) + ": " +
                       key + " is ignored: pok8s does not implement it");
  EXPECT_EQ(c.warnings, expected);
}

TEST(InstallConfig, ATypoIsRefusedNamingFileLineAndKeyWithADidYouMean) {
  EXPECT_EQ(install_error_of("#cloud-config\ninstall:\n  auto: true\n  devcie: /dev/vda\n"),
            "Failed to read cloud-config /oem/90_custom.yaml: line 4: unknown key \"devcie\" in "
            "install; did you mean \"device\"?");
  EXPECT_EQ(
      install_error_of("#cloud-config\ninstall:\n  partitions:\n    persistant: {size: 10}\n"),
      "Failed to read cloud-config /oem/90_custom.yaml: line 4: unknown partition "
      "\"persistant\" in install.partitions (oem, recovery, state, persistent); did you "
      "mean \"persistent\"?");
  EXPECT_EQ(install_error_of("#cloud-config\ninstall:\n  partitions:\n    oem: {sise: 10}\n"),
            "Failed to read cloud-config /oem/90_custom.yaml: line 4: unknown key \"sise\" in "
            "install.partitions.oem; did you mean \"size\"?");
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  partitions.oem.sizee: 60\n")
                .find("line 3: unknown key \"sizee\" in install.partitions.oem"),
            std::string::npos);
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  sytem.size: 60\n")
                .find("line 3: unknown key \"sytem.size\" in install; did you mean"),
            std::string::npos);
}

TEST(InstallConfig, SettingsPok8sCannotHonourAreRefusedNotIgnored) {
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  no-format: true\n")
                .find("line 3: install.no-format: true is not supported by pok8s"),
            std::string::npos);
  EXPECT_EQ(install_error_of("#cloud-config\ninstall:\n  firmware: coreboot\n"),
            "Failed to read cloud-config /oem/90_custom.yaml: line 3: install.firmware "
            "\"coreboot\" is not supported by pok8s: it installs for efi or bios");
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  part-table: msdos\n")
                .find("install.part-table \"msdos\" is not supported"),
            std::string::npos);
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  partitions: {state: {fs: xfs}}\n")
                .find("install.partitions.state.fs \"xfs\" is not supported by pok8s (ext4)"),
            std::string::npos);
}

TEST(InstallConfig, WrongValuesAreRefused) {
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  device: sda\n")
                .find("line 3: install.device must be auto or a device under /dev, not \"sda\""),
            std::string::npos);
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  device: /dev/../etc/passwd\n")
                .find("under /dev"),
            std::string::npos);
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  auto: maybe\n")
                .find("install.auto must be true or false, not \"maybe\""),
            std::string::npos);
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  partitions: {oem: {size: 1G}}\n")
                .find("install.partitions.oem.size must be a whole number of MiB"),
            std::string::npos);
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  partitions: {oem: {size: 99999999999}}\n")
                .find("must be a whole number of MiB from 0 to 67108864"),
            std::string::npos);
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  partitions: {state: {size: 0}}\n")
                .find("install.partitions.state.size must be more than 0"),
            std::string::npos);
  EXPECT_NE(install_error_of("#cloud-config\ninstall: [auto]\n").find("install must be a map"),
            std::string::npos);
}

TEST(InstallConfig, RebootAndPoweroffBothTrueAreRefusedNamingWhereEachWasSet) {
  EXPECT_EQ(install_error_of({{"/a.yaml", "#cloud-config\ninstall:\n  reboot: true\n"},
                              {"/b.yaml", "#cloud-config\ninstall:\n  poweroff: true\n"}}),
            "Failed to read cloud-config: install.reboot (/a.yaml:3) and install.poweroff "
            "(/b.yaml:3) are both true: set only one");
}

TEST(InstallConfig, EncryptionIsNoneTpmOrPassphraseWhichNeedsOne) {
  EXPECT_EQ(read_install("#cloud-config\nhostname: node\n").encryption, "none");
  InstallConfig c = read_install("#cloud-config\ninstall:\n  encryption: tpm\n");
  EXPECT_EQ(c.encryption, "tpm");
  EXPECT_EQ(c.encryption_origin, "/oem/90_custom.yaml:3");
  c = read_install(
      "#cloud-config\ninstall:\n  encryption: passphrase\n  passphrase: hunter2hunter2\n");
  EXPECT_EQ(c.encryption, "passphrase");
  EXPECT_EQ(c.passphrase, "hunter2hunter2");
  // A later file's mode wins; the passphrase may come from another file.
  c = read_install_config(parse_install_files(
      {{"/a.yaml", "#cloud-config\ninstall:\n  encryption: tpm\n  passphrase: 12345678\n"},
       {"/b.yaml", "#cloud-config\ninstall:\n  encryption: passphrase\n"}}));
  EXPECT_EQ(c.encryption, "passphrase");
  EXPECT_EQ(c.passphrase, "12345678");
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  encryption: luks\n")
                .find("line 3: install.encryption must be none, tpm or passphrase, not \"luks\""),
            std::string::npos);
  EXPECT_NE(install_error_of("#cloud-config\ninstall:\n  passphrase: short\n")
                .find("install.passphrase must be 8 to 512 characters long"),
            std::string::npos);
  EXPECT_EQ(install_error_of("#cloud-config\ninstall:\n  encryption: passphrase\n"),
            "Failed to read cloud-config: install.encryption: passphrase (/oem/90_custom.yaml:3) "
            "needs install.passphrase");
}

}  // namespace
}  // namespace pok8s::config
