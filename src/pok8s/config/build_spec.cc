// The build spec's strict parser (on StrictYaml, like cloud-config), what the engine cannot
// build yet, the canonical form that gives the build id, and the YAML a person reads back.
#include "pok8s/config/build_spec.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <limits>
#include <map>
#include <set>
#include <system_error>
#include <utility>

#include "pok8s/config/cloud_config.h"
#include "pok8s/config/strict_yaml.h"
#include "pok8s/oci/reference.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::config {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kApiVersion = "pok8s/v1";
constexpr std::string_view kKind = "Build";

constexpr std::string_view kTopLevelKeys[] = {
    "apiVersion", "kind",     "base",     "arch",     "model",     "variant",     "version",
    "kubernetes", "packages", "toppings", "security", "artifacts", "cloudConfig", "compression"};
constexpr std::string_view kKubernetesKeys[] = {"distribution", "version", "binary", "sha256"};
constexpr std::string_view kToppingsKeys[] = {"manifests", "wireguard", "cluster"};
constexpr std::string_view kWireGuardKeys[] = {"interface", "address", "listenPort", "privateKey",
                                               "peers"};
constexpr std::string_view kPeerKeys[] = {"publicKey", "endpoint", "allowedIPs",
                                          "persistentKeepalive", "presharedKey"};
constexpr std::string_view kClusterKeys[] = {"server", "token", "caHash"};
constexpr std::string_view kSecurityKeys[] = {"trustedBoot", "encryption", "keys", "splash"};
constexpr std::uint64_t kMaxSplashBytes = 16u << 20;
constexpr std::string_view kCompressionKeys[] = {"algorithm", "level"};

constexpr std::string_view kArches[] = {"amd64", "arm64"};
constexpr std::string_view kModels[] = {"generic"};
constexpr std::string_view kVariants[] = {"core", "standard"};
constexpr std::string_view kDistributions[] = {"none", "k3s", "k0s"};
constexpr std::string_view kEncryptions[] = {"none", "tpm", "passphrase"};
constexpr std::string_view kArtifacts[] = {"iso", "raw",     "qcow2",  "vhd",
                                           "uki", "uki-iso", "netboot"};
constexpr std::string_view kCompressions[] = {"zstd", "xz", "gzip"};
constexpr std::string_view kManifestExtensions[] = {".yaml", ".yml", ".json"};

// Longest string any field takes (a path can be PATH_MAX long).
constexpr std::size_t kMaxTextLength = 4096;
constexpr std::size_t kMaxWordLength = 128;  // versions, package names
constexpr std::size_t kMaxTokenLength = 1024;
// Files hashed for the keys directory.
constexpr std::size_t kMaxKeyFiles = 1000;

bool is_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool is_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool is_hex(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  });
}

std::string lowercase(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

// Well-formed UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF. JSON
// needs it, and a spec goes out as JSON.
bool is_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t extra = 0;
    std::uint32_t cp = 0, min = 0;
    if ((c & 0xe0) == 0xc0)
      extra = 1, cp = c & 0x1fu, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
      extra = 2, cp = c & 0x0fu, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
      extra = 3, cp = c & 0x07u, min = 0x10000;
    else
      return false;
    if (s.size() - i <= extra) return false;
    for (std::size_t k = 1; k <= extra; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += extra + 1;
  }
  return true;
}

// "a, b or c" for a message listing the accepted values.
std::string alternatives(std::span<const std::string_view> choices) {
  std::string out;
  for (std::size_t i = 0; i < choices.size(); ++i) {
    if (i > 0) out += i + 1 == choices.size() ? " or " : ", ";
    out += choices[i];
  }
  return out;
}

// Letters, digits, '.', '_', '+' and '-': OS and Kubernetes versions ("v1.31.2+k3s1").
bool is_version(std::string_view s) {
  return !s.empty() && s.size() <= kMaxWordLength && std::all_of(s.begin(), s.end(), [](char c) {
    return is_alnum(c) || c == '.' || c == '_' || c == '+' || c == '-';
  });
}

// Package names as apt, dnf, zypper, apk and pacman take them, with the qualifiers they
// accept on the command line (name=version, name:arch, name@repository); nothing a shell or an
// option parser would read as something else, and no path to a local package file.
bool is_package_name(std::string_view s) {
  if (s.empty() || s.size() > kMaxWordLength || !is_alnum(s.front())) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return is_alnum(c) || c == '.' || c == '_' || c == '+' || c == '-' || c == ':' || c == '=' ||
           c == '~' || c == '@';
  });
}

// A Linux network interface name as wg-quick accepts it: [A-Za-z0-9_=+.-]{1,15}.
bool is_interface_name(std::string_view s) {
  if (s.empty() || s.size() > 15 || s == "." || s == "..") return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return is_alnum(c) || c == '_' || c == '=' || c == '+' || c == '.' || c == '-';
  });
}

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

// A WireGuard key as wg(8) prints it: 32 bytes in base64, 43 characters and one '='. The last
// character carries two bits beyond the 256, which must be zero for the key to be canonical.
bool is_wireguard_key(std::string_view s) {
  if (s.size() != 44 || s[43] != '=') return false;
  int last = 0;
  for (std::size_t i = 0; i < 43; ++i) {
    last = base64_value(s[i]);
    if (last < 0) return false;
  }
  return (last & 3) == 0;
}

bool is_ipv4(const std::string& s) {
  unsigned char buf[4];
  return ::inet_pton(AF_INET, s.c_str(), buf) == 1;
}

