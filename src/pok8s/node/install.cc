// The installer: the device choice and the plan are pure functions over what was probed, so
// every refusal is decided before a byte is written; the writing drives the image's sfdisk,
// mkfs.vfat and mkfs.ext4 and copies with sendfile(2). Mounts are RAII and undone on failure.
#include "pok8s/node/install.h"

#include <blkid.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <thread>

#include "pok8s/image/bios_boot.h"
#include "pok8s/image/disk_layout.h"
#include "pok8s/node/boot_status.h"
#include "pok8s/node/command.h"
#include "pok8s/node/mounts.h"
#include "pok8s/node/upgrade.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

namespace pok8s::node {
namespace {

namespace fs = std::filesystem;
using util::UniqueFd;

constexpr std::uint64_t kSector = 512;  // /sys/class/block/*/size counts these, always
constexpr std::uint64_t kMaxSysfsBytes = 4096;
constexpr std::uint64_t kMaxProcBytes = 1 << 20;
constexpr auto kPollInterval = std::chrono::milliseconds(100);

std::string mib(std::uint64_t bytes) {
  return fmt::format("{} MiB", bytes / image::kMiB);
}

// "a", "a and b", "a, b and c".
std::string english_list(const std::vector<std::string>& names) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() ? " and " : ", ";
    out += names[i];
  }
  return out;
}

