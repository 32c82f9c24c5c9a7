#include "pok8s/node/upgrade.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <map>
#include <optional>

#include "pok8s/image/disk_layout.h"
#include "pok8s/node/command.h"
#include "pok8s/node/grubenv.h"
#include "pok8s/node/kernel_cmdline.h"
#include "pok8s/node/mounts.h"
#include "pok8s/util/error.h"

namespace pok8s::node {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using util::UniqueFd;

constexpr std::string_view kTransition = "transition";
constexpr std::string_view kPartial = "transition.partial";
constexpr std::string_view kWorkParent = "/run/pok8s";
constexpr std::uint64_t kMaxInfoBytes = 1u << 20;

bool present(const util::Path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

void exchange(const util::Path& a, const util::Path& b) {
  if (::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) != 0)
    throw_errno(fmt::format("Failed to swap {} and {}", a.string(), b.string()), errno);
}

void move(const util::Path& from, const util::Path& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) != 0)
    throw_errno(fmt::format("Failed to rename {} to {}", from.string(), to.string()), errno);
}

std::uint64_t free_bytes(const util::Path& dir) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0) return 0;
  return static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize;
}

// The partition that holds the target image, writable for the upgrade: the boot media
// remounted read-write when the system booted from it, else mounted on its own. Read-only
// again (or unmounted) on destruction.
class WritableImages {
 public:
  WritableImages(const BootState& state, std::string_view label) : label_(label) {
    if (state.media_label == label) {
      dir_ = std::string(kMediaMount);
      if (::mount(nullptr, dir_.c_str(), nullptr, MS_REMOUNT | MS_NOSUID | MS_NODEV, nullptr) != 0)
        throw_errno(fmt::format("Failed to make {} ({}) writable", dir_.string(), label), errno);
      remounted_ = true;
      return;
    }
    auto match = find_by_label(label, block_devices());
    if (!match)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to upgrade: no partition is labelled {} (is this system "
                              "installed with pok8s-agent install?)",
                              label));
    work_.emplace(std::string(kWorkParent), "upgrade");
    mounted_.emplace(match->device, "ext4", work_->path() / std::string(label));
    dir_ = mounted_->path();
  }
  WritableImages(const WritableImages&) = delete;
  WritableImages& operator=(const WritableImages&) = delete;
  ~WritableImages() {
    if (remounted_) {
      UniqueFd fd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (fd.valid()) ::syncfs(fd.get());
      ::mount(nullptr, dir_.c_str(), nullptr, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
              nullptr);
    }
  }
  const util::Path& path() const { return dir_; }
  const std::string& label() const { return label_; }
  void flush() const {
    UniqueFd fd = util::open_file(dir_, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (::syncfs(fd.get()) != 0) throw_errno("Failed to flush " + dir_.string(), errno);
  }

 private:
  std::string label_;
  util::Path dir_;
  bool remounted_ = false;
  std::optional<WorkDir> work_;
  std::optional<Mounted> mounted_;
};

// systemd-boot's entries on a UKI system: the UKIs under EFI/Linux on COS_GRUB, mounted
// writable while the upgrade runs.
class SystemdBootEntries {
 public:
  explicit SystemdBootEntries(const BootState& state) {
    auto match = find_by_label(image::kGrubLabel, block_devices());
    if (!match)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to upgrade: no partition is labelled {}, where systemd-boot "
                              "and the UKIs are",
                              image::kGrubLabel));
    work_.emplace(std::string(kWorkParent), "esp");
    mounted_.emplace(match->device, "vfat", work_->path() / "esp");
    dir_ = mounted_->path() / "EFI/Linux";
    // The running image's UKI: the new ones must have its signer and PCR key.
    std::string mode(boot_mode_name(state.mode));
    for (const auto& name : names())
      if (installed_uki_mode(name) == mode) booted_ = dir_ / name;
    if (booted_.empty())
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to upgrade: no UKI of the {} image in {} on {}", mode,
                              dir_.string(), image::kGrubLabel));
  }
  const util::Path& booted() const { return booted_; }

  // Copies the UKI of `mode` kept in the image directory `dir` to a hidden name on the ESP.
  void stage(const util::Path& dir, const std::string& mode) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      std::string name = e.path().filename().string();
      if (installed_uki_mode(name) != mode) continue;
      util::Path tmp = dir_ / fmt::format(".{}.new", mode);
      if (present(tmp)) ::unlink(tmp.c_str());
      copy_file(e.path(), tmp, 0644);
      staged_[mode] = name;
      return;
    }
  }

  // Puts the staged UKIs in place of their modes' entries; a passive image without a kept UKI
  // (installed before images kept theirs) loses its entry. Returns what it did, for the log.
  std::vector<std::string> commit(bool passive_replaced) {
    std::vector<std::string> said;
    std::vector<std::string> modes;
    for (const auto& [mode, name] : staged_) modes.push_back(mode);
    if (passive_replaced && !staged_.count("passive")) modes.push_back("passive");
    for (const std::string& mode : modes) {
      for (const auto& name : names())
        if (installed_uki_mode(name) == mode && ::unlink((dir_ / name).c_str()) != 0)
          throw_errno(fmt::format("Failed to remove {} from {}", name, image::kGrubLabel), errno);
      auto staged = staged_.find(mode);
      if (staged == staged_.end()) {
        said.push_back(
            fmt::format("The old image kept no UKI of its own: {} has no passive "
                        "entry until the next upgrade",
                        image::kGrubLabel));
        continue;
      }
      move(dir_ / fmt::format(".{}.new", mode), dir_ / staged->second);
      said.push_back(fmt::format("systemd-boot boots the new {} image as {} on {}", mode,
                                 staged->second, image::kGrubLabel));
    }
    mounted_->unmount();
    return said;
  }

 private:
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir_, ec))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

  std::optional<WorkDir> work_;
  std::optional<Mounted> mounted_;
  util::Path dir_;
  util::Path booted_;
  std::map<std::string, std::string> staged_;  // mode -> the entry's file name
};

