// The cloud-config's Kairos Kubernetes sections — `k3s` (a server), `k3s-agent`, `k0s` (a
// controller) and `k0s-worker` — as pok8s-agent reads them to start the distribution that
// convert installed: enabled, args, env, replace_args, replace_env.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "pok8s/config/cloud_config.h"

namespace pok8s::config {

enum class KubernetesRole { kK3sServer, kK3sAgent, kK0sController, kK0sWorker };

struct KubernetesConfig {
  KubernetesRole role = KubernetesRole::kK3sServer;
  std::string section;  // "k3s", "k3s-agent", "k0s", "k0s-worker"
  std::string origin;   // "FILE:LINE" of the section that enabled it
  std::vector<std::string> args;
  bool replace_args = false;  // the role's default flags are left out
  std::vector<std::pair<std::string, std::string>> env;
};

// The section of `configs` that is enabled, its keys merged in file order (a later file's key
// replaces an earlier one's); nullopt when none is. Two enabled sections, an unknown key (with
// a did-you-mean), a wrong type, an environment name that is not one, or a value or argument
// with a line break: Error(kInvalidInput) "Failed to read cloud-config FILE: line N: ...".
// Kairos keys pok8s leaves alone add a line to `warnings`.
std::optional<KubernetesConfig> read_kubernetes_config(std::span<const CloudConfig> configs,
                                                       std::vector<std::string>& warnings);

}  // namespace pok8s::config
