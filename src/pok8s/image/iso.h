// Hybrid ISO 9660 images through libisofs: Rock Ridge + Joliet, El Torito for BIOS and UEFI,
// an isohybrid MBR and a GPT with the EFI system partition appended, so the same file boots as
// a CD and from a USB stick. Reproducible: every time and the volume UUID come from one
// timestamp.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::image {

// One file of the image: `path` inside the ISO ("boot/kernel"), its content read from
// `source` when the image is written.
struct IsoFile {
  std::string path;
  util::Path source;
};

struct IsoOptions {
  std::string volume_id = "COS_LIVE";  // at most 32 of A-Z 0-9 _
  // Seconds since the epoch: every timestamp in the image, the volume UUID and the GPT GUIDs
  // derive from it.
  std::int64_t timestamp = 0;
  // ISO path of GRUB's El Torito image (i386-pc-eltorito): the BIOS boot entry, no emulation,
  // with a boot info table and GRUB2 boot info as grub-mkrescue writes them.
  std::optional<std::string> bios_boot_image;
  // GRUB's boot_hybrid.img: the MBR boot code in the system area, so that a BIOS booting the
  // image as a disk finds the El Torito image. Needs bios_boot_image.
  std::optional<util::Path> hybrid_mbr;
  // A FAT image with EFI/BOOT/BOOTX64.EFI: appended as GPT partition 2 (an EFI system partition)
  // and named by the El Torito UEFI entry.
  std::optional<util::Path> efi_image;
  // Called as the image is written, with bytes written and the total size.
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;
};

// Writes the ISO holding `files` (and their parent directories) to `out`. Files are owned by
// root, read-only (executable where the source is), and sorted by name; `out` appears only
// once complete. Returns the sha256 (hex) of what was written, hashed on the way out.
std::string write_iso(const std::vector<IsoFile>& files, const IsoOptions& options,
                      const util::Path& out);

}  // namespace pok8s::image