bool is_ipv6(const std::string& s) {
  unsigned char buf[16];
  return ::inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

// "address/prefix" with an IPv4 or IPv6 address and a prefix length that fits it.
bool is_cidr(std::string_view s) {
  auto slash = s.find('/');
  if (slash == std::string_view::npos) return false;
  std::string address(s.substr(0, slash));
  std::string_view prefix = s.substr(slash + 1);
  unsigned max = 0;
  if (is_ipv4(address))
    max = 32;
  else if (is_ipv6(address))
    max = 128;
  else
    return false;
  if (!is_digits(prefix) || prefix.size() > 3 || (prefix.size() > 1 && prefix.front() == '0'))
    return false;
  unsigned value = 0;
  std::from_chars(prefix.data(), prefix.data() + prefix.size(), value);
  return value <= max;
}

// RFC 1123 host names (which include IPv4 addresses written in dotted form).
bool is_dns_name(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  std::size_t start = 0;
  for (;;) {
    std::size_t dot = s.find('.', start);
    std::string_view label = s.substr(start, dot == s.npos ? s.npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-' ||
        !std::all_of(label.begin(), label.end(), [](char c) { return is_alnum(c) || c == '-'; }))
      return false;
    if (dot == s.npos) return true;
    start = dot + 1;
  }
}

bool is_port(std::string_view s) {
  if (!is_digits(s) || s.size() > 5 || s.front() == '0') return false;
  unsigned value = 0;
  std::from_chars(s.data(), s.data() + s.size(), value);
  return value >= 1 && value <= 65535;
}

// "host[:port]" where host is a DNS name, an IPv4 address or an IPv6 address in brackets.
bool is_host_port(std::string_view s, bool port_required) {
  std::string_view port;
  bool has_port = false;
  if (s.starts_with('[')) {
    auto close = s.find(']');
    if (close == s.npos || !is_ipv6(std::string(s.substr(1, close - 1)))) return false;
    std::string_view rest = s.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return false;
      port = rest.substr(1);
      has_port = true;
    }
  } else {
    auto colon = s.find(':');
    if (colon != s.npos && s.find(':', colon + 1) != s.npos) return false;  // bare IPv6
    if (!is_dns_name(s.substr(0, colon))) return false;
    if (colon != s.npos) {
      port = s.substr(colon + 1);
      has_port = true;
    }
  }
  if (!has_port) return !port_required;
  return is_port(port);
}

bool is_http_url(std::string_view s) {
  std::string_view rest;
  if (s.starts_with("https://"))
    rest = s.substr(8);
  else if (s.starts_with("http://"))
    rest = s.substr(7);
  else
    return false;
  // The path and query hold only what RFC 3986 allows unescaped (and %-escapes): no spaces,
  // quotes, backslashes or control characters, so the URL means one thing to every reader.
  std::string_view path = rest.substr(std::min(rest.find('/'), rest.size()));
  for (char c : path)
    if (!(std::isalnum(static_cast<unsigned char>(c)) ||
          std::string_view("-._~:/?#[]@!$&'()*+,;=%").find(c) != std::string_view::npos))
      return false;
  return is_host_port(rest.substr(0, rest.find('/')), false);
}

bool is_manifest_name(const util::Path& path) {
  return contains(kManifestExtensions, path.extension().string());
}

// The manifest files of a directory, sorted by name; not recursive.
std::vector<util::Path> list_manifest_dir(const util::Path& dir, std::error_code& ec) {
  std::vector<util::Path> out;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::error_code type_ec;
    if (is_manifest_name(entry.path()) && entry.is_regular_file(type_ec))
      out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The manifest files of a parsed spec, in order, for hashing.
std::vector<util::Path> expand_manifests(const std::vector<util::Path>& manifests) {
  std::vector<util::Path> out;
  for (const auto& path : manifests) {
    std::error_code ec;
    if (!std::filesystem::is_directory(path, ec)) {
      out.push_back(path);
      continue;
    }
    auto files = list_manifest_dir(path, ec);
    if (ec)
      throw Error(ErrorKind::kIo, fmt::format("Failed to list manifest directory {}: {}",
                                              path.string(), ec.message()));
    out.insert(out.end(), files.begin(), files.end());
    if (out.size() > kMaxManifestFiles)
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format("Failed to read toppings.manifests: more than {} files", kMaxManifestFiles));
  }
  return out;
}

std::string effective_variant(const BuildSpec& spec) {
  if (!spec.variant.empty()) return spec.variant;
  return spec.kubernetes.distribution == "none" ? "core" : "standard";
}

// sha256 over "HASH  NAME\n" lines (sha256sum's format) of every regular file below `dir`,
// sorted by name: a stand-in for the directory's content.
std::string directory_sha256(const util::Path& dir) {
  std::vector<std::pair<std::string, util::Path>> files;
  std::error_code ec;
  std::filesystem::recursive_directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec)) continue;
    files.emplace_back(it->path().lexically_relative(dir).generic_string(), it->path());
    if (files.size() > kMaxKeyFiles)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to hash security.keys {}: more than {} files", dir.string(),
                              kMaxKeyFiles));
  }
  if (ec)
    throw Error(ErrorKind::kIo,
                fmt::format("Failed to list security.keys {}: {}", dir.string(), ec.message()));
  std::sort(files.begin(), files.end());
  util::Sha256 hash;
  for (const auto& [name, path] : files)
    hash.update(fmt::format("{}  {}\n", util::file_sha256(path), name));
  return hash.hex_digest();
}

Json sha256_of(std::string_view hex) {
  return Json{{"sha256", hex}};
}

// A secret goes into the canonical form as its hash: the id changes with it, the JSON shows
// nothing of it.
Json secret(const std::string& value) {
  return value.empty() ? Json(nullptr) : sha256_of(util::sha256_hex(value));
}

template <typename T>
Json optional_json(const std::optional<T>& value) {
  return value ? Json(*value) : Json(nullptr);
}

void require_utf8(std::string_view text, std::string_view what) {
  if (!is_utf8(text))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to make the canonical build spec: {} \"{}\" is not UTF-8", what,
                            printable(text)));
}

// The strict reader of one spec document. Field names are camelCase as in the YAML; every
// error names the field by its path.
class SpecReader : private StrictYaml {
 public:
  SpecReader(std::string_view source, util::Path base_dir, const SpecParseOptions& options)
      : StrictYaml("build spec", source,
                   {kMaxCloudConfigNodes, kMaxCloudConfigListLength, kMaxCloudConfigDepth}),
        base_dir_(std::move(base_dir)),
        options_(options) {}

