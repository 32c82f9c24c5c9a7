// The cloud-config's Kairos `install` block as pok8s-agent's installer reads it: which disk,
// whether to install at boot without asking, what to do afterwards, and partition sizes. Merged
// across the configs in order, a later file's key replacing an earlier one's.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "pok8s/config/cloud_config.h"

namespace pok8s::config {

// The largest partition size the install block may ask for, in MiB (64 TiB).
inline constexpr std::uint64_t kMaxInstallPartitionMiB = std::uint64_t{1} << 26;

// Where a setting was made, for messages: "FILE:LINE", or empty for a default.
using SettingOrigin = std::string;

struct InstallConfig {
  std::string device = "auto";  // "auto" (the one blank disk) or an absolute /dev path
  SettingOrigin device_origin;
  bool auto_install = false;  // `auto`: install at boot from the live medium
  // "efi": UEFI only; "bios": GRUB's BIOS boot code too (the ESP is written either way, so the
  // disk boots on both); "": bios when the installing system was not booted by UEFI.
  std::string firmware;
  bool reboot = false;
  bool poweroff = false;
  // LUKS2 on COS_OEM and COS_PERSISTENT: "none", "tpm" (a key sealed to the TPM against the
  // UKIs' signed PCR 11 policy and PCR 7; a uki-iso only) or "passphrase" (`passphrase`, asked
  // at every boot). Either way a recovery key is printed once.
  std::string encryption = "none";
  SettingOrigin encryption_origin;
  std::string passphrase;
  // Partition sizes in MiB from `partitions.<name>.size`; 0 means the default (for persistent:
  // the rest of the disk).
  std::uint64_t oem_mib = 0;
  std::uint64_t recovery_mib = 0;
  std::uint64_t state_mib = 0;
  std::uint64_t persistent_mib = 0;
  // One line for each Kairos key that pok8s does not implement and leaves alone:
  // "cloud-config FILE: line N: install.KEY is ignored: pok8s does not implement it".
  std::vector<std::string> warnings;
};

// Reads the `install` sections of `configs` in order. Kairos keys pok8s leaves alone become
// warnings; an unknown key (a typo), a wrong type, a size out of range, or a Kairos setting
// pok8s cannot honour without doing something else than asked (no-format: true, firmware:
// other than efi or bios, part-table: msdos, reboot and poweroff both true) throws
// Error(kInvalidInput) "Failed to read cloud-config FILE: line N: ...".
InstallConfig read_install_config(std::span<const CloudConfig> configs);

}  // namespace pok8s::config
