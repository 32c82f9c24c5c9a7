// Child processes of the node runtime: shell commands of cloud-config steps and service
// managers, optionally confined to the target root with chroot(2).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::node {

using Environment = std::vector<std::pair<std::string, std::string>>;

// What to run: argv[0] is an absolute path or a name looked up in PATH (in the caller's view,
// before any chroot). The child gets the caller's environment plus `environment` (which wins),
// stdin from /dev/null, the caller's stdout and stderr.
struct Command {
  std::vector<std::string> argv;
  util::Path chroot_dir;  // empty or "/": no chroot
  Environment environment;
};

// Runs `command` to completion and returns its exit status (128 + N when killed by signal N).
// Throws Error(kIo) "Failed to run NAME: REASON" when it cannot be started.
int run_command(const Command& command);

// Finds `name` in PATH (or the usual sbin/bin directories); empty when it is not there.
util::Path find_program(const std::string& name);

}  // namespace pok8s::node