  BuildSpec read(std::string_view text) {
    BuildSpec spec;
    spec.source = source();
    YAML::Node root = load(text);
    if (root.IsNull())
      fail_at(0, "the spec is empty; it needs at least apiVersion, kind, base and version");
    count(root);
    if (!root.IsMap())
      fail(root, fmt::format("the document must be a map, not {}", type_name(root)));
    // The keys given and their values, for the checks across fields.
    std::map<std::string, std::pair<YAML::Node, YAML::Node>> given;
    for_each_key(
        root, "", [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
          given.emplace(key, std::pair(key_node, value));
          if (key == "apiVersion") {
            spec.api_version = read_text(value, key);
            if (!spec.api_version.empty() && spec.api_version != kApiVersion)
              fail(value, fmt::format("apiVersion must be {}, not \"{}\"", kApiVersion,
                                      printable(spec.api_version)));
          } else if (key == "kind") {
            spec.kind = read_text(value, key);
            if (!spec.kind.empty() && spec.kind != kKind)
              fail(value, fmt::format("kind must be {}, not \"{}\"", kKind, printable(spec.kind)));
          } else if (key == "base") {
            spec.base = read_base(value);
          } else if (key == "arch") {
            spec.arch = read_choice(value, key, kArches);
          } else if (key == "model") {
            spec.model = read_choice(value, key, kModels, "generic");
          } else if (key == "variant") {
            spec.variant = read_choice(value, key, kVariants);
          } else if (key == "version") {
            spec.version = read_text(value, key);
            if (!spec.version.empty() && !is_version(spec.version))
              fail(value, fmt::format("version must be letters, digits, '.', '_', '+' and '-' (at "
                                      "most {}), not \"{}\"",
                                      kMaxWordLength, printable(spec.version)));
          } else if (key == "kubernetes") {
            spec.kubernetes = read_kubernetes(value);
          } else if (key == "packages") {
            spec.packages = read_string_list(value, key);
            for (std::size_t i = 0; i < spec.packages.size(); ++i)
              if (!is_package_name(spec.packages[i]))
                fail(value[i], fmt::format("{} is not a package name: \"{}\"", index(key, i),
                                           printable(spec.packages[i])));
          } else if (key == "toppings") {
            spec.toppings = read_toppings(value);
          } else if (key == "security") {
            spec.security = read_security(value);
          } else if (key == "artifacts") {
            spec.artifacts = read_artifacts(value);
          } else if (key == "cloudConfig") {
            spec.cloud_config = read_optional_file(value, key, key, kMaxCloudConfigBytes);
          } else if (key == "compression") {
            read_compression(value, spec);
          } else {
            unknown_key(key_node, key, "", kTopLevelKeys);
          }
        });
    auto require = [&](const char* key, std::string_view what) {
      auto it = given.find(key);
      if (it == given.end()) fail(root, fmt::format("{} is required: {}", key, what));
      const YAML::Node& key_node = it->second.first;
      const YAML::Node& value = it->second.second;
      if (value.IsNull() || (value.IsScalar() && value.Scalar().empty()))
        fail(key_node, fmt::format("{} is required: {}", key, what));
    };
    require("apiVersion", kApiVersion);
    require("kind", kKind);
    require("base", "the image to build from, e.g. docker://docker.io/library/ubuntu:24.04");
    require("version", "the version of the OS release, e.g. v1.0.0");
    settle_variant(spec, given);
    return spec;
  }

 private:
  // One line of UTF-8 text without control characters.
  std::string read_text(const YAML::Node& node, const std::string& path) const {
    std::string s = read_string(node, path);
    if (s.size() > kMaxTextLength)
      fail(node, fmt::format("{} is longer than {} characters", path, kMaxTextLength));
    bool control = std::any_of(s.begin(), s.end(), [](char c) {
      return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
    });
    if (control || !is_utf8(s))
      fail(node, fmt::format("{} must be one line of UTF-8 text without control characters", path));
    return s;
  }

  // One of `choices`; an empty value gives `fallback`.
  std::string read_choice(const YAML::Node& node, const std::string& path,
                          std::span<const std::string_view> choices,
                          std::string_view fallback = {}) const {
    std::string s = read_text(node, path);
    if (s.empty()) return std::string(fallback);
    if (!contains(choices, s))
      fail(node, fmt::format("{} must be {}, not \"{}\"{}", path, alternatives(choices),
                             printable(s), did_you_mean(s, choices)));
    return s;
  }

  unsigned read_number(const YAML::Node& node, const std::string& path, unsigned min,
                       unsigned max) const {
    std::string s = read_text(node, path);
    unsigned value = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (!is_digits(s) || ec != std::errc() || end != s.data() + s.size() || value < min ||
        value > max)
      fail(node, fmt::format("{} must be a number from {} to {}, not \"{}\"", path, min, max,
                             printable(s)));
    return value;
  }

  util::Path resolve(const std::string& text) const {
    util::Path path(text);
    return (path.is_relative() ? base_dir_ / path : path).lexically_normal();
  }

  // Holds a path as written to the caller's policy, if any, before anything looks at it.
  void check_path(const YAML::Node& node, const std::string& path, std::string_view field,
                  const std::string& written) const {
    if (!options_.check_path) return;
    std::string why = options_.check_path(field, written);
    if (!why.empty()) fail(node, fmt::format("{} \"{}\" {}", path, printable(written), why));
  }

  // A local path, held to the policy and resolved; nothing on disk is looked at yet.
  util::Path read_local_path(const YAML::Node& node, const std::string& path,
                             std::string_view field) const {
    std::string s = read_text(node, path);
    if (s.empty()) fail(node, fmt::format("{} must not be empty", path));
    check_path(node, path, field, s);
    return resolve(s);
  }

  // How a message names a resolved path.
  std::string shown(const util::Path& resolved) const {
    return options_.relative_messages ? resolved.lexically_relative(base_dir_).string()
                                      : resolved.string();
  }

  // What `resolved` is on disk; it must exist.
  struct stat stat_path(const YAML::Node& node, const std::string& path,
                        const util::Path& resolved) const {
    struct stat st {};
    if (::stat(resolved.c_str(), &st) != 0) {
      int err = errno;
      if (err == ENOENT || err == ENOTDIR)
        fail(node, fmt::format("{} {} does not exist", path, shown(resolved)));
      fail(node, fmt::format("{} {} cannot be read: {}", path, shown(resolved),
                             std::system_category().message(err)));
    }
    return st;
  }