// Why `disk` is not a target for `auto`; "" when it is blank and usable.
std::string why_not_auto(const BlockDevice& d) {
  if (d.boot_media) return "holds the boot medium";
  if (d.read_only) return "is read-only";
  if (d.size == 0) return "is empty (no medium)";
  if (!d.in_use.empty()) return "is in use: " + d.in_use;
  if (!d.content.empty()) return "holds " + d.content;
  return "";
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

// A small sysfs or /proc file, "" when it cannot be read.
std::string read_small(const util::Path& file, std::uint64_t limit = kMaxSysfsBytes) {
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return {};
  std::string out;
  char buf[4096];
  while (out.size() <= limit) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

std::uint64_t read_number(const util::Path& file) {
  std::string s = trim(read_small(file));
  if (s.empty() || s.size() > 20 || !std::all_of(s.begin(), s.end(), ::isdigit)) return 0;
  return std::stoull(s);
}

// What libblkid finds on `device`: "" for nothing, else a phrase for messages.
std::string probe_content(const util::Path& device) {
  struct ProbeDeleter {
    void operator()(blkid_struct_probe* p) const { blkid_free_probe(p); }
  };
  std::unique_ptr<blkid_struct_probe, ProbeDeleter> probe(
      blkid_new_probe_from_filename(device.c_str()));
  if (!probe) return fmt::format("something unreadable ({})", std::strerror(errno));
  blkid_probe_enable_superblocks(probe.get(), 1);
  blkid_probe_set_superblocks_flags(probe.get(), BLKID_SUBLKS_TYPE);
  blkid_probe_enable_partitions(probe.get(), 1);
  blkid_probe_set_partitions_flags(probe.get(), BLKID_PARTS_MAGIC);
  int rc = blkid_do_safeprobe(probe.get());
  if (rc == 1) return "";
  if (rc == -2) return "several signatures (libblkid cannot tell which one holds)";
  if (rc != 0) return "something unreadable (libblkid failed to probe it)";
  const char* value = nullptr;
  if (blkid_probe_lookup_value(probe.get(), "PTTYPE", &value, nullptr) == 0 && value)
    return fmt::format("a {} partition table", value);
  if (blkid_probe_lookup_value(probe.get(), "TYPE", &value, nullptr) == 0 && value)
    return fmt::format("a{} {} file system", std::strchr("aeiou", value[0]) ? "n" : "", value);
  return "a signature libblkid found";
}

// Device names used as swap, from /proc/swaps ("/dev/vda2 partition ...").
std::vector<std::string> swap_devices(const util::Path& swaps) {
  std::vector<std::string> out;
  std::string text = read_small(swaps, kMaxProcBytes);
  std::size_t start = text.find('\n');  // the header line
  while (start != std::string::npos && start + 1 < text.size()) {
    std::size_t end = text.find('\n', start + 1);
    std::string line = text.substr(start + 1, end == std::string::npos ? end : end - start - 1);
    std::string first = line.substr(0, line.find_first_of(" \t"));
    if (!first.empty()) out.push_back(util::Path(first).filename().string());
    start = end;
  }
  return out;
}

std::string first_holder(const util::Path& holders_dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(holders_dir, ec)) return e.path().filename().string();
  return "";
}

// Copies directories and regular files below `from` into `to` (made if missing). The medium
// holds nothing else; anything else is refused rather than skipped.
void copy_tree(const util::Path& from, const util::Path& to) {
  util::make_dirs(to);
  std::vector<fs::directory_entry> entries;
  for (const auto& e : fs::directory_iterator(from)) entries.push_back(e);
  std::sort(entries.begin(), entries.end());
  for (const auto& e : entries) {
    util::Path target = to / e.path().filename();
    if (e.is_symlink())
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to copy {}: a symlink on the medium", e.path().string()));
    if (e.is_directory())
      copy_tree(e.path(), target);
    else if (e.is_regular_file())
      copy_file(e.path(), target, 0644);
    else
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to copy {}: not a file or directory", e.path().string()));
  }
  fsync_path(to);
}

// One system image directory: /cOS/<name>/{rootfs.img,vmlinuz,initrd}.
void copy_system_image(const InstallMedia& media, const util::Path& root, std::string_view name) {
  util::Path dir = root / image::kImagesDir / name;
  util::make_dirs(dir);
  copy_file(media.rootfs, dir / image::kRootfsFile, 0644);
  if (media.uki) {
    // Each image keeps its UKIs (its root hash is on their command lines): an upgrade that
    // turns this active image into the passive one puts its passive UKI on the ESP.
    for (const auto& e : fs::directory_iterator(media.efi_dir / "Linux"))
      if (!installed_uki_mode(e.path().filename().string()).empty())
        copy_file(e.path(), dir / e.path().filename(), 0644);
  } else {
    copy_file(media.kernel, dir / image::kKernelFile, 0644);
    copy_file(media.initrd, dir / image::kInitrdFile, 0644);
  }
  fsync_path(dir);
  fsync_path(dir.parent_path());
}

// The /dev paths of the partitions of `disk` numbered 1..count, from sysfs (the kernel names
// them: vda1, nvme0n1p1, mmcblk0p1); nullopt until all are there with their device nodes.
std::optional<std::vector<util::Path>> find_partitions(const BlockProbePaths& paths,
                                                       const util::Path& disk, std::size_t count) {
  std::vector<util::Path> out(count);
  std::error_code ec;
  util::Path dir = paths.sys_class_block / disk.filename();
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::uint64_t n = read_number(e.path() / "partition");
    if (n >= 1 && n <= count) out[n - 1] = paths.dev / e.path().filename();
  }
  for (const auto& p : out) {
    struct stat st {};
    if (p.empty() || ::stat(p.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) return std::nullopt;
  }
  return out;
}

std::vector<util::Path> wait_for_partitions(const BlockProbePaths& paths, const util::Path& disk,
                                            std::size_t count) {
  // udev makes the links and runs its rules; the nodes themselves come from devtmpfs.
  if (!find_program("udevadm").empty())
    util::run_process({"udevadm", "settle", fmt::format("--timeout={}", kPartitionWaitSeconds)});
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kPartitionWaitSeconds);
  while (true) {
    if (auto found = find_partitions(paths, disk, count)) return *found;
    if (std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(kPollInterval);
  }
  throw Error(ErrorKind::kIo,
              fmt::format("Failed to install to {}: its {} partitions did not appear within {} "
                          "seconds of partitioning",
                          disk.string(), count, kPartitionWaitSeconds));
}

std::uint64_t size_of(const util::Path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) throw_errno("Failed to read " + p.string(), errno);
  return static_cast<std::uint64_t>(st.st_size);
}

