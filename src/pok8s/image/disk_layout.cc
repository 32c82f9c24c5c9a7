// Sizing the installed system's partitions. COS_STATE holds three images at the peak of an
// upgrade (active, passive, and the transition image being written), COS_RECOVERY one. Part of
// pok8s_node (the installer sizes a real disk with it): no crypto here, see plan_disk in gpt.cc.
#include "pok8s/image/disk_layout.h"

#include <fmt/format.h>

#include "pok8s/util/error.h"

namespace pok8s::image {
namespace {

// ext4 spends about 5 % on reserved blocks and a little on inodes and the journal; a quarter
// more than the images and a fixed 64 MiB cover it for every image size we make.
constexpr std::uint64_t kSlackPercent = 25;
constexpr std::uint64_t kFixedSlackMiB = 64;

std::uint64_t round_up_mib(std::uint64_t bytes) {
  return (bytes + kMiB - 1) / kMiB;
}

[[noreturn]] void refuse(const DiskLayoutOptions& o, const std::string& what) {
  throw Error(ErrorKind::kInvalidInput,
              fmt::format("Failed to plan the disk{}: {}",
                          o.disk_name.empty() ? "" : " " + o.disk_name, what));
}

}  // namespace

std::uint64_t partition_mib_for_images(std::uint64_t image_size, unsigned images) {
  std::uint64_t payload = round_up_mib(image_size) * images;
  return payload + (payload * kSlackPercent + 99) / 100 + kFixedSlackMiB;
}

GptLayout plan_partitions(const DiskLayoutOptions& o) {
  if (o.image_size == 0) refuse(o, "the system image is empty");
  const std::uint64_t need_recovery = partition_mib_for_images(o.image_size, 1);
  const std::uint64_t need_state = partition_mib_for_images(o.image_size, 3);
  const std::uint64_t image_mib = round_up_mib(o.image_size);
  auto given = [](std::uint64_t v, std::uint64_t def) { return v == 0 ? def : v; };
  const std::uint64_t grub = given(o.grub_mib, kDefaultGrubMiB);
  const std::uint64_t oem = given(o.oem_mib, kDefaultOemMiB);
  const std::uint64_t recovery = given(o.recovery_mib, need_recovery);
  const std::uint64_t state = given(o.state_mib, need_state);
  if (grub < 16) refuse(o, fmt::format("COS_GRUB of {} MiB is smaller than 16 MiB", grub));
  if (oem < 16) refuse(o, fmt::format("COS_OEM of {} MiB is smaller than 16 MiB", oem));
  if (recovery < need_recovery)
    refuse(o, fmt::format("COS_RECOVERY of {} MiB cannot hold the recovery image of {} MiB (it "
                          "needs {} MiB)",
                          recovery, image_mib, need_recovery));
  if (!o.expandable && state < need_state)
    refuse(o, fmt::format("COS_STATE of {} MiB cannot hold the active, passive and transition "
                          "images of {} MiB each (it needs {} MiB)",
                          state, image_mib, need_state));
  if (!o.expandable && o.persistent_mib != 0 && o.persistent_mib < kMinPersistentMiB)
    refuse(o, fmt::format("COS_PERSISTENT of {} MiB is smaller than {} MiB", o.persistent_mib,
                          kMinPersistentMiB));

  GptLayout layout;
  layout.disk_size = o.disk_size;
  auto add = [&](const char* name, const char* type, std::uint64_t mib, bool bios_boot = false) {
    layout.partitions.push_back({name, type, "", mib * kMiB, bios_boot});
  };
  std::uint64_t total = 2;  // the GPTs' first and last MiB
  if (o.bios) {
    add(kBiosBootName, kBiosBootType, kBiosBootMiB, true);
    total += kBiosBootMiB;
  }
  add("COS_GRUB", kEspType, grub);
  add("COS_OEM", kLinuxDataType, oem);
  add("COS_RECOVERY", kLinuxDataType, recovery);
  total += grub + oem + recovery;
  std::string summary =
      fmt::format("COS_GRUB {}, COS_OEM {}, COS_RECOVERY {}", grub, oem, recovery);
  if (!o.expandable) {
    add("COS_STATE", kLinuxDataType, state);
    add("COS_PERSISTENT", kLinuxDataType, o.persistent_mib);  // 0: the rest
    total += state + (o.persistent_mib == 0 ? kMinPersistentMiB : o.persistent_mib);
    summary += fmt::format(", COS_STATE {}, COS_PERSISTENT {}{}", state,
                           o.persistent_mib == 0 ? "at least " : "",
                           o.persistent_mib == 0 ? kMinPersistentMiB : o.persistent_mib);
  }
  if (o.disk_size < total * kMiB)
    refuse(o, fmt::format("the disk of {} MiB is too small: the layout needs {} MiB ({} MiB, for "
                          "a system image of {} MiB)",
                          o.disk_size / kMiB, total, summary, image_mib));
  return layout;
}

}  // namespace pok8s::image
