// The initramfs pok8s assembles for every distribution: its own static pok8s-init as /init,
// the kernel modules that find and mount the boot media, and nothing of the distribution's
// initramfs tooling. A zstd-compressed newc cpio, bit-for-bit reproducible.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/boot/kernel.h"
#include "pok8s/rootfs/flat_tree.h"
#include "pok8s/util/file.h"

namespace pok8s::boot {

// Where pok8s-init finds the modules to load, in dependency order, one absolute path a line.
inline constexpr std::string_view kModuleLoadList = "etc/pok8s/modules.load";
// The image's pok8s-luks bundle (node::kLuksDir), copied into the initramfs at the same path
// when present: it opens the LUKS2 partitions of install.encryption (libcryptsetup, tpm2-tss).
inline constexpr std::string_view kLuksBundlePrefix = "usr/lib/pok8s/luks/";

struct InitramfsOptions {
  util::Path init_binary;            // the static pok8s-init to put at /init
  std::vector<std::string> modules;  // module names wanted (default_initramfs_modules() when
                                     // empty); a trailing "?" marks one the kernel may lack
  std::int64_t mtime = 0;            // every cpio entry's mtime (SOURCE_DATE_EPOCH)
  // zstd's level. 15, the factory's: within a tenth of level 19's size at a third of its time
  // (Debian's modules: 3.96 vs 3.59 MB, 2.4 vs 6.5 s), made once and booted many times.
  int zstd_level = 15;
};

// Storage controllers, the file systems of the boot media and the rootfs, and the device
// mapper targets for verity and encryption. Only squashfs, overlay, loop and isofs are
// required (unless builtin); the rest are optional ("name?"), as kernels differ.
std::vector<std::string> default_initramfs_modules();

struct InitramfsResult {
  std::vector<std::string> modules_included;  // names, in load order
  std::vector<std::string> modules_skipped;   // optional ones the kernel does not have
  bool busybox = false;                       // a static /bin/busybox is in (emergency shell)
  bool luks = false;                          // the pok8s-luks bundle is in
  std::uint64_t bytes = 0;                    // size of the compressed initramfs
};

// Reads the kernel's module indexes and the modules wanted (with their dependencies) from
// `tree`, decompresses .ko.xz/.ko.zst/.ko.gz, and writes the initramfs to `out` and the
// kernel image to `kernel_out`, each through a temporary name renamed when complete.
// Contents: /init, /lib/modules/<kver>/ (the modules, uncompressed, and their modules.dep),
// /etc/pok8s/modules.load, /bin/busybox when the image has a static one, the image's
// /usr/lib/pok8s/luks bundle when it has one, /dev/console, and
// empty dev, proc, sys, run, sysroot, tmp. Entries sorted, owned by root, mtime fixed.
InitramfsResult write_initramfs(const rootfs::FlatTree& tree, const KernelInfo& kernel,
                                const InitramfsOptions& options, const util::Path& out,
                                const util::Path& kernel_out);

// True when `elf` is an ELF executable without a program interpreter (static or static-pie).
bool is_static_executable(std::string_view elf);

}  // namespace pok8s::boot
