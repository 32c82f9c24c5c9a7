// Finding the kernels an image ships, where distributions put them: /boot/vmlinuz-<kver>
// (Debian, Ubuntu, Alpine, openSUSE) and /usr/lib/modules/<kver>/vmlinuz (Fedora, Arch).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/rootfs/flat_tree.h"

namespace pok8s::boot {

struct KernelInfo {
  std::string version;     // "6.1.0-27-amd64", the name of its /lib/modules directory
  std::string image_path;  // path in the tree, e.g. "boot/vmlinuz-6.1.0-27-amd64"
};

// Every kernel in `tree`, newest version first, each version once (/boot wins over the
// module directory). Symlinks such as /boot/vmlinuz are not kernels of their own.
std::vector<KernelInfo> find_kernels(const rootfs::FlatTree& tree);

// The path in `tree` that `path` names once every symlink on the way is followed inside the
// tree's root (as a chroot would), or nullopt when it does not exist. A hardlink resolves to
// itself; its data is at entry.meta.link_target.
std::optional<std::string> resolve_tree_path(const rootfs::FlatTree& tree, std::string_view path);

// The entry holding the data of the file at `path` (a regular file, or the target of a
// hardlink), after resolve_tree_path; nullptr when it is not a regular file.
const rootfs::FlatEntry* file_entry(const rootfs::FlatTree& tree, std::string_view path);

// Orders kernel versions the way people read them: runs of digits compare as numbers
// ("6.10" after "6.9"). True when a sorts before b.
bool version_less(std::string_view a, std::string_view b);

}  // namespace pok8s::boot
