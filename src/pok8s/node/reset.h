// pok8s-agent reset, run from the recovery image: active and passive are rewritten from the
// recovery image (each through /cOS/transition and an atomic swap, like an upgrade), then
// COS_PERSISTENT is made anew (unless kept) and COS_OEM emptied (only when asked; its GRUB
// environment block stays, armed for the new active). The before-reset and after-reset stages
// run around it.
#pragma once

#include <span>
#include <string>

#include "pok8s/config/cloud_config.h"
#include "pok8s/node/boot_status.h"
#include "pok8s/node/install.h"
#include "pok8s/node/stages.h"
#include "pok8s/util/file.h"

namespace pok8s::node {

struct ResetRequest {
  bool reset_persistent = true;  // make COS_PERSISTENT anew (mkfs.ext4)
  bool reset_oem = false;        // remove COS_OEM's files but the GRUB environment block
  util::Path media = std::string(kMediaMount);  // COS_RECOVERY, mounted by pok8s-init
  util::Path boot_state = std::string(kBootStateFile);
  util::Path grubenv = std::string(kOemGrubEnvFile);
  util::Path oem = "/oem";
  util::Path work_dir = "/run/pok8s";
  std::function<void(std::string_view)> log;
  StageSink stage_sink;
};

struct ResetOutcome {
  StageResult before_reset, after_reset;
};

// Refuses, before anything is written, unless the system runs its recovery image and
// COS_STATE (and COS_PERSISTENT when it is to be wiped) are found and not mounted.
ResetOutcome run_reset(const ResetRequest& request, std::span<const config::CloudConfig> configs);

struct ExpandRequest {
  util::Path media = std::string(kMediaMount);  // COS_RECOVERY, mounted by pok8s-init
  util::Path boot_state = std::string(kBootStateFile);
  util::Path grubenv = std::string(kOemGrubEnvFile);
  util::Path work_dir = "/run/pok8s";
  util::Path sys_class_block = "/sys/class/block";
  util::Path dev = "/dev";
  std::function<void(std::string_view)> log;
};

// The first boot of a self-expanding disk (pok8s build --expandable), from its recovery image:
// appends COS_STATE (room for three images) and COS_PERSISTENT (the rest of the disk, which
// may have grown since the image was written) to the disk holding COS_RECOVERY, formats them
// and writes active and passive from the recovery image. False, and nothing done, when the
// system does not run its recovery image or COS_STATE exists. A disk without room for both is
// refused, naming the sizes, before anything is written.
bool expand_disk(const ExpandRequest& request);

}  // namespace pok8s::node
