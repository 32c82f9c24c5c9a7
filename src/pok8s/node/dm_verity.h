// dm-verity in pok8s-init: the rootfs image's loop device mapped through the kernel's verity
// target with the parameters of the signed command line, so every block read from the root
// file system is checked against the root hash.
#pragma once

#include <string>

#include "pok8s/node/kernel_cmdline.h"

namespace pok8s::node {

// Creates the read-only mapping `name` over `device` and returns its node (/dev/dm-N). Throws
// Error naming the step and the device (no device-mapper: the dm_mod/dm_verity modules are
// missing; a refused table: bad parameters).
std::string open_verity(const std::string& device, const VerityParams& params,
                        const std::string& name);

// The verity target's table line for `params` over the block device `major:minor`.
std::string verity_table(const std::string& device_number, const VerityParams& params);

}  // namespace pok8s::node