int run_sysimage(const UpgradeOptions& o, std::vector<std::string> args) {
  return run_command({sysimage_argv(o.sysimage_dir, std::move(args)), {}, {}});
}

// Flushes the written files and drops them from the page cache, so reading them back reads
// the disk.
void drop_cached(const util::Path& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    UniqueFd fd(::open(e.path().c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) continue;
    if (::fdatasync(fd.get()) != 0) throw_errno("Failed to flush " + e.path().string(), errno);
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);
  }
}

json read_info(const util::Path& file) {
  try {
    return json::parse(util::read_file(file, kMaxInfoBytes));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kFormat, fmt::format("Failed to read {}: {}", file.string(), e.what()));
  }
}

}  // namespace

std::string installed_uki_mode(std::string_view file_name) {
  std::string name = without_boot_counter(file_name).value_or(std::string(file_name));
  for (const char* mode : {"active", "passive", "recovery"})
    if (name == fmt::format("pok8s-{}.efi", mode)) return mode;
  return {};
}

void rotate_images(const util::Path& images_dir, std::string_view target, bool rotate_passive) {
  util::Path transition = images_dir / std::string(kTransition);
  util::Path current = images_dir / std::string(target);
  if (present(current))
    exchange(transition, current);  // current is new, transition the old one
  else
    move(transition, current);
  fsync_path(images_dir);
  if (rotate_passive && present(transition)) {
    util::Path passive = images_dir / "passive";
    if (present(passive))
      exchange(transition, passive);  // passive is the old active, transition the old passive
    else
      move(transition, passive);
    fsync_path(images_dir);
  }
  if (present(transition)) util::remove_tree(transition);
  fsync_path(images_dir);
}

json installed_images(const util::Path& images_dir) {
  json out = json::object();
  for (const char* name : {"active", "passive", "recovery"}) {
    util::Path dir = images_dir / name;
    if (!present(dir)) continue;
    util::Path info = dir / std::string(kImageInfoFile);
    out[name] = present(info) ? read_info(info) : json(nullptr);
  }
  return out;
}

BootState require_installed(const util::Path& boot_state_file) {
  BootState state =
      parse_boot_state(util::read_file(boot_state_file, 1u << 16), boot_state_file.string());
  if (state.mode == BootMode::kLive)
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to upgrade: this system runs live from {}; install it first "
                            "(pok8s-agent install)",
                            state.media_device));
  return state;
}