// The medium's device as "MAJOR:MINOR", "" when `dir` cannot be read.
std::string device_number_of(const util::Path& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return "";
  return fmt::format("{}:{}", major(st.st_dev), minor(st.st_dev));
}

std::optional<BootState> read_boot_state(const util::Path& file) {
  if (::access(file.c_str(), F_OK) != 0) return std::nullopt;
  return parse_boot_state(util::read_file(file, 64 << 10), file.string());
}

}  // namespace

// "MAJOR:MINOR" -> mount point, from /proc/self/mountinfo (field 3 is the device, 5 the mount
// point, octal-escaped).
std::map<std::string, std::string> mounted_devices(const util::Path& mountinfo) {
  std::map<std::string, std::string> out;
  std::string text = read_small(mountinfo, kMaxProcBytes);
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    start = end + 1;
    std::vector<std::string_view> fields;
    std::size_t pos = 0;
    while (pos < line.size() && fields.size() < 5) {
      std::size_t sp = line.find(' ', pos);
      if (sp == std::string_view::npos) sp = line.size();
      fields.push_back(line.substr(pos, sp - pos));
      pos = sp + 1;
    }
    if (fields.size() < 5) continue;
    // Spaces and the like in a mount point are written as three octal digits after a backslash.
    std::string point;
    std::string_view raw = fields[4];
    for (std::size_t i = 0; i < raw.size(); ++i) {
      auto octal = [&](std::size_t k) { return raw[k] >= '0' && raw[k] <= '7'; };
      if (raw[i] == '\\' && i + 3 < raw.size() && octal(i + 1) && octal(i + 2) && octal(i + 3)) {
        point += static_cast<char>((raw[i + 1] - '0') * 64 + (raw[i + 2] - '0') * 8 +
                                   (raw[i + 3] - '0'));
        i += 3;
      } else {
        point += raw[i];
      }
    }
    out.emplace(std::string(fields[2]), point);
  }
  return out;
}

BlockKind block_kind_by_name(std::string_view name) {
  for (std::string_view prefix : {"loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd", "zd"})
    if (name.starts_with(prefix)) return BlockKind::kOther;
  // eMMC hardware partitions: boot areas and the replay-protected block, never the user area.
  if (name.starts_with("mmcblk") &&
      (name.find("boot") != std::string_view::npos || name.ends_with("rpmb")))
    return BlockKind::kOther;
  return BlockKind::kDisk;
}

BlockDevice choose_install_device(std::string_view setting, std::string_view where,
                                  std::span<const BlockDevice> devices) {
  if (setting != "auto") {
    auto it = std::find_if(devices.begin(), devices.end(),
                           [&](const BlockDevice& d) { return d.device == setting; });
    auto refuse = [&](const std::string& why) {
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to install to {} ({}): {}", setting, where, why));
    };
    if (it == devices.end()) refuse("no such block device");
    if (it->kind == BlockKind::kPartition) refuse("it is a partition, not a whole disk");
    if (it->kind == BlockKind::kOther)
      refuse("it is not a disk (loop, RAM, optical and virtual devices are not install targets)");
    if (it->boot_media) refuse("it holds the boot medium");
    if (!it->in_use.empty()) refuse("it is in use: " + it->in_use);
    if (it->read_only) refuse("it is read-only");
    if (it->size == 0) refuse("it is empty (no medium)");
    return *it;
  }
  std::vector<const BlockDevice*> blank;
  std::vector<std::string> not_taken;
  for (const auto& d : devices) {
    if (d.kind != BlockKind::kDisk) continue;
    std::string why = why_not_auto(d);
    if (why.empty())
      blank.push_back(&d);
    else
      not_taken.push_back(fmt::format("{} {}", d.device.string(), why));
  }
  if (blank.size() == 1) return *blank.front();
  std::string prefix = "Failed to choose the disk to install to: ";
  std::string set = fmt::format("set install.device or --device ({})", where);
  if (blank.size() > 1) {
    std::vector<std::string> names;
    for (const auto* d : blank) names.push_back(d->device.string());
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("{}{} are {} blank: {}", prefix, english_list(names),
                            blank.size() == 2 ? "both" : "all", set));
  }
  if (not_taken.empty()) throw Error(ErrorKind::kInvalidInput, prefix + "there are no disks");
  std::string list;
  for (const auto& n : not_taken) list += (list.empty() ? "" : "; ") + n;
  throw Error(ErrorKind::kInvalidInput, fmt::format("{}no blank disk ({}): {}", prefix, list, set));
}