  // An optional regular file of at most `limit` bytes; "" when not given.
  std::string read_optional_file(const YAML::Node& node, const std::string& path,
                                 std::string_view field, std::uint64_t limit) const {
    if (node.IsNull() || (node.IsScalar() && node.Scalar().empty())) return {};
    util::Path file = read_local_path(node, path, field);
    if (!options_.check_files) return file.string();
    struct stat st = stat_path(node, path, file);
    if (!S_ISREG(st.st_mode))
      fail(node, fmt::format("{} {} is not a regular file", path, shown(file)));
    if (static_cast<std::uint64_t>(st.st_size) > limit)
      fail(node, fmt::format("{} {} is {} bytes, more than the limit of {}", path, shown(file),
                             st.st_size, limit));
    return file.string();
  }

  std::string read_optional_directory(const YAML::Node& node, const std::string& path,
                                      std::string_view field) const {
    if (node.IsNull() || (node.IsScalar() && node.Scalar().empty())) return {};
    util::Path dir = read_local_path(node, path, field);
    if (!options_.check_files) return dir.string();
    struct stat st = stat_path(node, path, dir);
    if (!S_ISDIR(st.st_mode)) fail(node, fmt::format("{} {} is not a directory", path, shown(dir)));
    return dir.string();
  }

  // A source name, checked by the OCI module; a local source's path is made absolute.
  std::string read_base(const YAML::Node& node) const {
    std::string text = read_text(node, "base");
    if (text.empty()) return text;
    oci::ImageName name;
    try {
      name = oci::ImageName::parse(text);
    } catch (const Error& e) {
      fail(node, fmt::format("base is not an image source: {}", e.what()));
    }
    if (name.transport == oci::Transport::kDocker) return text;
    check_path(node, "base", "base", text);
    if (name.path.is_absolute()) return text;
    // parse() took the path as a prefix of what follows the transport.
    std::string transport(oci::transport_name(name.transport));
    std::string_view rest = std::string_view(text).substr(transport.size() + 1);
    util::Path absolute = resolve(name.path.string());
    std::string resolved = fmt::format("{}:{}{}", transport, absolute.string(),
                                       rest.substr(name.path.string().size()));
    oci::ImageName check;
    try {
      check = oci::ImageName::parse(resolved);
    } catch (const Error&) {
    }
    if (check.path != absolute || check.transport != name.transport) {
      if (options_.relative_messages)
        fail(node, fmt::format("base {} is not a usable source name once its path is resolved "
                               "(':' in the path)",
                               printable(text)));
      fail(node, fmt::format("base {} resolves to {}, which is not a usable source name (':' in "
                             "the path); give an absolute path",
                             printable(text), printable(resolved)));
    }
    return resolved;
  }

