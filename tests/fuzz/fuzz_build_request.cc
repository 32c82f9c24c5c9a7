// libFuzzer target: the bodies of POST /api/v1/builds come from any client of the service, and
// the spec in them names paths on a server it must not learn anything about.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "pok8s/server/build_request.h"
#include "pok8s/util/error.h"

namespace {

// The spec of an accepted request is held to the service's policy without a look at the disk
// (the directory does not exist): every path it keeps lies inside the request's directory, key
// sets are named only by security.keys, and no message names the directory unless the spec did.
void check_spec_policy(const pok8s::server::BuildRequest& request) {
  const std::string dir = "/nonexistent/pok8s-fuzz-request";
  pok8s::server::RequestPolicy policy;
  policy.keysets = {{"prod", "/nonexistent/pok8s-fuzz-keys/prod"}};
  pok8s::config::BuildSpec spec;
  try {
    spec = pok8s::server::parse_request_spec(request, dir, policy);
  } catch (const pok8s::Error& e) {
    if (std::string_view(e.what()).find(dir) != std::string_view::npos &&
        request.spec.find(dir) == std::string::npos)
      __builtin_trap();
    return;
  }
  auto own = [&](const std::string& path) {
    if (!path.starts_with(dir + "/") || path.find("/../") != std::string::npos ||
        path.starts_with(dir + "/keysets/") || path == dir + "/keysets")
      __builtin_trap();
  };
  if (!spec.cloud_config.empty()) own(spec.cloud_config);
  if (!spec.security.splash.empty()) own(spec.security.splash);
  for (const auto& m : spec.toppings.manifests) own(m.string());
  if (!spec.kubernetes.binary.empty() && !spec.kubernetes.binary.starts_with("http://") &&
      !spec.kubernetes.binary.starts_with("https://"))
    own(spec.kubernetes.binary);
  if (!spec.security.keys.empty() && spec.security.keys != dir + "/keysets/prod" &&
      spec.security.keys != dir + "/keysets/prod/")
    __builtin_trap();
  if (!spec.base.starts_with("docker://")) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  pok8s::server::RequestLimits limits;
  try {
    auto request = pok8s::server::parse_build_request(body, limits);
    // What was accepted is written under a directory of the service's: every name must stay
    // inside it, and the request must survive its own JSON (the clone-and-edit round trip).
    if (request.spec.empty() || request.files.size() > limits.max_files) __builtin_trap();
    for (const auto& [name, text] : request.files) {
      if (name.empty() || name.front() == '/' || name.find("//") != std::string::npos ||
          name == "keysets" || name.starts_with("keysets/") || text.size() > limits.max_file_bytes)
        __builtin_trap();
      // No component may be "." or ".." ("..yaml" is a file name like any other).
      for (std::size_t start = 0; start <= name.size();) {
        std::size_t end = std::min(name.find('/', start), name.size());
        std::string_view part = std::string_view(name).substr(start, end - start);
        if (part == "." || part == "..") __builtin_trap();
        start = end + 1;
      }
      pok8s::server::check_request_file_name(name, limits);
    }
    auto again = pok8s::server::parse_build_request(
        pok8s::server::build_request_json(request).dump(), limits);
    if (again.spec != request.spec || again.files != request.files) __builtin_trap();
    check_spec_policy(request);
  } catch (const pok8s::Error&) {
  }
  return 0;
}
