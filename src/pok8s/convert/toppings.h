// The build spec's toppings, built into the converted image: Kubernetes manifests in the
// distribution's auto-deploy directory, a WireGuard interface brought up at boot, and the
// agent configuration that joins an existing control plane (a Kamaji tenant, a k3s server).
// This writes files; the packages a topping needs come from the family's recipe and the
// services it returns are enabled by the caller with the image's own tools.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "pok8s/config/build_spec.h"
#include "pok8s/convert/recipe.h"
#include "pok8s/util/file.h"

namespace pok8s::convert {

// The service to enable: a systemd unit ("wg-quick@wg0.service"), or an OpenRC service and its
// runlevel.
struct ToppingService {
  std::string name;
  std::string runlevel = "default";  // OpenRC only
};

// Checks what needs no image; `kubernetes` is "k3s", "k0s" or "" (core). Throws kInvalidInput
// naming the topping: manifests and a cluster need Kubernetes, an agent that joins a cluster
// deploys no manifests, two manifests may not share a file name.
void validate_toppings(const config::Toppings& toppings, std::string_view kubernetes);

// The manifest files in order: each file as given, each directory's *.yaml, *.yml and *.json
// files sorted by name (not recursive).
std::vector<util::Path> manifest_files(const config::Toppings& toppings);

// Writes the toppings into the image tree `root`; returns the services to enable.
std::vector<ToppingService> write_toppings(const util::Path& root, const config::Toppings& toppings,
                                           std::string_view kubernetes, InitSystem init,
                                           const util::Path& data_dir);

// The wg-quick configuration for `wg`. Without a private key the node makes one on its first
// boot (kept in /etc/wireguard/<interface>.key) and logs the public key.
std::string wireguard_config(const config::WireGuardTopping& wg);

// The k3s agent configuration (config.yaml.d) for `join`. A plain token with a CA hash becomes
// k3s's secure token "K10<hash>::server:<token>", so the agent checks the server's CA.
std::string k3s_join_config(const config::ClusterJoin& join);

}  // namespace pok8s::convert
