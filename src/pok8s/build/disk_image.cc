// Disk image assembly: plan the layout (every size checked first), write the GPT, then fill each
// partition of the one image file from a staging tree. Staging links the cached rootfs, kernel
// and initramfs instead of copying them where it can.
#include "pok8s/build/disk_image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <array>
#include <cerrno>
#include <filesystem>

#include "pok8s/boot/grub.h"
#include "pok8s/image/bios_boot.h"
#include "pok8s/image/disk_layout.h"
#include "pok8s/image/ext4.h"
#include "pok8s/image/fat.h"
#include "pok8s/image/gpt.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"

namespace pok8s::build {
namespace {

namespace fs = std::filesystem;

// The cloud-config's name on COS_OEM, where Kairos users look for it.
constexpr const char* kOemConfigName = "90_custom.yaml";

std::uint64_t size_of(const util::Path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) throw_errno("Failed to read " + p.string(), errno);
  return static_cast<std::uint64_t>(st.st_size);
}

void set_time(const util::Path& p, std::int64_t timestamp) {
  struct timespec times[2] = {{timestamp, 0}, {timestamp, 0}};
  if (::utimensat(AT_FDCWD, p.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0)
    throw_errno("Failed to set the time of " + p.string(), errno);
}

// `from` at `to`: a hard link when `linked` and the file systems allow, else a copy. mke2fs -d
// keeps hard links within one file system, so two names of one image are linked only when
// they go to different partitions.
void stage_file(const util::Path& from, const util::Path& to, bool linked, std::int64_t timestamp) {
  util::make_dirs(to.parent_path());
  std::error_code ec;
  if (!linked || (fs::create_hard_link(from, to, ec), ec)) fs::copy_file(from, to);
  // What mke2fs records of the file: mode and times (the owner is the builder's).
  if (::chmod(to.c_str(), 0644) != 0) throw_errno("Failed to stage " + to.string(), errno);
  set_time(to, timestamp);
}

// One system image directory (/cOS/<name>) of a staging tree.
void stage_system_image(const DiskContents& c, const util::Path& root, std::string_view name,
                        bool linked) {
  util::Path dir = root / image::kImagesDir / name;
  stage_file(c.rootfs, dir / image::kRootfsFile, linked, c.timestamp);
  stage_file(c.kernel, dir / image::kKernelFile, linked, c.timestamp);
  stage_file(c.initrd, dir / image::kInitrdFile, linked, c.timestamp);
}

// Directories of a staging tree get a fixed mode and time (files have theirs already).
void pin_directories(const util::Path& root, std::int64_t timestamp) {
  std::vector<util::Path> dirs = {root};
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_directory() && !e.is_symlink()) dirs.push_back(e.path());
  for (const auto& d : dirs) {
    if (::chmod(d.c_str(), 0755) != 0) throw_errno("Failed to stage " + d.string(), errno);
    set_time(d, timestamp);
  }
}

// GRUB's environment block with boot assessment's starting values, written by GRUB's own
// grub-editenv (the host's grub-common) so its format is GRUB's.
void write_grubenv(const util::Path& path, int boot_tries, bool recovery_first = false) {
  std::vector<std::string> set = {"grub-editenv", path.string(), "set"};
  std::string vars = boot::initial_grubenv_vars(boot_tries);
  // A self-expanding disk has no COS_STATE yet: its first boot is the recovery image's.
  if (recovery_first) vars.replace(0, vars.find('\n'), "pok8s_entry=recovery");
  for (std::size_t start = 0; start < vars.size();) {
    std::size_t end = vars.find('\n', start);
    set.push_back(vars.substr(start, end - start));
    start = end + 1;
  }
  for (const auto& args :
       {std::vector<std::string>{"grub-editenv", path.string(), "create"}, set}) {
    auto r = util::run_process(args);
    if (r.status != 0)
      throw Error(ErrorKind::kIo, fmt::format("Failed to write {}: grub-editenv exited with {}: {}",
                                              path.string(), r.status, util::last_line(r.output)));
  }
}

const image::PartitionExtent& extent(const std::vector<image::PartitionExtent>& extents,
                                     std::string_view name) {
  for (const auto& e : extents)
    if (e.name == name) return e;
  throw Error(ErrorKind::kInternal, fmt::format("Failed to write the disk image: no {}", name));
}

void make_ext4(const util::Path& disk, const std::vector<image::PartitionExtent>& extents,
               std::string_view label, const util::Path& tree, const DiskContents& c) {
  const auto& e = extent(extents, label);
  image::Ext4Options o;
  o.label = std::string(label);
  o.uuid = image::derived_uuid(c.seed, fmt::format("{}-fs", label));
  o.offset = e.offset;
  o.size = e.size;
  o.timestamp = c.timestamp;
  image::write_ext4(disk, tree, o);
}

// VHD footer fields (Microsoft's Virtual Hard Disk Image Format Specification): 512 bytes at
// the end of a fixed VHD, big-endian. Hand-written: qemu-img has no option for these two.
constexpr std::size_t kVhdFooter = 512;
constexpr std::size_t kVhdTimestamp = 24;  // seconds since 2000-01-01 00:00:00 UTC
constexpr std::size_t kVhdChecksum = 64;   // ones' complement of the sum of the other bytes
constexpr std::size_t kVhdUniqueId = 68;   // 16 bytes
constexpr std::int64_t kVhdEpoch = 946684800;

void put_be32(std::array<unsigned char, kVhdFooter>& f, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) f[at + i] = static_cast<unsigned char>(v >> (24 - 8 * i));
}