std::vector<BlockDevice> probe_block_devices(const std::vector<std::string>& boot_media,
                                             const BlockProbePaths& paths) {
  struct Entry {
    std::string name, dev, parent;  // parent: the disk of a partition
    BlockKind kind;
  };
  std::vector<Entry> entries;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(paths.sys_class_block, ec)) {
    std::string name = e.path().filename().string();
    Entry entry{name, trim(read_small(e.path() / "dev")), "", block_kind_by_name(name)};
    if (fs::exists(e.path() / "partition")) {
      entry.kind = BlockKind::kPartition;
      std::error_code link_ec;  // sysfs links a partition from inside its disk's directory
      entry.parent = fs::canonical(e.path(), link_ec).parent_path().filename().string();
    }
    entries.push_back(std::move(entry));
  }
  if (ec)
    throw Error(ErrorKind::kIo, fmt::format("Failed to list the block devices in {}: {}",
                                            paths.sys_class_block.string(), ec.message()));
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.name < b.name; });

  // The disks holding the boot medium (a partition's disk counts).
  std::vector<std::string> media_disks;
  for (const auto& hint : boot_media) {
    for (const auto& e : entries) {
      if (hint != e.dev && util::Path(hint).filename() != e.name) continue;
      media_disks.push_back(e.kind == BlockKind::kPartition ? e.parent : e.name);
    }
  }
  auto mounts = mounted_devices(paths.mountinfo);
  auto swaps = swap_devices(paths.swaps);
  auto why_busy = [&](const Entry& e) -> std::string {
    std::string dev = (paths.dev / e.name).string();
    if (auto it = mounts.find(e.dev); !e.dev.empty() && it != mounts.end())
      return fmt::format("{} is mounted on {}", dev, it->second);
    if (std::find(swaps.begin(), swaps.end(), e.name) != swaps.end())
      return fmt::format("{} is used as swap", dev);
    if (auto holder = first_holder(paths.sys_class_block / e.name / "holders"); !holder.empty())
      return fmt::format("{} is held by {}", dev, holder);
    return "";
  };

  std::vector<BlockDevice> out;
  for (const auto& e : entries) {
    BlockDevice d;
    d.device = paths.dev / e.name;
    d.kind = e.kind;
    util::Path sys = paths.sys_class_block / e.name;
    d.size = read_number(sys / "size") * kSector;
    d.read_only = read_number(sys / "ro") != 0;
    if (e.kind == BlockKind::kDisk) {
      d.boot_media = std::find(media_disks.begin(), media_disks.end(), e.name) != media_disks.end();
      d.in_use = why_busy(e);
      for (const auto& p : entries)
        if (d.in_use.empty() && p.kind == BlockKind::kPartition && p.parent == e.name)
          d.in_use = why_busy(p);
      if (d.size > 0) d.content = probe_content(d.device);
    }
    out.push_back(std::move(d));
  }
  return out;
}

