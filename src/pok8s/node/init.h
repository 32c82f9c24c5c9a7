// pok8s-init, PID 1 of the initramfs: load the modules, find the boot media by label, mount
// the rootfs image read-only with tmpfs overlays on the writable directories, run the agent's
// early stages, switch_root into the image. The plan is data so it is testable off PID 1.
#pragma once

#include <array>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/node/kernel_cmdline.h"
#include "pok8s/util/file.h"

namespace pok8s::node {

inline constexpr std::string_view kSysroot = "/sysroot";
inline constexpr std::string_view kMediaMount = "/run/pok8s/media";
inline constexpr std::string_view kOverlayRoot = "/run/pok8s/overlay";
inline constexpr std::string_view kBootStateFile = "/run/pok8s/boot-state";
inline constexpr std::string_view kLoadListFile = "/etc/pok8s/modules.load";
inline constexpr std::string_view kAgentPath = "/usr/bin/pok8s-agent";
inline constexpr std::string_view kBusyboxPath = "/bin/busybox";
// Where systemd-stub (252 and later) puts the booted UKI's .pcrsig and .pcrpkey in the initrd.
inline constexpr std::string_view kPcrSignatureFile = "/.extra/tpm2-pcr-signature.json";
inline constexpr std::string_view kPcrPublicKeyFile = "/.extra/tpm2-pcr-public-key.pem";
// An installed system (boot modes active, passive, recovery): COS_OEM is mounted read-write on
// the image's /oem, COS_PERSISTENT (active and passive only; recovery leaves it alone so that
// reset can wipe it) on kPersistentMount.
inline constexpr std::string_view kOemDir = "oem";
inline constexpr std::string_view kPersistentMount = "/run/pok8s/persistent";

// The image's directories that get a tmpfs overlay (when the image has them): what a running
// system writes to, while /usr stays the image's own.
inline constexpr std::array<std::string_view, 7> kOverlayDirs = {"etc",  "var", "srv",      "root",
                                                                 "home", "opt", "usr/local"};

// What an installed system keeps across reboots: bind mounts from COS_PERSISTENT over the
// ephemeral overlays. Logins and keys, logs, and what the container runtimes and Kubernetes
// keep.
inline constexpr std::array<std::string_view, 16> kPersistentDirs = {"etc/ssh",
                                                                     "etc/rancher",
                                                                     "etc/k0s",
                                                                     "etc/cni",
                                                                     "etc/iscsi",
                                                                     "home",
                                                                     "root",
                                                                     "opt",
                                                                     "usr/local",
                                                                     "var/log",
                                                                     "var/lib/rancher",
                                                                     "var/lib/kubelet",
                                                                     "var/lib/containerd",
                                                                     "var/lib/k0s",
                                                                     "var/lib/cni",
                                                                     "var/lib/longhorn"};

// One mount(2) call of the plan.
struct MountStep {
  std::string what;  // for messages: "the tmpfs overlay on /sysroot/etc"
  std::string source;
  std::string target;
  std::string fstype;  // empty for a move
  unsigned long flags = 0;
  std::string data;
  // Directories made before mounting (overlay upper and work dirs, on the tmpfs below them);
  // the first takes the mode and owner of `attrs_from` so the overlay's root looks like
  // the image's directory.
  std::vector<std::string> make_dirs;
  std::string attrs_from;
};

// /proc, /sys, /dev (devtmpfs) and /run (tmpfs) in the initramfs.
std::vector<MountStep> early_mounts();

// Where the image file is once the media is mounted at kMediaMount. Refuses a path that
// would leave the media (kInvalidInput).
std::string image_file_on_media(const BootOptions& options);

// The other A/B image of an installed one's path: /cOS/active/rootfs.img <->
// /cOS/passive/rootfs.img; nullopt for any other path. A UKI names its image by path and by
// root hash; while an upgrade rotates the images, the path may name the other one.
std::optional<std::string> other_ab_image(std::string_view image_path);

// With the image mounted at kSysroot: a tmpfs at kOverlayRoot, an overlay (tmpfs upper) on
// each of kOverlayDirs that `sysroot_has_dir` says exists ("etc", "usr/local"), and a tmpfs
// on /sysroot/tmp.
std::vector<MountStep> overlay_mounts(const std::function<bool(std::string_view)>& sysroot_has_dir);

// /dev, /proc, /sys and /run of the initramfs moved into /sysroot (the media and the
// overlays' upper dirs stay reachable under /run/pok8s).
std::vector<MountStep> move_mounts();

// Where a persistent directory's content lives under kPersistentMount: ".state/etc-ssh".
std::string persistent_state_dir(std::string_view dir);

// With COS_PERSISTENT mounted at kPersistentMount and the overlays in place: a bind mount of
// each of kPersistentDirs from its state directory onto /sysroot.
std::vector<MountStep> persistent_mounts();

// Paths a cloud-config adds to the persistent ones, the Kairos way: a `rootfs` stage step writes
// CUSTOM_BIND_MOUNTS (or PERSISTENT_STATE_PATHS) — space-separated absolute paths — to
// kLayoutEnvFile with `environment_file`/`environment`. pok8s-init reads the file after the
// rootfs stage and bind-mounts each new path from COS_PERSISTENT like the built-in ones.
inline constexpr std::string_view kLayoutEnvFile = "/run/cos/cos-layout.env";

struct LayoutPaths {
  std::vector<std::string> dirs;     // relative to /, like kPersistentDirs; no duplicates
  std::vector<std::string> refused;  // "PATH: why", for the console
};
// Reads the text of kLayoutEnvFile ("KEY=value" or KEY="value" lines; other keys ignored).
// Refused: relative paths, "." or ".." components, /, and paths in or above /proc, /sys, /dev,
// /run, /tmp, /oem or a built-in persistent path.
LayoutPaths parse_layout_env(std::string_view text);

// Cloud-configs pok8s-init found outside the image and the boot media, for the agent: a
// NoCloud datasource disk's user-data (file system labelled cidata or CIDATA) as
// cidata-user-data.yaml.
inline constexpr std::string_view kDatasourceDir = "/run/pok8s/datasource";
inline constexpr std::array<std::string_view, 2> kCidataLabels = {"cidata", "CIDATA"};

// What the running system learns about its boot, in kBootStateFile.
struct BootState {
  BootMode mode = BootMode::kLive;
  std::string media_label;
  std::string media_device;
  std::string image;
  std::string oem_device;         // empty when not mounted
  std::string persistent_device;  // empty when not mounted
};
// "key=value" lines: mode, media_label, media_device, image, oem_device, persistent_device.
std::string boot_state_text(const BootState& state);

// The modules to load, from the text of kLoadListFile: one absolute path a line, blank lines
// and "#" comments ignored. Throws Error(kFormat) naming the line of a relative path or one
// with "..".
std::vector<std::string> parse_module_load_list(std::string_view text);

// What libblkid finds on a device or image file; nullopt when it finds no file system or
// cannot read it (an empty CD drive).
struct FilesystemProbe {
  std::string type;  // "iso9660", "ext4", "squashfs"
  std::string label;
};
std::optional<FilesystemProbe> probe_filesystem(const util::Path& device);

// The block devices the kernel knows, as /dev paths, from the names in `sys_class_block`.
std::vector<util::Path> block_devices(const util::Path& sys_class_block = "/sys/class/block",
                                      const util::Path& dev = "/dev");

struct MediaMatch {
  util::Path device;
  FilesystemProbe filesystem;
};
// The first of `candidates` holding a file system labelled exactly `label`.
std::optional<MediaMatch> find_by_label(std::string_view label,
                                        const std::vector<util::Path>& candidates);

// Runs PID 1 to its end: exec of the image's init, or, on failure, one line on the console
// and then the emergency shell (pok8s.shell) or a reboot after a pause. Never returns when
// PID 1; returns 1 at once when not PID 1 (pok8s-init run by mistake on a live system).
int run_init();

}  // namespace pok8s::node
