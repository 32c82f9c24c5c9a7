// Which distribution family a base image belongs to, read from its /etc/os-release: the
// first decision of `pok8s convert`, since each family has its own package manager and recipe.
#pragma once

#include <map>
#include <string>
#include <string_view>

namespace pok8s::convert {

enum class Family { kDebian, kUbuntu, kAlpine, kFedora, kRhel, kOpensuse, kArch };

std::string_view family_name(Family family);

struct Distro {
  Family family = Family::kDebian;
  std::string id;       // os-release ID as found ("rocky", "debian")
  std::string release;  // VERSION_ID, or VERSION_CODENAME / BUILD_ID when there is none
  std::string pretty;   // PRETTY_NAME for messages
};

// Detects the family from ID, then from each word of ID_LIKE in order (so "rocky" with
// ID_LIKE="rhel centos fedora" is rhel). Throws kUnsupported naming ID and ID_LIKE when no
// family matches, and kInvalidInput when os-release has no ID at all.
Distro detect_distro(const std::map<std::string, std::string>& os_release, std::string_view image);

}  // namespace pok8s::convert
