// Applying layers to a directory tree by file descriptor: parents resolved with openat2
// RESOLVE_IN_ROOT, final components created with *at calls that never follow them, and
// directory modes and mtimes set once the whole image is in place.
#include "pok8s/rootfs/apply.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>
#include <map>
#include <set>

#include "pok8s/util/error.h"

namespace pok8s::rootfs {

ApplyStats& ApplyStats::operator+=(const ApplyStats& o) {
  entries += o.entries;
  files += o.files;
  directories += o.directories;
  symlinks += o.symlinks;
  hardlinks += o.hardlinks;
  whiteouts += o.whiteouts;
  devices_skipped += o.devices_skipped;
  xattrs_dropped += o.xattrs_dropped;
  bytes += o.bytes;
  return *this;
}

namespace {

constexpr const char* kOwnerXattr = "user.pok8s.owner";

// Opens the directory `rel` (relative, "" for the root) with every symlink on the way
// resolved as if `root_fd` were "/". Returns -1 with errno set.
int open_dir_in_root(int root_fd, const std::string& rel) {
  open_how how{};
  how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  const char* path = rel.empty() ? "." : rel.c_str();
  // EAGAIN means a concurrent rename raced the lookup; the kernel asks us to retry.
  for (int attempt = 0; attempt < 32; ++attempt) {
    long fd = ::syscall(SYS_openat2, root_fd, path, &how, sizeof how);
    if (fd >= 0) return static_cast<int>(fd);
    if (errno != EAGAIN && errno != EINTR) return -1;
  }
  return -1;
}

ErrorKind kind_of(int err) {
  switch (err) {
    case ELOOP:
    case ENOTDIR:
    case EXDEV:
    case EEXIST:
      return ErrorKind::kInvalidInput;
    case ENOENT:
      return ErrorKind::kNotFound;
    case ENOSYS:
      return ErrorKind::kUnsupported;
    default:
      return ErrorKind::kIo;
  }
}

std::string reason_of(int err) {
  switch (err) {
    case ELOOP:
      return "too many levels of symbolic links (a symlink loop?)";
    case ENOTDIR:
      return "a path component is not a directory";
    default:
      return std::strerror(err);
  }
}

timespec to_timespec(const TarEntry& e) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(e.mtime_sec);
  ts.tv_nsec = static_cast<long>(e.mtime_nsec);
  return ts;
}

struct DirMeta {
  std::uint32_t mode = 0755;
  timespec mtime{};
};

// One image (or one layer) being written into a tree; keeps what must wait for the end.
class TreeWriter {
 public:
  TreeWriter(int root_fd, const ApplyOptions& options)
      : root_fd_(root_fd),
        options_(options),
        privileged_(::geteuid() == 0),
        keep_ownership_(options.keep_ownership.value_or(privileged_)) {
    struct stat st {};
    if (::fstat(root_fd, &st) != 0) throw_errno("Failed to inspect the unpack root", errno);
    if (!S_ISDIR(st.st_mode))
      throw Error(ErrorKind::kInvalidInput, "Failed to unpack: the root is not a directory");
  }

