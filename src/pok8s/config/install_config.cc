// The install block's keys, checked as strictly as the rest of cloud-config: what pok8s does,
// what it leaves alone (a warning each), and typos (refused with a did-you-mean). Kairos also
// takes dotted keys ("partitions.oem.size: 60"); they are read like the nested form.
#include "pok8s/config/install_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "pok8s/config/strict_yaml.h"
#include "pok8s/util/error.h"

namespace pok8s::config {
namespace {

constexpr std::string_view kInstallKeys[] = {"device",     "auto",       "reboot",    "poweroff",
                                             "firmware",   "part-table", "no-format", "partitions",
                                             "encryption", "passphrase"};

// Kairos install keys that pok8s does not implement: each is named in a warning, never dropped
// silently. None of them can make the installer write somewhere else than asked.
constexpr std::string_view kIgnoredInstallKeys[] = {
    "extra-partitions",
    "force",
    "grub-entry-name",
    "grub_options",
    "bind_mounts",
    "ephemeral_mounts",
    "encrypted_partitions",
    "image",
    "system",
    "recovery-system",
    "passive",
    "skip_copy_kairos_bundles",
    "nowipe",
    "extra-dirs-rootfs",
    "bundles",
    "env",
    "cloud-init",
    "iso",
    "tty",
    "eject-cd",
    "source",
    "allow-insecure-registries",
    "device-selector",
    "config-urls",
    "system-uri",
    "debug",
    "disable-boot-entry",
    "config-dir",
    "snapshotter",
    "skip-entries",
};

constexpr std::string_view kPartitionNames[] = {"oem", "recovery", "state", "persistent"};
constexpr std::string_view kPartitionKeys[] = {"size", "fs"};
// Kairos fixes these itself whatever the config says; so does pok8s.
constexpr std::string_view kIgnoredPartitionKeys[] = {"label", "name"};

// Every key a Kairos user may mean, for did-you-mean.
std::vector<std::string_view> kairos_install_keys() {
  std::vector<std::string_view> out(std::begin(kInstallKeys), std::end(kInstallKeys));
  out.insert(out.end(), std::begin(kIgnoredInstallKeys), std::end(kIgnoredInstallKeys));
  return out;
}

std::string origin(const StrictYaml& yaml, const YAML::Node& key_node) {
  return fmt::format("{}:{}", yaml.source(), key_node.Mark().line + 1);
}

// What one file's install block set; merged into the result in file order.
struct InstallSettings {
  std::optional<std::pair<std::string, SettingOrigin>> device;
  std::optional<bool> auto_install;
  std::optional<std::string> firmware;
  std::optional<std::pair<std::string, SettingOrigin>> encryption, passphrase;
  std::optional<std::pair<bool, SettingOrigin>> reboot, poweroff;
  std::optional<std::uint64_t> oem_mib, recovery_mib, state_mib, persistent_mib;
};

class InstallReader {
 public:
  InstallReader(const CloudConfig& config, std::vector<std::string>& warnings)
      : yaml_("cloud-config", config.source,
              {kMaxCloudConfigNodes, kMaxCloudConfigListLength, kMaxCloudConfigDepth}),
        warnings_(warnings) {}

  InstallSettings read(const YAML::Node& install) {
    InstallSettings s;
    if (install.IsNull()) return s;
    yaml_.expect(install, YAML::NodeType::Map, "install", "a map");
    yaml_.for_each_key(install, "install",
                       [&](const std::string& key, const YAML::Node& key_node,
                           const YAML::Node& value) { read_key(s, key, key_node, value); });
    return s;
  }

 private:
  void warn_ignored(const YAML::Node& key_node, const std::string& path) {
    warnings_.push_back(
        fmt::format("cloud-config {}: line {}: {} is ignored: pok8s does not "
                    "implement it",
                    yaml_.source(), key_node.Mark().line + 1, path));
  }