void pin_vhd_footer(const util::Path& vhd, std::int64_t timestamp, std::string_view seed) {
  util::UniqueFd fd = util::open_file(vhd, O_RDWR);
  off_t size = ::lseek(fd.get(), 0, SEEK_END);
  std::array<unsigned char, kVhdFooter> f{};
  if (size < static_cast<off_t>(kVhdFooter) ||
      ::pread(fd.get(), f.data(), f.size(), size - static_cast<off_t>(kVhdFooter)) !=
          static_cast<ssize_t>(f.size()) ||
      std::string_view(reinterpret_cast<const char*>(f.data()), 8) != "conectix")
    throw Error(ErrorKind::kIo,
                fmt::format("Failed to write {}: qemu-img left no VHD footer", vhd.string()));
  put_be32(f, kVhdTimestamp,
           static_cast<std::uint32_t>(std::max<std::int64_t>(timestamp - kVhdEpoch, 0)));
  std::string id = util::sha256_hex(fmt::format("{}/vhd", seed));
  for (std::size_t i = 0; i < 16; ++i)
    f[kVhdUniqueId + i] = static_cast<unsigned char>(std::stoi(id.substr(2 * i, 2), nullptr, 16));
  put_be32(f, kVhdChecksum, 0);
  std::uint32_t sum = 0;
  for (unsigned char b : f) sum += b;
  put_be32(f, kVhdChecksum, ~sum);
  if (::pwrite(fd.get(), f.data(), f.size(), size - static_cast<off_t>(kVhdFooter)) !=
      static_cast<ssize_t>(f.size()))
    throw_errno("Failed to write " + vhd.string(), errno);
}

}  // namespace

image::GptLayout plan_disk_image(const DiskContents& c, const DiskImageOptions& options) {
  const std::uint64_t image_size = size_of(c.rootfs) + size_of(c.kernel) + size_of(c.initrd);
  image::DiskLayoutOptions layout_options;
  layout_options.image_size = image_size;
  layout_options.seed = c.seed;
  layout_options.disk_size = options.size;
  layout_options.expandable = options.expandable;
  layout_options.bios = options.bios;
  if (layout_options.disk_size == 0)
    layout_options.disk_size =
        (2 + (options.bios ? image::kBiosBootMiB : 0) + image::kDefaultGrubMiB +
         image::kDefaultOemMiB + image::partition_mib_for_images(image_size, 1) +
         (options.expandable
              ? 0
              : image::partition_mib_for_images(image_size, 3) + kDefaultPersistentMiB)) *
        image::kMiB;
  boot::initial_grubenv_vars(options.boot_tries);  // checks the count
  return image::plan_disk(layout_options);
}

