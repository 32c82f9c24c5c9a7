// Family detection from os-release(5) fields.
#include "pok8s/convert/family.h"

#include <fmt/format.h>

#include <optional>
#include <sstream>

#include "pok8s/util/error.h"

namespace pok8s::convert {

namespace {

struct FamilyRow {
  std::string_view id;
  Family family;
};

// IDs as distributions ship them in os-release. Order does not matter: one ID, one family.
constexpr FamilyRow kIds[] = {
    {"debian", Family::kDebian},
    {"raspbian", Family::kDebian},
    {"ubuntu", Family::kUbuntu},
    {"alpine", Family::kAlpine},
    {"fedora", Family::kFedora},
    {"rhel", Family::kRhel},
    {"centos", Family::kRhel},
    {"rocky", Family::kRhel},
    {"almalinux", Family::kRhel},
    {"ol", Family::kRhel},
    {"opensuse", Family::kOpensuse},
    {"opensuse-leap", Family::kOpensuse},
    {"opensuse-tumbleweed", Family::kOpensuse},
    {"sles", Family::kOpensuse},
    {"suse", Family::kOpensuse},
    {"arch", Family::kArch},
    {"archarm", Family::kArch},
};

std::optional<Family> lookup(std::string_view id) {
  for (const auto& row : kIds)
    if (row.id == id) return row.family;
  return std::nullopt;
}

std::string field(const std::map<std::string, std::string>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? std::string() : it->second;
}

}  // namespace

std::string_view family_name(Family family) {
  switch (family) {
    case Family::kDebian:
      return "debian";
    case Family::kUbuntu:
      return "ubuntu";
    case Family::kAlpine:
      return "alpine";
    case Family::kFedora:
      return "fedora";
    case Family::kRhel:
      return "rhel";
    case Family::kOpensuse:
      return "opensuse";
    case Family::kArch:
      return "arch";
  }
  return "?";
}

Distro detect_distro(const std::map<std::string, std::string>& os_release, std::string_view image) {
  Distro d;
  d.id = field(os_release, "ID");
  d.pretty = field(os_release, "PRETTY_NAME");
  d.release = field(os_release, "VERSION_ID");
  if (d.release.empty()) d.release = field(os_release, "VERSION_CODENAME");
  if (d.release.empty()) d.release = field(os_release, "BUILD_ID");
  if (d.id.empty())
    throw Error(
        ErrorKind::kInvalidInput,
        fmt::format("Failed to detect the distribution of {}: its os-release has no ID", image));
  if (auto f = lookup(d.id)) {
    d.family = *f;
    return d;
  }
  std::string like = field(os_release, "ID_LIKE");
  std::istringstream words(like);
  for (std::string w; words >> w;) {
    if (auto f = lookup(w)) {
      d.family = *f;
      return d;
    }
  }
  throw Error(
      ErrorKind::kUnsupported,
      fmt::format(
          "Failed to detect the distribution of {}: ID=\"{}\" ID_LIKE=\"{}\" is not a family "
          "pok8s converts (debian, ubuntu, alpine, fedora, rhel, opensuse, arch)",
          image, d.id, like));
}

}  // namespace pok8s::convert
