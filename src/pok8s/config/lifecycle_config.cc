#include "pok8s/config/lifecycle_config.h"

#include <fmt/format.h>

#include <functional>
#include <optional>

#include "pok8s/config/strict_yaml.h"
#include "pok8s/util/error.h"

namespace pok8s::config {
namespace {

constexpr std::string_view kUpgradeKeys[] = {"recovery", "reboot", "poweroff"};
// Kairos upgrade keys pok8s does not act on: the image comes from --source.
constexpr std::string_view kIgnoredUpgradeKeys[] = {
    "system", "recovery-system", "source", "grub-entry-name", "entry",        "bundles",
    "force",  "debug",           "tty",    "snapshotter",     "upgrade-entry"};
constexpr std::string_view kResetKeys[] = {"reset-persistent", "reset-oem", "reboot", "poweroff"};
constexpr std::string_view kIgnoredResetKeys[] = {"system",      "source",      "grub-entry-name",
                                                  "bundles",     "debug",       "tty",
                                                  "snapshotter", "reset-entry", "passive"};

std::vector<std::string_view> joined(std::span<const std::string_view> a,
                                     std::span<const std::string_view> b) {
  std::vector<std::string_view> out(a.begin(), a.end());
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

// Calls `on_key(yaml, key, key_node, value, path)` for every key of `section` in each config that
// has it, warning for the ignored keys and refusing unknown ones.
void read_section(std::span<const CloudConfig> configs, const std::string& section,
                  std::span<const std::string_view> keys, std::span<const std::string_view> ignored,
                  std::vector<std::string>& warnings,
                  const std::function<void(StrictYaml&, const std::string&, const YAML::Node&,
                                           const std::string&)>& on_key) {
  for (const auto& config : configs) {
    auto it = config.sections.find(section);
    if (it == config.sections.end() || it->second.IsNull()) continue;
    StrictYaml yaml("cloud-config", config.source,
                    {kMaxCloudConfigNodes, kMaxCloudConfigListLength, kMaxCloudConfigDepth});
    yaml.expect(it->second, YAML::NodeType::Map, section, "a map");
    yaml.for_each_key(
        it->second, section,
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
          std::string path = StrictYaml::join(section, key);
          if (contains(keys, key)) return on_key(yaml, key, value, path);
          if (contains(ignored, key))
            return warnings.push_back(
                fmt::format("cloud-config {}: line {}: {} is ignored: pok8s does not implement "
                            "it",
                            yaml.source(), key_node.Mark().line + 1, path));
          yaml.unknown_key(key_node, key, section, joined(keys, ignored));
        });
  }
}

void refuse_both(bool reboot, bool poweroff, std::string_view section) {
  if (reboot && poweroff)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read cloud-config: {0}.reboot and {0}.poweroff are both "
                            "true: set only one",
                            section));
}

}  // namespace

UpgradeConfig read_upgrade_config(std::span<const CloudConfig> configs) {
  UpgradeConfig out;
  read_section(
      configs, "upgrade", kUpgradeKeys, kIgnoredUpgradeKeys, out.warnings,
      [&](StrictYaml& yaml, const std::string& key, const YAML::Node& value,
          const std::string& path) {
        bool v = yaml.read_bool(value, path);
        (key == "recovery" ? out.recovery : key == "reboot" ? out.reboot : out.poweroff) = v;
      });
  refuse_both(out.reboot, out.poweroff, "upgrade");
  return out;
}

ResetConfig read_reset_config(std::span<const CloudConfig> configs) {
  ResetConfig out;
  read_section(configs, "reset", kResetKeys, kIgnoredResetKeys, out.warnings,
               [&](StrictYaml& yaml, const std::string& key, const YAML::Node& value,
                   const std::string& path) {
                 bool v = yaml.read_bool(value, path);
                 (key == "reset-persistent" ? out.reset_persistent
                  : key == "reset-oem"      ? out.reset_oem
                  : key == "reboot"         ? out.reboot
                                            : out.poweroff) = v;
               });
  refuse_both(out.reboot, out.poweroff, "reset");
  return out;
}

}  // namespace pok8s::config