  KubernetesSpec read_kubernetes(const YAML::Node& node) {
    KubernetesSpec k8s;
    if (node.IsNull()) return k8s;
    if (node.IsScalar()) {
      if (node.Scalar() != "none")
        fail(node, fmt::format("kubernetes must be none or a map with distribution, version and "
                               "binary, not \"{}\"",
                               printable(node.Scalar())));
      return k8s;
    }
    expect(node, YAML::NodeType::Map, "kubernetes", "none or a map");
    std::map<std::string, YAML::Node> given;
    for_each_key(
        node, "kubernetes",
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
          std::string path = join("kubernetes", key);
          given.emplace(key, value);
          if (key == "distribution") {
            k8s.distribution = read_choice(value, path, kDistributions, "none");
          } else if (key == "version") {
            k8s.version = read_text(value, path);
            if (!k8s.version.empty() && !is_version(k8s.version))
              fail(value,
                   fmt::format("{} must be letters, digits, '.', '_', '+' and '-', not \"{}\"",
                               path, printable(k8s.version)));
          } else if (key == "binary") {
            k8s.binary = read_text(value, path);
            if (k8s.binary.starts_with("http://") || k8s.binary.starts_with("https://")) {
              if (!is_http_url(k8s.binary))
                fail(value, fmt::format("{} is not a valid http(s) URL: \"{}\"", path,
                                        printable(k8s.binary)));
            } else if (k8s.binary.find("://") != std::string::npos) {
              fail(value, fmt::format("{} must be a file or an http(s) URL, not \"{}\"", path,
                                      printable(k8s.binary)));
            } else if (!k8s.binary.empty()) {
              k8s.binary =
                  read_optional_file(value, path, path, std::numeric_limits<std::uint64_t>::max());
            }
          } else if (key == "sha256") {
            k8s.sha256 = lowercase(read_text(value, path));
            if (!k8s.sha256.empty() && (k8s.sha256.size() != 64 || !is_hex(k8s.sha256)))
              fail(value, fmt::format("{} must be 64 hex digits, not \"{}\"", path,
                                      printable(k8s.sha256)));
          } else {
            unknown_key(key_node, key, "kubernetes", kKubernetesKeys);
          }
        });
    if (k8s.distribution == "none") {
      for (const char* key : {"version", "binary", "sha256"}) {
        auto it = given.find(key);
        if (it != given.end() && !it->second.IsNull() && !it->second.Scalar().empty())
          fail(it->second,
               fmt::format("kubernetes.{} is set but kubernetes.distribution is none", key));
      }
      return k8s;
    }
    if (k8s.version.empty())
      fail(node, fmt::format("kubernetes.version is required for {}, e.g. {}", k8s.distribution,
                             k8s.distribution == "k3s" ? "v1.31.2+k3s1" : "v1.31.2+k0s.0"));
    if (k8s.binary.empty())
      fail(node, fmt::format("kubernetes.binary is required for {}: a file or an http(s) URL",
                             k8s.distribution));
    if (is_http_url(k8s.binary) && k8s.sha256.empty())
      fail(given.at("binary"), "kubernetes.sha256 is required when kubernetes.binary is a URL");
    return k8s;
  }

  // Fills in the default variant, or checks the one given against `kubernetes`.
  void settle_variant(BuildSpec& spec,
                      const std::map<std::string, std::pair<YAML::Node, YAML::Node>>& given) const {
    const std::string& distribution = spec.kubernetes.distribution;
    if (spec.variant.empty()) {
      spec.variant = effective_variant(spec);
      return;
    }
    const YAML::Node& at = given.at("variant").first;
    if (spec.variant == "core" && distribution != "none")
      fail(at, fmt::format("variant core contradicts kubernetes.distribution {}: core has no "
                           "Kubernetes (use variant standard, or kubernetes: none)",
                           distribution));
    if (spec.variant == "standard" && distribution == "none")
      fail(at,
           "variant standard contradicts kubernetes.distribution none: standard runs "
           "Kubernetes (set kubernetes.distribution to k3s or k0s, or use variant core)");
  }

  Toppings read_toppings(const YAML::Node& node) {
    Toppings toppings;
    if (node.IsNull()) return toppings;
    expect(node, YAML::NodeType::Map, "toppings", "a map");
    for_each_key(node, "toppings",
                 [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
                   std::string path = join("toppings", key);
                   if (key == "manifests")
                     toppings.manifests = read_manifests(value, path);
                   else if (key == "wireguard")
                     toppings.wireguard = read_wireguard(value, path);
                   else if (key == "cluster")
                     toppings.cluster = read_cluster(value, path);
                   else
                     unknown_key(key_node, key, "toppings", kToppingsKeys);
                 });
    return toppings;
  }

  void check_manifest_file(const YAML::Node& at, const std::string& path, const util::Path& file,
                           std::uint64_t size) const {
    if (size > kMaxManifestBytes)
      fail(at, fmt::format("{} {} is {} bytes, more than the limit of {}", path, shown(file), size,
                           kMaxManifestBytes));
    if (!is_utf8(file.filename().string()))
      fail(at,
           fmt::format("{} {} has a file name that is not UTF-8", path, printable(shown(file))));
  }

  std::vector<util::Path> read_manifests(const YAML::Node& node, const std::string& path) {
    std::vector<util::Path> out;
    if (node.IsNull()) return out;
    expect(node, YAML::NodeType::Sequence, path, "a list of files and directories");
    check_length(node, path);
    std::size_t files = 0;
    for (std::size_t i = 0; i < node.size(); ++i) {
      count(node[i]);
      std::string sub = index(path, i);
      util::Path manifest = read_local_path(node[i], sub, path);
      if (!options_.check_files) {
        out.push_back(std::move(manifest));
        continue;
      }
      struct stat st = stat_path(node[i], sub, manifest);
      if (S_ISDIR(st.st_mode)) {
        std::error_code ec;
        auto listed = list_manifest_dir(manifest, ec);
        if (ec)
          fail(node[i],
               fmt::format("{} {} cannot be listed: {}", sub, shown(manifest), ec.message()));
        if (listed.empty())
          fail(node[i],
               fmt::format("{} {} holds no .yaml, .yml or .json file", sub, shown(manifest)));
        for (const auto& file : listed) {
          std::error_code size_ec;
          std::uint64_t size = std::filesystem::file_size(file, size_ec);
          check_manifest_file(node[i], sub, file, size_ec ? 0 : size);
        }
        files += listed.size();
      } else if (S_ISREG(st.st_mode)) {
        if (!is_manifest_name(manifest))
          fail(node[i],
               fmt::format("{} {} is not a .yaml, .yml or .json file", sub, shown(manifest)));
        check_manifest_file(node[i], sub, manifest, static_cast<std::uint64_t>(st.st_size));
        ++files;
      } else {
        fail(node[i], fmt::format("{} {} is neither a file nor a directory", sub, shown(manifest)));
      }
      if (files > kMaxManifestFiles)
        fail(node[i], fmt::format("{} adds more than {} manifest files", path, kMaxManifestFiles));
      out.push_back(std::move(manifest));
    }
    return out;
  }

  std::vector<std::string> read_cidrs(const YAML::Node& node, const std::string& path) {
    auto cidrs = read_string_list(node, path);
    for (std::size_t i = 0; i < cidrs.size(); ++i)
      if (!is_cidr(cidrs[i]))
        fail(node[i], fmt::format("{} must be an address/prefix (e.g. 10.8.0.1/24 or fd00::1/64), "
                                  "not \"{}\"",
                                  index(path, i), printable(cidrs[i])));
    return cidrs;
  }

  // A key of which only whether it is well formed may be said (it may be a secret).
  std::string read_key(const YAML::Node& node, const std::string& path) const {
    std::string key = read_text(node, path);
    if (!key.empty() && !is_wireguard_key(key))
      fail(node, fmt::format("{} is not a WireGuard key (44 characters of base64 ending in '=', "
                             "as `wg genkey` prints)",
                             path));
    return key;
  }

  WireGuardTopping read_wireguard(const YAML::Node& node, const std::string& path) {
    WireGuardTopping wg;
    expect(node, YAML::NodeType::Map, path, "a map");
    for_each_key(
        node, path,
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
          std::string sub = join(path, key);
          if (key == "interface") {
            wg.interface = read_text(value, sub);
            if (!is_interface_name(wg.interface))
              fail(value, fmt::format("{} must be 1 to 15 of A-Z a-z 0-9 _ = + . -, not \"{}\"",
                                      sub, printable(wg.interface)));
          } else if (key == "address") {
            wg.address = read_cidrs(value, sub);
          } else if (key == "listenPort") {
            if (!value.IsNull()) wg.listen_port = read_number(value, sub, 1, 65535);
          } else if (key == "privateKey") {
            wg.private_key = read_key(value, sub);
          } else if (key == "peers") {
            if (value.IsNull()) return;
            expect(value, YAML::NodeType::Sequence, sub, "a list");
            check_length(value, sub);
            for (std::size_t i = 0; i < value.size(); ++i) {
              count(value[i]);
              wg.peers.push_back(read_peer(value[i], index(sub, i)));
              for (std::size_t j = 0; j < i; ++j)
                if (wg.peers[j].public_key == wg.peers[i].public_key)
                  fail(value[i],
                       fmt::format("{}.publicKey repeats {}", index(sub, i), index(sub, j)));
            }
          } else {
            unknown_key(key_node, key, path, kWireGuardKeys);
          }
        });
    if (wg.address.empty())
      fail(node, fmt::format("{}.address needs at least one address/prefix", path));
    if (wg.peers.empty()) fail(node, fmt::format("{}.peers needs at least one peer", path));
    return wg;
  }

  WireGuardPeer read_peer(const YAML::Node& node, const std::string& path) {
    WireGuardPeer peer;
    expect(node, YAML::NodeType::Map, path, "a map");
    for_each_key(
        node, path,
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
          std::string sub = join(path, key);
          if (key == "publicKey") {
            peer.public_key = read_key(value, sub);
          } else if (key == "endpoint") {
            peer.endpoint = read_text(value, sub);
            if (!peer.endpoint.empty() && !is_host_port(peer.endpoint, true))
              fail(value, fmt::format("{} must be host:port (an IPv6 host in brackets), not \"{}\"",
                                      sub, printable(peer.endpoint)));
          } else if (key == "allowedIPs") {
            peer.allowed_ips = read_cidrs(value, sub);
          } else if (key == "persistentKeepalive") {
            if (!value.IsNull()) peer.persistent_keepalive = read_number(value, sub, 1, 65535);
          } else if (key == "presharedKey") {
            peer.preshared_key = read_key(value, sub);
          } else {
            unknown_key(key_node, key, path, kPeerKeys);
          }
        });
    if (peer.public_key.empty()) fail(node, fmt::format("{}.publicKey is required", path));
    if (peer.allowed_ips.empty())
      fail(node, fmt::format("{}.allowedIPs needs at least one address/prefix", path));
    return peer;
  }

  ClusterJoin read_cluster(const YAML::Node& node, const std::string& path) {
    ClusterJoin join_spec;
    expect(node, YAML::NodeType::Map, path, "a map");
    for_each_key(
        node, path,
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
          std::string sub = join(path, key);
          if (key == "server") {
            std::string server = read_text(value, sub);
            if (server.ends_with('/')) server.pop_back();
            if (!server.starts_with("https://") || !is_host_port(server.substr(8), false))
              fail(value, fmt::format("{} must be https://HOST[:PORT], not \"{}\"", sub,
                                      printable(server)));
            join_spec.server = std::move(server);
          } else if (key == "token") {
            join_spec.token = read_text(value, sub);
            bool word = std::all_of(join_spec.token.begin(), join_spec.token.end(),
                                    [](char c) { return c > ' ' && c < 0x7f; });
            if (!word || join_spec.token.size() > kMaxTokenLength)
              fail(value,
                   fmt::format("{} must be one word of printable ASCII, at most {} characters", sub,
                               kMaxTokenLength));
          } else if (key == "caHash") {
            std::string hash = read_text(value, sub);
            std::string_view hex = hash;
            if (hex.starts_with("sha256:")) hex.remove_prefix(7);
            if (hex.size() != 64 || !is_hex(hex))
              fail(value, fmt::format("{} must be sha256: and 64 hex digits, not \"{}\"", sub,
                                      printable(hash)));
            join_spec.ca_hash = "sha256:" + lowercase(std::string(hex));
          } else {
            unknown_key(key_node, key, path, kClusterKeys);
          }
        });
    if (join_spec.server.empty()) fail(node, fmt::format("{}.server is required", path));
    if (join_spec.token.empty()) fail(node, fmt::format("{}.token is required", path));
    return join_spec;
  }

  SecuritySpec read_security(const YAML::Node& node) {
    SecuritySpec security;
    if (node.IsNull()) return security;
    expect(node, YAML::NodeType::Map, "security", "a map");
    for_each_key(node, "security",
                 [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
                   std::string path = join("security", key);
                   if (key == "trustedBoot")
                     security.trusted_boot = read_bool(value, path);
                   else if (key == "encryption")
                     security.encryption = read_choice(value, path, kEncryptions, "none");
                   else if (key == "keys")
                     security.keys = read_optional_directory(value, path, path);
                   else if (key == "splash")
                     security.splash = read_optional_file(value, path, path, kMaxSplashBytes);
                   else
                     unknown_key(key_node, key, "security", kSecurityKeys);
                 });
    return security;
  }

  std::vector<std::string> read_artifacts(const YAML::Node& node) {
    auto artifacts = read_string_list(node, "artifacts");
    if (artifacts.empty())
      fail(node, fmt::format("artifacts must name at least one of {}", alternatives(kArtifacts)));
    for (std::size_t i = 0; i < artifacts.size(); ++i) {
      std::string path = index("artifacts", i);
      read_choice(node[i], path, kArtifacts);
      for (std::size_t j = 0; j < i; ++j)
        if (artifacts[j] == artifacts[i])
          fail(node[i],
               fmt::format("{} repeats {} ({})", path, index("artifacts", j), artifacts[i]));
    }
    return artifacts;
  }

  void read_compression(const YAML::Node& node, BuildSpec& spec) {
    if (node.IsNull()) return;
    if (node.IsScalar()) {
      spec.compression = read_choice(node, "compression", kCompressions, "zstd");
      return;
    }
    expect(node, YAML::NodeType::Map, "compression", "a map");
    std::optional<YAML::Node> level_node;
    for_each_key(node, "compression",
                 [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
                   std::string path = join("compression", key);
                   if (key == "algorithm") {
                     spec.compression = read_choice(value, path, kCompressions, "zstd");
                   } else if (key == "level") {
                     if (value.IsNull()) return;
                     level_node = value;
                     spec.compression_level = static_cast<int>(read_number(value, path, 0, 22));
                   } else {
                     unknown_key(key_node, key, "compression", kCompressionKeys);
                   }
                 });
    if (!spec.compression_level) return;
    // The ranges of the squashfs compressors (libsquashfs' SQFS_*_MIN/MAX_LEVEL).
    auto [min, max] = spec.compression == "zstd" ? std::pair(1, 22)
                      : spec.compression == "xz" ? std::pair(0, 9)
                                                 : std::pair(1, 9);
    if (*spec.compression_level < min || *spec.compression_level > max)
      fail(*level_node, fmt::format("compression.level {} is outside {}..{} for {}",
                                    *spec.compression_level, min, max, spec.compression));
  }

  util::Path base_dir_;
  const SpecParseOptions& options_;
};

}  // namespace

