#include "pok8s/node/reset.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "pok8s/image/disk_layout.h"
#include "pok8s/image/gpt.h"
#include "pok8s/node/command.h"
#include "pok8s/node/mounts.h"
#include "pok8s/node/upgrade.h"
#include "pok8s/util/error.h"

namespace pok8s::node {
namespace {

namespace fs = std::filesystem;

// Where `device` is mounted (the installer's reader of /proc/self/mountinfo); empty when not.
std::string mount_point_of(const util::Path& device) {
  struct stat st {};
  if (::stat(device.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) return "";
  auto mounts = mounted_devices("/proc/self/mountinfo");
  auto it = mounts.find(fmt::format("{}:{}", major(st.st_rdev), minor(st.st_rdev)));
  return it == mounts.end() ? "" : it->second;
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

// A number in a sysfs file (which claims a size of 4096 whatever it holds).
std::uint64_t read_sys_number(const util::Path& file) {
  std::ifstream in(file);
  std::uint64_t n = 0;
  if (!(in >> n)) throw Error(ErrorKind::kIo, fmt::format("Failed to read {}", file.string()));
  return n;
}

void write_images_from_recovery(const util::Path& recovery, const util::Path& state_device,
                                const util::Path& work_dir,
                                const std::function<void(const std::string&)>& say) {
  WorkDir work(work_dir, "reset");
  Mounted part(state_device, "ext4", work.path() / "state");
  util::Path images = part.path() / std::string(image::kImagesDir);
  util::make_dirs(images);
  say(fmt::format("Writing the active image from the recovery image ({})", image::kStateLabel));
  install_from_recovery(recovery, images, "active");
  say(fmt::format("Writing the passive image from the recovery image ({})", image::kStateLabel));
  install_from_recovery(recovery, images, "passive");
  part.unmount();
}

}  // namespace

bool expand_disk(const ExpandRequest& request) {
  auto say = [&](const std::string& line) {
    if (request.log) request.log(line);
  };
  BootState state =
      parse_boot_state(util::read_file(request.boot_state, 1u << 16), request.boot_state.string());
  if (state.mode != BootMode::kRecovery) return false;
  if (find_by_label(image::kStateLabel, block_devices(request.sys_class_block, request.dev)))
    return false;
  util::Path recovery = request.media / std::string(image::kImagesDir) / "recovery";
  std::uint64_t image_size = 0;
  for (std::string_view name : {image::kRootfsFile, image::kKernelFile, image::kInitrdFile}) {
    std::error_code ec;
    auto size = fs::file_size(recovery / name, ec);
    if (ec)
      throw Error(ErrorKind::kNotFound, fmt::format("Failed to expand the disk: the recovery "
                                                    "image has no {}",
                                                    (recovery / name).string()));
    image_size += size;
  }
  // The disk is the parent of COS_RECOVERY's partition in sysfs: /sys/class/block/vda3 links
  // to …/block/vda/vda3.
  util::Path part_name = util::Path(state.media_device).filename();
  std::error_code ec;
  util::Path part_sys = fs::canonical(request.sys_class_block / part_name, ec);
  if (ec || !fs::exists(part_sys / "partition"))
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to expand the disk: {} (COS_RECOVERY) is not a partition",
                            state.media_device));
  util::Path disk_sys = part_sys.parent_path();
  util::Path disk = request.dev / disk_sys.filename();
  // Where the last partition ends and how big the disk is now, in 512-byte sectors.
  std::uint64_t last_end = 0, last_number = 0;
  for (const auto& e : fs::directory_iterator(disk_sys, ec)) {
    if (!fs::exists(e.path() / "partition")) continue;
    last_end = std::max(last_end,
                        read_sys_number(e.path() / "start") + read_sys_number(e.path() / "size"));
    last_number = std::max(last_number, read_sys_number(e.path() / "partition"));
  }
  const std::uint64_t disk_mib = read_sys_number(disk_sys / "size") / 2048;
  const std::uint64_t used_mib = (last_end + 2047) / 2048 + 1;  // and the backup GPT
  const std::uint64_t state_mib = image::partition_mib_for_images(image_size, 3);
  if (disk_mib < used_mib + state_mib + image::kMinPersistentMiB)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to expand the disk: {} has {} MiB, {} MiB of it used; "
                            "COS_STATE needs {} MiB and COS_PERSISTENT at least {} MiB (grow "
                            "the disk to at least {} MiB)",
                            disk.string(), disk_mib, used_mib, state_mib, image::kMinPersistentMiB,
                            used_mib + state_mib + image::kMinPersistentMiB));
  for (const char* tool : {"sfdisk", "partx", "mkfs.ext4"})
    if (find_program(tool).empty())
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to expand the disk: {} is not installed (not found in "
                              "PATH)",
                              tool));

  say(fmt::format("Adding COS_STATE ({} MiB) and COS_PERSISTENT (the remaining {} MiB) to {}",
                  state_mib, disk_mib - used_mib - state_mib, disk.string()));
  WorkDir work(request.work_dir, "expand");
  util::Path script = work.path() / "sfdisk.script";
  util::write_file_atomic(script, fmt::format("size={}MiB, type={}, name={}\ntype={}, name={}\n",
                                              state_mib, image::kLinuxDataType, image::kStateLabel,
                                              image::kLinuxDataType, image::kPersistentLabel));
  struct RemoveScript {
    util::Path path;
    ~RemoveScript() { ::unlink(path.c_str()); }
  } remove_script{script};
  // The disk may have grown since the image was written: the backup GPT moves to its end.
  run_tool(
      {"sfdisk", "--no-reread", "--no-tell-kernel", "--relocate", "gpt-bak-std", disk.string()},
      "move the backup GPT of " + disk.string());
  util::ProcessOptions append;
  append.stdin_file = script.string();
  run_tool({"sfdisk", "--no-reread", "--no-tell-kernel", "--append", disk.string()},
           "add partitions to " + disk.string(), append);
  // The other partitions are in use, so the kernel learns of the new ones one by one.
  run_tool({"partx", "--add", "--nr", fmt::format("{}:{}", last_number + 1, last_number + 2),
            disk.string()},
           "tell the kernel about the new partitions of " + disk.string());
  std::vector<util::Path> parts;
  for (std::uint64_t n = last_number + 1; n <= last_number + 2; ++n) {
    util::Path dev;
    for (int i = 0; i < 100 && dev.empty(); ++i) {
      for (const auto& e : fs::directory_iterator(disk_sys, ec))
        if (fs::exists(e.path() / "partition") && read_sys_number(e.path() / "partition") == n &&
            fs::exists(request.dev / e.path().filename()))
          dev = request.dev / e.path().filename();
      if (dev.empty()) ::usleep(100'000);
    }
    if (dev.empty())
      throw Error(ErrorKind::kIo, fmt::format("Failed to expand the disk: partition {} of {} did "
                                              "not appear",
                                              n, disk.string()));
    parts.push_back(dev);
  }
  for (std::size_t i = 0; i < 2; ++i) {
    std::string label(i == 0 ? image::kStateLabel : image::kPersistentLabel);
    say(fmt::format("Making an ext4 file system labelled {} on {}", label, parts[i].string()));
    run_tool({"mkfs.ext4", "-F", "-q", "-L", label, "-O", "^metadata_csum_seed", parts[i].string()},
             "format " + parts[i].string());
  }
  write_images_from_recovery(recovery, parts[0], request.work_dir, say);
  if (arm_new_active(request.grubenv))
    say(fmt::format("GRUB boots the active image next ({})", request.grubenv.string()));
  ::sync();
  return true;
}

ResetOutcome run_reset(const ResetRequest& request, std::span<const config::CloudConfig> configs) {
  auto say = [&](const std::string& line) {
    if (request.log) request.log(line);
  };
  BootState state =
      parse_boot_state(util::read_file(request.boot_state, 1u << 16), request.boot_state.string());
  if (state.mode != BootMode::kRecovery)
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to reset: this system runs its {} image; reset runs from the "
                            "recovery image (choose it in the boot menu)",
                            boot_mode_name(state.mode)));
  util::Path recovery = request.media / std::string(image::kImagesDir) / "recovery";
  for (std::string_view name : {image::kRootfsFile, image::kKernelFile, image::kInitrdFile})
    if (::access((recovery / name).c_str(), R_OK) != 0)
      throw Error(ErrorKind::kNotFound, fmt::format("Failed to reset: the recovery image has no {}",
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

  write_images_from_recovery(recovery, state_device, request.work_dir, say);
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
