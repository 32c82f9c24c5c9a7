// The API's build requests: untrusted JSON in, a spec confined to its own directory out.
#include "pok8s/server/build_request.h"

#include <fmt/format.h>

#include "pok8s/oci/reference.h"
#include "pok8s/util/error.h"

namespace pok8s::server {
namespace fs = std::filesystem;
namespace {

[[noreturn]] void refuse(const std::string& what) {
  throw Error(ErrorKind::kInvalidInput, "Failed to read the build request: " + what);
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

// Whether `p` (absolute, made so by the spec parser) lies inside `dir`, with no symlink to follow:
// the request's files are regular files we wrote, and `keysets/` holds our own links.
bool inside(const util::Path& p, const util::Path& dir) {
  auto rel = p.lexically_normal().lexically_relative(dir.lexically_normal());
  return !rel.empty() && *rel.begin() != ".." && !rel.is_absolute();
}

}  // namespace

void check_request_file_name(std::string_view name, const RequestLimits& limits) {
  auto bad = [&](std::string_view why) {
    refuse(fmt::format("files: {:?} {}", std::string(name.substr(0, 100)), why));
  };
  if (name.empty()) bad("is empty");
  if (name.size() > limits.max_name_bytes)
    bad(fmt::format("is longer than {} bytes", limits.max_name_bytes));
  if (name.front() == '/') bad("is an absolute path; name files relative to the spec");
  std::size_t depth = 0;
  std::size_t start = 0;
  while (start <= name.size()) {
    std::size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view part = name.substr(start, end - start);
    if (part.empty()) bad("has an empty path component");
    if (part == "." || part == "..") bad("has a \".\" or \"..\" component");
    for (char c : part)
      if (!is_name_char(c)) bad("may only hold letters, digits, '.', '_', '-' and '/'");
    if (++depth > limits.max_depth) bad(fmt::format("is deeper than {} levels", limits.max_depth));
    start = end + 1;
  }
  if (name.starts_with("keysets/") || name == "keysets") bad("is reserved for key sets");
}

BuildRequest build_request_from_json(const nlohmann::json& j, const RequestLimits& limits) {
  if (!j.is_object()) refuse("the body must be a JSON object with \"spec\" and \"files\"");
  BuildRequest r;
  for (const auto& [key, value] : j.items()) {
    if (key == "spec") {
      if (!value.is_string()) refuse("spec must be a string (the build spec as YAML or JSON)");
      r.spec = value.get<std::string>();
    } else if (key == "files") {
      if (!value.is_object()) refuse("files must be an object of file name to text");
      if (value.size() > limits.max_files)
        refuse(fmt::format("files: more than {} files", limits.max_files));
      for (const auto& [name, content] : value.items()) {
        check_request_file_name(name, limits);
        if (!content.is_string())
          refuse(fmt::format("files: {:?} must be a string (the file's text)", name));
        const auto& text = content.get_ref<const std::string&>();
        if (text.size() > limits.max_file_bytes)
          refuse(fmt::format("files: {:?} is larger than {} bytes", name, limits.max_file_bytes));
        r.files.emplace(name, text);
      }
    } else {
      refuse(fmt::format("unknown key {:?} (expected \"spec\" and \"files\")", key));
    }
  }
  if (r.spec.empty()) refuse("spec is missing or empty");
  if (r.spec.size() > config::kMaxBuildSpecBytes)
    refuse(fmt::format("spec is larger than {} bytes", config::kMaxBuildSpecBytes));
  // A file that is also a directory of another ("a" and "a/b") cannot be written.
  for (const auto& [name, _] : r.files) {
    auto it = r.files.lower_bound(name + "/");
    if (it != r.files.end() && it->first.starts_with(name + "/"))
      refuse(fmt::format("files: {:?} is both a file and a directory", name));
  }
  return r;
}

BuildRequest parse_build_request(std::string_view body, const RequestLimits& limits) {
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) refuse("the body is not JSON");
  return build_request_from_json(j, limits);
}

nlohmann::json build_request_json(const BuildRequest& request) {
  return {{"spec", request.spec}, {"files", request.files}};
}

config::BuildSpec materialize_request(const BuildRequest& request, const util::Path& dir,
                                      const RequestPolicy& policy) {
  for (const auto& [name, text] : request.files) {
    util::Path p = dir / name;
    util::make_dirs(p.parent_path());
    util::write_file_atomic(p, text, 0644);
  }
  if (!policy.keysets.empty()) {
    util::make_dirs(dir / "keysets");
    for (const auto& [name, path] : policy.keysets)
      fs::create_directory_symlink(path, dir / "keysets" / name);
  }
  config::BuildSpec spec = config::parse_build_spec(request.spec, "the request's spec", dir);

  auto policy_error = [&](std::string_view field, std::string_view why) {
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read build spec the request's spec: {}: {}", field, why));
  };
  auto own_file = [&](std::string_view field, const util::Path& p) {
    // keysets/ holds private keys: they sign, they never go into an image.
    if (!inside(p, dir) || inside(p, dir / "keysets"))
      policy_error(field, fmt::format("{} is not one of the request's files (a spec sent to the "
                                      "service names the files it sends, by relative path)",
                                      p.string()));
  };
  if (!spec.cloud_config.empty()) own_file("cloudConfig", spec.cloud_config);
  for (const auto& m : spec.toppings.manifests) own_file("toppings.manifests", m);
  if (!spec.kubernetes.binary.empty() && !spec.kubernetes.binary.starts_with("http://") &&
      !spec.kubernetes.binary.starts_with("https://"))
    own_file("kubernetes.binary", spec.kubernetes.binary);
  if (!spec.security.keys.empty()) {
    util::Path keys(spec.security.keys);
    if (!inside(keys, dir / "keysets") || keys.parent_path() != dir / "keysets")
      policy_error("security.keys", "name a key set of the service as keysets/NAME");
  }
  auto base = oci::ImageName::parse(spec.base);
  if (base.transport != oci::Transport::kDocker && !policy.allow_local_sources)
    policy_error("base", fmt::format("{} reads the server's disk; this service only builds from "
                                     "registries (docker://…)",
                                     spec.base));
  return spec;
}

std::string relative_spec_yaml(const config::BuildSpec& spec, const util::Path& dir) {
  config::BuildSpec s = spec;
  auto rel = [&](const util::Path& p) {
    return inside(p, dir) ? p.lexically_normal().lexically_relative(dir.lexically_normal()) : p;
  };
  if (!s.cloud_config.empty()) s.cloud_config = rel(s.cloud_config).string();
  for (auto& m : s.toppings.manifests) m = rel(m);
  if (!s.security.keys.empty()) s.security.keys = rel(s.security.keys).string();
  if (!s.kubernetes.binary.empty() && s.kubernetes.binary.front() == '/')
    s.kubernetes.binary = rel(s.kubernetes.binary).string();
  return config::to_yaml(s);
}

}  // namespace pok8s::server
