// The Kubernetes sections, read as strictly as the rest of cloud-config.
#include "pok8s/config/kubernetes_config.h"

#include <fmt/format.h>

#include <map>

#include "pok8s/config/strict_yaml.h"
#include "pok8s/util/error.h"

namespace pok8s::config {
namespace {

struct Section {
  std::string_view name;
  KubernetesRole role;
};
constexpr Section kKubernetesSections[] = {{"k3s", KubernetesRole::kK3sServer},
                                           {"k3s-agent", KubernetesRole::kK3sAgent},
                                           {"k0s", KubernetesRole::kK0sController},
                                           {"k0s-worker", KubernetesRole::kK0sWorker}};

constexpr std::string_view kKeys[] = {"enabled", "args", "env", "replace_args", "replace_env"};
// Kairos keys pok8s leaves alone: named in a warning, never dropped silently.
constexpr std::string_view kIgnoredKeys[] = {"embedded_registry"};

bool is_env_name(std::string_view s) {
  if (s.empty() || (s[0] >= '0' && s[0] <= '9')) return false;
  for (char c : s)
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
      return false;
  return true;
}

// One section of one file: what it sets.
struct Settings {
  std::optional<bool> enabled;
  std::optional<std::vector<std::string>> args;
  std::optional<bool> replace_args;
  std::optional<std::vector<std::pair<std::string, std::string>>> env;
  int line = 0;  // of `enabled`
};

Settings read_section(StrictYaml& yaml, const std::string& name, const YAML::Node& node,
                      std::vector<std::string>& warnings) {
  Settings s;
  s.line = node.Mark().line + 1;
  if (node.IsNull()) return s;
  yaml.expect(node, YAML::NodeType::Map, name, "a map");
  yaml.for_each_key(
      node, name, [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
        std::string path = StrictYaml::join(name, key);
        if (key == "enabled") {
          s.enabled = yaml.read_bool(value, path);
        } else if (key == "args") {
          auto args = yaml.read_string_list(value, path);
          for (std::size_t i = 0; i < args.size(); ++i)
            if (args[i].empty() || args[i].find_first_of("\n\r") != std::string::npos)
              yaml.fail(value,
                        fmt::format("{} is empty or has a line break", StrictYaml::index(path, i)));
          s.args = std::move(args);
        } else if (key == "replace_args") {
          s.replace_args = yaml.read_bool(value, path);
        } else if (key == "replace_env") {
          yaml.read_bool(value, path);  // there are no default variables to replace
        } else if (key == "env") {
          yaml.expect(value, YAML::NodeType::Map, path, "a map of variable names to values");
          std::vector<std::pair<std::string, std::string>> env;
          yaml.for_each_key(
              value, path,
              [&](const std::string& var, const YAML::Node& var_node, const YAML::Node& v) {
                if (!is_env_name(var))
                  yaml.fail(var_node, fmt::format("{}: \"{}\" is not an environment variable name",
                                                  path, printable(var)));
                env.emplace_back(var, yaml.read_line_string(v, StrictYaml::join(path, var), true));
              });
          s.env = std::move(env);
        } else if (contains(kIgnoredKeys, key)) {
          warnings.push_back(
              fmt::format("cloud-config {}: line {}: {} is ignored: pok8s does not "
                          "implement it",
                          yaml.source(), key_node.Mark().line + 1, path));
        } else {
          std::vector<std::string_view> known(std::begin(kKeys), std::end(kKeys));
          yaml.unknown_key(key_node, key, name, known, kIgnoredKeys);
        }
      });
  return s;
}

}  // namespace

std::optional<KubernetesConfig> read_kubernetes_config(std::span<const CloudConfig> configs,
                                                       std::vector<std::string>& warnings) {
  struct Merged {
    Settings settings;
    std::string origin;  // where `enabled` was last set
  };
  std::map<std::string_view, Merged> merged;
  for (const auto& config : configs) {
    StrictYaml yaml("cloud-config", config.source,
                    {kMaxCloudConfigNodes, kMaxCloudConfigListLength, kMaxCloudConfigDepth});
    for (const auto& section : kKubernetesSections) {
      auto it = config.sections.find(std::string(section.name));
      if (it == config.sections.end()) continue;
      Settings s = read_section(yaml, std::string(section.name), it->second, warnings);
      Merged& m = merged[section.name];
      if (s.enabled) {
        m.settings.enabled = s.enabled;
        m.origin = fmt::format("{}:{}", config.source, s.line);
      }
      if (s.args) m.settings.args = std::move(s.args);
      if (s.replace_args) m.settings.replace_args = s.replace_args;
      if (s.env) m.settings.env = std::move(s.env);
    }
  }
  std::optional<KubernetesConfig> out;
  for (const auto& section : kKubernetesSections) {
    auto it = merged.find(section.name);
    if (it == merged.end() || !it->second.settings.enabled.value_or(false)) continue;
    const Merged& m = it->second;
    if (out)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read cloud-config: {} (enabled at {}) and {} (enabled at "
                              "{}) cannot both run on one node; enable one",
                              out->section, out->origin, section.name, m.origin));
    KubernetesConfig k;
    k.role = section.role;
    k.section = std::string(section.name);
    k.origin = m.origin;
    k.args = m.settings.args.value_or(std::vector<std::string>{});
    k.replace_args = m.settings.replace_args.value_or(false);
    k.env = m.settings.env.value_or(std::vector<std::pair<std::string, std::string>>{});
    out = std::move(k);
  }
  return out;
}

}  // namespace pok8s::config
