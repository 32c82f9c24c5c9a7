// pok8s-init: the plan (pure functions) and the few syscalls that carry it out as PID 1.
#include "pok8s/node/init.h"

#include "pok8s/node/dm_verity.h"
#include "pok8s/node/netboot.h"
#include "pok8s/node/upgrade.h"

#include <blkid.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>

#include "pok8s/config/cloud_config.h"
#include "pok8s/image/disk_layout.h"
#include "pok8s/util/error.h"

namespace pok8s::node {
namespace {

using util::UniqueFd;

// How long a failed boot leaves its message on the screen before rebooting.
constexpr auto kRebootPause = std::chrono::seconds(30);
// How often the block devices are scanned while waiting for the media.
constexpr auto kMediaPollInterval = std::chrono::milliseconds(250);
constexpr std::uint64_t kMaxLoadListBytes = 1 << 20;

std::string sysroot_path(std::string_view rel) {
  return fmt::format("{}/{}", kSysroot, rel);
}

// "usr/local" -> "usr-local": one directory per overlay under kOverlayRoot.
std::string overlay_name(std::string_view dir) {
  std::string name(dir);
  std::replace(name.begin(), name.end(), '/', '-');
  return name;
}

// Reads a file to its end: /proc files report a size of 0, so util::read_file's fstat-sized
// read would return nothing.
std::string read_to_end(const std::string& path, std::size_t limit) {
  UniqueFd fd = util::open_file(path, O_RDONLY);
  std::string out;
  char buf[4096];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("Failed to read " + path, errno);
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() > limit)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read {}: more than {} bytes", path, limit));
  }
  return out;
}

bool is_plain_absolute(std::string_view path) {
  if (!path.starts_with('/')) return false;
  std::string_view rest = path.substr(1);
  while (!rest.empty()) {
    auto slash = rest.find('/');
    auto comp = rest.substr(0, slash);
    if (comp == "..") return false;
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  return true;
}

}  // namespace

std::vector<MountStep> early_mounts() {
  return {
      {"the proc file system",
       "proc",
       "/proc",
       "proc",
       MS_NOSUID | MS_NODEV | MS_NOEXEC,
       "",
       {},
       ""},
      {"the sysfs file system",
       "sysfs",
       "/sys",
       "sysfs",
       MS_NOSUID | MS_NODEV | MS_NOEXEC,
       "",
       {},
       ""},
      {"the devtmpfs file system", "devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", {}, ""},
      {"the tmpfs on /run", "tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", {}, ""},
  };
}

std::string image_file_on_media(const BootOptions& options) {
  std::string path = options.image_path;
  if (!path.starts_with('/')) path.insert(0, "/");
  if (!is_plain_absolute(path) || path == "/")
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to find the image: pok8s.image={} is not a file on the media",
                            options.image_path));
  return std::string(kMediaMount) + path;
}

std::optional<std::string> other_ab_image(std::string_view image_path) {
  for (auto [from, to] : {std::pair{"active", "passive"}, std::pair{"passive", "active"}}) {
    std::string path = fmt::format("/{}/{}/{}", image::kImagesDir, from, image::kRootfsFile);
    if (image_path == path || image_path == path.substr(1))
      return fmt::format("/{}/{}/{}", image::kImagesDir, to, image::kRootfsFile);
  }
  return std::nullopt;
}

std::vector<MountStep> overlay_mounts(
    const std::function<bool(std::string_view)>& sysroot_has_dir) {
  std::vector<MountStep> steps;
  steps.push_back({"the tmpfs for the overlays",
                   "tmpfs",
                   std::string(kOverlayRoot),
                   "tmpfs",
                   MS_NOSUID | MS_NODEV,
                   "mode=0755",
                   {},
                   ""});
  for (std::string_view dir : kOverlayDirs) {
    if (!sysroot_has_dir(dir)) continue;
    std::string base = fmt::format("{}/{}", kOverlayRoot, overlay_name(dir));
    std::string target = sysroot_path(dir);
    steps.push_back(
        {fmt::format("the overlay on /{}", dir),
         "overlay",
         target,
         "overlay",
         MS_NOSUID | MS_NODEV,
         fmt::format("lowerdir={},upperdir={}/upper,workdir={}/work", target, base, base),
         {base + "/upper", base + "/work"},
         target});
  }
  steps.push_back({"the tmpfs on /tmp",
                   "tmpfs",
                   sysroot_path("tmp"),
                   "tmpfs",
                   MS_NOSUID | MS_NODEV,
                   "mode=1777",
                   {},
                   ""});
  return steps;
}

std::vector<MountStep> move_mounts() {
  std::vector<MountStep> steps;
  for (std::string_view dir : {"dev", "proc", "sys", "run"})
    steps.push_back({fmt::format("/{} into the image", dir),
                     fmt::format("/{}", dir),
                     sysroot_path(dir),
                     "",
                     MS_MOVE,
                     "",
                     {},
                     ""});
  return steps;
}

std::string persistent_state_dir(std::string_view dir) {
  return ".state/" + overlay_name(dir);
}

