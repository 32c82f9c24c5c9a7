// `pok8s-agent config show`: the cloud-config the node acts on, as one document. Files merge in
// the order the agent reads them: maps key by key with the later file winning, the step lists
// of each stage appended (every file's steps run), any other value replaced whole — the same
// rules the stage runner and the install and Kubernetes readers follow.
#pragma once

#include <string>
#include <vector>

#include "pok8s/config/cloud_config.h"

namespace pok8s::config {

struct MergedConfig {
  std::vector<std::string> sources;  // the files that took part, in order
  std::string yaml;                  // "#cloud-config\n…"; "{}" when there are none
};

// Validates each file as the agent does (a broken file throws its one-line error) and merges
// those with the header.
MergedConfig merge_cloud_config_files(const std::vector<ConfigFile>& files);

}  // namespace pok8s::config
