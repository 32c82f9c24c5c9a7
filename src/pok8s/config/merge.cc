#include "pok8s/config/merge.h"

#include <yaml-cpp/yaml.h>

#include "pok8s/util/error.h"

namespace pok8s::config {
namespace {

// Merges the map `from` into the map `into`. `append_lists`: the lists of this map are step
// lists (the map under "stages") and are appended rather than replaced.
void merge_into(YAML::Node into, const YAML::Node& from, bool append_lists) {
  for (const auto& kv : from) {
    std::string key = kv.first.as<std::string>();
    const YAML::Node& value = kv.second;
    YAML::Node existing = into[key];
    if (append_lists && existing.IsSequence() && value.IsSequence()) {
      for (const auto& step : value) existing.push_back(YAML::Clone(step));
    } else if (existing.IsMap() && value.IsMap()) {
      merge_into(existing, value, false);
    } else {
      into[key] = YAML::Clone(value);
    }
  }
}

}  // namespace

MergedConfig merge_cloud_config_files(const std::vector<ConfigFile>& files) {
  MergedConfig out;
  YAML::Node merged(YAML::NodeType::Map);
  for (const auto& file : files) {
    if (!load_cloud_config_file(file)) continue;  // validated; skipped when it has no header
    YAML::Node doc = YAML::Load(util::read_file(file.path, 1u << 20));
    out.sources.push_back(file.path.string());
    if (!doc.IsMap()) continue;
    for (const auto& kv : doc) {
      std::string key = kv.first.as<std::string>();
      YAML::Node existing = merged[key];
      if (existing.IsMap() && kv.second.IsMap())
        merge_into(existing, kv.second, key == "stages");
      else
        merged[key] = YAML::Clone(kv.second);
    }
  }
  YAML::Emitter emitter;
  emitter << merged;
  out.yaml = "#cloud-config\n" + std::string(emitter.c_str()) + "\n";
  return out;
}

}  // namespace pok8s::config
