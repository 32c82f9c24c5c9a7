// The cloud-config's Kairos `upgrade` and `reset` blocks, the defaults of `pok8s-agent upgrade`
// and `pok8s-agent reset` (their flags win). Merged across the configs in order, a later
// file's key replacing an earlier one's; read as strictly as the `install` block.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "pok8s/config/cloud_config.h"

namespace pok8s::config {

struct UpgradeConfig {
  bool recovery = false;  // upgrade the recovery image instead of active
  bool reboot = false;    // reboot once upgraded
  bool poweroff = false;
  std::vector<std::string> warnings;  // Kairos keys pok8s leaves alone, one line each
};

struct ResetConfig {
  bool reset_persistent = true;  // `reset-persistent`
  bool reset_oem = false;        // `reset-oem`
  bool reboot = false;
  bool poweroff = false;
  std::vector<std::string> warnings;
};

// Kairos keys pok8s leaves alone become warnings; a typo (with did-you-mean), a wrong type, or
// reboot and poweroff both true throw Error(kInvalidInput) "Failed to read cloud-config FILE:
// line N: ...".
UpgradeConfig read_upgrade_config(std::span<const CloudConfig> configs);
ResetConfig read_reset_config(std::span<const CloudConfig> configs);

}  // namespace pok8s::config
