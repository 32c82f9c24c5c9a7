// The disk layout of an installed system, with the partition labels Kairos users know:
// COS_GRUB (the EFI system partition), COS_OEM (configuration), COS_RECOVERY (the recovery
// image), COS_STATE (the active and passive images, and room for an upgrade's transition image)
// and COS_PERSISTENT (the rest), plus a BIOS boot partition when BIOS is asked for. Sizes follow
// from the system image's size unless given, and are checked before anything is written.
// The sizing is plain arithmetic in pok8s_node, shared by the factory's disk images and
// pok8s-agent's installer; the derived UUIDs (sha256) stay with the factory, in gpt.cc.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "pok8s/image/gpt.h"

namespace pok8s::image {

struct DiskLayoutOptions {
  std::uint64_t disk_size = 0;   // bytes
  std::uint64_t image_size = 0;  // the system (rootfs) image, bytes
  bool bios = false;             // add a BIOS boot partition for GRUB's core image
  // Only COS_GRUB, COS_OEM and COS_RECOVERY; the system creates the rest on its first boot.
  bool expandable = false;
  std::string seed;       // UUIDs are derived from it (the build id), so images are reproducible
  std::string disk_name;  // named in messages when set: "/dev/vda"
  // Sizes in MiB from the cloud-config's install block; 0 means the default.
  std::uint64_t grub_mib = 0;
  std::uint64_t oem_mib = 0;
  std::uint64_t recovery_mib = 0;
  std::uint64_t state_mib = 0;
  std::uint64_t persistent_mib = 0;  // 0: the rest of the disk
};

// The partition (and file system) labels.
inline constexpr std::string_view kGrubLabel = "COS_GRUB";
inline constexpr std::string_view kOemLabel = "COS_OEM";
inline constexpr std::string_view kRecoveryLabel = "COS_RECOVERY";
inline constexpr std::string_view kStateLabel = "COS_STATE";
inline constexpr std::string_view kPersistentLabel = "COS_PERSISTENT";

// Where the system images live: one directory per image (/cOS/active and /cOS/passive on
// COS_STATE, /cOS/recovery on COS_RECOVERY), each holding the rootfs image with its own kernel
// and initramfs, so that a rename moves all three together.
inline constexpr std::string_view kImagesDir = "cOS";
inline constexpr std::string_view kRootfsFile = "rootfs.img";
inline constexpr std::string_view kKernelFile = "vmlinuz";
inline constexpr std::string_view kInitrdFile = "initrd";
// GRUB's environment block on COS_OEM: boot assessment (boot/grub.h, node/grubenv.h).
inline constexpr std::string_view kGrubEnvFile = "grubenv";

inline constexpr std::uint64_t kDefaultGrubMiB = 64;
// The BIOS boot partition (GPT name; no file system) holding GRUB's core image.
inline constexpr const char* kBiosBootName = "BIOS";
inline constexpr std::uint64_t kBiosBootMiB = 1;
inline constexpr std::uint64_t kDefaultOemMiB = 64;
inline constexpr std::uint64_t kMinPersistentMiB = 64;

// The smallest partition that holds `images` system images of `image_size` bytes in an ext4
// file system (its metadata and reserved blocks) with room to spare.
std::uint64_t partition_mib_for_images(std::uint64_t image_size, unsigned images);

// The partitions for `options`, without UUIDs (`seed` is not used). Throws kInvalidInput, naming
// the partition and the sizes, when a given size cannot hold what it must (COS_STATE: active,
// passive and a transition image) or the disk is too small for the whole layout. Pure
// arithmetic: the installer on the node plans with it and lets sfdisk pick random UUIDs.
GptLayout plan_partitions(const DiskLayoutOptions& options);

// plan_partitions with the disk's and every partition's UUID derived from `seed` (refused when
// empty), checked by plan_gpt: what the factory writes. Defined in gpt.cc, next to
// derived_uuid, because it needs sha256, which pok8s_node does not link.
GptLayout plan_disk(const DiskLayoutOptions& options);

}  // namespace pok8s::image