  void read_key(InstallSettings& s, const std::string& key, const YAML::Node& key_node,
                const YAML::Node& value) {
    const std::string path = StrictYaml::join("install", key);
    if (auto dot = key.find('.'); dot != std::string::npos) {
      // Kairos' dotted form: "partitions.oem.size", "system.size".
      std::string head = key.substr(0, dot);
      std::string rest = key.substr(dot + 1);
      if (head == "partitions") {
        auto dot2 = rest.find('.');
        if (dot2 == std::string::npos) return read_partition(s, rest, key_node, value, path);
        return read_partition_key(s, rest.substr(0, dot2), rest.substr(dot2 + 1), key_node, value,
                                  path);
      }
      if (contains(kIgnoredInstallKeys, head)) return warn_ignored(key_node, path);
      yaml_.fail(key_node, fmt::format("unknown key \"{}\" in install{}", printable(key),
                                       did_you_mean(head, kairos_install_keys())));
    }
    if (key == "device") {
      std::string device = yaml_.read_line_string(value, path, false);
      if (device != "auto" && (!device.starts_with("/dev/") || device.find("/../") != device.npos ||
                               device.ends_with("/..") || device.size() > 4096))
        yaml_.fail(value, fmt::format("{} must be auto or a device under /dev, not \"{}\"", path,
                                      printable(device)));
      s.device = {device, origin(yaml_, key_node)};
    } else if (key == "auto") {
      s.auto_install = yaml_.read_bool(value, path);
    } else if (key == "reboot") {
      s.reboot = {yaml_.read_bool(value, path), origin(yaml_, key_node)};
    } else if (key == "poweroff") {
      s.poweroff = {yaml_.read_bool(value, path), origin(yaml_, key_node)};
    } else if (key == "firmware") {
      std::string firmware = yaml_.read_string(value, path);
      if (firmware != "efi" && firmware != "bios")
        yaml_.fail(value, fmt::format("{} \"{}\" is not supported by pok8s: it installs for efi "
                                      "or bios",
                                      path, printable(firmware)));
      s.firmware = firmware;
    } else if (key == "encryption") {
      std::string mode = yaml_.read_string(value, path);
      if (mode != "none" && mode != "tpm" && mode != "passphrase")
        yaml_.fail(value, fmt::format("{} must be none, tpm or passphrase, not \"{}\"", path,
                                      printable(mode)));
      s.encryption = {mode, origin(yaml_, key_node)};
    } else if (key == "passphrase") {
      std::string passphrase = yaml_.read_line_string(value, path, false);
      if (passphrase.size() < 8 || passphrase.size() > 512)
        yaml_.fail(value, fmt::format("{} must be 8 to 512 characters long", path));
      s.passphrase = {passphrase, origin(yaml_, key_node)};
    } else if (key == "part-table") {
      std::string table = yaml_.read_string(value, path);
      if (table != "gpt")
        yaml_.fail(value, fmt::format("{} \"{}\" is not supported by pok8s: it writes a GPT (gpt)",
                                      path, printable(table)));
    } else if (key == "no-format") {
      if (yaml_.read_bool(value, path))
        yaml_.fail(value, fmt::format("{}: true is not supported by pok8s: the installer always "
                                      "partitions and formats the disk",
                                      path));
    } else if (key == "partitions") {
      if (value.IsNull()) return;
      yaml_.expect(value, YAML::NodeType::Map, path, "a map");
      yaml_.for_each_key(
          value, path,
          [&](const std::string& name, const YAML::Node& name_node, const YAML::Node& part) {
            read_partition(s, name, name_node, part, StrictYaml::join(path, name));
          });
    } else if (contains(kIgnoredInstallKeys, key)) {
      warn_ignored(key_node, path);
    } else {
      yaml_.unknown_key(key_node, key, "install", kairos_install_keys());
    }
  }

  void check_partition_name(const std::string& name, const YAML::Node& at) {
    if (!contains(kPartitionNames, name))
      yaml_.fail(at, fmt::format("unknown partition \"{}\" in install.partitions (oem, recovery, "
                                 "state, persistent){}",
                                 printable(name), did_you_mean(name, kPartitionNames)));
  }

