// ext4 file systems written into a region of a disk image file by e2fsprogs' mke2fs (-d fills it
// from a directory tree, -E offset places it inside the image): no root, no loop device, no
// mount. The same tree, UUID and timestamp give the same bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "pok8s/util/file.h"

namespace pok8s::image {

struct Ext4Options {
  std::string label;                      // at most 16 characters (COS_PERSISTENT)
  std::string uuid;                       // the file system UUID; also seeds the directory hashes
  std::uint64_t offset = 0;               // bytes from the start of the image, a multiple of 4096
  std::uint64_t size = 0;                 // bytes, a multiple of 4096, at least 8 MiB
  std::optional<std::int64_t> timestamp;  // every time the file system records (SOURCE_DATE_EPOCH)
};

// Makes the file system in `image` (which must exist and reach offset + size) holding a copy of
// the tree `root` (owners, modes, times and xattrs kept; nothing when `root` is empty). Throws
// kInvalidInput for a bad label, UUID or extent and kIo with mke2fs's last line when it fails.
void write_ext4(const util::Path& image, const util::Path& root, const Ext4Options& options);

}  // namespace pok8s::image