UpgradeResult upgrade_system(const UpgradeOptions& o) {
  auto log = [&](const std::string& line) {
    if (o.log) o.log(line);
  };
  BootState state = require_installed(o.boot_state_file);
  // A UKI system's images are trusted by the root hashes its signed UKIs carry: a new rootfs
  // comes with new UKIs signed by the factory, from a uki-iso.
  bool uki_system = false;
  for (const auto& p : parse_kernel_cmdline(util::read_file(o.kernel_cmdline, 1u << 16)))
    uki_system = uki_system || p.key == "pok8s.verity";
  const bool uki_source = o.source.starts_with(kUkiIsoScheme);
  if (uki_system && !uki_source)
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to upgrade from {}: this system boots signed UKIs whose "
                            "command line carries its image's dm-verity root hash; upgrade it "
                            "from a uki-iso built with its keys (--source {}FILE)",
                            o.source, kUkiIsoScheme));
  if (uki_source && !uki_system)
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to upgrade from {}: a uki-iso upgrades a system installed "
                            "from one; this system boots with GRUB (upgrade it from an image: "
                            "docker://…, oci:…, oci-archive:…)",
                            o.source));
  UpgradeResult result;
  result.target = o.recovery ? "recovery" : "active";
  std::string_view label = o.recovery ? image::kRecoveryLabel : image::kStateLabel;

  WritableImages part(state, label);
  util::Path images = part.path() / std::string(image::kImagesDir);
  util::Path partial = images / std::string(kPartial);
  // What an interrupted upgrade left behind is not an image anyone boots.
  for (auto name : {kPartial, kTransition})
    if (present(images / std::string(name))) util::remove_tree(images / std::string(name));
  // The blobs go to COS_PERSISTENT when it is mounted, else next to the images; removed after.
  util::Path cache = state.persistent_device.empty()
                         ? part.path() / ".upgrade-cache"
                         : util::Path(std::string(kPersistentMount)) / ".upgrade-cache";
  if (present(cache)) util::remove_tree(cache);

  std::optional<SystemdBootEntries> esp;
  if (uki_system) esp.emplace(state);

  log(fmt::format("Writing {} to {} on {}", o.source, partial.string(), label));
  std::vector<std::string> args = {"write",          o.source,  "--output",
                                   partial.string(), "--cache", cache.string()};
  if (esp) args.insert(args.end(), {"--trust", esp->booted().string()});
  if (!o.tls_verify) args.insert(args.end(), {"--tls-verify", "false"});
  if (!o.authfile.empty()) args.insert(args.end(), {"--authfile", o.authfile});
  if (!o.creds.empty()) args.insert(args.end(), {"--creds", o.creds});
  int status = run_sysimage(o, args);
  if (present(cache)) util::remove_tree(cache);
  if (status != 0) {
    std::uint64_t free = free_bytes(part.path());
    if (present(partial)) util::remove_tree(partial);
    throw Error(ErrorKind::kIo,
                fmt::format("Failed to upgrade from {}: pok8s-sysimage exited with {} (its "
                            "reason is above); {} has {} MiB free; the installed images are "
                            "unchanged",
                            o.source, status, label, free >> 20));
  }

  log("Reading the new image back from the disk");
  drop_cached(partial);
  part.flush();
  if (int v = run_sysimage(o, {"verify", partial.string()}); v != 0) {
    util::remove_tree(partial);
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to upgrade from {}: the image written to {} does not read "
                            "back as written; the installed images are unchanged",
                            o.source, label));
  }
  result.image = read_info(partial / std::string(kImageInfoFile));

  move(partial, images / std::string(kTransition));
  fsync_path(images);
  result.passive_replaced = !o.recovery && state.mode != BootMode::kPassive;
  if (esp) {
    // The UKIs go to the ESP under names systemd-boot ignores first; once the images are
    // rotated they replace the entries. In between, a UKI may name an image that moved:
    // pok8s-init then boots the A/B image whose tree matches its root hash.
    esp->stage(images / std::string(kTransition), result.target);
    if (result.passive_replaced) esp->stage(images / "active", "passive");
  }
  log(result.passive_replaced ? "Swapping in the new active image; the old one becomes passive"
                              : fmt::format("Swapping in the new {} image", result.target));
  rotate_images(images, result.target, result.passive_replaced);
  part.flush();
  if (esp) {
    for (const std::string& line : esp->commit(result.passive_replaced)) log(line);
  }
  if (!o.recovery && !uki_system && arm_new_active(o.grubenv))
    log(fmt::format("GRUB boots the new active image next ({})", o.grubenv.string()));
  return result;
}

std::vector<std::string> bundle_argv(const util::Path& dir, std::string_view binary,
                                     std::vector<std::string> args) {
  // The dynamic loader shipped in the bundle's lib/ (ld-linux-x86-64.so.2 and the like).
  util::Path loader;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir / "lib", ec))
    if (e.path().filename().string().starts_with("ld-linux")) loader = e.path();
  if (loader.empty())
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to run {}: {} has no dynamic loader in lib/ (this image "
                            "predates {}; convert it again)",
                            binary, dir.string(), binary));
  std::vector<std::string> argv = {loader.string(), "--library-path", (dir / "lib").string(),
                                   (dir / std::string(binary)).string()};
  argv.insert(argv.end(), std::make_move_iterator(args.begin()),
              std::make_move_iterator(args.end()));
  return argv;
}

std::vector<std::string> sysimage_argv(const util::Path& sysimage_dir,
                                       std::vector<std::string> args) {
  return bundle_argv(sysimage_dir, kSysimageBinary, std::move(args));
}

}  // namespace pok8s::node
