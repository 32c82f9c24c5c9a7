// `pok8s build`: a converted image becomes bootable artifacts. Every artifact is made from the
// same three parts, each cached by a key derived from its inputs: the squashfs rootfs image,
// the image's kernel and pok8s's initramfs. Then:
//   iso            a hybrid live ISO (UEFI GRUB and BIOS El Torito, label COS_LIVE) holding
//                  them and the cloud-config
//   raw|qcow2|vhd  a disk image of an installed system (build/disk_image.h)
//   uki|uki-iso    a signed UKI with a dm-verity root, alone or on a Secure Boot ISO
//                  (build/uki_artifacts.h)
//   netboot        kernel, initramfs, rootfs image and an iPXE script that boots them over
//                  HTTP; pok8s-init fetches the rootfs into RAM and checks its sha256
// Changing only the cloud-config rebuilds only the artifacts, never the rootfs or initramfs.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/image/squashfs.h"
#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"
#include "pok8s/util/file.h"

namespace pok8s::build {

// The artifact kinds this release builds.
inline constexpr const char* kBuiltKinds[] = {"iso", "raw",     "qcow2",  "vhd",
                                              "uki", "uki-iso", "netboot"};

struct DiskImageOptions {
  // The disk's size in bytes; 0: what the layout needs, with kDefaultPersistentMiB of
  // COS_PERSISTENT (or, expandable, nothing more).
  std::uint64_t size = 0;
  // Only COS_GRUB, COS_OEM and COS_RECOVERY; the first boot makes COS_STATE and COS_PERSISTENT
  // to fill whatever disk it finds itself on.
  bool expandable = false;
  // A BIOS boot partition with GRUB's core image, and GRUB's boot code in the MBR, so the disk
  // boots on BIOS firmware as well as UEFI.
  bool bios = false;
  int boot_tries = 3;  // boots a new image may fail before GRUB falls back (boot/grub.h)
};
inline constexpr std::uint64_t kDefaultPersistentMiB = 1024;

struct BuildOptions {
  std::vector<std::string> kinds = {"iso"};  // of kBuiltKinds, each at most once
  util::Path output_dir;                     // receives the artifacts and <name>.manifest.json
  std::optional<util::Path> cloud_config;    // validated, then /config.yaml on the ISO, the
                                             // OEM partition's 90_custom.yaml on disks
  image::SquashfsCompression compression = image::SquashfsCompression::kZstd;
  // Unset: zstd at level 9, else the codec's default. With 1 MiB blocks, zstd 9 makes a smaller
  // Debian rootfs than mksquashfs's defaults (128 KiB, zstd 15) with a sixth of the CPU time
  // (docs/benchmarks.md).
  std::optional<int> compression_level;
  // The initramfs's zstd level; unset: boot::InitramfsOptions's.
  std::optional<int> initramfs_level;
  std::uint32_t block_size = 1u << 20;
  std::optional<std::int64_t> source_date_epoch;  // default: the image's creation time
  util::Path cache_dir;                           // step results; default: the blob store's
  std::string volume_label = "COS_LIVE";
  DiskImageOptions disk;
  // The key set (pok8s keys generate) that signs the uki and uki-iso artifacts; they need one,
  // the others do not take one.
  std::optional<util::Path> keys_dir;
  // install.encryption for systems installed from the iso or uki-iso: "none", "tpm" (uki-iso
  // only) or "passphrase" (the cloud-config's install.passphrase). Written into the medium's
  // config.yaml.
  std::string encryption = "none";
  std::string secure_boot_enroll = "force";  // loader.conf of the uki-iso (build/uki_artifacts.h)
  // A BMP image systemd-stub shows while the UKIs boot (their .splash section); uki and uki-iso
  // only.
  std::optional<util::Path> splash;
  // Where the netboot files will be served from (http://IPv4[:port]/dir/): the iPXE script and
  // the kernel command line name them by it. Required for netboot.
  std::string netboot_url;
  // The build spec these artifacts were made from, if any: its id and canonical form go into
  // the manifest.
  std::string spec_id;
  nlohmann::json spec;
  std::function<void(std::string_view)> log;  // one line per step
  // Progress of the long steps: step name, bytes done, bytes total.
  std::function<void(std::string_view, std::uint64_t, std::uint64_t)> progress;
};

struct BuiltArtifact {
  std::string name;  // file name in output_dir
  std::string type;  // the kind: iso, raw, qcow2, vhd, uki, uki-iso; rootfs-verity for the
                     // rootfs image that comes with a uki; netboot-kernel, netboot-initrd,
                     // netboot-rootfs, netboot-config, netboot-script
  std::uint64_t size = 0;
  std::string sha256;
};

struct BuildResult {
  std::string build_id;  // hashes every input: image, options, cloud-config, tool versions
  std::vector<BuiltArtifact> artifacts;
  util::Path manifest;  // <name>.manifest.json
  std::string kernel_version;
  // With uki or uki-iso: the UKI's size, its command line (with the verity root hash).
  std::uint64_t uki_size = 0;
  std::string uki_cmdline;
  bool rootfs_cached = false;
  bool initramfs_cached = false;
};

// Builds options.kinds of `image` (a converted image whose blobs are in `store`) into
// output_dir, with one manifest listing them all. Nothing is written to output_dir before
// every input is checked; each artifact appears there complete or not at all.
BuildResult build_artifacts(const oci::ResolvedImage& image, oci::BlobStore& store,
                            const BuildOptions& options);

struct SystemFile {
  std::string name;  // image::kRootfsFile, kKernelFile or kInitrdFile
  std::uint64_t size = 0;
  std::string sha256;
};
struct SystemFiles {
  std::vector<SystemFile> files;
  std::string kernel_version;
};

// The three files of one system image — what /cOS/<active|passive|recovery>/ holds on an
// installed system — written into `dir` (made if missing): the same rootfs image, kernel and
// initramfs build_artifacts puts on its disks. What pok8s-agent upgrade installs.
SystemFiles write_system_files(const oci::ResolvedImage& image, oci::BlobStore& store,
                               const BuildOptions& options, const util::Path& dir);

// The base name of the artifacts: <flavor>-<release>-<variant>-<arch>-<model>-<version>, from
// the image's io.pok8s.* labels.
std::string artifact_base_name(const oci::ResolvedImage& image);

}  // namespace pok8s::build