  ApplyStats apply(const util::Path& blob, const std::string& what,
                   const std::optional<oci::Digest>& diff_id) {
    what_ = what;
    stats_ = {};
    created_.clear();
    LayerReader reader(blob, what, options_.limits);
    TarEntry entry;
    while (reader.next(entry)) {
      ++stats_.entries;
      apply_entry(reader, entry);
    }
    oci::Digest actual = reader.finish();
    if (diff_id && actual != *diff_id)
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to verify {}: its uncompressed content hashes to {}, the "
                              "image config says {}",
                              what, actual.str(), diff_id->str()));
    return stats_;
  }

  // Directory modes and mtimes, deepest first: creating entries inside a directory changes
  // its mtime, and a read-only mode would stop an unprivileged unpack from going on.
  void finish_directories() {
    for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) {
      const auto& [path, meta] = *it;
      util::UniqueFd fd;
      if (path.empty()) {
        fd.reset(::fcntl(root_fd_, F_DUPFD_CLOEXEC, 0));
      } else {
        std::vector<std::string> comps = split_entry_path(path, what_);
        util::UniqueFd parent(open_dir_in_root(root_fd_, join_components(comps, comps.size() - 1)));
        if (!parent.valid()) continue;
        fd.reset(::openat(parent.get(), comps.back().c_str(),
                          O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      }
      // Replaced by a non-directory since: nothing to do.
      if (!fd.valid()) continue;
      if (::fchmod(fd.get(), meta.mode) != 0)
        throw_errno(fmt::format("Failed to set the mode of directory \"{}\"", path), errno);
      timespec times[2] = {meta.mtime, meta.mtime};
      if (::futimens(fd.get(), times) != 0)
        throw_errno(fmt::format("Failed to set the mtime of directory \"{}\"", path), errno);
    }
    dirs_.clear();
  }

 private:
  [[noreturn]] void fail(const TarEntry& e, ErrorKind kind, const std::string& reason) const {
    throw Error(kind, fmt::format("Failed to unpack {}: entry \"{}\": {}", what_, e.path, reason));
  }
  [[noreturn]] void fail_errno(const TarEntry& e, const std::string& action, int err) const {
    fail(e, kind_of(err), fmt::format("{}: {}", action, reason_of(err)));
  }

  // The directory that holds components[0..n-1), resolved inside the root. Missing
  // directories are created when `create`; otherwise an invalid fd means "not there".
  util::UniqueFd open_parent(const TarEntry& e, const std::vector<std::string>& comps,
                             bool create) {
    std::size_t n = comps.empty() ? 0 : comps.size() - 1;
    util::UniqueFd fd(open_dir_in_root(root_fd_, join_components(comps, n)));
    if (fd.valid()) return fd;
    int err = errno;
    if (err != ENOENT)
      fail_errno(e, fmt::format("Failed to open \"{}\"", join_components(comps, n)), err);
    if (!create) return {};
    return walk_creating(e, comps, n);
  }

  // The slow path of open_parent: the same resolution as RESOLVE_IN_ROOT, one descriptor at
  // a time, so that a missing directory can be created where the walk finds it missing,
  // including at the far end of a symlink (var/run -> /run before /run exists).
  util::UniqueFd walk_creating(const TarEntry& e, const std::vector<std::string>& comps,
                               std::size_t n) {
    std::vector<util::UniqueFd> stack;  // stack[0] is the root; ".." never pops it
    stack.emplace_back(::fcntl(root_fd_, F_DUPFD_CLOEXEC, 0));
    if (!stack.back().valid()) fail_errno(e, "Failed to open the root", errno);
    std::deque<std::string> todo(comps.begin(), comps.begin() + static_cast<std::ptrdiff_t>(n));
    int links = 0;
    while (!todo.empty()) {
      std::string c = std::move(todo.front());
      todo.pop_front();
      if (c.empty() || c == ".") continue;
      if (c == "..") {
        if (stack.size() > 1) stack.pop_back();
        continue;
      }
      int dirfd = stack.back().get();
      struct stat st {};
      if (::fstatat(dirfd, c.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno != ENOENT) fail_errno(e, fmt::format("Failed to inspect \"{}\"", c), errno);
        if (::mkdirat(dirfd, c.c_str(), 0755) != 0 && errno != EEXIST)
          fail_errno(e, fmt::format("Failed to create directory \"{}\"", c), errno);
        util::UniqueFd made(
            ::openat(dirfd, c.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!made.valid()) fail_errno(e, fmt::format("Failed to open \"{}\"", c), errno);
        // Implicit directories get the usual mode whatever the umask.
        ::fchmod(made.get(), 0755);
        stack.push_back(std::move(made));
        continue;
      }
      if (S_ISLNK(st.st_mode)) {
        if (++links > kMaxSymlinks)
          fail_errno(e, fmt::format("Failed to resolve \"{}\"", c), ELOOP);
        std::string target(static_cast<std::size_t>(PATH_MAX) + 1, '\0');
        ssize_t len = ::readlinkat(dirfd, c.c_str(), target.data(), target.size());
        if (len < 0) fail_errno(e, fmt::format("Failed to read symlink \"{}\"", c), errno);
        if (static_cast<std::size_t>(len) >= target.size())
          fail(e, ErrorKind::kInvalidInput, fmt::format("the symlink \"{}\" is too long", c));
        target.resize(static_cast<std::size_t>(len));
        // An absolute target starts again from the root: the root is "/" for this tree.
        if (target.starts_with('/')) stack.erase(stack.begin() + 1, stack.end());
        std::vector<std::string> parts = split_link_target(target);
        todo.insert(todo.begin(), parts.begin(), parts.end());
        continue;
      }
      if (!S_ISDIR(st.st_mode)) fail_errno(e, fmt::format("Failed to open \"{}\"", c), ENOTDIR);
      util::UniqueFd next(
          ::openat(dirfd, c.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!next.valid()) fail_errno(e, fmt::format("Failed to open \"{}\"", c), errno);
      stack.push_back(std::move(next));
    }
    return std::move(stack.back());
  }

  bool created_below(const std::string& path) const { return has_path_below(created_, path); }

  // Drops deferred directory metadata for `path` and everything below it.
  void forget_dirs(const std::string& path) {
    if (path.empty()) {
      dirs_.clear();
      return;
    }
    dirs_.erase(path);
    std::string prefix = path + "/";
    for (auto it = dirs_.lower_bound(prefix); it != dirs_.end() && it->first.starts_with(prefix);)
      it = dirs_.erase(it);
  }

  void remove_at(int dirfd, const std::string& name, const std::string& path) {
    util::remove_tree_at(dirfd, name);
    forget_dirs(path);
  }

  // Removes every child of the directory open at `dirfd` that lower layers put there,
  // keeping what this layer created and the directories leading to it.
  void clear_lower(int dirfd, const std::string& dir_path) {
    util::UniqueFd listing(::openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!listing.valid())
      throw_errno(fmt::format("Failed to read directory \"{}\"", dir_path), errno);
    DIR* dir = ::fdopendir(listing.get());
    if (!dir) throw_errno(fmt::format("Failed to read directory \"{}\"", dir_path), errno);
    listing.release();
    std::vector<std::string> children;
    while (dirent* de = ::readdir(dir)) {
      std::string_view child = de->d_name;
      if (child != "." && child != "..") children.emplace_back(child);
    }
    ::closedir(dir);
    for (const auto& child : children) {
      std::string child_path = dir_path.empty() ? child : dir_path + "/" + child;
      hide_lower(dirfd, child, child_path);
    }
  }

  void hide_lower(int dirfd, const std::string& name, const std::string& path) {
    if (created_.contains(path)) return;
    if (created_below(path)) {
      util::UniqueFd sub(
          ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (sub.valid()) {
        clear_lower(sub.get(), path);
        return;
      }
    }
    remove_at(dirfd, name, path);
  }

  // Makes room for a new entry at `name`: whatever is there goes, except a directory when
  // `keep_directory` (a directory entry merges into it; *kept_dir says so).
  void clear_for(const TarEntry& e, int dirfd, const std::string& name, const std::string& path,
                 bool keep_directory, bool* kept_dir) {
    struct stat st {};
    if (kept_dir) *kept_dir = false;
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) return;
      fail_errno(e, "Failed to inspect the existing entry", errno);
    }
    if (S_ISDIR(st.st_mode)) {
      if (keep_directory) {
        if (kept_dir) *kept_dir = true;
        return;
      }
      remove_at(dirfd, name, path);
      return;
    }
    // Never write through what is there: a symlink, a hardlinked file of a lower layer.
    if (::unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT)
      fail_errno(e, "Failed to replace the existing entry", errno);
  }

  void set_xattrs(const TarEntry& e, int fd) {
    for (const auto& [name, value] : e.xattrs) {
      if (!keep_xattr(name)) {
        ++stats_.xattrs_dropped;
        continue;
      }
      if (::fsetxattr(fd, name.c_str(), value.data(), value.size(), 0) == 0) continue;
      int err = errno;
      // Without privilege (or xattr support) the tree is still right, only less complete.
      if (err == ENOTSUP || ((err == EPERM || err == EACCES) && !privileged_)) {
        ++stats_.xattrs_dropped;
        continue;
      }
      fail_errno(e, fmt::format("Failed to set xattr {}", name), err);
    }
  }

  void drop_xattrs(const TarEntry& e) { stats_.xattrs_dropped += e.xattrs.size(); }

  // Ownership on an open file or directory: chown as root, else a note of the true owner.
  void set_owner_fd(const TarEntry& e, int fd) {
    if (keep_ownership_) {
      if (::fchown(fd, e.uid, e.gid) != 0) fail_errno(e, "Failed to set the owner", errno);
      return;
    }
    std::string owner = fmt::format("{}:{}", e.uid, e.gid);
    // Best effort: not every filesystem takes user xattrs.
    (void)::fsetxattr(fd, kOwnerXattr, owner.data(), owner.size(), 0);
  }

  void set_owner_at(const TarEntry& e, int dirfd, const std::string& name) {
    if (!keep_ownership_) return;
    if (::fchownat(dirfd, name.c_str(), e.uid, e.gid, AT_SYMLINK_NOFOLLOW) != 0)
      fail_errno(e, "Failed to set the owner", errno);
  }

  void set_mtime_at(const TarEntry& e, int dirfd, const std::string& name) {
    timespec times[2] = {to_timespec(e), to_timespec(e)};
    if (::utimensat(dirfd, name.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0)
      fail_errno(e, "Failed to set the mtime", errno);
  }

  void apply_entry(LayerReader& reader, const TarEntry& e) {
    std::vector<std::string> comps = split_entry_path(e.path, what_);
    Whiteout wh = classify_whiteout(comps, e.path, what_);
    std::string path = join_components(comps);
    switch (wh.kind) {
      case WhiteoutKind::kIgnored:
        return;
      case WhiteoutKind::kOpaque: {
        ++stats_.whiteouts;
        util::UniqueFd dir = open_parent(e, comps, true);
        clear_lower(dir.get(), join_components(comps, comps.size() - 1));
        return;
      }
      case WhiteoutKind::kRemove: {
        ++stats_.whiteouts;
        util::UniqueFd dir = open_parent(e, comps, false);
        if (!dir.valid()) return;  // nothing below a missing directory to hide
        std::string parent = join_components(comps, comps.size() - 1);
        hide_lower(dir.get(), wh.target, parent.empty() ? wh.target : parent + "/" + wh.target);
        return;
      }
      case WhiteoutKind::kNone:
        break;
    }

    if (comps.empty()) {
      if (e.type != EntryType::kDirectory)
        fail(e, ErrorKind::kInvalidInput,
             "the root directory cannot be replaced by a non-directory");
      util::UniqueFd fd(::fcntl(root_fd_, F_DUPFD_CLOEXEC, 0));
      apply_directory_meta(e, fd.get(), path);
      ++stats_.directories;
      created_.insert(path);
      return;
    }

    const std::string& name = comps.back();
    switch (e.type) {
      case EntryType::kDirectory: {
        util::UniqueFd parent = open_parent(e, comps, true);
        bool kept = false;
        clear_for(e, parent.get(), name, path, true, &kept);
        if (!kept && ::mkdirat(parent.get(), name.c_str(), 0700) != 0)
          fail_errno(e, "Failed to create the directory", errno);
        util::UniqueFd fd(
            ::openat(parent.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!fd.valid()) fail_errno(e, "Failed to open the directory", errno);
        apply_directory_meta(e, fd.get(), path);
        ++stats_.directories;
        break;
      }
      case EntryType::kFile: {
        util::UniqueFd parent = open_parent(e, comps, true);
        clear_for(e, parent.get(), name, path, false, nullptr);
        util::UniqueFd fd(::openat(parent.get(), name.c_str(),
                                   O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
        if (!fd.valid()) fail_errno(e, "Failed to create the file", errno);
        stats_.bytes += reader.copy_to(fd.get(), fmt::format("\"{}\" of {}", e.path, what_));
        // Order matters: chown clears setuid bits and file capabilities, so the mode and the
        // xattrs come after it; data writes clear them too, so everything follows the data.
        set_owner_fd(e, fd.get());
        if (::fchmod(fd.get(), e.mode) != 0) fail_errno(e, "Failed to set the mode", errno);
        set_xattrs(e, fd.get());
        timespec times[2] = {to_timespec(e), to_timespec(e)};
        if (::futimens(fd.get(), times) != 0) fail_errno(e, "Failed to set the mtime", errno);
        ++stats_.files;
        break;
      }
      case EntryType::kSymlink: {
        util::UniqueFd parent = open_parent(e, comps, true);
        clear_for(e, parent.get(), name, path, false, nullptr);
        // Kept verbatim, absolute or not: it is only ever resolved inside the root.
        if (::symlinkat(e.link_target.c_str(), parent.get(), name.c_str()) != 0)
          fail_errno(e, "Failed to create the symlink", errno);
        set_owner_at(e, parent.get(), name);
        set_mtime_at(e, parent.get(), name);
        drop_xattrs(e);
        ++stats_.symlinks;
        break;
      }
      case EntryType::kHardlink:
        apply_hardlink(e, comps, path);
        break;
      case EntryType::kCharDevice:
      case EntryType::kBlockDevice:
      case EntryType::kFifo: {
        bool device = e.type != EntryType::kFifo;
        if (device && !(options_.devices && privileged_)) {
          ++stats_.devices_skipped;
          return;
        }
        util::UniqueFd parent = open_parent(e, comps, true);
        clear_for(e, parent.get(), name, path, false, nullptr);
        mode_t type = e.type == EntryType::kFifo         ? S_IFIFO
                      : e.type == EntryType::kCharDevice ? S_IFCHR
                                                         : S_IFBLK;
        dev_t dev = device ? makedev(e.dev_major, e.dev_minor) : 0;
        if (::mknodat(parent.get(), name.c_str(), type | (e.mode & 0777), dev) != 0)
          fail_errno(e, "Failed to create the special file", errno);
        set_owner_at(e, parent.get(), name);
        if (::fchmodat(parent.get(), name.c_str(), e.mode, AT_SYMLINK_NOFOLLOW) != 0)
          fail_errno(e, "Failed to set the mode", errno);
        set_mtime_at(e, parent.get(), name);
        drop_xattrs(e);
        break;
      }
    }
    created_.insert(path);
  }

  void apply_directory_meta(const TarEntry& e, int fd, const std::string& path) {
    set_owner_fd(e, fd);
    set_xattrs(e, fd);
    dirs_[path] = DirMeta{e.mode, to_timespec(e)};
  }

  void apply_hardlink(const TarEntry& e, const std::vector<std::string>& comps,
                      const std::string& path) {
    std::vector<std::string> target = split_entry_path(e.link_target, what_);
    if (target.empty()) fail(e, ErrorKind::kInvalidInput, "a hardlink cannot point at the root");
    util::UniqueFd target_dir = open_parent(e, target, false);
    struct stat target_st {};
    if (!target_dir.valid() ||
        ::fstatat(target_dir.get(), target.back().c_str(), &target_st, AT_SYMLINK_NOFOLLOW) != 0)
      fail(e, ErrorKind::kInvalidInput,
           fmt::format("the hardlink target \"{}\" does not exist inside the root", e.link_target));
    if (S_ISDIR(target_st.st_mode))
      fail(e, ErrorKind::kInvalidInput,
           fmt::format("the hardlink target \"{}\" is a directory", e.link_target));
    util::UniqueFd parent = open_parent(e, comps, true);
    const std::string& name = comps.back();
    struct stat st {};
    if (::fstatat(parent.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        st.st_dev == target_st.st_dev && st.st_ino == target_st.st_ino) {
      ++stats_.hardlinks;  // already this very file (a link to itself, or a repeat)
      created_.insert(path);
      return;
    }
    clear_for(e, parent.get(), name, path, false, nullptr);
    // No AT_SYMLINK_FOLLOW: a symlink target is linked as the symlink, never followed.
    if (::linkat(target_dir.get(), target.back().c_str(), parent.get(), name.c_str(), 0) != 0)
      fail_errno(e, fmt::format("Failed to link to \"{}\"", e.link_target), errno);
    drop_xattrs(e);
    ++stats_.hardlinks;
    created_.insert(path);
  }

  int root_fd_;
  const ApplyOptions& options_;
  bool privileged_;  // running as root
  bool keep_ownership_;
  std::string what_;
  ApplyStats stats_;
  // Normalised archive paths this layer created: whiteouts and opaque markers hide lower
  // layers only, never entries of their own layer, whatever their order in the tar.
  std::set<std::string> created_;
  std::map<std::string, DirMeta> dirs_;
};

}  // namespace

ApplyStats apply_layer(int root_fd, const util::Path& blob, const std::string& what,
                       const std::optional<oci::Digest>& diff_id, const ApplyOptions& options) {
  TreeWriter writer(root_fd, options);
  ApplyStats stats = writer.apply(blob, what, diff_id);
  writer.finish_directories();
  return stats;
}

ApplyStats unpack_image(const oci::ResolvedImage& image, const oci::BlobStore& store,
                        const util::Path& dest, const ApplyOptions& options) {
  struct stat st {};
  if (::lstat(dest.c_str(), &st) == 0) {
    bool empty = S_ISDIR(st.st_mode) && std::filesystem::is_empty(dest);
    if (!empty)
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format("Failed to unpack {} into {}: it exists and is not an empty directory",
                      image.source_name, dest.string()));
  } else if (errno != ENOENT) {
    throw_errno(fmt::format("Failed to unpack {} into {}", image.source_name, dest.string()),
                errno);
  }
  util::TempDir tmp(dest);
  util::UniqueFd root(::open(tmp.path().c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!root.valid()) throw_errno("Failed to open " + tmp.path().string(), errno);
  TreeWriter writer(root.get(), options);
  ApplyStats total;
  for (std::size_t i = 0; i < image.manifest.layers.size(); ++i) {
    const oci::Descriptor& layer = image.manifest.layers[i];
    std::string what = image.layer_name(i);
    util::Path blob = store.path_for(layer.digest);
    if (::access(blob.c_str(), F_OK) != 0)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to unpack {}: the blob is not in the cache", what));
    std::optional<oci::Digest> diff_id;
    if (i < image.config.diff_ids.size()) diff_id = image.config.diff_ids[i];
    total += writer.apply(blob, what, diff_id);
  }
  writer.finish_directories();
  root.reset();
  tmp.commit();
  return total;
}

}  // namespace pok8s::rootfs
