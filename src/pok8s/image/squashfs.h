// The rootfs image: a squashfs file system written through libsquashfs straight from the
// flattened image view, without unpacking, without root and without a loop device.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>

#include "pok8s/rootfs/flat_tree.h"
#include "pok8s/util/file.h"

namespace pok8s::image {

enum class SquashfsCompression { kZstd, kXz, kGzip };

// "zstd", "xz" or "gzip"; anything else is an Error of kind kInvalidInput.
SquashfsCompression parse_squashfs_compression(std::string_view name);

struct SquashfsOptions {
  SquashfsCompression compression = SquashfsCompression::kZstd;
  std::optional<int> level;  // the compressor's default when empty
  std::uint32_t block_size = 128 * 1024;
  unsigned jobs = 0;           // compression threads; 0 = std::thread::hardware_concurrency()
  std::int64_t mkfs_time = 0;  // the superblock's time (callers pass SOURCE_DATE_EPOCH)
  // Called as file data goes in: bytes done so far and the total of the tree.
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;
};

struct SquashfsResult {
  std::uint64_t bytes = 0;       // size of the image file, padding included
  std::uint64_t inodes = 0;      // inodes in the image (hardlinks share one)
  std::uint64_t data_bytes = 0;  // uncompressed bytes of file data that went in
};

// Writes every entry of `tree` to a squashfs image at `out`: all entry types, hardlinks
// sharing one inode, ownership, modes, mtimes and xattrs as in the tree, duplicate data
// stored once. The same tree and options give the same bytes whatever the thread timing.
// The image appears at `out` only when complete; on error nothing is left behind.
SquashfsResult write_squashfs(const rootfs::FlatTree& tree, const util::Path& out,
                              const SquashfsOptions& options);

}  // namespace pok8s::image
