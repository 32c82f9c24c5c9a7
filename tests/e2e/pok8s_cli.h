// Running the pok8s binary from end-to-end tests, as a user would.
#pragma once

#include <cstdlib>
#include <string>
#include <vector>

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

}  // namespace pok8s::testing
