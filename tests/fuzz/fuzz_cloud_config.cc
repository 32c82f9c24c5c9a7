// libFuzzer target: cloud-config files come from users, OEM partitions and boot media.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/config/cloud_config.h"
#include "pok8s/config/config_url.h"
#include "pok8s/config/install_config.h"
#include "pok8s/config/kubernetes_config.h"
#include "pok8s/config/lifecycle_config.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    auto config = pok8s::config::parse_cloud_config(text, "fuzz.yaml");
    // What the parser accepted, the runner relies on: clean absolute paths; a stage no one runs
    // is named in a warning.
    for (const auto& [stage, steps] : config.stages) {
      if (!pok8s::config::is_known_stage(stage) && config.warnings.empty()) __builtin_trap();
      for (const auto& step : steps) {
        for (const auto& file : step.files)
          if (file.path.empty() || file.path[0] != '/' ||
              file.path.find("/../") != std::string::npos)
            __builtin_trap();
        for (const auto& user : step.users)
          if (user.name.empty() || user.name.find(':') != std::string::npos) __builtin_trap();
      }
    }
    // The sections the installer and the Kubernetes starter read, from the same document.
    std::vector<std::string> warnings;
    try {
      auto install = pok8s::config::read_install_config({&config, 1});
      if (install.device != "auto" && (install.device.empty() || install.device[0] != '/'))
        __builtin_trap();
    } catch (const pok8s::Error&) {
    }
    if (auto k8s = pok8s::config::read_kubernetes_config({&config, 1}, warnings))
      for (const auto& a : k8s->args)
        if (a.empty() || a.find('\n') != std::string::npos) __builtin_trap();
    pok8s::config::ignored_section_warnings(config);
    try {
      auto upgrade = pok8s::config::read_upgrade_config({&config, 1});
      if (upgrade.reboot && upgrade.poweroff) __builtin_trap();
    } catch (const pok8s::Error&) {
    }
    try {
      // What the agent hands to pok8s-sysimage: one http(s) URL, printable, no spaces.
      for (const auto& u : pok8s::config::read_config_urls({&config, 1}))
        if (!(u.url.starts_with("http://") || u.url.starts_with("https://")) ||
            u.url.find_first_of(" \n\t") != std::string::npos ||
            u.url.size() > pok8s::config::kMaxConfigUrlLength)
          __builtin_trap();
    } catch (const pok8s::Error&) {
    }
    auto reset = pok8s::config::read_reset_config({&config, 1});
    if (reset.reboot && reset.poweroff) __builtin_trap();
  } catch (const pok8s::Error&) {
  }
  return 0;
}
