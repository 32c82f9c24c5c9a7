// dm-verity in pok8s-init: the rootfs image's loop device mapped through the kernel's verity
// target with the parameters of the signed command line, so every block read from the root
// file system is checked against the root hash.
#pragma once

#include <string>

#include "pok8s/node/kernel_cmdline.h"
#include "pok8s/util/file.h"

namespace pok8s::node {

// Creates the read-only mapping `name` over `device` and returns its node (/dev/dm-N). Throws
// Error naming the step and the device (no device-mapper: the dm_mod/dm_verity modules are
// missing; a refused table: bad parameters).
std::string open_verity(const std::string& device, const VerityParams& params,
                        const std::string& name);

// Whether the image file `image` carries the tree of `params`: the top level of the tree (one
// block at hash_offset; dm-verity format 1 stores the levels top first) hashed with the salt
// before it is the root hash. One block read, so pok8s-init can pick, of the A/B images, the
// one a UKI's signed command line names; dm-verity still checks every block read later. False
// for a file it cannot read that far.
bool verity_root_matches(const util::Path& image, const VerityParams& params);

// The verity target's table line for `params` over the block device `major:minor`.
std::string verity_table(const std::string& device_number, const VerityParams& params);

}  // namespace pok8s::node
