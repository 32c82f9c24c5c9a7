#include "pok8s/convert/sysimage_bundle.h"

#include <fmt/format.h>

#include <sstream>

#include "pok8s/node/upgrade.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

namespace pok8s::convert {

std::vector<std::pair<std::string, std::string>> parse_ldd(std::string_view ldd_output,
                                                           std::string_view binary) {
  std::vector<std::pair<std::string, std::string>> libs;
  std::istringstream in{std::string(ldd_output)};
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string first, arrow, path;
    words >> first >> arrow;
    if (first.empty() || first.starts_with("linux-vdso") || first.starts_with("linux-gate"))
      continue;
    if (arrow == "=>") {
      words >> path;
      if (path == "not" || path.empty() || path[0] != '/')
        throw Error(
            ErrorKind::kNotFound,
            fmt::format("Failed to bundle {}: the host has no {} (ldd: {})", binary, first, line));
      libs.emplace_back(first, path);
    } else if (first[0] == '/') {
      // The dynamic loader, named by its absolute path.
      libs.emplace_back(util::Path(first).filename().string(), first);
    }
  }
  return libs;
}

namespace {

std::vector<BundledFile> bundle(const util::Path& binary, std::string_view dir_abs,
                                std::string_view name) {
  auto r = util::run_process({"ldd", binary.string()});
  if (r.status != 0)
    throw Error(ErrorKind::kIo, fmt::format("Failed to list the libraries of {}: ldd: {}",
                                            binary.string(), util::last_line(r.output)));
  std::string dir(dir_abs.substr(1));
  std::vector<BundledFile> files{{fmt::format("{}/{}", dir, name), binary}};
  for (auto& [lib, path] : parse_ldd(r.output, binary.string()))
    files.push_back({fmt::format("{}/lib/{}", dir, lib), path});
  return files;
}

}  // namespace

std::vector<BundledFile> sysimage_bundle(const util::Path& binary) {
  return bundle(binary, node::kSysimageDir, node::kSysimageBinary);
}

std::vector<BundledFile> luks_bundle(const util::Path& binary) {
  return bundle(binary, node::kLuksDir, node::kLuksBinary);
}

}  // namespace pok8s::convert