InstallMedia find_install_media(const util::Path& media) {
  auto missing = [&](const util::Path& p) {
    return Error(ErrorKind::kNotFound,
                 fmt::format("Failed to find the installer's files: no {} (is {} a pok8s live "
                             "medium?)",
                             p.string(), media.string()));
  };
  InstallMedia m;
  m.rootfs = media / "rootfs.squashfs";
  m.efi_dir = media / "install/EFI";
  m.uki = ::access((media / "install/EFI/Linux").c_str(), R_OK) == 0;
  if (m.uki) {
    m.grub_dir = media / "install/loader";
    for (const auto& p : {m.rootfs, m.efi_dir / "BOOT/BOOTX64.EFI", m.grub_dir / "loader.conf"})
      if (::access(p.c_str(), R_OK) != 0) throw missing(p);
    bool active = false;
    for (const auto& e : fs::directory_iterator(m.efi_dir / "Linux"))
      active = active || e.path().filename().string().starts_with("pok8s-active");
    if (!active) throw missing(m.efi_dir / "Linux/pok8s-active.efi");
  } else {
    m.kernel = media / "boot/kernel";
    m.initrd = media / "boot/initrd";
    m.grub_dir = media / "install/grub";
    m.grubenv = media / "install/grubenv";
    for (const auto& p : {m.kernel, m.initrd, m.rootfs, m.efi_dir, m.grub_dir, m.grubenv})
      if (::access(p.c_str(), R_OK) != 0) throw missing(p);
    util::Path core = media / "install/bios/core.img";
    util::Path boot = media / "install/bios/boot.img";
    if (::access(core.c_str(), R_OK) == 0 && ::access(boot.c_str(), R_OK) == 0) {
      m.bios_core = core;
      m.bios_boot = boot;
    }
  }
  if (util::Path c = media / kMediaConfigFile; ::access(c.c_str(), R_OK) == 0) m.config = c;
  m.image_size = size_of(m.rootfs);
  if (!m.uki) m.image_size += size_of(m.kernel) + size_of(m.initrd);
  if (m.uki)  // each image keeps its UKIs next to its rootfs (copy_system_image)
    for (const auto& e : fs::directory_iterator(m.efi_dir / "Linux"))
      if (!installed_uki_mode(e.path().filename().string()).empty())
        m.image_size += size_of(e.path());
  for (const auto& e : fs::recursive_directory_iterator(m.efi_dir))
    if (e.is_regular_file()) m.efi_size += e.file_size();
  return m;
}

image::GptLayout plan_install(const config::InstallConfig& config, const BlockDevice& disk,
                              std::uint64_t image_size, bool bios, std::uint64_t efi_size) {
  image::DiskLayoutOptions o;
  o.bios = bios;
  // GPT and sfdisk work in whole MiB here; what is left of the last MiB is not used.
  o.disk_size = disk.size / image::kMiB * image::kMiB;
  o.image_size = image_size;
  o.disk_name = disk.device.string();
  // FAT's own tables and directories: a few MiB at these sizes.
  constexpr std::uint64_t kFatOverheadMiB = 8;
  o.grub_mib = std::max(image::kDefaultGrubMiB,
                        (2 * efi_size + image::kMiB - 1) / image::kMiB + kFatOverheadMiB);
  o.oem_mib = config.oem_mib;
  o.recovery_mib = config.recovery_mib;
  o.state_mib = config.state_mib;
  o.persistent_mib = config.persistent_mib;
  return image::plan_partitions(o);
}

bool wants_bios_boot(const config::InstallConfig& config, const util::Path& efi_firmware) {
  if (!config.firmware.empty()) return config.firmware == "bios";
  return ::access(efi_firmware.c_str(), F_OK) != 0;
}

std::string sfdisk_script(const image::GptLayout& layout) {
  std::string script = "label: gpt\n";
  for (const auto& p : layout.partitions) {
    if (p.size != 0) script += fmt::format("size={}MiB, ", p.size / image::kMiB);
    script += fmt::format("type={}, name=\"{}\"", p.type, p.name);
    if (p.legacy_bios_bootable) script += ", attrs=\"LegacyBIOSBootable\"";
    script += "\n";
  }
  return script;
}

std::string layout_summary(const image::GptLayout& layout) {
  std::string out;
  for (const auto& p : layout.partitions)
    out += fmt::format("{}{} {}", out.empty() ? "" : ", ", p.name,
                       p.size == 0 ? std::string("the rest") : mib(p.size));
  return out;
}

std::optional<std::string> why_no_auto_install(const std::optional<BootState>& boot_state,
                                               const config::InstallConfig& config) {
  if (!boot_state) return fmt::format("no {}: not booted by pok8s-init", kBootStateFile);
  if (boot_state->mode != BootMode::kLive)
    return fmt::format("this is not a live boot (mode {})", boot_mode_name(boot_state->mode));
  if (!config.auto_install) return std::string("the cloud-config does not set install.auto: true");
  return std::nullopt;
}