  void read_partition(InstallSettings& s, const std::string& name, const YAML::Node& name_node,
                      const YAML::Node& part, const std::string& path) {
    check_partition_name(name, name_node);
    if (part.IsNull()) return;
    yaml_.expect(part, YAML::NodeType::Map, path, "a map");
    yaml_.for_each_key(
        part, path, [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& v) {
          read_partition_key(s, name, key, key_node, v, StrictYaml::join(path, key));
        });
  }

  void read_partition_key(InstallSettings& s, const std::string& name, const std::string& key,
                          const YAML::Node& key_node, const YAML::Node& value,
                          const std::string& path) {
    check_partition_name(name, key_node);
    if (key == "size") {
      std::uint64_t mib = read_size(value, path);
      if (mib == 0 && name != "persistent")
        yaml_.fail(value, fmt::format("{} must be more than 0: only persistent takes the rest of "
                                      "the disk",
                                      path));
      (name == "oem"        ? s.oem_mib
       : name == "recovery" ? s.recovery_mib
       : name == "state"    ? s.state_mib
                            : s.persistent_mib) = mib;
    } else if (key == "fs") {
      std::string fs = yaml_.read_string(value, path);
      if (fs != "ext4")
        yaml_.fail(value,
                   fmt::format("{} \"{}\" is not supported by pok8s (ext4)", path, printable(fs)));
    } else if (contains(kIgnoredPartitionKeys, key)) {
      warn_ignored(key_node, path);
    } else {
      yaml_.unknown_key(key_node, key, fmt::format("install.partitions.{}", name), kPartitionKeys);
    }
  }

  std::uint64_t read_size(const YAML::Node& value, const std::string& path) const {
    std::string text = yaml_.read_string(value, path);
    bool digits =
        !text.empty() && text.size() <= 12 &&
        std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
    std::uint64_t mib = digits ? std::stoull(text) : 0;
    if (!digits || mib > kMaxInstallPartitionMiB)
      yaml_.fail(value, fmt::format("{} must be a whole number of MiB from 0 to {}, not \"{}\"",
                                    path, kMaxInstallPartitionMiB, printable(text)));
    return mib;
  }

  StrictYaml yaml_;
  std::vector<std::string>& warnings_;
};

}  // namespace

InstallConfig read_install_config(std::span<const CloudConfig> configs) {
  InstallConfig out;
  SettingOrigin reboot_origin, poweroff_origin;
  for (const auto& config : configs) {
    auto it = config.sections.find("install");
    if (it == config.sections.end()) continue;
    InstallSettings s = InstallReader(config, out.warnings).read(it->second);
    if (s.device) std::tie(out.device, out.device_origin) = *s.device;
    if (s.auto_install) out.auto_install = *s.auto_install;
    if (s.firmware) out.firmware = *s.firmware;
    if (s.encryption) std::tie(out.encryption, out.encryption_origin) = *s.encryption;
    if (s.passphrase) out.passphrase = s.passphrase->first;
    if (s.reboot) std::tie(out.reboot, reboot_origin) = *s.reboot;
    if (s.poweroff) std::tie(out.poweroff, poweroff_origin) = *s.poweroff;
    if (s.oem_mib) out.oem_mib = *s.oem_mib;
    if (s.recovery_mib) out.recovery_mib = *s.recovery_mib;
    if (s.state_mib) out.state_mib = *s.state_mib;
    if (s.persistent_mib) out.persistent_mib = *s.persistent_mib;
  }
  if (out.reboot && out.poweroff)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read cloud-config: install.reboot ({}) and install.poweroff "
                            "({}) are both true: set only one",
                            reboot_origin, poweroff_origin));
  if (out.encryption == "passphrase" && out.passphrase.empty())
    throw Error(
        ErrorKind::kInvalidInput,
        fmt::format("Failed to read cloud-config: install.encryption: passphrase ({}) needs "
                    "install.passphrase",
                    out.encryption_origin));
  return out;
}

}  // namespace pok8s::config
