// Owned descriptors, temporary files and directories, and tree removal by descriptor.
#include "pok8s/util/file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cerrno>
#include <cstdlib>
#include <vector>

#include "pok8s/util/error.h"

namespace pok8s::util {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

UniqueFd open_file(const Path& path, int flags, unsigned mode) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) throw_errno(fmt::format("Failed to open {}", path.string()), errno);
  return UniqueFd(fd);
}

void write_all(int fd, std::span<const std::byte> data, std::string_view what) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(fmt::format("Failed to write {}", what), errno);
    }
    data = data.subspan(static_cast<std::size_t>(n));
  }
}

std::string read_file(const Path& path, std::uint64_t limit) {
  UniqueFd fd = open_file(path, O_RDONLY);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("Failed to stat " + path.string(), errno);
  auto too_big = [&](std::uint64_t size) {
    return Error(ErrorKind::kInvalidInput,
                 fmt::format("Failed to read {}: {} bytes exceeds the limit of {}", path.string(),
                             size, limit));
  };
  if (static_cast<std::uint64_t>(st.st_size) > limit) throw too_big(st.st_size);
  // Read to the end, not to st_size: files in /proc and /sys say 0 and have content.
  std::string out;
  out.resize(static_cast<std::size_t>(st.st_size) + 4096);
  std::size_t done = 0;
  for (;;) {
    if (done == out.size()) out.resize(out.size() * 2);
    ssize_t n = ::read(fd.get(), out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("Failed to read " + path.string(), errno);
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
    if (done > limit) throw too_big(done);
  }
  out.resize(done);
  return out;
}

namespace {
Path hidden_sibling(const Path& final_path) {
  Path dir = final_path.parent_path();
  if (dir.empty()) dir = ".";
  return dir / fmt::format(".{}.tmp-{}", final_path.filename().string(), random_hex(6));
}
}  // namespace

TempFile::TempFile(const Path& final_path)
    : final_path_(final_path), tmp_path_(hidden_sibling(final_path)) {
  fd_ = open_file(tmp_path_, O_RDWR | O_CREAT | O_EXCL, 0644);
}

TempFile::~TempFile() {
  if (!committed_ && !tmp_path_.empty()) ::unlink(tmp_path_.c_str());
}

Path TempFile::commit() {
  if (::fsync(fd_.get()) != 0) throw_errno("Failed to flush " + tmp_path_.string(), errno);
  if (::rename(tmp_path_.c_str(), final_path_.c_str()) != 0)
    throw_errno(fmt::format("Failed to rename {} to {}", tmp_path_.string(), final_path_.string()),
                errno);
  committed_ = true;
  fd_.reset();
  return final_path_;
}

void write_file_atomic(const Path& path, std::string_view data, unsigned mode) {
  TempFile tmp(path);
  write_all(tmp.fd(), data, path.string());
  if (::fchmod(tmp.fd(), mode) != 0) throw_errno("Failed to chmod " + path.string(), errno);
  tmp.commit();
}

bool is_regular_file(const Path& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

void copy_file_atomic(const Path& from, const Path& to, unsigned mode) {
  UniqueFd in = open_file(from, O_RDONLY);
  TempFile tmp(to);
  bool fallback = false;
  for (;;) {
    ssize_t n =
        fallback ? -1 : ::copy_file_range(in.get(), nullptr, tmp.fd(), nullptr, 1u << 30, 0);
    if (n == 0) break;
    if (n > 0) continue;
    if (!fallback &&
        (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL)) {
      fallback = true;  // what was copied stays; read(2) goes on from the same offset
      continue;
    }
    if (!fallback) throw_errno("Failed to copy " + from.string() + " to " + to.string(), errno);
    char buf[1 << 16];
    ssize_t r = ::read(in.get(), buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_errno("Failed to read " + from.string(), errno);
    if (r == 0) break;
    write_all(tmp.fd(), std::string_view(buf, static_cast<std::size_t>(r)), to.string());
  }
  if (::fchmod(tmp.fd(), mode) != 0) throw_errno("Failed to chmod " + to.string(), errno);
  tmp.commit();
}

TempDir::TempDir(const Path& final_path)
    : final_path_(final_path), tmp_path_(hidden_sibling(final_path)) {
  if (::mkdir(tmp_path_.c_str(), 0755) != 0)
    throw_errno("Failed to create directory " + tmp_path_.string(), errno);
}

TempDir TempDir::scratch(const Path& parent) {
  Path base = parent;
  if (base.empty()) {
    const char* env = std::getenv("TMPDIR");
    base = env && *env ? env : "/tmp";
  }
  TempDir dir;
  dir.tmp_path_ = base / ("pok8s-" + random_hex(8));
  if (::mkdir(dir.tmp_path_.c_str(), 0700) != 0)
    throw_errno("Failed to create directory " + dir.tmp_path_.string(), errno);
  return dir;
}

TempDir::TempDir(TempDir&& other) noexcept
    : final_path_(std::move(other.final_path_)),
      tmp_path_(std::move(other.tmp_path_)),
      committed_(other.committed_) {
  other.tmp_path_.clear();
}

TempDir::~TempDir() {
  if (committed_ || tmp_path_.empty()) return;
  try {
    remove_tree(tmp_path_);
  } catch (...) {
    // A destructor must not throw; a leftover scratch directory is only untidy.
  }
}

Path TempDir::commit() {
  if (final_path_.empty()) throw Error("TempDir::commit on a scratch directory");
  if (::rename(tmp_path_.c_str(), final_path_.c_str()) != 0) {
    int err = errno;
    // rename(2) replaces an empty directory only; say so clearly for a non-empty one.
    throw_errno(fmt::format("Failed to move {} into place", final_path_.string()), err);
  }
  committed_ = true;
  return final_path_;
}

void remove_tree_at(int dirfd, const std::string& name) {
  if (::unlinkat(dirfd, name.c_str(), 0) == 0) return;
  int err = errno;
  if (err == ENOENT) return;
  if (err != EISDIR && err != EPERM) throw_errno("Failed to remove " + name, err);
  int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) throw_errno("Failed to open directory " + name, errno);
  // A directory we cannot write into cannot be emptied; give ourselves the bits first.
  ::fchmod(fd, 0700);
  DIR* dir = ::fdopendir(fd);
  if (!dir) {
    ::close(fd);
    throw_errno("Failed to read directory " + name, errno);
  }
  std::vector<std::string> children;
  while (dirent* de = ::readdir(dir)) {
    std::string_view child = de->d_name;
    if (child != "." && child != "..") children.emplace_back(child);
  }
  for (const auto& child : children) {
    try {
      remove_tree_at(::dirfd(dir), child);
    } catch (...) {
      ::closedir(dir);
      throw;
    }
  }
  ::closedir(dir);
  if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)
    throw_errno("Failed to remove directory " + name, errno);
}

void remove_tree(const Path& path) {
  Path parent = path.parent_path();
  if (parent.empty()) parent = ".";
  UniqueFd fd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == ENOENT) return;
    throw_errno("Failed to open " + parent.string(), errno);
  }
  remove_tree_at(fd.get(), path.filename().string());
}

void make_dirs(const Path& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec)
    throw Error(ErrorKind::kIo,
                fmt::format("Failed to create directory {}: {}", path.string(), ec.message()));
}

Path default_cache_dir() {
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return Path(xdg) / "pok8s";
  if (const char* home = std::getenv("HOME"); home && *home) return Path(home) / ".cache" / "pok8s";
  return Path("/var/cache/pok8s");
}

std::string random_hex(std::size_t bytes) {
  std::vector<unsigned char> buf(bytes);
  std::size_t done = 0;
  while (done < bytes) {
    ssize_t n = ::getrandom(buf.data() + done, bytes - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("Failed to read random bytes", errno);
    done += static_cast<std::size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : buf) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

}  // namespace pok8s::util
