// Running the image's own tools (its package manager, systemctl, rc-update) inside an unpacked
// tree: private mount and pid namespaces, chroot, a minimal /proc /sys /dev, tmpfs on /tmp and
// /run, and the host's resolv.conf, so nothing the tools do reaches the host.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::convert {

struct SandboxOptions {
  std::map<std::string, std::string> env;  // added to a minimal PATH/HOME/LANG environment
  util::Path resolv_conf = "/etc/resolv.conf";
  std::function<void(std::string_view line)> output;  // each line the command prints
};

struct SandboxResult {
  int exit_code = 0;  // the command's, or 128 + signal
  std::string tail;   // its last lines of output, for messages
};

// Runs `argv` (looked up on PATH inside the root) chrooted in `root`. Needs root privileges:
// throws kUnsupported otherwise, and kIo when the sandbox cannot be set up.
SandboxResult run_in_root(const util::Path& root, const std::vector<std::string>& argv,
                          const SandboxOptions& options);

// As run_in_root, but a non-zero exit is an Error naming `what` and the output's last lines.
void run_in_root_checked(const util::Path& root, const std::vector<std::string>& argv,
                         const SandboxOptions& options, std::string_view what);

}  // namespace pok8s::convert
