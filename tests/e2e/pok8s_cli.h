// Running the pok8s binary from end-to-end tests, as a user would.
#pragma once

#include <cstdlib>
#include <string>
#include <vector>

#include "pok8s/util/file.h"
#include "pok8s/util/process.h"

extern char** environ;

namespace pok8s::testing {

inline std::string pok8s_binary() {
  const char* b = std::getenv("POK8S_BIN");
  return b ? b : POK8S_TEST_BIN;
}

// Runs `pok8s --cache CACHE ARGS...` with SOURCE_DATE_EPOCH set (and the caller's environment).
inline util::ProcessResult run_pok8s(const std::string& cache, std::vector<std::string> args,
                                     const std::string& source_date_epoch = "1700000000") {
  std::vector<std::string> argv = {pok8s_binary(), "--cache", cache};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e)
    if (!std::string_view(*e).starts_with("SOURCE_DATE_EPOCH=")) env.emplace_back(*e);
  if (!source_date_epoch.empty()) env.push_back("SOURCE_DATE_EPOCH=" + source_date_epoch);
  return util::run_process(argv, {.env = env, .output_limit = 4u << 20});
}

// The Debian bookworm fixture tarball (made with mmdebstrap, cached): its path, or empty with
// the script's output in `error`.
inline std::string debian_fixture(std::string& error) {
  auto r = util::run_process(
      {"bash", std::string(POK8S_TEST_SOURCE_DIR) + "/tests/fixtures/debian-base.sh"});
  if (r.status != 0) {
    error = "the Debian fixture failed:\n" + r.output;
    return {};
  }
  return util::last_line(r.output);
}

// The Debian fixture imported into the OCI layout `layout` (as "base") and converted, as the
// standard variant with k3s (a fake binary in `work`) and version `version`, in the cache
// `work`/cache: the converted image's tag, or empty with what failed in `error`.
inline std::string convert_debian_fixture(const util::Path& work, const util::Path& layout,
                                          const std::string& version, std::string& error) {
  std::string tar = debian_fixture(error);
  if (tar.empty()) return {};
  std::string cache = (work / "cache").string();
  std::string oci = "oci:" + layout.string();
  util::write_file_atomic(work / "fake-k3s", "#!/bin/sh\necho 'k3s version v1.31.2+k3s1'\n", 0755);
  auto r = run_pok8s(cache, {"image", "import", tar, oci + ":base"});
  if (r.status != 0) {
    error = "import failed:\n" + r.output;
    return {};
  }
  r = run_pok8s(cache, {"convert", oci + ":base", oci, "--version", version, "--variant",
                        "standard", "--k8s", "k3s", "--k8s-version", "v1.31.2+k3s1", "--k8s-binary",
                        (work / "fake-k3s").string()});
  if (r.status != 0) {
    error = "convert failed:\n" + r.output;
    return {};
  }
  return "12-standard-amd64-generic-" + version;
}

}  // namespace pok8s::testing