std::vector<MountStep> persistent_mounts() {
  std::vector<MountStep> steps;
  for (std::string_view dir : kPersistentDirs)
    steps.push_back({fmt::format("the persistent /{}", dir),
                     fmt::format("{}/{}", kPersistentMount, persistent_state_dir(dir)),
                     sysroot_path(dir),
                     "none",
                     MS_BIND,
                     "",
                     {},
                     ""});
  return steps;
}

LayoutPaths parse_layout_env(std::string_view text) {
  LayoutPaths out;
  auto covered = [&](std::string_view dir) {
    for (std::string_view p : kPersistentDirs)
      if (dir == p || dir.starts_with(std::string(p) + "/") ||
          p.starts_with(std::string(dir) + "/"))
        return true;
    return false;
  };
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    auto eq = line.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view key = line.substr(0, eq);
    if (key.starts_with("export ")) key.remove_prefix(7);
    if (key != "CUSTOM_BIND_MOUNTS" && key != "PERSISTENT_STATE_PATHS") continue;
    std::string_view value = line.substr(eq + 1);
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') &&
        value.back() == value.front())
      value = value.substr(1, value.size() - 2);
    std::size_t at = 0;
    while (at < value.size()) {
      std::size_t next = value.find_first_of(" \t", at);
      if (next == std::string_view::npos) next = value.size();
      std::string path(value.substr(at, next - at));
      at = next + 1;
      if (path.empty()) continue;
      while (path.size() > 1 && path.back() == '/') path.pop_back();
      auto refuse = [&](std::string_view why) {
        out.refused.push_back(fmt::format("{}: {}", path, why));
      };
      if (path.front() != '/') {
        refuse("not an absolute path");
        continue;
      }
      std::string dir = path.substr(1);
      bool bad_part = dir.empty();
      for (std::size_t p = 0; p <= dir.size() && !bad_part;) {
        std::size_t q = dir.find('/', p);
        if (q == std::string::npos) q = dir.size();
        std::string_view part(dir.data() + p, q - p);
        if (part.empty() || part == "." || part == "..") bad_part = true;
        p = q + 1;
      }
      if (bad_part) {
        refuse("/, empty, . and .. parts are not allowed");
        continue;
      }
      bool system = false;
      for (std::string_view top : {"proc", "sys", "dev", "run", "tmp", "oem"})
        if (dir == top || dir.starts_with(std::string(top) + "/")) system = true;
      if (system || dir == "etc" || dir == "var" || dir == "usr") {
        refuse("a system directory");
        continue;
      }
      if (covered(dir)) {
        refuse("in or above a path that is already persistent");
        continue;
      }
      if (std::find(out.dirs.begin(), out.dirs.end(), dir) == out.dirs.end())
        out.dirs.push_back(dir);
    }
  }
  return out;
}

std::string boot_state_text(const BootState& state) {
  // Values come from the command line and /sys: one line each, whatever they hold.
  auto one_line = [](std::string v) {
    std::replace(v.begin(), v.end(), '\n', ' ');
    return v;
  };
  return fmt::format(
      "mode={}\nmedia_label={}\nmedia_device={}\nimage={}\noem_device={}\npersistent_device={}\n",
      boot_mode_name(state.mode), one_line(state.media_label), one_line(state.media_device),
      one_line(state.image), one_line(state.oem_device), one_line(state.persistent_device));
}

std::vector<std::string> parse_module_load_list(std::string_view text) {
  std::vector<std::string> out;
  std::size_t number = 0;
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    ++number;
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\t' || line.back() == '\r'))
      line.remove_suffix(1);
    if (line.empty() || line.front() == '#') continue;
    if (!is_plain_absolute(line))
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read {}: line {}: \"{}\" is not an absolute path",
                              kLoadListFile, number, line));
    out.emplace_back(line);
  }
  return out;
}

std::optional<FilesystemProbe> probe_filesystem(const util::Path& device) {
  struct ProbeDeleter {
    void operator()(blkid_struct_probe* p) const { blkid_free_probe(p); }
  };
  std::unique_ptr<blkid_struct_probe, ProbeDeleter> probe(
      blkid_new_probe_from_filename(device.c_str()));
  if (!probe) return std::nullopt;
  blkid_probe_enable_superblocks(probe.get(), 1);
  blkid_probe_set_superblocks_flags(probe.get(), BLKID_SUBLKS_LABEL | BLKID_SUBLKS_TYPE);
  if (blkid_do_safeprobe(probe.get()) != 0) return std::nullopt;
  FilesystemProbe out;
  const char* value = nullptr;
  if (blkid_probe_lookup_value(probe.get(), "TYPE", &value, nullptr) == 0 && value)
    out.type = value;
  if (blkid_probe_lookup_value(probe.get(), "LABEL", &value, nullptr) == 0 && value)
    out.label = value;
  if (out.type.empty()) return std::nullopt;
  return out;
}

