// The API's build requests: untrusted JSON in, a spec confined to its own directory out.
#include "pok8s/server/build_request.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <system_error>
#include <vector>

#include "pok8s/util/error.h"

namespace pok8s::server {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kSpecSource = "the request's spec";

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

// Where a spec's path leads if it is one of the request's own: `written` with "." and empty
// components dropped and ".." applied, relative to the request's directory; nullopt when it is
// absolute or climbs out. Lexical: the answer never depends on what the server holds.
std::optional<std::string> request_relative(std::string_view written) {
  if (written.empty() || written.front() == '/') return std::nullopt;
  std::vector<std::string_view> parts;
  for (std::size_t start = 0; start <= written.size();) {
    std::size_t end = std::min(written.find('/', start), written.size());
    std::string_view part = written.substr(start, end - start);
    start = end + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (parts.empty()) return std::nullopt;
      parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  std::string out;
  for (std::string_view part : parts) {
    if (!out.empty()) out += '/';
    out += part;
  }
  return out;
}

constexpr std::string_view kNotOwnFile =
    "is not one of the request's files (a spec sent to the service names the files it sends, by "
    "relative path)";

// Why the service refuses the path `written` of the spec's `field`, or "" to accept it. Decided
// from the request alone, so that a refusal says the same of every path outside it.
std::string path_refusal(const BuildRequest& request, const RequestPolicy& policy,
                         std::string_view field, std::string_view written) {
  if (field == "base")
    return policy.allow_local_sources ? ""
                                      : "reads the server's disk; this service only builds from "
                                        "registries (docker://…)";
  std::optional<std::string> rel = request_relative(written);
  if (field == "security.keys") {
    if (rel && rel->starts_with("keysets/") && policy.keysets.contains(rel->substr(8))) return "";
    return "is not a key set of the service; name one as keysets/NAME";
  }
  if (!rel) return std::string(kNotOwnFile);
  // keysets/ holds private keys: they sign, they never go into an image.
  if (*rel == "keysets" || rel->starts_with("keysets/"))
    return "is in keysets/, which only security.keys may name (key sets sign, they never go "
           "into an image)";
  if (request.files.contains(*rel)) return "";
  if (field == "toppings.manifests" && !rel->empty()) {
    std::string prefix = *rel + "/";
    auto it = request.files.lower_bound(prefix);
    if (it != request.files.end() && it->first.starts_with(prefix)) return "";
  }
  return std::string(kNotOwnFile);
}

// The spec of a request is parsed with its paths held to the policy and named as written.
config::SpecParseOptions request_parse_options(const BuildRequest& request,
                                               const RequestPolicy& policy, bool check_files) {
  config::SpecParseOptions options;
  options.check_path = [&request, &policy](std::string_view field, std::string_view written) {
    return path_refusal(request, policy, field, written);
  };
  options.check_files = check_files;
  options.relative_messages = true;
  return options;
}

// `message` without the request's directory: a client knows its files by relative path only.
std::string without_dir(std::string message, const util::Path& dir) {
  std::string d = dir.lexically_normal().string();
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  if (d.size() <= 1) return message;
  for (const std::string& needle : {d + "/", d}) {
    for (std::size_t at = message.find(needle); at != std::string::npos;
         at = message.find(needle, at))
      message.replace(at, needle.size(), needle == d ? "." : "");
  }
  return message;
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

config::BuildSpec parse_request_spec(const BuildRequest& request, const util::Path& dir,
                                     const RequestPolicy& policy) {
  return config::parse_build_spec(request.spec, kSpecSource, dir,
                                  request_parse_options(request, policy, false));
}

config::BuildSpec materialize_request(const BuildRequest& request, const util::Path& dir,
                                      const RequestPolicy& policy) {
  // The names were checked when the request was parsed; a request read back from the database
  // is held to the same rule before anything is written with it.
  RequestLimits any_size;
  any_size.max_name_bytes = any_size.max_depth = std::numeric_limits<std::size_t>::max();
  for (const auto& [name, _] : request.files) check_request_file_name(name, any_size);

  // Every path is held to the policy before anything on disk is touched, and only then are
  // the files written and looked at: by then they are files the service wrote itself.
  config::BuildSpec spec = parse_request_spec(request, dir, policy);
  try {
    for (const auto& [name, text] : request.files) {
      util::Path p = dir / name;
      util::make_dirs(p.parent_path());
      util::write_file_atomic(p, text, 0644);
    }
    if (!spec.security.keys.empty()) {
      // The policy let through keysets/NAME of a key set it holds, perhaps with a trailing '/'.
      std::string keys = spec.security.keys;
      while (keys.ends_with('/')) keys.pop_back();
      std::string name = util::Path(keys).filename().string();
      auto target = policy.keysets.find(name);
      if (target == policy.keysets.end())
        throw Error(
            ErrorKind::kInternal,
            fmt::format("Failed to link key set {}: the policy holds no such key set", name));
      util::make_dirs(dir / "keysets");
      std::error_code ec;
      fs::create_directory_symlink(target->second, dir / "keysets" / name, ec);
      if (ec)
        throw Error(ErrorKind::kIo,
                    fmt::format("Failed to link key set {}: {}", name, ec.message()));
    }
    return config::parse_build_spec(request.spec, kSpecSource, dir,
                                    request_parse_options(request, policy, true));
  } catch (const Error& e) {
    throw Error(e.kind(), without_dir(e.what(), dir));
  }
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
