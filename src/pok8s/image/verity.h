// dm-verity for the rootfs image: a SHA-256 hash tree (4 KiB blocks, no superblock) appended to
// the image file, made with libcryptsetup. Its root hash, with the salt, the data size and where
// the tree starts, goes on the kernel command line of a signed UKI, so the whole root file
// system is authenticated by the UKI's signature.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "pok8s/util/file.h"

namespace pok8s::image {

inline constexpr std::uint32_t kVerityBlockSize = 4096;

struct VerityTree {
  std::string root_hash;          // hex
  std::string salt;               // hex
  std::uint64_t data_blocks = 0;  // 4 KiB blocks of file system data the tree covers
  std::uint64_t hash_offset = 0;  // bytes from the start of the file to the tree
  std::uint64_t hash_size = 0;    // bytes of tree
};

// Pads `image` to whole 4 KiB blocks and appends the hash tree of that data, salted with
// `salt_hex` (derived from the build id, so the tree is reproducible; 1 to 64 bytes). The result
// is what `veritysetup verify IMAGE IMAGE ROOT_HASH --no-superblock --hash-offset=OFFSET
// --data-blocks=N --salt=SALT` accepts. Throws Error(kIo) naming the image.
VerityTree append_verity_tree(const util::Path& image, std::string_view salt_hex);

// Reads the whole of `image` and checks every block against the tree at tree.hash_offset and
// tree.root_hash (what `veritysetup verify` does), with libcryptsetup. Throws Error(kSignature)
// naming `image` when a block or the tree does not match, Error(kIo) when it cannot be read.
void verify_verity_tree(const util::Path& image, const VerityTree& tree);

// The kernel command line parameter pok8s-init reads:
// "pok8s.verity=<root hash>,<salt>,<data blocks>,<hash offset>".
std::string verity_cmdline(const VerityTree& tree);

}  // namespace pok8s::image