std::vector<util::Path> block_devices(const util::Path& sys_class_block, const util::Path& dev) {
  std::vector<util::Path> out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(sys_class_block, ec)) {
    std::string name = entry.path().filename().string();
    // RAM disks and loop devices never hold the boot media.
    if (name.starts_with("ram") || name.starts_with("loop")) continue;
    out.push_back(dev / name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<MediaMatch> find_by_label(std::string_view label,
                                        const std::vector<util::Path>& candidates) {
  for (const auto& device : candidates) {
    auto fs = probe_filesystem(device);
    // A LUKS2 volume carries its partition's label too (install.encryption); what is mounted
    // is the file system inside, on its /dev/mapper device.
    if (fs && fs->label == label && fs->type != "crypto_LUKS") return MediaMatch{device, *fs};
  }
  return std::nullopt;
}

// ---- PID 1 -------------------------------------------------------------------------------

namespace {

// The console (and the kernel log, for failures): where PID 1 says what it does.
class Console {
 public:
  void open() {
    console_.reset(::open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC));
    kmsg_.reset(::open("/dev/kmsg", O_WRONLY | O_CLOEXEC));
  }
  void set_debug(bool on) { debug_ = on; }
  void step(std::string_view text) const {
    if (debug_) write_console(fmt::format("pok8s-init: {}\n", text));
  }
  void say(std::string_view text) const { write_console(fmt::format("pok8s-init: {}\n", text)); }
  void error(std::string_view text) const {
    say(text);
    if (kmsg_.valid()) {
      std::string line = fmt::format("<3>pok8s-init: {}\n", text);
      [[maybe_unused]] auto n = ::write(kmsg_.get(), line.data(), line.size());
    }
  }

 private:
  void write_console(const std::string& line) const {
    // Before devtmpfs is up, the kernel's /dev/console is init's stderr.
    int fd = console_.valid() ? console_.get() : 2;
    [[maybe_unused]] auto n = ::write(fd, line.data(), line.size());
  }

  UniqueFd console_;
  UniqueFd kmsg_;
  bool debug_ = false;
};

void do_mount(const MountStep& step, const Console& console) {
  for (const auto& dir : step.make_dirs) {
    util::make_dirs(dir);
    if (&dir == &step.make_dirs.front() && !step.attrs_from.empty()) {
      struct stat st {};
      if (::stat(step.attrs_from.c_str(), &st) != 0)
        throw_errno(fmt::format("Failed to stat {}", step.attrs_from), errno);
      if (::chmod(dir.c_str(), st.st_mode & 07777) != 0 ||
          ::chown(dir.c_str(), st.st_uid, st.st_gid) != 0)
        throw_errno(fmt::format("Failed to prepare {}", dir), errno);
    }
  }
  if (step.fstype.empty() && !(step.flags & MS_MOVE))
    throw Error(ErrorKind::kInternal, "Failed to mount " + step.what + ": no file system type");
  if (!(step.flags & MS_MOVE)) util::make_dirs(step.target);
  const char* data = step.data.empty() ? nullptr : step.data.c_str();
  if (::mount(step.source.c_str(), step.target.c_str(),
              step.fstype.empty() ? nullptr : step.fstype.c_str(), step.flags, data) != 0)
    throw_errno(fmt::format("Failed to mount {} on {}", step.what, step.target), errno);
  console.step(fmt::format("mounted {} on {}", step.what, step.target));
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Loads one module with finit_module(2). Already loaded (or builtin) is fine.
void load_module(const std::string& path, const Console& console) {
  // /sys/module knows modules by their names with "_" for "-".
  std::string name = util::Path(path).stem().string();
  std::replace(name.begin(), name.end(), '-', '_');
  if (is_dir("/sys/module/" + name)) {
    console.step(fmt::format("module {} is already loaded", name));
    return;
  }
  UniqueFd fd = util::open_file(path, O_RDONLY);
  if (::syscall(SYS_finit_module, fd.get(), "", 0) != 0 && errno != EEXIST) {
    // ENODEV: what the module drives is not there (aesni_intel on a CPU without AES-NI).
    if (errno == ENODEV) {
      console.step(fmt::format("module {} has nothing to drive here: not loaded", name));
      return;
    }
    throw_errno(fmt::format("Failed to load module {}", path), errno);
  }
  console.step(fmt::format("loaded module {}", name));
}

void load_modules(const BootOptions& options, const Console& console) {
  std::string list;
  if (::access(std::string(kLoadListFile).c_str(), F_OK) == 0)
    list = util::read_file(std::string(kLoadListFile), kMaxLoadListBytes);
  auto paths = parse_module_load_list(list);
  for (const auto& path : paths) load_module(path, console);
  // pok8s.modules=a,b: modules of the initramfs that the load list leaves out.
  for (const auto& wanted : options.modules) {
    std::string name = wanted;
    std::replace(name.begin(), name.end(), '-', '_');
    auto it = std::find_if(paths.begin(), paths.end(), [&](const std::string& p) {
      std::string stem = util::Path(p).stem().string();
      std::replace(stem.begin(), stem.end(), '-', '_');
      return stem == name;
    });
    if (it == paths.end())
      console.say(fmt::format("module {} (pok8s.modules) is not in the initramfs", wanted));
  }
}

MediaMatch wait_for_media(const BootOptions& options, const Console& console) {
  console.step(fmt::format("looking for the media labelled {} ({} s)", options.media_label,
                           options.wait_seconds));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(options.wait_seconds);
  while (true) {
    if (auto match = find_by_label(options.media_label, block_devices())) return *match;
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(kMediaPollInterval);
  }
  throw Error(ErrorKind::kNotFound,
              fmt::format("Failed to find the boot media: no block device with the label {} "
                          "after {} s",
                          options.media_label, options.wait_seconds));
}

// A read-only loop device on a file. With LO_FLAGS_AUTOCLEAR, the kernel detaches it when
// the last user goes: the mount, or this descriptor if mounting failed.
class LoopDevice {
 public:
  explicit LoopDevice(const std::string& file) {
    UniqueFd backing = util::open_file(file, O_RDONLY);
    UniqueFd control = util::open_file("/dev/loop-control", O_RDWR);
    int n = ::ioctl(control.get(), LOOP_CTL_GET_FREE);
    if (n < 0) throw_errno("Failed to find a free loop device", errno);
    path_ = fmt::format("/dev/loop{}", n);
    fd_ = util::open_file(path_, O_RDONLY);
    loop_config config{};
    config.fd = static_cast<std::uint32_t>(backing.get());
    config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
    std::snprintf(reinterpret_cast<char*>(config.info.lo_file_name), LO_NAME_SIZE, "%s",
                  file.c_str());
    if (::ioctl(fd_.get(), LOOP_CONFIGURE, &config) == 0) return;
    if (errno != EINVAL && errno != ENOTTY)
      throw_errno(fmt::format("Failed to attach {} to {}", file, path_), errno);
    // Kernels before 5.8: the two-step way.
    if (::ioctl(fd_.get(), LOOP_SET_FD, backing.get()) != 0)
      throw_errno(fmt::format("Failed to attach {} to {}", file, path_), errno);
    if (::ioctl(fd_.get(), LOOP_SET_STATUS64, &config.info) != 0)
      throw_errno(fmt::format("Failed to configure {}", path_), errno);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  UniqueFd fd_;
};

// Runs `argv` (absolute path first) on the console, chrooted into `root` unless it is empty;
// its exit status.
int run_program(const std::vector<std::string>& argv, const std::string& root) {
  pid_t pid = ::fork();
  if (pid < 0) throw_errno("Failed to start " + argv[0], errno);
  if (pid == 0) {
    if (!root.empty() && (::chroot(root.c_str()) != 0 || ::chdir("/") != 0)) ::_exit(127);
    std::vector<std::string> copy = argv;
    std::vector<char*> args;
    for (auto& a : copy) args.push_back(a.data());
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throw_errno("Failed to wait for " + argv[0], errno);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

// Runs /usr/bin/pok8s-agent `args` chrooted in the image; its exit status.
int run_agent(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {std::string(kAgentPath)};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_program(argv, std::string(kSysroot));
}

// True when `path` in the image is an executable file, symlinks followed inside the image.
bool image_has_executable(std::string_view path) {
  UniqueFd root = util::open_file(std::string(kSysroot), O_RDONLY | O_DIRECTORY);
  struct open_how how {};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = RESOLVE_IN_ROOT;
  std::string rel(path);
  long fd = ::syscall(SYS_openat2, root.get(), rel.c_str(), &how, sizeof how);
  if (fd < 0) return false;
  UniqueFd file(static_cast<int>(fd));
  struct stat st {};
  return ::fstat(file.get(), &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111);
}

// Removes the initramfs's files (they live in the rootfs tmpfs and would take memory for
// ever), never crossing into another mount: /sysroot and whatever is still mounted stay.
void remove_initramfs_contents(int dirfd, dev_t root_dev) {
  UniqueFd dup_fd(::dup(dirfd));
  if (!dup_fd.valid()) return;
  DIR* dir = ::fdopendir(dup_fd.get());
  if (!dir) return;
  dup_fd.release();
  std::unique_ptr<DIR, int (*)(DIR*)> guard(dir, ::closedir);
  std::vector<std::string> names;
  while (dirent* e = ::readdir(dir)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  for (const auto& name : names) {
    struct stat st {};
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      if (st.st_dev != root_dev) continue;  // a mount point: not ours to empty
      int sub = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) continue;
      UniqueFd sub_fd(sub);
      remove_initramfs_contents(sub_fd.get(), root_dev);
      ::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR);  // fails (kept) if a mount is below
    } else {
      ::unlinkat(dirfd, name.c_str(), 0);
    }
  }
}

// Copies the tree at `from` to `to` (which must not exist) keeping types, modes, owners and
// times; hand-written because nothing in the static initramfs does it (no cp). Sockets and
// fifos are left out. Symlinks are copied as links, never followed.
void copy_tree(const std::string& from, const std::string& to) {
  struct stat st {};
  if (::lstat(from.c_str(), &st) != 0) throw_errno("Failed to read " + from, errno);
  if (S_ISDIR(st.st_mode)) {
    if (::mkdir(to.c_str(), 0700) != 0) throw_errno("Failed to create " + to, errno);
    std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(from.c_str()), ::closedir);
    if (!dir) throw_errno("Failed to read " + from, errno);
    while (dirent* e = ::readdir(dir.get())) {
      std::string name = e->d_name;
      if (name != "." && name != "..") copy_tree(from + "/" + name, to + "/" + name);
    }
  } else if (S_ISLNK(st.st_mode)) {
    std::string target(static_cast<std::size_t>(st.st_size) + 1, '\0');
    ssize_t n = ::readlink(from.c_str(), target.data(), target.size());
    if (n < 0 || static_cast<std::size_t>(n) >= target.size())
      throw_errno("Failed to read the link " + from, n < 0 ? errno : ENAMETOOLONG);
    target.resize(static_cast<std::size_t>(n));
    if (::symlink(target.c_str(), to.c_str()) != 0) throw_errno("Failed to create " + to, errno);
  } else if (S_ISREG(st.st_mode)) {
    UniqueFd in = util::open_file(from, O_RDONLY);
    UniqueFd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!out.valid()) throw_errno("Failed to create " + to, errno);
    // copy_file_range(2) refuses to copy between file systems of different types (the image's
    // overlay and COS_PERSISTENT): plain reads and writes.
    char buf[65536];
    while (true) {
      ssize_t n = ::read(in.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw_errno("Failed to copy " + from, errno);
      if (n == 0) break;
      util::write_all(out.get(), std::string_view(buf, static_cast<std::size_t>(n)), to);
    }
  } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
    if (::mknod(to.c_str(), st.st_mode, st.st_rdev) != 0)
      throw_errno("Failed to create " + to, errno);
  } else {
    return;
  }
  if (::lchown(to.c_str(), st.st_uid, st.st_gid) != 0)
    throw_errno("Failed to set the owner of " + to, errno);
  if (!S_ISLNK(st.st_mode) && ::chmod(to.c_str(), st.st_mode & 07777) != 0)
    throw_errno("Failed to set the mode of " + to, errno);
  struct timespec times[2] = {st.st_atim, st.st_mtim};
  ::utimensat(AT_FDCWD, to.c_str(), times, AT_SYMLINK_NOFOLLOW);
}

// A persistent directory's state on COS_PERSISTENT, made on the first boot from what the image
// has there (so /etc/ssh keeps its ssh_config), complete or not at all.
// `persistent` is where COS_PERSISTENT is mounted as pok8s-init sees it: kPersistentMount, or
// below /sysroot once /run has moved there.
void seed_persistent_dir(std::string_view dir, const Console& console,
                         std::string_view persistent = kPersistentMount) {
  std::string state = fmt::format("{}/{}", persistent, persistent_state_dir(dir));
  if (is_dir(state)) return;
  util::make_dirs(fmt::format("{}/.state", persistent));
  std::string partial = state + ".partial";
  std::error_code ec;
  std::filesystem::remove_all(partial, ec);  // left by a boot that stopped halfway
  std::string image_dir = sysroot_path(dir);
  if (is_dir(image_dir)) {
    copy_tree(image_dir, partial);
  } else {
    if (::mkdir(partial.c_str(), 0755) != 0) throw_errno("Failed to create " + partial, errno);
  }
  if (::rename(partial.c_str(), state.c_str()) != 0)
    throw_errno("Failed to create " + state, errno);
  console.step(fmt::format("made the persistent /{} from the image's", dir));
}

// COS_OEM and COS_PERSISTENT made LUKS2 by install.encryption: opened as /dev/mapper/<label> by
// the initramfs's pok8s-luks, with the key the TPM unseals under the booted UKI's signed
// PCR 11 policy (systemd-stub puts it under /.extra), else a passphrase or the recovery key
// typed on the console. A volume left locked stops the boot: the system must not run without
// its persistent data.
void open_encrypted_volumes(const Console& console) {
  std::vector<std::string> volumes;
  for (const auto& device : block_devices()) {
    auto fs = probe_filesystem(device);
    if (fs && fs->type == "crypto_LUKS" &&
        (fs->label == image::kOemLabel || fs->label == image::kPersistentLabel) &&
        ::access(fmt::format("/dev/mapper/{}", fs->label).c_str(), F_OK) != 0)
      volumes.push_back(fmt::format("{}={}", device.string(), fs->label));
  }
  if (volumes.empty()) return;
  std::vector<std::string> args = {"open", "--pcrsig", std::string(kPcrSignatureFile), "--pcrpkey",
                                   std::string(kPcrPublicKeyFile)};
  args.insert(args.end(), volumes.begin(), volumes.end());
  std::vector<std::string> argv;
  try {
    argv = bundle_argv(std::string(kLuksDir), kLuksBinary, args);
  } catch (const Error&) {
    throw Error(ErrorKind::kNotFound,
                "Failed to open the encrypted partitions: this initramfs has no pok8s-luks "
                "(build the system with this pok8s)");
  }
  console.step(fmt::format("opening {} encrypted partition{}", volumes.size(),
                           volumes.size() == 1 ? "" : "s"));
  int status = run_program(argv, "");
  if (status != 0)
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to open the encrypted partitions: pok8s-luks open exited "
                            "with {}",
                            status));
}

