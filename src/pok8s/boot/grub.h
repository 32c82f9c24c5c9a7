// GRUB for live media and disks: the EFI binary and the BIOS El Torito and disk core images
// built with grub-mkimage from the host's GRUB (grub-efi-amd64-bin, grub-pc-bin) and cached,
// and the live and installed menus.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::boot {

struct GrubImages {
  util::Path efi_binary;       // x86_64-efi, to install as EFI/BOOT/BOOTX64.EFI
  util::Path bios_eltorito;    // i386-pc-eltorito, the El Torito no-emulation boot image
  util::Path bios_hybrid_mbr;  // boot_hybrid.img, the isohybrid MBR of the system area
  util::Path bios_core;        // i386-pc, for a disk's BIOS boot partition (image/bios_boot.h)
  util::Path bios_boot;        // boot.img, the MBR boot code that loads bios_core
};

// Builds (or finds in `cache_dir`) GRUB images for a live medium labelled `volume_label`. Both
// carry the modules a live boot needs (iso9660, part_gpt, part_msdos, fat, search, linux,
// serial, ...) and an early config that finds the medium by label and sets the prefix to its
// /boot/grub, so that GRUB reads /boot/grub/grub.cfg from the ISO however it was started. The
// cache key is a hash of the GRUB version, its kernel images, the module lists and the early
// config. Throws Error(kNotFound) when the host has no GRUB for a platform.
// `prefix` is the directory of grub.cfg on that file system ("/grub" on an installed system's
// COS_GRUB).
GrubImages make_grub_images(const util::Path& cache_dir, std::string_view volume_label,
                            std::string_view prefix = "/boot/grub");

// The early config embedded in both images (exposed for tests and the cache key).
std::string grub_early_config(std::string_view volume_label,
                              std::string_view prefix = "/boot/grub");

struct LiveMenuEntry {
  std::string title;
  std::string kernel;   // path on the medium, "/boot/kernel"
  std::string initrd;   // path on the medium; empty for none
  std::string cmdline;  // the kernel command line
};

// A grub.cfg for live media: serial console (ttyS0, 115200) and the screen, a menu of `entries`
// with the first as default, booting it after `seconds` (-1: wait for a choice). Every value is
// quoted for GRUB's shell, so titles and command lines cannot run commands.
std::string live_grub_config(const std::vector<LiveMenuEntry>& entries, int seconds);

// The GRUB environment variables of boot assessment, in COS_OEM's grubenv:
//   pok8s_entry      the entry to boot: active, passive or recovery
//   pok8s_tries      tries left for it (one digit); GRUB takes one on every boot and saves it
//   pok8s_max_tries  what a boot that reaches its booted state resets pok8s_tries to (1-9)
//   pok8s_fallback   the entry that last used up its tries, or empty
// When a boot finds pok8s_tries at 0, the entry failed that many boots in a row: GRUB moves on
// (active -> passive -> recovery), records the failed one in pok8s_fallback and starts the
// count again. `pok8s-agent mark-booted` resets the count once a system is up.
inline constexpr int kDefaultBootTries = 3;
std::string initial_grubenv_vars(int max_tries);  // "pok8s_entry=active\n…", for a new grubenv

struct DiskMenuOptions {
  std::string cmdline;  // kernel parameters for every entry, before pok8s's own
  int timeout = 3;      // seconds the menu waits
};

// The grub.cfg of an installed system (on COS_GRUB): entries active and passive boot the
// images in COS_STATE's /cOS/active and /cOS/passive, recovery the one in COS_RECOVERY's
// /cOS/recovery; the default comes from boot assessment (above).
std::string disk_grub_config(const DiskMenuOptions& options);

}  // namespace pok8s::boot
