// What the API accepts as a build: a build spec and the files it names, from an untrusted
// client. Parsed with limits, written into a directory of its own, and held to the service's
// policy: a spec may only name files of its own request, never a path on the server.
#pragma once

#include <cstddef>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "pok8s/config/build_spec.h"
#include "pok8s/util/file.h"

namespace pok8s::server {

struct RequestLimits {
  std::size_t max_files = 64;
  std::size_t max_file_bytes = 4u << 20;
  std::size_t max_name_bytes = 200;
  std::size_t max_depth = 4;
};

struct BuildRequest {
  std::string spec;                          // YAML (JSON is YAML too)
  std::map<std::string, std::string> files;  // relative path -> text
};

// {"spec": "…", "files": {"cloud-config.yaml": "…"}}. kInvalidInput naming the key or file.
BuildRequest parse_build_request(std::string_view body, const RequestLimits& limits);
BuildRequest build_request_from_json(const nlohmann::json& j, const RequestLimits& limits);
nlohmann::json build_request_json(const BuildRequest& request);

// Refuses a file name that is not a plain relative path: empty, absolute, a "." or ".."
// component, characters outside [A-Za-z0-9._-] in a component, too long or too deep.
void check_request_file_name(std::string_view name, const RequestLimits& limits);

struct RequestPolicy {
  bool allow_local_sources = false;  // bases other than docker://, read from the server's disk
  // Key sets a spec may name as security.keys "keysets/NAME".
  std::map<std::string, util::Path> keysets;
};

// Parses the spec as if its files were under `dir` and holds every path it names to `policy`,
// touching nothing on disk: a path must be relative and name one of the request's files (or,
// for toppings.manifests, a directory of them); security.keys must be "keysets/NAME" of a key
// set in the policy, and nothing else may name keysets/; a local base needs
// allow_local_sources. Errors name the field and the path as written, never `dir`. The spec's
// paths are absolute under `dir` afterwards, not yet checked on disk.
config::BuildSpec parse_request_spec(const BuildRequest& request, const util::Path& dir,
                                     const RequestPolicy& policy);

// parse_request_spec, then writes the request's files under `dir` (which must exist and be
// empty) with a link to the key set it names, and checks the files on disk (kinds, sizes,
// manifest directories). The spec's paths are absolute under `dir` afterwards. No error names
// `dir` or a path of the server.
config::BuildSpec materialize_request(const BuildRequest& request, const util::Path& dir,
                                      const RequestPolicy& policy);

// The spec as YAML with its paths relative to `dir` again: what a user downloads next to the
// request's files and runs with `pok8s build -f`.
std::string relative_spec_yaml(const config::BuildSpec& spec, const util::Path& dir);

}  // namespace pok8s::server