BuildSpec parse_build_spec(std::string_view text, std::string_view source,
                           const util::Path& base_dir) {
  return parse_build_spec(text, source, base_dir, SpecParseOptions{});
}

BuildSpec parse_build_spec(std::string_view text, std::string_view source,
                           const util::Path& base_dir, const SpecParseOptions& options) {
  if (text.size() > kMaxBuildSpecBytes)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read build spec {}: {} bytes exceeds the limit of {}",
                            source, text.size(), kMaxBuildSpecBytes));
  if (text.find('\0') != std::string_view::npos)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read build spec {}: it contains a NUL byte", source));
  std::error_code ec;
  util::Path dir = std::filesystem::absolute(base_dir, ec);
  if (ec)
    throw Error(ErrorKind::kIo,
                fmt::format("Failed to read build spec {}: no directory {}: {}", source,
                            options.relative_messages ? "to resolve paths in" : base_dir.string(),
                            ec.message()));
  return SpecReader(source, dir.lexically_normal(), options).read(text);
}

BuildSpec load_build_spec(const util::Path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0)
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to read build spec {}: no such file", file.string()));
  if (S_ISDIR(st.st_mode))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read build spec {}: it is a directory", file.string()));
  std::string text = util::read_file(file, kMaxBuildSpecBytes);
  std::error_code ec;
  util::Path absolute = std::filesystem::absolute(file, ec);
  if (ec)
    throw Error(ErrorKind::kIo,
                fmt::format("Failed to read build spec {}: {}", file.string(), ec.message()));
  return parse_build_spec(text, file.string(), absolute.parent_path());
}

