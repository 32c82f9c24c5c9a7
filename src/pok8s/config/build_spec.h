// The build spec: the one declarative input (YAML) that the CLI, the HTTP API and the web
// builder produce and consume, its strict parser, and its canonical form whose hash is the
// build id. docs/build-spec.md describes every field.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::config {

struct WireGuardPeer {
  std::string public_key;                        // base64 of 32 bytes (44 chars ending in '=')
  std::string endpoint;                          // optional "host:port" (host may be [v6])
  std::vector<std::string> allowed_ips;          // CIDRs, at least one
  std::optional<unsigned> persistent_keepalive;  // seconds, 1..65535
  std::string preshared_key;                     // optional, base64 of 32 bytes
  friend bool operator==(const WireGuardPeer&, const WireGuardPeer&) = default;
};

struct WireGuardTopping {
  std::string interface = "wg0";        // [A-Za-z0-9_=+.-]{1,15}
  std::vector<std::string> address;     // CIDRs (v4 or v6), at least one
  std::optional<unsigned> listen_port;  // 1..65535
  std::string private_key;              // optional base64 of 32 bytes; empty: made on first boot
  std::vector<WireGuardPeer> peers;     // at least one
  friend bool operator==(const WireGuardTopping&, const WireGuardTopping&) = default;
};

// Join an existing control plane (e.g. a Kamaji tenant).
struct ClusterJoin {
  std::string server;   // required, https://host[:port]
  std::string token;    // required, one line, no spaces
  std::string ca_hash;  // optional: "sha256:" + 64 lowercase hex (stored normalised, prefixed)
  friend bool operator==(const ClusterJoin&, const ClusterJoin&) = default;
};

struct Toppings {
  // Absolute after parsing; files ending .yaml/.yml/.json, or directories (their
  // *.yaml/*.yml/*.json files, sorted, non-recursive).
  std::vector<util::Path> manifests;
  std::optional<WireGuardTopping> wireguard;
  std::optional<ClusterJoin> cluster;
  friend bool operator==(const Toppings&, const Toppings&) = default;
};

struct KubernetesSpec {
  std::string distribution = "none";  // none | k3s | k0s
  std::string version;                // required unless none
  std::string binary;  // a file (made absolute) or an http(s) URL; required unless none
  std::string sha256;  // 64 lowercase hex; required for a URL
  friend bool operator==(const KubernetesSpec&, const KubernetesSpec&) = default;
};

struct SecuritySpec {
  bool trusted_boot = false;
  std::string encryption = "none";  // none | tpm | passphrase
  std::string keys;                 // directory (made absolute), optional
  std::string splash;               // a BMP file (made absolute) the UKIs show, optional
  friend bool operator==(const SecuritySpec&, const SecuritySpec&) = default;
};

struct BuildSpec {
  std::string api_version = "pok8s/v1";
  std::string kind = "Build";
  // Required; a source name (docker://, oci:, oci-archive:, docker-archive:, dir:). The path of a
  // local source is made absolute like every other path.
  std::string base;
  std::string arch;               // amd64 | arm64; empty = the image's
  std::string model = "generic";  // generic only for now
  std::string variant;            // core | standard; default: standard with Kubernetes, else core
  std::string version;            // required; letters, digits, . _ + -
  KubernetesSpec kubernetes;
  std::vector<std::string> packages;  // distro package names
  Toppings toppings;
  SecuritySpec security;
  std::vector<std::string> artifacts = {
      "iso"};                        // iso raw qcow2 vhd uki uki-iso netboot; no duplicates
  std::string cloud_config;          // optional file (made absolute)
  std::string compression = "zstd";  // zstd | xz | gzip
  std::optional<int> compression_level;
  std::string source;  // where it was read from, for messages
  friend bool operator==(const BuildSpec&, const BuildSpec&) = default;
};

inline constexpr std::size_t kMaxBuildSpecBytes = 1u << 20;
// Manifest files a spec may add (after directories are expanded), and the size of each.
inline constexpr std::size_t kMaxManifestFiles = 1000;
inline constexpr std::uint64_t kMaxManifestBytes = 16u << 20;

// How parse_build_spec treats the local paths a spec names: cloudConfig, kubernetes.binary (a
// file, not a URL), toppings.manifests, security.keys, security.splash, and a local base. The
// defaults are the CLI's: a spec may name any path, and each is checked on disk.
struct SpecParseOptions {
  // Called with each such path as written, before anything on disk is looked at. `field` is the
  // key: "cloudConfig", "kubernetes.binary", "toppings.manifests", "security.keys",
  // "security.splash", or "base" (with the whole source name, for every transport but
  // docker://). A non-empty return refuses the path and is the reason the error gives; the
  // service holds a request's spec to its own files this way.
  std::function<std::string(std::string_view field, std::string_view written)> check_path;
  // Whether each path must exist and be of its kind and size, and manifest directories are
  // listed. Off, paths are only resolved: nothing on disk is touched, so a spec from a client
  // learns nothing of the server's files.
  bool check_files = true;
  // Messages name paths relative to `base_dir`, as the spec's author knows them, instead of
  // resolved: the directory the service parses in is no business of its clients.
  bool relative_messages = false;
};

// Parses and validates; relative paths resolve against `base_dir`. Every error is one line:
// "Failed to read build spec SOURCE: line N: FIELD.PATH ..." with did-you-mean for unknown keys.
BuildSpec parse_build_spec(std::string_view text, std::string_view source,
                           const util::Path& base_dir);
BuildSpec parse_build_spec(std::string_view text, std::string_view source,
                           const util::Path& base_dir, const SpecParseOptions& options);
// Reads (size-limited) and parses; base_dir = the file's directory.
BuildSpec load_build_spec(const util::Path& file);

// What the engine cannot build yet, one "field: reason" line each. Empty when everything can be
// built. Today: every artifact but netboot (uki and uki-iso with keys); trustedBoot with uki or
// uki-iso alone; encryption none.
std::vector<std::string> unbuildable(const BuildSpec& spec);

// The canonical form: a JSON object with defaults filled in, `base` replaced by `base_resolved`
// (e.g. "oci:/x@sha256:…" or "docker://…@sha256:…"), every referenced local file replaced by
// {"sha256": hex} of its content, secrets included as their sha256 only, and `tool` (the pok8s
// version string). nlohmann::json objects keep keys sorted, so dump() is canonical.
nlohmann::json canonical_spec(const BuildSpec& spec, std::string_view base_resolved,
                              std::string_view tool_version);
// sha256 hex of canonical.dump(), first 16 hex digits.
std::string build_id(const nlohmann::json& canonical);

// The spec as YAML a person reads and `pok8s build -f` accepts back: parse(to_yaml(s)) == s,
// paths absolute. Used by the web builder's Review page.
std::string to_yaml(const BuildSpec& spec);

}  // namespace pok8s::config
