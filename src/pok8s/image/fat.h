// FAT file system images (the EFI system partition of a live ISO or a disk), built with mtools so
// that no loop device or mount is needed; the same inputs and timestamp give the same bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::image {

// One file of the image: `path` inside the file system ("EFI/BOOT/BOOTX64.EFI"), its content
// read from `source`.
struct FatFile {
  std::string path;
  util::Path source;
};

// Writes a FAT image holding `files` (and their parent directories) to `out`, sized to fit
// them with a little room to spare (whole MiB), volume label `label` (at most 11 characters
// from A-Z 0-9 _ -), volume serial and every timestamp derived from `timestamp` (seconds since
// the epoch, recorded as UTC). `out` appears only once complete.
void write_fat_image(const std::vector<FatFile>& files, std::string_view label,
                     std::int64_t timestamp, const util::Path& out);

// The same file system in a partition of a disk image: `size` bytes (whole MiB) from `offset`
// of `image`, which must exist. Throws kInvalidInput when the files do not fit.
void write_fat_partition(const std::vector<FatFile>& files, std::string_view label,
                         std::int64_t timestamp, const util::Path& image, std::uint64_t offset,
                         std::uint64_t size);

}  // namespace pok8s::image
