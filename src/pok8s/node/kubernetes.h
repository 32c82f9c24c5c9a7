// Starting the Kubernetes distribution that convert installed, as the cloud-config's k3s,
// k3s-agent, k0s or k0s-worker section says: its command line and environment go into a
// systemd drop-in under /run (every boot applies the config anew; the root is read-only) or
// OpenRC's conf.d, then the service is started.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "pok8s/config/kubernetes_config.h"
#include "pok8s/node/stages.h"
#include "pok8s/util/file.h"

namespace pok8s::node {

struct KubernetesFiles {
  std::string service;            // the service to start: "k3s.service" (systemd), "k3s" (OpenRC)
  std::string binary;             // the program the image must have: "/usr/bin/k3s"
  std::vector<std::string> argv;  // the whole command line
  std::vector<std::pair<std::string, std::string>> files;  // absolute path -> content
};

// What `config` means for a system run by `manager` (kSystemd or kOpenRC).
KubernetesFiles kubernetes_files(const config::KubernetesConfig& config, ServiceManager manager);

// Writes the files into `root` and, when `root` is the running system, starts the service
// (systemd: daemon-reload, then start without waiting; OpenRC: rc-service start). Throws
// kNotFound when the image has no binary for the section ("convert with --k8s k3s").
void apply_kubernetes(const KubernetesFiles& files, const util::Path& root, bool start);

}  // namespace pok8s::node