// COS_OEM on /oem and, for active and passive, COS_PERSISTENT with its bind mounts. Either may
// be missing (a self-expanding image before its first boot made them): the system then boots
// without, and says so.
void mount_installed_system(const BootOptions& options, BootState& state, const Console& console) {
  open_encrypted_volumes(console);
  auto devices = block_devices();
  if (auto oem = find_by_label(image::kOemLabel, devices)) {
    do_mount({"the OEM partition " + oem->device.string(),
              oem->device.string(),
              sysroot_path(kOemDir),
              oem->filesystem.type,
              MS_NOSUID | MS_NODEV,
              "",
              {},
              ""},
             console);
    state.oem_device = oem->device.string();
  } else {
    console.say(fmt::format("no {} partition: booting without /oem", image::kOemLabel));
  }
  if (options.mode != BootMode::kActive && options.mode != BootMode::kPassive) return;
  auto persistent = find_by_label(image::kPersistentLabel, devices);
  if (!persistent) {
    console.say(
        fmt::format("no {} partition: nothing persists across reboots", image::kPersistentLabel));
    return;
  }
  do_mount({"the persistent partition " + persistent->device.string(),
            persistent->device.string(),
            std::string(kPersistentMount),
            persistent->filesystem.type,
            MS_NOSUID | MS_NODEV,
            "",
            {},
            ""},
           console);
  state.persistent_device = persistent->device.string();
  auto binds = persistent_mounts();
  for (std::size_t i = 0; i < binds.size(); ++i) {
    // The mount point is made in the overlay; a directory outside every overlay that the image
    // lacks (no /opt in the image) cannot be made on the read-only root and is not kept.
    if (::mkdir(binds[i].target.c_str(), 0755) != 0 && errno != EEXIST) {
      console.say(fmt::format("/{} is not kept across reboots: cannot make it ({})",
                              kPersistentDirs[i], std::strerror(errno)));
      continue;
    }
    seed_persistent_dir(kPersistentDirs[i], console);
    do_mount(binds[i], console);
  }
}

