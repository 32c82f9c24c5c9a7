// GRUB's BIOS boot chain on a GPT disk: boot.img in the protective MBR's boot code, core.img in
// the BIOS boot partition, each told where the next part lies. Works on a disk image file and on
// a disk device alike (the installer writes /dev/vda with it).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "pok8s/util/file.h"

namespace pok8s::image {

// Sizes GRUB's i386-pc images have (GRUB's include/grub/i386/pc/boot.h).
inline constexpr std::size_t kBiosSector = 512;
inline constexpr std::size_t kMaxCoreImage = 1u << 20;  // what a BIOS boot partition of 1 MiB holds

// Writes `core_img` (grub-mkimage -O i386-pc) at `partition_offset` of `disk` and `boot_img`
// (GRUB's boot.img) into the first 440 bytes of its MBR, keeping the disk signature and the
// partition table. Throws Error(kInvalidInput) naming `disk` when the images are not GRUB's
// i386-pc images, core.img does not fit `partition_size`, or the disk has no protective MBR;
// the MBR is written last, so a refusal leaves the boot code as it was.
void write_bios_boot(const util::Path& disk, std::uint64_t partition_offset,
                     std::uint64_t partition_size, std::string_view boot_img,
                     std::string_view core_img);

}  // namespace pok8s::image
