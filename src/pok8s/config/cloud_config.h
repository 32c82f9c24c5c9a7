// The cloud-config model (Kairos conventions: `#cloud-config`, top-level `users`, yip-style
// `stages`, the cloud-init keys Kairos accepts) and its parser. A wrong value of a known key is
// an error naming file and line; what Kairos accepts and pok8s does not act on is a warning.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::config {

// Limits on what a cloud-config may make the parser do.
inline constexpr std::size_t kMaxCloudConfigBytes = 1u << 20;   // one file
inline constexpr std::size_t kMaxCloudConfigNodes = 100'000;    // YAML nodes visited in a file
inline constexpr std::size_t kMaxCloudConfigListLength = 4096;  // items in any list or map
inline constexpr std::size_t kMaxCloudConfigDepth = 64;         // nesting of pass-through sections

// A uid/gid given as a number, or a name resolved against the target root's passwd/group.
struct IdOrName {
  std::optional<std::uint32_t> id;
  std::string name;
  bool empty() const { return !id && name.empty(); }
};

enum class FileEncoding { kNone, kBase64 };

struct FileSpec {
  std::string path;  // absolute, inside the target root
  std::string content;
  FileEncoding encoding = FileEncoding::kNone;
  std::optional<unsigned> permissions;  // default 0644
  IdOrName owner;
  IdOrName group;
};

struct DirectorySpec {
  std::string path;
  std::optional<unsigned> permissions;  // default 0755
  IdOrName owner;
  IdOrName group;
};

// One user, from the top-level `users` list or a step's `users` map.
struct UserSpec {
  std::string name;
  std::optional<std::string> passwd;  // plaintext (hashed when applied) or a crypt hash "$..."
  std::vector<std::string> ssh_authorized_keys;
  std::vector<std::string> groups;  // supplementary groups, created when missing
  std::string primary_group;        // default: a group named like the user
  std::string homedir;              // default: /home/<name>
  std::string shell;                // default: /bin/sh
  std::string gecos;
  std::optional<std::uint32_t> uid;  // default: the first free uid from 1000
  std::optional<bool> lock_passwd;
  int line = 0;
};

struct SystemctlSpec {
  std::vector<std::string> enable;
  std::vector<std::string> disable;
  std::vector<std::string> start;
  std::vector<std::string> mask;
  bool empty() const { return enable.empty() && disable.empty() && start.empty() && mask.empty(); }
};

// One yip-style step of a stage.
struct Step {
  std::string name;
  std::string if_condition;  // `if:` shell condition; exit 0 means run the step
  std::vector<std::pair<std::string, std::string>> environment;  // document order
  std::string environment_file;                                  // default /etc/environment
  std::string hostname;
  std::vector<DirectorySpec> directories;
  std::vector<FileSpec> files;
  std::vector<UserSpec> users;
  std::vector<std::pair<std::string, std::string>> sysctl;
  SystemctlSpec systemctl;
  std::vector<std::string> commands;
  int line = 0;  // where the step starts in its file
};

struct CloudConfig {
  std::string source;  // the file it came from, as named in messages
  std::map<std::string, std::vector<Step>> stages;
  std::vector<UserSpec> users;  // applied in the initramfs stage
  std::string hostname;         // applied in the initramfs stage
  // Top-level sections other parts of pok8s read (install, upgrade, reset, k3s, …) and those
  // Kairos leaves to providers and bundles (cluster, kcrypt, …), kept as parsed YAML so their
  // readers can still report lines.
  std::map<std::string, YAML::Node> sections;
  // "cloud-config FILE: line N: ..." for each key accepted and not acted on, in file order.
  std::vector<std::string> warnings;
};

// The stages a config may name: these bases, each optionally with ".before" or ".after".
// Every boot: rootfs, initramfs (pok8s-init, chrooted into the new root), boot, network (the
// service manager), plus Kairos' fs and reconcile. Around install/upgrade/reset: before-*,
// after-*, after-*-chroot, and the kairos-{,uki-}{install,upgrade,reset}.{pre,after} hooks.
std::span<const std::string_view> known_stage_bases();
bool is_known_stage(std::string_view name);
// The top-level keys kept as raw YAML for other modules.
std::span<const std::string_view> known_sections();

// Parses one document. `text` must start with the `#cloud-config` header. Throws
// Error(kInvalidInput) "Failed to read cloud-config SOURCE: line N: ..." on any problem.
CloudConfig parse_cloud_config(std::string_view text, std::string_view source_name);

// True when `text` starts with the `#cloud-config` header line.
bool has_cloud_config_header(std::string_view text);

// A file to read and whether it was named directly (then a missing header is an error) or found
// in a directory (then a file without the header is skipped).
struct ConfigFile {
  util::Path path;
  bool named_directly = true;
};

// Expands `paths` in order: a directory gives its *.yaml and *.yml files in name order, a file
// gives itself, a missing path gives nothing.
std::vector<ConfigFile> expand_config_paths(const std::vector<util::Path>& paths);

// Reads one file; nullopt for a directory entry without the header.
std::optional<CloudConfig> load_cloud_config_file(const ConfigFile& file);

// All of expand_config_paths, in order; the first bad file throws.
std::vector<CloudConfig> load_cloud_configs(const std::vector<util::Path>& paths);

// The parser's warnings, then one line for each Kairos section of `config` that pok8s accepts
// but does not act on (bundles, p2p, ...), so that none is dropped without a word:
// "cloud-config FILE: line N: KEY is ignored: pok8s does not implement it yet".
std::vector<std::string> ignored_section_warnings(const CloudConfig& config);

// Checks one file named by a user (`pok8s build --config FILE`, `pok8s-agent validate FILE`):
// it must exist, have the header and parse. Throws the one-line error.
CloudConfig validate_cloud_config(const util::Path& path);

}  // namespace pok8s::config