// A NoCloud datasource disk: its user-data, when it is a #cloud-config, copied for the agent.
// Anything wrong with it is said on the console and the boot goes on.
void read_cidata(const Console& console) {
  auto devices = block_devices();
  std::optional<MediaMatch> match;
  for (std::string_view label : kCidataLabels)
    if ((match = find_by_label(label, devices))) break;
  if (!match) return;
  std::string dir = "/run/pok8s/cidata";
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return;
  if (::mount(match->device.c_str(), dir.c_str(), match->filesystem.type.c_str(),
              MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
    console.say(fmt::format("the datasource {} ({}): cannot mount it: {}", match->device.string(),
                            match->filesystem.label, std::strerror(errno)));
    ::rmdir(dir.c_str());
    return;
  }
  try {
    std::string text = read_to_end(dir + "/user-data", 1 << 20);
    if (!config::has_cloud_config_header(text)) {
      console.say(fmt::format("the datasource {}: user-data is not a #cloud-config; ignored",
                              match->device.string()));
    } else {
      util::make_dirs(std::string(kDatasourceDir));
      util::write_file_atomic(fmt::format("{}/cidata-user-data.yaml", kDatasourceDir), text, 0600);
      console.step(fmt::format("read the cloud-config of the datasource {} ({})",
                               match->device.string(), match->filesystem.label));
    }
  } catch (const Error& e) {
    console.say(fmt::format("the datasource {}: {}", match->device.string(), e.what()));
  }
  ::umount(dir.c_str());
  ::rmdir(dir.c_str());
}

// After the rootfs stage (/run is in /sysroot by then): the paths of kLayoutEnvFile, bind-mounted
// from COS_PERSISTENT like the built-in ones.
void mount_layout_paths(const Console& console) {
  std::string env_file = sysroot_path(kLayoutEnvFile.substr(1));
  if (::access(env_file.c_str(), R_OK) != 0) return;
  LayoutPaths paths = parse_layout_env(read_to_end(env_file, 1 << 16));
  for (const auto& why : paths.refused)
    console.say(fmt::format("{}: not kept across reboots: {}", kLayoutEnvFile, why));
  std::string persistent = sysroot_path(kPersistentMount.substr(1));
  for (const auto& dir : paths.dirs) {
    std::string target = sysroot_path(dir);
    try {
      util::make_dirs(target);
    } catch (const Error& e) {
      console.say(
          fmt::format("/{} is not kept across reboots: cannot make it ({})", dir, e.what()));
      continue;
    }
    seed_persistent_dir(dir, console, persistent);
    do_mount({fmt::format("the persistent /{} ({})", dir, kLayoutEnvFile),
              fmt::format("{}/{}", persistent, persistent_state_dir(dir)),
              target,
              "none",
              MS_BIND,
              "",
              {},
              ""},
             console);
  }
}

void switch_root(const BootOptions& options, const Console& console) {
  struct statfs sfs {};
  if (::statfs("/", &sfs) != 0) throw_errno("Failed to stat the initramfs", errno);
  if (sfs.f_type != RAMFS_MAGIC && sfs.f_type != TMPFS_MAGIC)
    throw Error(ErrorKind::kInternal,
                "Failed to switch root: / is not the initramfs (not ramfs or tmpfs)");
  struct stat root_st {};
  if (::stat("/", &root_st) != 0) throw_errno("Failed to stat /", errno);
  {
    UniqueFd root = util::open_file("/", O_RDONLY | O_DIRECTORY);
    remove_initramfs_contents(root.get(), root_st.st_dev);
  }
  console.step("removed the initramfs contents");
  std::string sysroot(kSysroot);
  if (::chdir(sysroot.c_str()) != 0) throw_errno("Failed to enter " + sysroot, errno);
  if (::mount(".", "/", nullptr, MS_MOVE, nullptr) != 0)
    throw_errno("Failed to move " + sysroot + " to /", errno);
  if (::chroot(".") != 0 || ::chdir("/") != 0)
    throw_errno("Failed to change root to the image", errno);
  console.step(fmt::format("starting {}", options.init));
  std::string init = options.init;
  char* argv[] = {init.data(), nullptr};
  ::execv(init.c_str(), argv);
  throw_errno(fmt::format("Failed to start {}", options.init), errno);
}

// Netboot: a RAM file system in the media's place, the network up by DHCP, and the rootfs image
// (and the cloud-config) fetched into it over HTTP, each checked against its sha256 from the
// command line; then read-only, like a CD.
MediaMatch fetch_media(const BootOptions& options, const Console& console) {
  do_mount({"a RAM file system for the fetched image",
            "tmpfs",
            std::string(kMediaMount),
            "tmpfs",
            MS_NOSUID | MS_NODEV,
            "mode=0700",
            {},
            ""},
           console);
  configure_network(options.wait_seconds, [&](std::string_view l) { console.say(l); });
  struct statvfs room {};
  std::uint64_t free_bytes = ::statvfs(std::string(kMediaMount).c_str(), &room) == 0
                                 ? std::uint64_t{room.f_bavail} * room.f_frsize
                                 : std::uint64_t{1} << 30;
  std::string image = image_file_on_media(options);
  console.say(fmt::format("fetching the rootfs image from {}", options.fetch->url));
  http_fetch(parse_http_url(options.fetch->url), image, options.fetch->sha256, free_bytes,
             [&](std::uint64_t done, std::uint64_t total) {
               console.say(total != 0 ? fmt::format("  {} of {} MiB", done >> 20, total >> 20)
                                      : fmt::format("  {} MiB", done >> 20));
             });
  console.say(fmt::format("the rootfs image matches its sha256 {}", options.fetch->sha256));
  if (options.fetch_config) {
    std::string config = fmt::format("{}/config.yaml", kMediaMount);
    http_fetch(parse_http_url(options.fetch_config->url), config, options.fetch_config->sha256,
               1u << 20, nullptr);
    console.say(fmt::format("fetched the cloud-config from {}", options.fetch_config->url));
  }
  do_mount({"the RAM file system, read-only",
            "tmpfs",
            std::string(kMediaMount),
            "tmpfs",
            MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
            "mode=0700",
            {},
            ""},
           console);
  return {util::Path(options.fetch->url), {"tmpfs", ""}};
}

void boot(BootOptions& options, Console& console) {
  for (const auto& step : early_mounts()) {
    // A file system already there (a kernel or an earlier stage mounted it) is fine.
    if (::mount(step.source.c_str(), step.target.c_str(), step.fstype.c_str(), step.flags,
                step.data.empty() ? nullptr : step.data.c_str()) != 0 &&
        errno != EBUSY)
      throw_errno(fmt::format("Failed to mount {} on {}", step.what, step.target), errno);
  }
  console.open();
  options = parse_boot_options(read_to_end("/proc/cmdline", 1 << 16));
  console.set_debug(options.debug);
  console.step(fmt::format("booting in {} mode from the media labelled {}",
                           boot_mode_name(options.mode), options.media_label));

  load_modules(options, console);

  MediaMatch media;
  if (options.fetch) {
    media = fetch_media(options, console);
  } else {
    media = wait_for_media(options, console);
    console.step(
        fmt::format("found the media on {} ({})", media.device.string(), media.filesystem.type));
    do_mount({"the boot media",
              media.device.string(),
              std::string(kMediaMount),
              media.filesystem.type,
              MS_RDONLY | MS_NOSUID | MS_NODEV,
              "",
              {},
              ""},
             console);
  }

  std::string image = image_file_on_media(options);
  if (::access(image.c_str(), R_OK) != 0)
    throw_errno(
        fmt::format("Failed to find the image {} on {}", options.image_path, media.device.string()),
        errno);
  if (options.verity && !verity_root_matches(image, *options.verity)) {
    // An upgrade rotated the A/B images and had not replaced this UKI yet: its image is the
    // other one. dm-verity checks whatever is booted either way.
    auto other = other_ab_image(options.image_path);
    if (other) {
      BootOptions moved = options;
      moved.image_path = *other;
      if (verity_root_matches(image_file_on_media(moved), *options.verity)) {
        console.say(
            fmt::format("the image of root hash {} is {}, not {} (an upgrade was "
                        "interrupted): booting it",
                        options.verity->root_hash, *other, options.image_path));
        options.image_path = *other;
        image = image_file_on_media(options);
      }
    }
  }
  {
    LoopDevice loop(image);
    console.step(fmt::format("attached {} to {}", image, loop.path()));
    std::string root = loop.path();
    if (options.verity) {
      root = open_verity(loop.path(), *options.verity, "pok8s-root");
      console.step(fmt::format("opened {} through dm-verity (root hash {}) as {}", loop.path(),
                               options.verity->root_hash, root));
    }
    auto fs = probe_filesystem(root);
    std::string type = fs ? fs->type : "squashfs";
    try {
      do_mount({"the image " + options.image_path,
                root,
                std::string(kSysroot),
                type,
                MS_RDONLY,
                "",
                {},
                ""},
               console);
    } catch (const Error& e) {
      if (!options.verity) throw;
      // dm-verity answers a block that does not match with an I/O error (and a kernel line).
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to mount the image {}: dm-verity refused it: its blocks do "
                              "not match the root hash {} on the kernel command line ({})",
                              options.image_path, options.verity->root_hash, e.what()));
    }
  }

  for (const auto& step : overlay_mounts(
           [](std::string_view dir) { return is_dir(fmt::format("{}/{}", kSysroot, dir)); }))
    do_mount(step, console);

  BootState state{
      options.mode, options.media_label, media.device.string(), options.image_path, "", ""};
  if (options.mode != BootMode::kLive) mount_installed_system(options, state, console);
  read_cidata(console);
  util::write_file_atomic(std::string(kBootStateFile), boot_state_text(state));
  console.step(fmt::format("wrote {}", kBootStateFile));

  for (const auto& step : move_mounts()) do_mount(step, console);

  // Kairos's order: rootfs; then, with every file system in place (the paths the rootfs stage
  // added too), fs; then initramfs.
  bool agent = image_has_executable(kAgentPath);
  auto run_stage = [&](const std::string& stage) {
    if (!agent) return;
    console.step(fmt::format("running pok8s-agent stage {}", stage));
    int status = run_agent({"stage", stage});
    if (status != 0)
      console.error(
          fmt::format("Failed to run the {} stage: pok8s-agent exited with status "
                      "{}; booting on",
                      stage, status));
  };
  run_stage("rootfs");
  if (!state.persistent_device.empty()) mount_layout_paths(console);
  run_stage("fs");
  run_stage("initramfs");

  if (!image_has_executable(options.init))
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to find init: the image has no executable {}", options.init));
  switch_root(options, console);
}