std::vector<std::string> unbuildable(const BuildSpec& spec) {
  std::vector<std::string> out;
  bool signed_uki = false, unsigned_boot = false;
  for (const auto& artifact : spec.artifacts) {
    if (artifact == "uki" || artifact == "uki-iso") {
      signed_uki = true;
      if (spec.security.keys.empty())
        out.push_back(fmt::format(
            "artifacts: {} needs security.keys (the key set that signs it; pok8s keys generate "
            "makes one)",
            artifact));
      continue;
    }
    unsigned_boot = true;
    if (artifact == "iso" || artifact == "raw" || artifact == "qcow2" || artifact == "vhd")
      continue;
    std::string_view why = "it comes with a later release";
    if (artifact == "netboot")
      why =
          "a spec cannot name the URL it is served from yet; use pok8s build --artifact netboot "
          "--netboot-url";
    out.push_back(fmt::format("artifacts: {} is not built yet ({})", artifact, why));
  }
  if (spec.security.trusted_boot && (!signed_uki || unsigned_boot))
    out.emplace_back(
        "security.trustedBoot: only the uki and uki-iso artifacts boot through a signed UKI; "
        "ask for those alone");
  if (spec.security.encryption != "none") {
    for (const auto& artifact : spec.artifacts)
      if (artifact == "raw" || artifact == "qcow2" || artifact == "vhd" || artifact == "netboot")
        out.push_back(fmt::format(
            "security.encryption: the installer encrypts, and {} is not installed from; ask for "
            "iso or uki-iso",
            artifact));
    if (spec.security.encryption == "tpm" &&
        std::find(spec.artifacts.begin(), spec.artifacts.end(), "uki-iso") == spec.artifacts.end())
      out.emplace_back(
          "security.encryption: tpm seals the disk key to the signed UKIs' PCR policy; ask for "
          "uki-iso");
  }
  if (!spec.security.keys.empty() && !signed_uki)
    out.emplace_back("security.keys: only the uki and uki-iso artifacts are signed; ask for one");
  if (!spec.security.splash.empty() && !signed_uki)
    out.emplace_back(
        "security.splash: only the UKIs of the uki and uki-iso artifacts show it; ask for one");
  return out;
}

Json canonical_spec(const BuildSpec& spec, std::string_view base_resolved,
                    std::string_view tool_version) {
  require_utf8(base_resolved, "the resolved base");
  require_utf8(tool_version, "the tool version");
  Json kubernetes = {{"distribution", spec.kubernetes.distribution}};
  if (spec.kubernetes.distribution != "none") {
    kubernetes["version"] = spec.kubernetes.version;
    // Where the binary comes from does not change the build, only its content does.
    std::string binary_sha256 = spec.kubernetes.sha256;
    if (!is_http_url(spec.kubernetes.binary)) {
      std::string actual = util::file_sha256(spec.kubernetes.binary);
      if (!binary_sha256.empty() && actual != binary_sha256)
        throw Error(ErrorKind::kSignature,
                    fmt::format("Failed to read kubernetes.binary {}: its sha256 is {}, not {}",
                                spec.kubernetes.binary, actual, binary_sha256));
      binary_sha256 = std::move(actual);
    }
    kubernetes["binary"] = sha256_of(binary_sha256);
  }

  Json manifests = Json::array();
  for (const auto& file : expand_manifests(spec.toppings.manifests)) {
    // The file name is kept: it names the manifest on the node (and the addon in k3s).
    std::string name = file.filename().string();
    require_utf8(name, "the manifest file name");
    manifests.push_back({{"name", name}, {"sha256", util::file_sha256(file)}});
  }
  Json wireguard = nullptr;
  if (const auto& wg = spec.toppings.wireguard) {
    Json peers = Json::array();
    for (const auto& peer : wg->peers)
      peers.push_back({{"publicKey", peer.public_key},
                       {"endpoint", peer.endpoint},
                       {"allowedIPs", peer.allowed_ips},
                       {"persistentKeepalive", optional_json(peer.persistent_keepalive)},
                       {"presharedKey", secret(peer.preshared_key)}});
    wireguard = {{"interface", wg->interface},
                 {"address", wg->address},
                 {"listenPort", optional_json(wg->listen_port)},
                 {"privateKey", secret(wg->private_key)},
                 {"peers", std::move(peers)}};
  }
  Json cluster = nullptr;
  if (const auto& c = spec.toppings.cluster)
    cluster = {{"server", c->server}, {"token", secret(c->token)}, {"caHash", c->ca_hash}};

  std::vector<std::string> artifacts = spec.artifacts;  // a set: its order builds nothing else
  std::sort(artifacts.begin(), artifacts.end());
  Json out = {
      {"apiVersion", spec.api_version},
      {"kind", spec.kind},
      {"base", base_resolved},
      {"arch", spec.arch},
      {"model", spec.model},
      {"variant", effective_variant(spec)},
      {"version", spec.version},
      {"kubernetes", std::move(kubernetes)},
      {"packages", spec.packages},
      {"toppings",
       {{"manifests", std::move(manifests)},
        {"wireguard", std::move(wireguard)},
        {"cluster", std::move(cluster)}}},
      {"security",
       {{"trustedBoot", spec.security.trusted_boot},
        {"encryption", spec.security.encryption},
        {"keys", spec.security.keys.empty() ? Json(nullptr)
                                            : sha256_of(directory_sha256(spec.security.keys))}}},
      {"artifacts", artifacts},
      {"cloudConfig",
       spec.cloud_config.empty() ? Json(nullptr) : sha256_of(util::file_sha256(spec.cloud_config))},
      {"compression",
       {{"algorithm", spec.compression}, {"level", optional_json(spec.compression_level)}}},
      {"tool", tool_version},
  };
  // Only when given, so that the ids of specs from before it stay what they were.
  if (!spec.security.splash.empty())
    out["security"]["splash"] = sha256_of(util::file_sha256(spec.security.splash));
  return out;
}

