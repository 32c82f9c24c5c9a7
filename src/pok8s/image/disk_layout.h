// The disk layout of an installed system, with the partition labels Kairos users know:
// COS_GRUB (the EFI system partition), COS_OEM (configuration), COS_RECOVERY (the recovery
// image), COS_STATE (the active and passive images, and room for an upgrade's transition image)
// and COS_PERSISTENT (the rest), plus a BIOS boot partition when BIOS is asked for. Sizes follow
// from the system image's size unless given, and are checked before anything is written.
#pragma once

#include <cstdint>
#include <string>

#include "pok8s/image/gpt.h"

namespace pok8s::image {

struct DiskLayoutOptions {
  std::uint64_t disk_size = 0;   // bytes
  std::uint64_t image_size = 0;  // the system (rootfs) image, bytes
  bool bios = false;             // add a BIOS boot partition for GRUB's core image
  // Only COS_GRUB, COS_OEM and COS_RECOVERY; the system creates the rest on its first boot.
  bool expandable = false;
  std::string seed;  // UUIDs are derived from it (the build id), so images are reproducible
  // Sizes in MiB from the cloud-config's install block; 0 means the default.
  std::uint64_t grub_mib = 0;
  std::uint64_t oem_mib = 0;
  std::uint64_t recovery_mib = 0;
  std::uint64_t state_mib = 0;
  std::uint64_t persistent_mib = 0;  // 0: the rest of the disk
};

inline constexpr std::uint64_t kDefaultGrubMiB = 64;
inline constexpr std::uint64_t kDefaultOemMiB = 64;
inline constexpr std::uint64_t kMinPersistentMiB = 64;

// The smallest partition that holds `images` system images of `image_size` bytes in an ext4
// file system (its metadata and reserved blocks) with room to spare.
std::uint64_t partition_mib_for_images(std::uint64_t image_size, unsigned images);

// The GPT layout for `options`. Throws kInvalidInput, naming the partition and the sizes, when a
// given size cannot hold what it must (COS_STATE: active, passive and a transition image) or
// the disk is too small for the whole layout.
GptLayout plan_disk(const DiskLayoutOptions& options);

}  // namespace pok8s::image
