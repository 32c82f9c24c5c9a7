#include "pok8s/node/reset.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>

#include "pok8s/image/disk_layout.h"
#include "pok8s/node/command.h"
#include "pok8s/node/mounts.h"
#include "pok8s/node/upgrade.h"
#include "pok8s/util/error.h"

namespace pok8s::node {
namespace {

namespace fs = std::filesystem;

// Where `device` is mounted, from /proc/self/mountinfo (field 3 is MAJOR:MINOR, field 5 the
// mount point); empty when it is not.
std::string mount_point_of(const util::Path& device) {
  struct stat st {};
  if (::stat(device.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) return "";
  std::string want = fmt::format("{}:{}", major(st.st_rdev), minor(st.st_rdev));
  std::istringstream in(util::read_file("/proc/self/mountinfo", 4u << 20));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, devno, root, point;
    f >> id >> parent >> devno >> root >> point;
    if (devno == want) return point;
  }
  return "";
}

util::Path find_partition(std::string_view label) {
  auto match = find_by_label(label, block_devices());
  if (!match)
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to reset: no partition is labelled {}", label));
  return match->device;
}

// The recovery image copied to images/transition, then swapped in as `target`.
void install_from_recovery(const util::Path& recovery, const util::Path& images,
                           std::string_view target) {
  util::Path transition = images / "transition";
  if (fs::exists(transition)) util::remove_tree(transition);
  util::make_dirs(transition);
  for (std::string_view name : {image::kRootfsFile, image::kKernelFile, image::kInitrdFile})
    copy_file(recovery / name, transition / name, 0644);
  fsync_path(transition);
  fsync_path(images);
  rotate_images(images, target, false);
}

}  // namespace

ResetOutcome run_reset(const ResetRequest& request, std::span<const config::CloudConfig> configs) {
  auto say = [&](const std::string& line) {
    if (request.log) request.log(line);
  };
  BootState state = parse_boot_state(util::read_file(request.boot_state, 1u << 16),
                                     request.boot_state.string());
  if (state.mode != BootMode::kRecovery)
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to reset: this system runs its {} image; reset runs from the "
                            "recovery image (choose it in the boot menu)",
                            boot_mode_name(state.mode)));
  util::Path recovery = request.media / std::string(image::kImagesDir) / "recovery";
  for (std::string_view name : {image::kRootfsFile, image::kKernelFile, image::kInitrdFile})
    if (::access((recovery / name).c_str(), R_OK) != 0)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to reset: the recovery image has no {}",
                              (recovery / name).string()));
  util::Path state_device = find_partition(image::kStateLabel);
  if (auto at = mount_point_of(state_device); !at.empty())
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to reset: {} ({}) is mounted on {}", state_device.string(),
                            image::kStateLabel, at));
  util::Path persistent_device;
  if (request.reset_persistent) {
    persistent_device = find_partition(image::kPersistentLabel);
    if (auto at = mount_point_of(persistent_device); !at.empty())
      throw Error(ErrorKind::kUnsupported,
                  fmt::format("Failed to reset: {} ({}) is mounted on {}",
                              persistent_device.string(), image::kPersistentLabel, at));
    if (find_program("mkfs.ext4").empty())
      throw Error(ErrorKind::kNotFound,
                  "Failed to reset: mkfs.ext4 is not installed (not found in PATH)");
  }

  ResetOutcome outcome;
  StageContext stage_context;
  stage_context.sink = request.stage_sink;
  outcome.before_reset = run_stage("before-reset", configs, stage_context);

  {
    WorkDir work(request.work_dir, "reset");
    Mounted part(state_device, "ext4", work.path() / "state");
    util::Path images = part.path() / std::string(image::kImagesDir);
    util::make_dirs(images);
    say(fmt::format("Writing the active image from the recovery image ({})",
                    image::kStateLabel));
    install_from_recovery(recovery, images, "active");
    say(fmt::format("Writing the passive image from the recovery image ({})",
                    image::kStateLabel));
    install_from_recovery(recovery, images, "passive");
    part.unmount();
  }
  if (request.reset_persistent) {
    say(fmt::format("Making {} anew on {}", image::kPersistentLabel, persistent_device.string()));
    run_tool({"mkfs.ext4", "-F", "-q", "-L", std::string(image::kPersistentLabel), "-O",
              "^metadata_csum_seed", persistent_device.string()},
             "format " + persistent_device.string());
  }
  if (request.reset_oem) {
    say(fmt::format("Removing the files of {} ({}), but its GRUB environment block",
                    image::kOemLabel, request.oem.string()));
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(request.oem, ec)) {
      std::string name = e.path().filename().string();
      if (name == image::kGrubEnvFile || name == "lost+found") continue;
      util::remove_tree(e.path());
    }
    fsync_path(request.oem);
  }
  if (arm_new_active(request.grubenv))
    say(fmt::format("GRUB boots the active image next ({})", request.grubenv.string()));
  ::sync();
  outcome.after_reset = run_stage("after-reset", configs, stage_context);
  return outcome;
}

}  // namespace pok8s::node
