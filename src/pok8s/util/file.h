// Files the RAII way: owned descriptors, temporaries that become visible only on commit(),
// and whole-file helpers that never leave a half-written file behind.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace pok8s::util {

using Path = std::filesystem::path;

// An owned file descriptor, closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Opens `path` or throws naming it.
UniqueFd open_file(const Path& path, int flags, unsigned mode = 0644);

// Writes all of `data` to `fd`, retrying short writes; throws naming `what`.
void write_all(int fd, std::span<const std::byte> data, std::string_view what);
inline void write_all(int fd, std::string_view data, std::string_view what) {
  write_all(fd, std::as_bytes(std::span(data.data(), data.size())), what);
}

// Reads a whole file, refusing one larger than `limit` bytes.
std::string read_file(const Path& path, std::uint64_t limit = 64u << 20);

// A file created under a hidden temporary name in the directory of its final name;
// removed on destruction unless commit() renamed it into place.
class TempFile {
 public:
  explicit TempFile(const Path& final_path);
  TempFile(TempFile&&) noexcept = default;
  TempFile& operator=(TempFile&&) = delete;
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile();

  int fd() const { return fd_.get(); }
  const Path& path() const { return tmp_path_; }
  // Flushes to disk, renames to the final name and returns it.
  Path commit();

 private:
  Path final_path_;
  Path tmp_path_;
  UniqueFd fd_;
  bool committed_ = false;
};

// Writes `data` to `path` through a TempFile.
void write_file_atomic(const Path& path, std::string_view data, unsigned mode = 0644);

// Whether `path` is a regular file (following symlinks).
bool is_regular_file(const Path& path);

// Copies the file `from` to `to` through a TempFile (copy_file_range: a reflink or an in-kernel
// copy where the file system can).
void copy_file_atomic(const Path& from, const Path& to, unsigned mode = 0644);

// A directory created as a hidden sibling of its final name; removed (recursively, never
// following symlinks) on destruction unless commit() renamed it into place.
class TempDir {
 public:
  explicit TempDir(const Path& final_path);
  // A scratch directory under `parent` (default: $TMPDIR or /tmp) that is always removed.
  static TempDir scratch(const Path& parent = {});
  TempDir(TempDir&& other) noexcept;
  TempDir& operator=(TempDir&&) = delete;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();

  const Path& path() const { return tmp_path_; }
  // Renames to the final name, replacing an existing empty directory; returns the final name.
  Path commit();

 private:
  TempDir() = default;
  Path final_path_;
  Path tmp_path_;
  bool committed_ = false;
};

// Removes `name` in `dirfd` and, if it is a directory, everything below it. Walks by file
// descriptor and never follows a symlink. A missing `name` is not an error.
void remove_tree_at(int dirfd, const std::string& name);
void remove_tree(const Path& path);

// Creates `path` and its parents (mode 0755) if missing.
void make_dirs(const Path& path);

// The XDG cache directory of pok8s: $XDG_CACHE_HOME/pok8s or ~/.cache/pok8s.
Path default_cache_dir();

// A random hex string of `bytes` bytes from the kernel's CSPRNG.
std::string random_hex(std::size_t bytes);

}  // namespace pok8s::util
