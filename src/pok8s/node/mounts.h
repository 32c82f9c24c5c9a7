// Mounts and file copies of the node tools that write partitions (install, upgrade, reset):
// every mount is undone and every file flushed, so a failure leaves nothing mounted and
// nothing half-written behind.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "pok8s/util/file.h"
#include "pok8s/util/process.h"

namespace pok8s::node {

// A directory made for mounts (mkdtemp under `parent`, made if missing), removed (never
// recursively: something may still be mounted below it after a failed unmount) on destruction.
class WorkDir {
 public:
  explicit WorkDir(const util::Path& parent, const std::string& prefix = "install");
  WorkDir(const WorkDir&) = delete;
  WorkDir& operator=(const WorkDir&) = delete;
  ~WorkDir();
  const util::Path& path() const { return path_; }

 private:
  util::Path path_;
};

// One partition mounted on its own new directory (nosuid, nodev, noexec); unmounted (lazily
// when busy) and the directory removed on destruction.
class Mounted {
 public:
  Mounted(const util::Path& device, const char* fstype, const util::Path& dir);
  Mounted(const Mounted&) = delete;
  Mounted& operator=(const Mounted&) = delete;
  ~Mounted();
  const util::Path& path() const { return dir_; }
  // Flushes the file system and unmounts it, reporting a failure.
  void unmount();

 private:
  util::Path dir_;
  bool mounted_ = false;
};

// Runs a tool of the image (sfdisk, mkfs.ext4); its output's last line becomes the error
// "Failed to WHAT: TOOL exited with N: …", and a missing tool is named.
void run_tool(const std::vector<std::string>& args, std::string_view what,
              const util::ProcessOptions& options = {});

// fsync(2) of a file or directory.
void fsync_path(const util::Path& path);

// Copies a regular file with sendfile(2) to a new file `to` (O_EXCL) and flushes it.
void copy_file(const util::Path& from, const util::Path& to, unsigned mode);

}  // namespace pok8s::node
