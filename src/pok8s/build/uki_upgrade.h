// The new image of an installed UKI system, read from a uki-iso (pok8s-sysimage write
// uki-iso:FILE, run by pok8s-agent upgrade): the rootfs image with its dm-verity tree and the
// signed UKIs of the installed active, passive and recovery images, as the ISO's install/
// directory holds them. The node cannot sign anything, so it takes the factory's UKIs as they
// are, after checking that they belong together and to this system:
//   - each UKI's signed command line names the image it boots (pok8s.mode, pok8s.image) and the
//     same dm-verity root hash, and the rootfs image verifies against it block by block;
//   - with `installed_uki`, every new UKI is signed by the same certificate and carries the same
//     PCR public key (.pcrpkey) as the installed one: the firmware would refuse another db key,
//     and the TPM would not unseal the disk key for another PCR key.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::build {

struct UkiImageFile {
  std::string name;  // rootfs.img, pok8s-active+3.efi, pok8s-passive.efi, pok8s-recovery.efi
  std::uint64_t size = 0;
  std::string sha256;
};

struct UkiImage {
  std::string root_hash;            // the rootfs' dm-verity root hash, on every UKI's cmdline
  std::string version;              // IMAGE_VERSION of the UKIs' .osrel, if any
  std::string kernel;               // .uname
  std::vector<UkiImageFile> files;  // rootfs.img first, then the UKIs
};

// Reads the uki-iso `iso` (a file or a block device) with libarchive and writes its rootfs image
// as rootfs.img and its installed UKIs under their ESP names into the directory `output`
// (created; each file complete or not there). Throws Error naming the ISO and the entry
// (kFormat: not a uki-iso, a UKI missing or twice, a command line that does not fit;
// kSignature: the rootfs does not match the root hash, another signer or PCR key).
UkiImage write_uki_image(const util::Path& iso, const util::Path& output,
                         const std::optional<util::Path>& installed_uki,
                         const std::function<void(std::string_view)>& log);

}  // namespace pok8s::build
