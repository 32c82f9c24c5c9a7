// Finding pok8s's own files relative to the running executable.
#include "pok8s/util/install_paths.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <vector>

#include "pok8s/util/error.h"

namespace pok8s::util {
namespace {

Path exe_dir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? Path() : exe.parent_path();
}

bool is_dir(const Path& p) {
  std::error_code ec;
  return std::filesystem::is_directory(p, ec);
}

}  // namespace

Path data_dir() {
  if (const char* env = std::getenv("POK8S_DATA_DIR"); env && *env) return Path(env);
  if (auto exe = exe_dir(); !exe.empty() && is_dir(exe / "../share/pok8s/recipes"))
    return (exe / "../share/pok8s").lexically_normal();
#ifdef POK8S_SOURCE_DATA_DIR
  return Path(POK8S_SOURCE_DATA_DIR);
#else
  throw Error(ErrorKind::kNotFound,
              "Failed to find pok8s's data: set POK8S_DATA_DIR to the share/pok8s directory");
#endif
}

Path web_dir() {
  if (const char* env = std::getenv("POK8S_WEB_DIR"); env && *env) return Path(env);
  if (auto exe = exe_dir(); !exe.empty() && is_dir(exe / "../share/pok8s/web"))
    return (exe / "../share/pok8s/web").lexically_normal();
#ifdef POK8S_SOURCE_WEB_DIR
  return Path(POK8S_SOURCE_WEB_DIR);
#else
  return data_dir() / "web";
#endif
}

Path node_binary(std::string_view name) {
  std::vector<Path> candidates;
  if (const char* env = std::getenv("POK8S_LIBEXEC_DIR"); env && *env)
    candidates.push_back(Path(env) / name);
  if (auto exe = exe_dir(); !exe.empty()) {
    candidates.push_back(exe / name);
    candidates.push_back((exe / "../lib/pok8s" / name).lexically_normal());
  }
#ifdef POK8S_BUILD_BIN_DIR
  candidates.push_back(Path(POK8S_BUILD_BIN_DIR) / name);
#endif
  std::string looked;
  for (const auto& c : candidates) {
    if (::access(c.c_str(), X_OK) == 0) return c;
    looked += (looked.empty() ? "" : ", ") + c.string();
  }
  throw Error(ErrorKind::kNotFound,
              fmt::format("Failed to find {}: not in {} (set POK8S_LIBEXEC_DIR)", name, looked));
}

}  // namespace pok8s::util
