// pok8s-agent upgrade: a new system image from any source pok8s reads, written next to the
// installed ones and swapped in atomically.
//
//   1. pok8s-sysimage (the factory's own reader and writers, shipped in the image under
//      kSysimageDir) fetches the image, verifying every digest, and writes rootfs.img, vmlinuz
//      and initrd to /cOS/transition.partial on COS_STATE (COS_RECOVERY for --recovery). A bad
//      digest stops it before it writes there; a full partition stops it with nothing installed
//      touched.
//   2. The files are flushed, dropped from the page cache and read back against their sha256.
//   3. transition.partial becomes transition, and renameat2(RENAME_EXCHANGE) swaps it with
//      active, then the old active with passive: at every instant /cOS/active is a complete
//      image. A system running its passive image (after a fallback) keeps that passive.
//   4. GRUB's environment gives the new active its full tries (boot assessment falls back to
//      passive if it never marks itself booted).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "pok8s/node/boot_status.h"
#include "pok8s/util/file.h"

namespace pok8s::node {

inline constexpr std::string_view kSysimageDir = "/usr/lib/pok8s/sysimage";
inline constexpr std::string_view kSysimageBinary = "pok8s-sysimage";
// pok8s-luks, bundled the same way in every converted image and copied into its initramfs: it
// formats and opens the LUKS2 partitions of install.encryption (libcryptsetup and tpm2-tss have
// no static builds in Debian either).
inline constexpr std::string_view kLuksDir = "/usr/lib/pok8s/luks";
inline constexpr std::string_view kLuksBinary = "pok8s-luks";
// Next to rootfs.img: what pok8s-sysimage wrote (source, digest, version, files and sha256).
inline constexpr std::string_view kImageInfoFile = "image.json";

// The source scheme of a UKI system's upgrade: a uki-iso (a file, or a drive it is on) built
// with the installed system's keys.
inline constexpr std::string_view kUkiIsoScheme = "uki-iso:";

// The image an installed UKI's file name on the ESP boots: "pok8s-active+3.efi" and
// "pok8s-active.efi" -> "active", "pok8s-passive.efi" -> "passive", "pok8s-recovery.efi" ->
// "recovery"; empty for any other name. On a UKI system each image directory keeps its image's
// UKIs under these names, so the A/B rotation can put the right one on the ESP.
std::string installed_uki_mode(std::string_view file_name);

struct UpgradeOptions {
  std::string source;     // docker://…, oci:DIR[:TAG], oci-archive:FILE; uki-iso:FILE for UKIs
  bool recovery = false;  // replace the recovery image instead of active
  bool tls_verify = true;
  std::string authfile;
  std::string creds;
  util::Path boot_state_file = std::string(kBootStateFile);
  util::Path kernel_cmdline = "/proc/cmdline";  // a signed UKI's has pok8s.verity
  util::Path grubenv = std::string(kOemGrubEnvFile);
  util::Path sysimage_dir = std::string(kSysimageDir);
  std::function<void(std::string_view)> log;
};

struct UpgradeResult {
  std::string target;             // "active" or "recovery"
  nlohmann::json image;           // the new image's image.json
  bool passive_replaced = false;  // the old active became passive
};

// The boot state of an installed system; throws Error(kUnsupported) on a live one ("install it
// first"), before anything runs.
BootState require_installed(const util::Path& boot_state_file);

// The command line that runs the bundle's pok8s-sysimage with `args`: its own loader and
// libraries, nothing from the image's. Throws Error(kNotFound) when the bundle has no loader.
std::vector<std::string> sysimage_argv(const util::Path& sysimage_dir,
                                       std::vector<std::string> args);

// The same for the bundle in `dir` whose program is `binary` (pok8s-luks in kLuksDir).
std::vector<std::string> bundle_argv(const util::Path& dir, std::string_view binary,
                                     std::vector<std::string> args);

// Runs the whole upgrade on an installed system; throws Error naming the step, the source and
// the partition. Nothing installed changes unless the new image verified.
UpgradeResult upgrade_system(const UpgradeOptions& options);

// Step 3 on `images_dir` (/cOS): moves `transition` into `target` (active or recovery); with
// `rotate_passive`, the old active becomes passive. The replaced image is removed.
void rotate_images(const util::Path& images_dir, std::string_view target, bool rotate_passive);

// The image.json of each of active, passive and recovery found under `images_dir`, as
// {"active": {…}, …}; an image installed from an ISO or disk image has none (null).
nlohmann::json installed_images(const util::Path& images_dir);

}  // namespace pok8s::node
