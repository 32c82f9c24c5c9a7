// Disk images of an installed system, made without root and without loop devices: the GPT
// written by libfdisk, COS_GRUB (vfat, by mtools) with GRUB and its A/B menu, COS_OEM with the
// cloud-config and GRUB's environment block, COS_RECOVERY and COS_STATE (ext4, by mke2fs -d)
// with the recovery, active and passive images, and an empty COS_PERSISTENT. qcow2 and vhd are
// converted from the raw image by qemu-img.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "pok8s/build/artifacts.h"
#include "pok8s/image/gpt.h"
#include "pok8s/util/file.h"

namespace pok8s::build {

// What goes onto the disk.
struct DiskContents {
  util::Path rootfs;  // the squashfs rootfs image
  util::Path kernel;
  util::Path initrd;
  util::Path grub_efi;        // GRUB's EFI binary, finding COS_GRUB and its /grub/grub.cfg
  util::Path grub_bios_core;  // GRUB's i386-pc core image, the same; written with options.bios
  util::Path grub_bios_boot;  // GRUB's boot.img, the MBR code that loads it
  std::optional<std::string> cloud_config;
  std::string cmdline;     // kernel parameters for every menu entry
  std::string seed;        // partition and file system UUIDs derive from it (the build id)
  std::int64_t timestamp;  // every time the file systems record
};

// What an installed system's boot needs besides GRUB's EFI binary, staged in a directory: the
// A/B menu (COS_GRUB's /grub/grub.cfg) and GRUB's environment block for COS_OEM, with boot
// assessment's starting values. The live ISO carries them for the installer.
struct InstallFiles {
  util::Path grub_cfg;
  util::Path grubenv;
};
InstallFiles stage_install_files(const DiskContents& contents, const DiskImageOptions& options,
                                 const util::Path& dir);

// The partition table `contents` get: every size checked (kInvalidInput naming the partition
// and the sizes), nothing written.
image::GptLayout plan_disk_image(const DiskContents& contents, const DiskImageOptions& options);

// Writes the raw disk image `out` (complete or not at all), using `scratch` for staging trees
// (hard links to the inputs where the file system allows). Sizes are checked before anything is
// written; kInvalidInput names the partition.
void write_disk_image(const DiskContents& contents, const DiskImageOptions& options,
                      const util::Path& scratch, const util::Path& out);

// Converts the raw disk image `raw` to `format` ("qcow2" or "vhd", a fixed VHD as clouds take
// it) at `out` with qemu-img. The VHD footer's timestamp and unique id, which qemu-img takes from
// the clock and the random pool, are set from `timestamp` and `seed`, so the output is
// reproducible too.
void convert_disk_image(const util::Path& raw, std::string_view format, const util::Path& out,
                        std::int64_t timestamp, std::string_view seed);

}  // namespace pok8s::build
