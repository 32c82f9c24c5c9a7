// GRUB for live media: the EFI binary and the BIOS El Torito core image built with grub-mkimage
// from the host's GRUB (grub-efi-amd64-bin, grub-pc-bin) and cached, and the live menu.
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
};

// Builds (or finds in `cache_dir`) GRUB images for a live medium labelled `volume_label`. Both
// carry the modules a live boot needs (iso9660, part_gpt, part_msdos, fat, search, linux,
// serial, ...) and an early config that finds the medium by label and sets the prefix to its
// /boot/grub, so that GRUB reads /boot/grub/grub.cfg from the ISO however it was started. The
// cache key is a hash of the GRUB version, its kernel images, the module lists and the early
// config. Throws Error(kNotFound) when the host has no GRUB for a platform.
GrubImages make_grub_images(const util::Path& cache_dir, std::string_view volume_label);

// The early config embedded in both images (exposed for tests and the cache key).
std::string grub_early_config(std::string_view volume_label);

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

}  // namespace pok8s::boot