InstallOutcome run_install(const InstallRequest& request,
                           std::span<const config::CloudConfig> configs,
                           const config::InstallConfig& config) {
  InstallOutcome outcome;
  auto say = [&](std::string_view step, std::string message) {
    if (request.sink) request.sink({std::string(step), std::move(message)});
  };
  std::optional<BootState> boot_state = read_boot_state(request.boot_state);
  if (request.auto_from_config) {
    if (auto why = why_no_auto_install(boot_state, config)) {
      outcome.not_installed_because = *why;
      return outcome;
    }
  }
  if (request.config_files.size() > kMaxInstallConfigFiles)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to install: {} --config files, more than the {} COS_OEM takes",
                            request.config_files.size(), kMaxInstallConfigFiles));

  // Everything that can refuse comes first: nothing is written until the plan stands.
  InstallMedia media = find_install_media(request.media);
  std::vector<std::string> boot_media;
  if (boot_state && !boot_state->media_device.empty())
    boot_media.push_back(boot_state->media_device);
  if (auto dev = device_number_of(request.media); !dev.empty()) boot_media.push_back(dev);
  // At boot, udev may still be loading the disks' drivers and making their nodes.
  if (!find_program("udevadm").empty()) util::run_process({"udevadm", "settle", "--timeout=30"});
  std::vector<BlockDevice> devices = probe_block_devices(boot_media, request.probe_paths);
  std::string setting = request.device.empty() ? config.device : request.device;
  std::string where = !request.device.empty()        ? std::string("--device")
                      : config.device_origin.empty() ? std::string("the default install.device")
                                                     : "install.device in " + config.device_origin;
  if (setting != "auto") {
    std::error_code ec;
    util::Path resolved = fs::canonical(setting, ec);
    if (ec)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to install to {} ({}): {}", setting, where, ec.message()));
    setting = resolved.string();
  }
  BlockDevice disk = choose_install_device(setting, where, devices);
  const bool bios = wants_bios_boot(config, request.efi_firmware);
  if (bios && media.uki)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to install for BIOS firmware: {} is a uki-iso, whose signed "
                            "UKIs boot by UEFI only",
                            request.media.string()));
  if (bios && !media.bios_core)
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to install for BIOS firmware: {} has no install/bios/core.img "
                            "(build the ISO with this pok8s)",
                            request.media.string()));
  // Encryption: COS_OEM and COS_PERSISTENT become LUKS2 through pok8s-luks (libcryptsetup and
  // tpm2-tss are shared libraries; this agent is static).
  const bool encrypt = config.encryption != "none";
  util::Path key_uki;
  if (encrypt) {
    std::string where = config.encryption_origin.empty()
                            ? "install.encryption"
                            : "install.encryption in " + config.encryption_origin;
    if (config.encryption == "tpm") {
      if (!media.uki)
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to install with encryption: tpm ({}): {} is not a "
                                "uki-iso, and the disk key is sealed to its signed UKIs' PCR "
                                "policy (use encryption: passphrase)",
                                where, request.media.string()));
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(media.efi_dir / "Linux", ec))
        if (e.path().extension() == ".efi" && (key_uki.empty() || e.path() < key_uki))
          key_uki = e.path();
      if (key_uki.empty())
        throw Error(ErrorKind::kNotFound,
                    fmt::format("Failed to install with encryption: tpm ({}): no UKI in {}", where,
                                (media.efi_dir / "Linux").string()));
    }
    bundle_argv(request.luks_dir, kLuksBinary, {});  // refuses an image without pok8s-luks
  }
  image::GptLayout layout = plan_install(config, disk, media.image_size, bios, media.efi_size);
  say("device", fmt::format("installing to {} ({}{})", disk.device.string(), mib(disk.size),
                            disk.content.empty() ? ", blank" : ", holding " + disk.content));
  say("plan", fmt::format("{} for a system image of {}", layout_summary(layout),
                          mib(media.image_size + image::kMiB - 1)));
  outcome.device = disk.device;
  outcome.after = request.after     ? *request.after
                  : config.reboot   ? AfterInstall::kReboot
                  : config.poweroff ? AfterInstall::kPowerOff
                                    : AfterInstall::kNothing;
  for (const char* tool : {"sfdisk", "mkfs.vfat", "mkfs.ext4"})
    if (find_program(tool).empty())
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to install: {} is not installed (not found in PATH)", tool));

  StageContext stage_context;
  stage_context.sink = request.stage_sink;
  outcome.before_install = run_stage("before-install", configs, stage_context);

  WorkDir work(request.work_dir);
  util::Path script = work.path() / "sfdisk.script";
  util::write_file_atomic(script, sfdisk_script(layout));
  struct RemoveScript {
    util::Path path;
    ~RemoveScript() { ::unlink(path.c_str()); }
  } remove_script{script};
  say("partition", fmt::format("writing a GPT to {} with sfdisk", disk.device.string()));
  util::ProcessOptions sfdisk_options;
  sfdisk_options.stdin_file = script.string();
  run_tool(
      {"sfdisk", "--lock", "--wipe", "always", "--wipe-partitions", "always", disk.device.string()},
      "partition " + disk.device.string(), sfdisk_options);
  std::vector<util::Path> parts =
      wait_for_partitions(request.probe_paths, disk.device, layout.partitions.size());

  std::map<std::string, util::Path> by_label;
  for (std::size_t i = 0; i < parts.size(); ++i) by_label[layout.partitions[i].name] = parts[i];

  // Closes the LUKS2 volumes on every way out, so the disk is left as on a power-off.
  struct CloseVolumes {
    std::vector<std::string> argv;
    ~CloseVolumes() {
      if (!argv.empty()) util::run_process(argv);
    }
  } close_volumes;
  if (encrypt) {
    const std::string labels[] = {std::string(image::kOemLabel),
                                  std::string(image::kPersistentLabel)};
    std::vector<std::string> args = {"format",
                                     "--mode",
                                     config.encryption,
                                     "--open",
                                     "--recovery-key-file",
                                     (work.path() / "recovery-key").string()};
    util::Path passphrase_file = work.path() / "passphrase";
    struct RemoveFiles {
      std::vector<util::Path> paths;
      ~RemoveFiles() {
        for (const auto& p : paths) ::unlink(p.c_str());
      }
    } remove_files{{passphrase_file, work.path() / "recovery-key"}};
    if (config.encryption == "tpm") {
      args.insert(args.end(), {"--uki", key_uki.string()});
      say("encrypt", fmt::format("making {} and {} LUKS2, their key sealed to the TPM against "
                                 "the PCR 11 policy signed by {}'s .pcrpkey and PCR 7",
                                 labels[0], labels[1], key_uki.filename().string()));
    } else {
      util::write_file_atomic(passphrase_file, config.passphrase, 0600);
      args.insert(args.end(), {"--passphrase-file", passphrase_file.string()});
      say("encrypt",
          fmt::format("making {} and {} LUKS2, opened by the passphrase", labels[0], labels[1]));
    }
    for (const auto& label : labels) args.push_back(by_label.at(label).string() + "=" + label);
    std::vector<std::string> argv = bundle_argv(request.luks_dir, kLuksBinary, args);
    close_volumes.argv =
        bundle_argv(request.luks_dir, kLuksBinary, {"close", labels[0], labels[1]});
    run_tool(argv, "encrypt " + labels[0] + " and " + labels[1]);
    std::string key = util::read_file(work.path() / "recovery-key", 1024);
    while (!key.empty() && key.back() == '\n') key.pop_back();
    outcome.recovery_key = key;
    for (const auto& label : labels) by_label[label] = util::Path("/dev/mapper") / label;
  }

  for (std::size_t i = 0; i < parts.size(); ++i) {
    const std::string& label = layout.partitions[i].name;
    const util::Path& part = by_label.at(label);
    if (label == image::kBiosBootName) {
      // No file system: GRUB's core image goes there raw, below.
    } else if (label == image::kGrubLabel) {
      say("format",
          fmt::format("making a FAT file system labelled {} on {}", label, part.string()));
      run_tool({"mkfs.vfat", "-n", label, part.string()}, "format " + part.string());
    } else {
      say("format",
          fmt::format("making an ext4 file system labelled {} on {}", label, part.string()));
      // metadata_csum_seed is an incompatible feature GRUB 2.06 cannot read; newer mke2fs
      // turn it on by default.
      run_tool({"mkfs.ext4", "-F", "-q", "-L", label, "-O", "^metadata_csum_seed", part.string()},
               "format " + part.string());
    }
  }

  {
    Mounted esp(by_label.at(std::string(image::kGrubLabel)), "vfat", work.path() / "grub");
    Mounted oem(by_label.at(std::string(image::kOemLabel)), "ext4", work.path() / "oem");
    Mounted recovery(by_label.at(std::string(image::kRecoveryLabel)), "ext4",
                     work.path() / "recovery");
    Mounted state(by_label.at(std::string(image::kStateLabel)), "ext4", work.path() / "state");

    say("copy",
        fmt::format("copying {} to {}", media.uki ? "systemd-boot and the signed UKIs" : "GRUB",
                    image::kGrubLabel));
    copy_tree(media.efi_dir, esp.path() / "EFI");
    copy_tree(media.grub_dir, esp.path() / (media.uki ? "loader" : "grub"));
    fsync_path(esp.path());

    std::size_t configs_copied = 0;
    // systemd-boot counts the tries in the UKIs' file names instead.
    if (!media.uki) copy_file(media.grubenv, oem.path() / image::kGrubEnvFile, 0644);
    // They may hold passwords and tokens: readable by root only.
    if (media.config) {
      copy_file(*media.config, oem.path() / kOemConfigFile, 0600);
      ++configs_copied;
    }
    for (std::size_t i = 0; i < request.config_files.size(); ++i) {
      const auto& file = request.config_files[i];
      copy_file(file, oem.path() / fmt::format("{}_{}.yaml", 91 + i, file.stem().string()), 0600);
      ++configs_copied;
    }
    fsync_path(oem.path());
    say("copy", fmt::format("copied {}{} cloud-config{} to {}", media.uki ? "" : "grubenv and ",
                            configs_copied, configs_copied == 1 ? "" : "s", image::kOemLabel));

    say("copy", fmt::format("copying the recovery image to {}", image::kRecoveryLabel));
    copy_system_image(media, recovery.path(), "recovery");
    say("copy", fmt::format("copying the active and passive images to {}", image::kStateLabel));
    copy_system_image(media, state.path(), "active");
    copy_system_image(media, state.path(), "passive");

    for (Mounted* m : {&state, &recovery, &oem, &esp}) m->unmount();
  }
  if (bios) {
    const util::Path& part = by_label.at(image::kBiosBootName);
    util::Path sys = request.probe_paths.sys_class_block / part.filename();
    say("bootloader", fmt::format("writing GRUB's BIOS boot code to {} and {}",
                                  disk.device.string(), part.string()));
    image::write_bios_boot(disk.device, read_number(sys / "start") * kSector,
                           read_number(sys / "size") * kSector,
                           util::read_file(*media.bios_boot, image::kBiosSector),
                           util::read_file(*media.bios_core, image::kMaxCoreImage));
  }
  ::sync();
  say("sync", fmt::format("wrote and unmounted every partition of {}", disk.device.string()));

  outcome.after_install = run_stage("after-install", configs, stage_context);
  outcome.installed = true;
  say("done", fmt::format("installed to {}", disk.device.string()));
  return outcome;
}

void finish_install(AfterInstall after) {
  if (after == AfterInstall::kNothing) return;
  ::sync();
  bool reboot = after == AfterInstall::kReboot;
  std::string verb = reboot ? "reboot" : "poweroff";
  // systemd: queue the job and return, so the unit that installed ends cleanly.
  std::vector<std::string> args = {verb};
  if (::access("/run/systemd/system", F_OK) == 0) args = {"systemctl", "--no-block", verb};
  run_tool(args, reboot ? "reboot" : "power off");
}

}  // namespace pok8s::node
