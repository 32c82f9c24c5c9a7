// Installing the system from the live medium to a disk (pok8s-agent install): choose the disk
// (with `auto`, the one blank disk, never the boot medium), check the layout against its size
// before writing anything, then partition with sfdisk, make the file systems with mkfs.vfat and
// mkfs.ext4 (the image's own tools: the agent is static and links no libfdisk) and copy GRUB,
// its environment block, the cloud-configs and the recovery, active and passive images.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/config/cloud_config.h"
#include "pok8s/config/install_config.h"
#include "pok8s/image/gpt.h"
#include "pok8s/node/init.h"
#include "pok8s/node/stages.h"
#include "pok8s/util/file.h"

namespace pok8s::node {

// How long the installer waits for the kernel and udev to show the new partitions.
inline constexpr int kPartitionWaitSeconds = 10;
// The most --config files the installer copies to COS_OEM (91_*.yaml to 99_*.yaml).
inline constexpr std::size_t kMaxInstallConfigFiles = 9;
// The live medium's cloud-config and its name on COS_OEM, where Kairos users look for it.
inline constexpr std::string_view kMediaConfigFile = "config.yaml";
inline constexpr std::string_view kOemConfigFile = "90_custom.yaml";

enum class BlockKind {
  kDisk,       // a whole disk: what the installer writes to
  kPartition,  // a partition of a disk
  kOther,      // loop, RAM, zram, optical, device-mapper, md, nbd, eMMC boot areas
};

// A block device as /sys/class/block and libblkid describe it: what choose_install_device
// decides on. Only disks are probed further.
struct BlockDevice {
  util::Path device;  // /dev/vda
  BlockKind kind = BlockKind::kDisk;
  std::uint64_t size = 0;  // bytes
  bool read_only = false;
  bool boot_media = false;  // the medium this system booted from is on it
  std::string in_use;       // why it is busy, "" when not: "/dev/vda1 is mounted on /data"
  std::string content;      // "" when blank, else what is on it: "a gpt partition table"
};

// The kind of the block device `name` by its name alone (kPartition needs sysfs).
BlockKind block_kind_by_name(std::string_view name);

// The disk to install to for `setting` ("auto" or a /dev path, symlinks already resolved),
// among `devices`. `where` says where the setting came from, for messages ("--device",
// "install.device in FILE:LINE"). `auto` takes the one blank disk that is writable, not empty,
// not in use and not the boot medium, and refuses none or several, naming each disk and why it
// was not taken. A named device must be a whole disk, not the boot medium, not in use, writable
// and not empty; it need not be blank. Throws Error(kInvalidInput) with one line.
BlockDevice choose_install_device(std::string_view setting, std::string_view where,
                                  std::span<const BlockDevice> devices);

// Where probe_block_devices looks; tests point it at a fake tree.
struct BlockProbePaths {
  util::Path sys_class_block = "/sys/class/block";
  util::Path dev = "/dev";
  util::Path mountinfo = "/proc/self/mountinfo";
  util::Path swaps = "/proc/swaps";
};

// Every block device the kernel knows, disks probed with libblkid (partition tables and file
// systems). A disk is the boot medium when `boot_media` (a /dev path or "MAJOR:MINOR", e.g.
// the boot state's media_device and the device of the mounted medium) is it or one of its
// partitions.
std::vector<BlockDevice> probe_block_devices(const std::vector<std::string>& boot_media,
                                             const BlockProbePaths& paths = {});

// What the live medium holds for the installer. A live ISO's system boots by GRUB, with each
// image's kernel and initramfs beside its rootfs; a uki-iso's (trusted boot) by systemd-boot,
// with a signed UKI for each image on COS_GRUB and the rootfs image carrying its dm-verity tree.
struct InstallMedia {
  bool uki = false;     // install/EFI/Linux holds the UKIs; no kernel, initrd, grub, grubenv
  util::Path kernel;    // boot/kernel -> vmlinuz
  util::Path initrd;    // boot/initrd -> initrd
  util::Path rootfs;    // rootfs.squashfs -> rootfs.img
  util::Path efi_dir;   // install/EFI -> COS_GRUB's /EFI
  util::Path grub_dir;  // install/grub -> COS_GRUB's /grub; with uki, install/loader -> /loader
  util::Path grubenv;   // install/grubenv -> COS_OEM's /grubenv
  // install/bios/core.img and boot.img: GRUB's BIOS boot code (image/bios_boot.h); media
  // written before pok8s made disks BIOS-bootable lack them.
  std::optional<util::Path> bios_core;
  std::optional<util::Path> bios_boot;
  std::optional<util::Path> config;  // config.yaml -> COS_OEM's /90_custom.yaml
  std::uint64_t image_size = 0;      // rootfs + kernel + initrd, what the layout is sized for
  std::uint64_t efi_size = 0;        // the files under install/EFI
};

// Finds the installer's files under `media` (the live medium's mount point), a live ISO's or a
// uki-iso's; throws Error(kNotFound) naming the first one missing.
InstallMedia find_install_media(const util::Path& media);

// The partitions for `config`'s sizes on `disk`, checked against its size: kInvalidInput
// naming the disk and the sizes when it is too small. Nothing is written.
// With `bios`, a BIOS boot partition comes first. COS_GRUB holds `efi_size` bytes twice over
// (an upgrade writes the new UKIs before it removes the old), and never less than its default.
image::GptLayout plan_install(const config::InstallConfig& config, const BlockDevice& disk,
                              std::uint64_t image_size, bool bios = false,
                              std::uint64_t efi_size = 0);

// Whether the installed disk gets GRUB's BIOS boot code: install.firmware bios, or no setting
// and a system that was not booted by UEFI (no `efi_firmware`, /sys/firmware/efi).
bool wants_bios_boot(const config::InstallConfig& config, const util::Path& efi_firmware);

// The sfdisk script that writes `layout` (names and type GUIDs, sizes in MiB, the last
// partition taking the rest; sfdisk picks the UUIDs).
std::string sfdisk_script(const image::GptLayout& layout);

// "COS_GRUB 64 MiB, COS_OEM 64 MiB, …, COS_PERSISTENT the rest".
std::string layout_summary(const image::GptLayout& layout);

// "MAJOR:MINOR" -> mount point, from `mountinfo` (/proc/self/mountinfo).
std::map<std::string, std::string> mounted_devices(const util::Path& mountinfo);

enum class AfterInstall { kNothing, kReboot, kPowerOff };

// One line of progress: `step` is a short name ("partition", "copy"), `message` the line.
struct InstallEvent {
  std::string step;
  std::string message;
};
using InstallSink = std::function<void(const InstallEvent&)>;

struct InstallRequest {
  util::Path media = std::string(kMediaMount);
  std::string device;  // --device; empty: install.device
  // --config files: already among the configs, and copied to COS_OEM after the medium's.
  std::vector<util::Path> config_files;
  std::optional<AfterInstall> after;  // --reboot / --poweroff; nullopt: install.reboot/poweroff
  bool auto_from_config = false;      // install only on a live boot with install.auto: true
  util::Path boot_state = std::string(kBootStateFile);
  util::Path work_dir = "/run/pok8s";  // the partitions are mounted below it while copying
  util::Path efi_firmware = "/sys/firmware/efi";  // absent when the live system booted by BIOS
  BlockProbePaths probe_paths;
  // pok8s-luks's bundle, which formats and opens LUKS2 volumes (install.encryption).
  util::Path luks_dir = "/usr/lib/pok8s/luks";
  InstallSink sink;      // may be empty
  StageSink stage_sink;  // before-install and after-install events; may be empty
};

struct InstallOutcome {
  bool installed = false;
  std::string not_installed_because;  // set when --auto-from-config decided not to install
  util::Path device;
  AfterInstall after = AfterInstall::kNothing;
  // With install.encryption: the recovery key that opens COS_OEM and COS_PERSISTENT, to show
  // once; it is kept nowhere.
  std::string recovery_key;
  StageResult before_install, after_install;
};

// Why an automatic install does not happen, or nullopt when it does: only a live boot whose
// merged config says install.auto: true installs. `boot_state` is nullopt without a boot state.
std::optional<std::string> why_no_auto_install(const std::optional<BootState>& boot_state,
                                               const config::InstallConfig& config);

// The whole install, refusals first: the disk and the layout are checked before the
// before-install stage runs and before anything is written. Mounts are undone on every path
// out. Does not reboot or power off: see finish_install.
InstallOutcome run_install(const InstallRequest& request,
                           std::span<const config::CloudConfig> configs,
                           const config::InstallConfig& config);

// Syncs, then reboots or powers off through the service manager (systemctl, else the
// reboot/poweroff commands); nothing for kNothing.
void finish_install(AfterInstall after);

}  // namespace pok8s::node