std::string build_id(const Json& canonical) {
  return util::sha256_hex(canonical.dump()).substr(0, 16);
}

std::string to_yaml(const BuildSpec& spec) {
  YAML::Emitter out;
  auto flow_list = [&](const char* key, const std::vector<std::string>& items) {
    out << YAML::Key << key << YAML::Value << YAML::Flow << YAML::BeginSeq;
    for (const auto& item : items) out << item;
    out << YAML::EndSeq;
  };
  out << YAML::BeginMap;
  out << YAML::Key << "apiVersion" << YAML::Value << spec.api_version;
  out << YAML::Key << "kind" << YAML::Value << spec.kind;
  out << YAML::Key << "base" << YAML::Value << spec.base;
  if (!spec.arch.empty()) out << YAML::Key << "arch" << YAML::Value << spec.arch;
  out << YAML::Key << "model" << YAML::Value << spec.model;
  out << YAML::Key << "variant" << YAML::Value << effective_variant(spec);
  out << YAML::Key << "version" << YAML::Value << spec.version;

  const auto& k8s = spec.kubernetes;
  out << YAML::Key << "kubernetes" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "distribution" << YAML::Value << k8s.distribution;
  if (!k8s.version.empty()) out << YAML::Key << "version" << YAML::Value << k8s.version;
  if (!k8s.binary.empty()) out << YAML::Key << "binary" << YAML::Value << k8s.binary;
  if (!k8s.sha256.empty()) out << YAML::Key << "sha256" << YAML::Value << k8s.sha256;
  out << YAML::EndMap;

  if (!spec.packages.empty()) flow_list("packages", spec.packages);

  const auto& t = spec.toppings;
  if (!t.manifests.empty() || t.wireguard || t.cluster) {
    out << YAML::Key << "toppings" << YAML::Value << YAML::BeginMap;
    if (!t.manifests.empty()) {
      out << YAML::Key << "manifests" << YAML::Value << YAML::BeginSeq;
      for (const auto& manifest : t.manifests) out << manifest.string();
      out << YAML::EndSeq;
    }
    if (const auto& wg = t.wireguard) {
      out << YAML::Key << "wireguard" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "interface" << YAML::Value << wg->interface;
      flow_list("address", wg->address);
      if (wg->listen_port) out << YAML::Key << "listenPort" << YAML::Value << *wg->listen_port;
      if (!wg->private_key.empty())
        out << YAML::Key << "privateKey" << YAML::Value << wg->private_key;
      out << YAML::Key << "peers" << YAML::Value << YAML::BeginSeq;
      for (const auto& peer : wg->peers) {
        out << YAML::BeginMap;
        out << YAML::Key << "publicKey" << YAML::Value << peer.public_key;
        if (!peer.endpoint.empty()) out << YAML::Key << "endpoint" << YAML::Value << peer.endpoint;
        flow_list("allowedIPs", peer.allowed_ips);
        if (peer.persistent_keepalive)
          out << YAML::Key << "persistentKeepalive" << YAML::Value << *peer.persistent_keepalive;
        if (!peer.preshared_key.empty())
          out << YAML::Key << "presharedKey" << YAML::Value << peer.preshared_key;
        out << YAML::EndMap;
      }
      out << YAML::EndSeq << YAML::EndMap;
    }
    if (const auto& c = t.cluster) {
      out << YAML::Key << "cluster" << YAML::Value << YAML::BeginMap;
      out << YAML::Key << "server" << YAML::Value << c->server;
      out << YAML::Key << "token" << YAML::Value << c->token;
      if (!c->ca_hash.empty()) out << YAML::Key << "caHash" << YAML::Value << c->ca_hash;
      out << YAML::EndMap;
    }
    out << YAML::EndMap;
  }

  out << YAML::Key << "security" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "trustedBoot" << YAML::Value << spec.security.trusted_boot;
  out << YAML::Key << "encryption" << YAML::Value << spec.security.encryption;
  if (!spec.security.keys.empty()) out << YAML::Key << "keys" << YAML::Value << spec.security.keys;
  if (!spec.security.splash.empty())
    out << YAML::Key << "splash" << YAML::Value << spec.security.splash;
  out << YAML::EndMap;

  flow_list("artifacts", spec.artifacts);
  if (!spec.cloud_config.empty())
    out << YAML::Key << "cloudConfig" << YAML::Value << spec.cloud_config;
  out << YAML::Key << "compression" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "algorithm" << YAML::Value << spec.compression;
  if (spec.compression_level) out << YAML::Key << "level" << YAML::Value << *spec.compression_level;
  out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace pok8s::config
