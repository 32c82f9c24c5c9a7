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

// Writes the request's files under `dir` (which must exist and be empty), parses the spec
// relative to it, and enforces `policy`. The spec's paths are absolute under `dir` afterwards.
config::BuildSpec materialize_request(const BuildRequest& request, const util::Path& dir,
                                      const RequestPolicy& policy);

// The spec as YAML with its paths relative to `dir` again: what a user downloads next to the
// request's files and runs with `pok8s build -f`.
std::string relative_spec_yaml(const config::BuildSpec& spec, const util::Path& dir);

}  // namespace pok8s::server
