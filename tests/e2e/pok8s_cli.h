// Running the pok8s binary from end-to-end tests, as a user would.
#pragma once

#include <sys/file.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "pok8s/util/file.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"

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

// The tag `pok8s convert` gives the Debian fixture converted as `version` (standard, amd64).
inline std::string converted_tag(const std::string& version) {
  return "12-standard-amd64-generic-" + version;
}

// The fixture tarball `tar` imported into the OCI layout `layout` (as "base") and converted, as
// the standard variant with k3s (a fake binary in `work`) and version `version`, in the cache
// `work`/cache: the converted image's tag, or empty with what failed in `error`.
inline std::string convert_fixture(const std::string& tar, const util::Path& work,
                                   const util::Path& layout, const std::string& version,
                                   std::string& error) {
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
  return converted_tag(version);
}

// The Debian fixture converted as `version` (convert_fixture) and put in `layout` under its tag.
// Every e2e test converted the same fixture with the same binaries, which gives the same bytes
// (conversions are reproducible), so the converted layout is kept beside the fixture, named by
// the sha256 of what the conversion reads: a rebuilt binary converts again. `pok8s image copy`
// puts the image in `layout`. Tests run in parallel: one converts, the others wait on the lock.
inline std::string convert_debian_fixture(const util::Path& work, const util::Path& layout,
                                          const std::string& version, std::string& error) {
  std::string tar = debian_fixture(error);
  if (tar.empty()) return {};
  util::Path cache = util::Path(tar).parent_path();
  // What the conversion reads: the fixture, pok8s and the node binaries beside it (they go into
  // the image), and the data files of the source tree.
  std::string inputs = util::file_sha256(tar) + version;
  for (const util::Path& dir : {util::Path(pok8s_binary()).parent_path(),
                                util::Path(POK8S_TEST_SOURCE_DIR) / "share" / "pok8s"}) {
    std::vector<util::Path> files;
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
      if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) inputs += f.string() + "=" + util::file_sha256(f) + "\n";
  }
  util::Path kept = cache / ("converted-" + version + "-" + util::sha256_hex(inputs).substr(0, 16));
  std::string tag = converted_tag(version);
  util::UniqueFd lock = util::open_file(cache / ".lock-converted", O_RDWR | O_CREAT);
  if (::flock(lock.get(), LOCK_EX) != 0) {
    error = "flock " + (cache / ".lock-converted").string() + " failed";
    return {};
  }
  // `kept` appears only complete, by the rename.
  if (!std::filesystem::exists(kept)) {
    // Older conversions of this version (other binaries) go.
    for (const auto& e : std::filesystem::directory_iterator(cache))
      if (e.path().filename().string().starts_with("converted-" + version + "-"))
        std::filesystem::remove_all(e.path());
    util::Path partial = kept.string() + ".partial";  // a killed run's went with the others
    util::make_dirs(partial);
    if (convert_fixture(tar, partial, partial / "layout", version, error).empty()) {
      std::filesystem::remove_all(partial);
      return {};
    }
    std::filesystem::remove_all(partial / "cache");
    std::filesystem::rename(partial, kept);
  }
  auto r = run_pok8s((work / "cache").string(),
                     {"image", "copy", "oci:" + (kept / "layout").string() + ":" + tag,
                      "oci:" + layout.string() + ":" + tag});
  if (r.status != 0) {
    error = "copying the converted fixture failed:\n" + r.output;
    return {};
  }
  return tag;
}

}  // namespace pok8s::testing