InstallFiles stage_install_files(const DiskContents& c, const DiskImageOptions& options,
                                 const util::Path& dir) {
  InstallFiles f{dir / "grub.cfg", dir / image::kGrubEnvFile};
  util::make_dirs(dir);
  util::write_file_atomic(f.grub_cfg, boot::disk_grub_config({c.cmdline, 3}));
  write_grubenv(f.grubenv, options.boot_tries);
  for (const auto& p : {f.grub_cfg, f.grubenv}) {
    if (::chmod(p.c_str(), 0644) != 0) throw_errno("Failed to stage " + p.string(), errno);
    set_time(p, c.timestamp);
  }
  return f;
}

void write_disk_image(const DiskContents& c, const DiskImageOptions& options,
                      const util::Path& scratch, const util::Path& out) {
  image::GptLayout layout = plan_disk_image(c, options);
  InstallFiles install = stage_install_files(c, options, scratch / "install");
  util::Path oem = scratch / "oem";
  util::Path recovery = scratch / "recovery";
  util::Path state = scratch / "state";
  if (options.expandable) {
    util::Path env = scratch / "expandable.grubenv";
    write_grubenv(env, options.boot_tries, true);
    stage_file(env, oem / image::kGrubEnvFile, false, c.timestamp);
  } else {
    stage_file(install.grubenv, oem / image::kGrubEnvFile, false, c.timestamp);
  }
  if (c.cloud_config) {
    // It may hold passwords and tokens: readable by root only.
    util::write_file_atomic(oem / kOemConfigName, *c.cloud_config, 0600);
    set_time(oem / kOemConfigName, c.timestamp);
  }
  stage_system_image(c, recovery, "recovery", true);
  if (!options.expandable) {
    stage_system_image(c, state, "active", true);
    stage_system_image(c, state, "passive", false);  // a file of its own: upgrades rename them
  }
  for (const auto& tree : {oem, recovery, state})
    if (!options.expandable || tree != state) pin_directories(tree, c.timestamp);

  util::TempFile disk(out);
  auto extents = image::write_gpt(disk.path(), layout);
  const auto& esp = extent(extents, image::kGrubLabel);
  image::write_fat_partition(
      {{"EFI/BOOT/BOOTX64.EFI", c.grub_efi}, {"grub/grub.cfg", install.grub_cfg}},
      image::kGrubLabel, c.timestamp, disk.path(), esp.offset, esp.size);
  if (options.bios) {
    const auto& bios = extent(extents, image::kBiosBootName);
    image::write_bios_boot(disk.path(), bios.offset, bios.size,
                           util::read_file(c.grub_bios_boot, image::kBiosSector),
                           util::read_file(c.grub_bios_core, image::kMaxCoreImage));
  }
  make_ext4(disk.path(), extents, image::kOemLabel, oem, c);
  make_ext4(disk.path(), extents, image::kRecoveryLabel, recovery, c);
  if (!options.expandable) {
    make_ext4(disk.path(), extents, image::kStateLabel, state, c);
    make_ext4(disk.path(), extents, image::kPersistentLabel, {}, c);
  }
  disk.commit();
}

void convert_disk_image(const util::Path& raw, std::string_view format, const util::Path& out,
                        std::int64_t timestamp, std::string_view seed) {
  std::vector<std::string> args = {"qemu-img", "convert", "-q", "-f", "raw"};
  if (format == "qcow2")
    args.insert(args.end(), {"-O", "qcow2", "-o", "compat=1.1"});
  else if (format == "vhd")
    // Fixed, and exactly the raw image's size (clouds want whole MiB, which it is).
    args.insert(args.end(), {"-O", "vpc", "-o", "subformat=fixed,force_size=on"});
  else
    throw Error(
        ErrorKind::kInvalidInput,
        fmt::format("Failed to convert {}: unknown disk format '{}'", raw.string(), format));
  util::TempFile tmp(out);
  args.push_back(raw.string());
  args.push_back(tmp.path().string());
  auto r = util::run_process(args);
  if (r.status != 0)
    throw Error(ErrorKind::kIo, fmt::format("Failed to write {}: qemu-img exited with {}: {}",
                                            out.string(), r.status, util::last_line(r.output)));
  if (format == "vhd") pin_vhd_footer(tmp.path(), timestamp, seed);
  tmp.commit();
}

}  // namespace pok8s::build
