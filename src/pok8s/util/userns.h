// Working without root: pok8s runs itself again as root of a new user namespace in which the
// caller's subordinate ids (/etc/subuid, /etc/subgid) stand for the image's other users and
// groups, so a package manager can chown files to them and drop privileges to its own user.
// Rootless podman and buildah arrange the same with the same setuid helpers (newuidmap,
// newgidmap from the uidmap package).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pok8s::util {

struct SubidRange {
  std::uint32_t start = 0;
  std::uint32_t count = 0;
};

// The first range of `user` (its name, or `id` as digits) in the text of /etc/subuid or
// /etc/subgid ("name:start:count" lines); malformed lines are skipped, as shadow's tools do.
std::optional<SubidRange> find_subid_range(std::string_view text, std::string_view user,
                                           std::uint32_t id);

// True when this process is in a user namespace other than the initial one: it may be uid 0,
// but cannot create device nodes or mount sysfs.
bool in_user_namespace();

// Runs this program again with `argv` as root of a new user namespace that maps the caller's
// uid and gid to 0 and its subordinate ranges to 1, 2, ...; waits for it and returns its exit
// status. Throws kUnsupported naming what is missing (a subordinate range, newuidmap, a
// kernel that allows unprivileged user namespaces), before anything is run.
int run_self_in_user_namespace(const std::vector<std::string>& argv);

}  // namespace pok8s::util
