#include "pok8s/node/mounts.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "pok8s/node/command.h"
#include "pok8s/util/error.h"

namespace pok8s::node {

using util::UniqueFd;

WorkDir::WorkDir(const util::Path& parent, const std::string& prefix) {
  util::make_dirs(parent);
  std::string templ = (parent / (prefix + ".XXXXXX")).string();
  if (!::mkdtemp(templ.data()))
    throw_errno("Failed to create a directory in " + parent.string(), errno);
  path_ = templ;
}

WorkDir::~WorkDir() {
  ::rmdir(path_.c_str());
}

Mounted::Mounted(const util::Path& device, const char* fstype, const util::Path& dir) : dir_(dir) {
  if (::mkdir(dir.c_str(), 0700) != 0) throw_errno("Failed to create " + dir.string(), errno);
  if (::mount(device.c_str(), dir.c_str(), fstype, MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) !=
      0) {
    int err = errno;
    ::rmdir(dir.c_str());
    throw_errno(fmt::format("Failed to mount {} ({}) on {}", device.string(), fstype, dir.string()),
                err);
  }
  mounted_ = true;
}

Mounted::~Mounted() {
  if (mounted_ && ::umount(dir_.c_str()) != 0) ::umount2(dir_.c_str(), MNT_DETACH);
  ::rmdir(dir_.c_str());
}

void Mounted::unmount() {
  UniqueFd fd(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.valid() && ::syncfs(fd.get()) != 0) throw_errno("Failed to flush " + dir_.string(), errno);
  fd.reset();
  if (::umount(dir_.c_str()) != 0) throw_errno("Failed to unmount " + dir_.string(), errno);
  mounted_ = false;
}

void run_tool(const std::vector<std::string>& args, std::string_view what,
              const util::ProcessOptions& options) {
  if (find_program(args[0]).empty())
    throw Error(ErrorKind::kNotFound, fmt::format("Failed to {}: {} is not installed (not found "
                                                  "in PATH)",
                                                  what, args[0]));
  auto r = util::run_process(args, options);
  if (r.status != 0)
    throw Error(ErrorKind::kIo, fmt::format("Failed to {}: {} exited with {}: {}", what, args[0],
                                            r.status, util::last_line(r.output)));
}

void fsync_path(const util::Path& path) {
  UniqueFd fd = util::open_file(path, O_RDONLY | O_CLOEXEC);
  if (::fsync(fd.get()) != 0) throw_errno("Failed to flush " + path.string(), errno);
}

void copy_file(const util::Path& from, const util::Path& to, unsigned mode) {
  UniqueFd in = util::open_file(from, O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (::fstat(in.get(), &st) != 0) throw_errno("Failed to read " + from.string(), errno);
  UniqueFd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!out.valid()) throw_errno("Failed to create " + to.string(), errno);
  auto left = static_cast<std::uint64_t>(st.st_size);
  while (left > 0) {
    std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(left, 1u << 30));
    ssize_t n = ::sendfile(out.get(), in.get(), nullptr, chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      throw_errno(fmt::format("Failed to copy {} to {}", from.string(), to.string()), errno);
    if (n == 0)
      throw Error(ErrorKind::kIo, fmt::format("Failed to copy {}: it ended early", from.string()));
    left -= static_cast<std::uint64_t>(n);
  }
  if (::fchmod(out.get(), mode) != 0)
    throw_errno("Failed to set the mode of " + to.string(), errno);
  if (::fsync(out.get()) != 0) throw_errno("Failed to write " + to.string(), errno);
}

}  // namespace pok8s::node