[[noreturn]] void fail_boot(const BootOptions& options, const Console& console,
                            std::string_view message) {
  console.error(message);
  if (options.shell) {
    if (::access(std::string(kBusyboxPath).c_str(), X_OK) == 0) {
      console.say("starting the emergency shell (exit to reboot)");
      int fd = ::open("/dev/console", O_RDWR | O_NOCTTY);
      if (fd >= 0) {
        ::dup2(fd, 0);
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        if (fd > 2) ::close(fd);
      }
      pid_t pid = ::fork();
      if (pid == 0) {
        ::setsid();
        ::ioctl(0, TIOCSCTTY, 1);
        std::string busybox(kBusyboxPath);
        char arg0[] = "sh";
        char* argv[] = {arg0, nullptr};
        ::execv(busybox.c_str(), argv);
        ::_exit(127);
      }
      if (pid > 0)
        while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
        }
    } else {
      console.say("no emergency shell: the initramfs has no static busybox");
    }
  }
  console.say(fmt::format("rebooting in {} seconds", kRebootPause.count()));
  std::this_thread::sleep_for(kRebootPause);
  ::sync();
  ::reboot(RB_AUTOBOOT);
  // reboot(2) does not return for PID 1; should it fail, PID 1 must still not exit.
  while (true) ::pause();
}

}  // namespace

int run_init() {
  if (::getpid() != 1) {
    std::fputs("pok8s-init: Failed to start: not PID 1 (pok8s-init runs in an initramfs)\n",
               stderr);
    return 1;
  }
  Console console;
  BootOptions options;
  try {
    boot(options, console);
    fail_boot(options, console, "Failed to start init: switch_root returned");
  } catch (const std::exception& e) {
    fail_boot(options, console, e.what());
  }
}

}  // namespace pok8s::node
