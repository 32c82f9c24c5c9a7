// Cloud-config parsing with yaml-cpp, as Kairos reads it: a known key with a wrong value is an
// error naming the file, the line and the key path ("stages.boot[0].files[1]"); a key pok8s
// does not read is kept or ignored as Kairos does, and named in a warning.
#include "pok8s/config/cloud_config.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <charconv>

#include "pok8s/config/strict_yaml.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

namespace pok8s::config {
namespace {

constexpr std::string_view kHeader = "#cloud-config";

// The Kairos/yip stage names. Each may carry ".before" or ".after"; rootfs, initramfs, boot
// and network run on every boot, the others around install, upgrade and reset.
constexpr std::string_view kStageBases[] = {
    "rootfs",
    "initramfs",
    "boot",
    "network",
    "fs",
    "reconcile",
    "before-install",
    "after-install",
    "after-install-chroot",
    "before-upgrade",
    "after-upgrade",
    "after-upgrade-chroot",
    "before-reset",
    "after-reset",
    "after-reset-chroot",
    "kairos-install.pre",
    "kairos-install.after",
    "kairos-uki-install.pre",
    "kairos-uki-install.after",
    "kairos-upgrade.pre",
    "kairos-upgrade.after",
    "kairos-uki-upgrade.pre",
    "kairos-uki-upgrade.after",
    "kairos-reset.pre",
    "kairos-reset.after",
    "kairos-uki-reset.pre",
    "kairos-uki-reset.after",
};

// Kairos top-level sections other pok8s modules own.
constexpr std::string_view kSections[] = {
    "install", "upgrade",    "reset",   "k3s",        "k3s-agent",
    "k0s",     "k0s-worker", "bundles", "config_url", "debug",
    "strict",  "p2p",        "kubevip", "options",    "fail_on_bundles_errors",
};

constexpr std::string_view kTopLevelKeys[] = {"stages", "users", "hostname", "name"};

// cloud-init keys Kairos accepts (yip's cloud-init loader): they become one step that runs
// first in the boot stage.
constexpr std::string_view kCloudInitKeys[] = {"write_files", "runcmd", "bootcmd",
                                               "ssh_authorized_keys", "growpart"};
constexpr std::string_view kWriteFileKeys[] = {"path",  "content", "encoding", "permissions",
                                               "owner", "append",  "defer"};

constexpr std::string_view kStepKeys[] = {
    "name",      "if",          "commands",         "files", "directories", "users", "hostname",
    "systemctl", "environment", "environment_file", "sysctl"};

// Step keys yip knows that pok8s does not implement: named as such rather than as typos.
constexpr std::string_view kUnsupportedStepKeys[] = {"downloads",       "ensure_entities",
                                                     "delete_entities", "dns",
                                                     "authorized_keys", "node",
                                                     "modules",         "datasource",
                                                     "layout",          "systemd_firstboot",
                                                     "timesyncd",       "git",
                                                     "unpack_images",   "only_service_manager",
                                                     "only_os",         "only_os_version",
                                                     "only_arch",       "after"};

constexpr std::string_view kFileKeys[] = {"path",  "content", "encoding",    "permissions",
                                          "owner", "group",   "owner_string"};
constexpr std::string_view kDirectoryKeys[] = {"path", "permissions", "owner", "group"};
constexpr std::string_view kUserKeys[] = {
    "name",  "passwd", "ssh_authorized_keys", "groups", "primary_group", "homedir",
    "shell", "uid",    "lock_passwd",         "gecos"};
constexpr std::string_view kUnsupportedUserKeys[] = {
    "no_create_home", "no_user_group",          "system",
    "no_log_init",    "ssh_import_github_user", "ssh_import_id"};
constexpr std::string_view kSystemctlKeys[] = {"enable", "disable", "start", "mask"};

bool is_octal_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '7'; });
}

bool is_decimal_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// POSIX portable user and group names, as shadow-utils accepts them.
bool is_valid_account_name(std::string_view s) {
  if (s.empty() || s.size() > 32 || s[0] == '-') return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.' || (c == '$' && i + 1 == s.size());
    if (!ok) return false;
  }
  return !is_decimal_digits(s);
}

// RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
bool is_valid_hostname(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  std::size_t start = 0;
  while (start <= s.size()) {
    std::size_t dot = s.find('.', start);
    std::string_view label = s.substr(start, dot == std::string_view::npos ? s.npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-')
      return false;
    for (char c : label)
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-'))
        return false;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return true;
}

bool is_valid_env_name(std::string_view s) {
  if (s.empty() || (s[0] >= '0' && s[0] <= '9')) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

bool is_valid_sysctl_key(std::string_view s) {
  if (s.empty() || s.size() > 255 || s.front() == '/' || s.front() == '.') return false;
  if (s.find("..") != s.npos || s.find("//") != s.npos || s.find("/.") != s.npos) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.' || c == '/' || c == ':' || c == '@';
  });
}

bool is_valid_unit_name(std::string_view s) {
  if (s.empty() || s.size() > 255 || s.front() == '-' || s == "." || s == "..") return false;
  return std::none_of(s.begin(), s.end(), [](char c) {
    return c == '/' || c == '\0' || static_cast<unsigned char>(c) <= ' ';
  });
}

// An absolute path without "." or ".." components, so joining it to a root stays inside.
bool is_clean_absolute_path(std::string_view s) {
  if (s.empty() || s.front() != '/' || s.size() > 4096) return false;
  if (s.find('\0') != s.npos || s.find('\n') != s.npos) return false;
  std::size_t start = 1;
  while (start < s.size()) {
    std::size_t slash = s.find('/', start);
    std::string_view part = s.substr(start, slash == s.npos ? s.npos : slash - start);
    if (part == "." || part == "..") return false;
    if (slash == s.npos) break;
    start = slash + 1;
  }
  return true;
}

// RFC 4648 section 4 base64 (padding optional, whitespace ignored). Hand-written because the
// node library may not link OpenSSL and yaml-cpp's decoder accepts and drops invalid characters.
std::optional<std::string> decode_base64(std::string_view text) {
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  bool padding = false;
  for (char c : text) {
    int v;
    if (c >= 'A' && c <= 'Z')
      v = c - 'A';
    else if (c >= 'a' && c <= 'z')
      v = c - 'a' + 26;
    else if (c >= '0' && c <= '9')
      v = c - '0' + 52;
    else if (c == '+')
      v = 62;
    else if (c == '/')
      v = 63;
    else if (c == '=') {
      padding = true;
      continue;
    } else if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
      continue;
    else
      return std::nullopt;
    if (padding) return std::nullopt;  // data after padding
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  if (bits >= 6) return std::nullopt;  // a lone 6-bit group encodes no byte
  return out;
}

// The cloud-config half of the parser; the generic strictness comes from StrictYaml.
class CloudConfigParser : private StrictYaml {
 public:
  explicit CloudConfigParser(std::string_view source)
      : StrictYaml("cloud-config", source,
                   {kMaxCloudConfigNodes, kMaxCloudConfigListLength, kMaxCloudConfigDepth}) {}

  CloudConfig parse(std::string_view text) {
    CloudConfig config;
    config.source = source();
    YAML::Node root = load(text);
    if (root.IsNull()) return config;
    count(root);
    if (!root.IsMap())
      fail(root, fmt::format("the document must be a map, not {}", type_name(root)));
    std::vector<std::string> kept;  // unknown keys, named in one warning
    Step cloud_init;
    std::vector<std::string> global_keys;
    for_each_key(
        root, "", [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
          if (key == "stages") {
            read_stages(value, config);
          } else if (key == "users") {
            read_top_level_users(value, config.users);
          } else if (key == "hostname") {
            config.hostname = read_hostname(value, "hostname");
          } else if (key == "name") {
            read_string(value, key);
          } else if (contains(kCloudInitKeys, key)) {
            if (cloud_init.line == 0) cloud_init.line = key_node.Mark().line + 1;
            read_cloud_init_key(key, key_node, value, cloud_init, global_keys);
          } else {
            // Kairos passes other top-level keys to providers and bundles (cluster, kcrypt, a
            // bundle's own settings): they are kept; a likely typo is named on its own.
            check_depth(value, key, 1);
            config.sections.emplace(key, value);
            if (contains(kSections, key)) return;
            std::vector<std::string_view> known(std::begin(kTopLevelKeys), std::end(kTopLevelKeys));
            known.insert(known.end(), std::begin(kSections), std::end(kSections));
            known.insert(known.end(), std::begin(kCloudInitKeys), std::end(kCloudInitKeys));
            if (std::string hint = did_you_mean(key, known); !hint.empty())
              warn(key_node, fmt::format("unknown top-level key \"{}\" is kept but not read by "
                                         "pok8s{}",
                                         printable(key), hint));
            else
              kept.push_back(fmt::format("{} (line {})", printable(key), key_node.Mark().line + 1));
          }
        });
    if (!kept.empty())
      warn(root, fmt::format("kept for providers and bundles, not read by pok8s: {}",
                             fmt::join(kept, ", ")));
    if (!global_keys.empty()) {
      // yip gives the top-level keys to every cloud-init user, or to root without users.
      if (config.users.empty())
        warn(root,
             "ssh_authorized_keys without users is accepted but pok8s does not act on it "
             "yet (Kairos gives the keys to root)");
      for (auto& user : config.users)
        user.ssh_authorized_keys.insert(user.ssh_authorized_keys.end(), global_keys.begin(),
                                        global_keys.end());
    }
    if (!cloud_init.files.empty() || !cloud_init.commands.empty()) {
      cloud_init.name = "cloud-init keys";
      auto& boot = config.stages["boot"];
      boot.insert(boot.begin(), std::move(cloud_init));
    }
    config.warnings = take_warnings();
    return config;
  }

 private:
  // An unknown key, bounded and named in a warning: Kairos ignores it.
  void unknown(const YAML::Node& key_node, const std::string& key, const YAML::Node& value,
               const std::string& path, std::span<const std::string_view> known,
               std::span<const std::string_view> later = {}) {
    check_depth(value, join(path, key), 1);
    warn_unknown_key(key_node, key, path, known, later);
  }

  // write_files, runcmd, bootcmd (bootcmd first, as cloud-init runs it earlier), the global
  // ssh_authorized_keys and growpart.
  void read_cloud_init_key(const std::string& key, const YAML::Node& key_node,
                           const YAML::Node& value, Step& step, std::vector<std::string>& keys) {
    if (key == "write_files") {
      if (value.IsNull()) return;
      expect(value, YAML::NodeType::Sequence, key, "a list");
      check_length(value, key);
      for (std::size_t i = 0; i < value.size(); ++i) {
        count(value[i]);
        step.files.push_back(read_write_file(value[i], index(key, i)));
      }
    } else if (key == "runcmd" || key == "bootcmd") {
      std::vector<std::string> commands = read_command_list(value, key);
      auto at = key == "bootcmd" ? step.commands.begin() : step.commands.end();
      step.commands.insert(at, commands.begin(), commands.end());
    } else if (key == "ssh_authorized_keys") {
      keys = read_string_list(value, key);
      for (std::size_t i = 0; i < keys.size(); ++i)
        if (keys[i].find('\n') != std::string::npos)
          fail(value[i], fmt::format("{} must be one line", index(key, i)));
    } else {  // growpart
      check_depth(value, key, 1);
      warn(key_node, "growpart is accepted but pok8s does not act on it yet");
    }
  }

  // cloud-init's command lists: a string runs with sh -c, a list is one argv (quoted here).
  std::vector<std::string> read_command_list(const YAML::Node& node, const std::string& path) {
    std::vector<std::string> out;
    if (node.IsNull()) return out;
    expect(node, YAML::NodeType::Sequence, path, "a list");
    check_length(node, path);
    for (std::size_t i = 0; i < node.size(); ++i) {
      count(node[i]);
      std::string item = index(path, i);
      if (!node[i].IsSequence()) {
        out.push_back(read_string(node[i], item));
        continue;
      }
      std::vector<std::string> argv = read_string_list(node[i], item);
      std::string command;
      for (const auto& arg : argv) {
        if (!command.empty()) command += ' ';
        command += util::single_quote(arg);
      }
      out.push_back(std::move(command));
    }
    return out;
  }

  // A cloud-init write_files entry: owner is "user:group", permissions a string like "0644"
  // (default 0644, as cloud-init), encoding b64/base64.
  FileSpec read_write_file(const YAML::Node& node, const std::string& path) {
    FileSpec file;
    expect(node, YAML::NodeType::Map, path, "a map");
    std::optional<YAML::Node> content;
    for_each_key(
        node, path,
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
          std::string sub = join(path, key);
          if (read_file_key(file, content, key, value, sub)) return;
          if (key == "owner") {
            std::string owner = read_string(value, sub);
            auto colon = owner.find(':');
            file.owner = id_or_name(value, sub, owner.substr(0, colon));
            if (colon != std::string::npos)
              file.group = id_or_name(value, sub, owner.substr(colon + 1));
          } else if (key == "append" || key == "defer") {
            if (read_bool(value, sub))
              warn(key_node,
                   fmt::format("{}: true is accepted but pok8s does not act on it yet", sub));
          } else {
            unknown(key_node, key, value, path, kWriteFileKeys);
          }
        });
    if (!file.permissions) file.permissions = 0644;
    finish_file(file, node, content, path);
    return file;
  }

  // The keys yip's files and cloud-init's write_files share; false for another key.
  bool read_file_key(FileSpec& file, std::optional<YAML::Node>& content, const std::string& key,
                     const YAML::Node& value, const std::string& sub) {
    if (key == "path") {
      file.path = read_path(value, sub);
    } else if (key == "content") {
      file.content = read_string(value, sub);
      content = value;
    } else if (key == "encoding") {
      file.encoding = read_encoding(value, sub);
    } else if (key == "permissions") {
      file.permissions = read_mode(value, sub);
    } else {
      return false;
    }
    return true;
  }

  FileEncoding read_encoding(const YAML::Node& value, const std::string& sub) {
    std::string enc = read_string(value, sub);
    if (enc.empty() || enc == "none") return FileEncoding::kNone;
    if (enc == "base64" || enc == "b64") return FileEncoding::kBase64;
    if (enc == "gzip" || enc == "gz" || enc == "gz+base64" || enc == "gzip+base64" ||
        enc == "gz+b64" || enc == "gzip+b64")
      fail(value, fmt::format("{} \"{}\" is not supported by pok8s (none or base64)", sub, enc));
    fail(value, fmt::format("{} must be none or base64, not \"{}\"", sub, printable(enc)));
  }

  // A file needs a path; base64 content is decoded here.
  void finish_file(FileSpec& file, const YAML::Node& node, const std::optional<YAML::Node>& content,
                   const std::string& path) {
    if (file.path.empty()) fail(node, fmt::format("{} has no path", path));
    if (file.encoding != FileEncoding::kBase64) return;
    auto decoded = decode_base64(file.content);
    if (!decoded)
      fail(content ? *content : node, fmt::format("{}.content is not valid base64", path));
    file.content = std::move(*decoded);
  }

  // A uid/gid or a user/group name: `s` is the value at `node`, or a part of it.
  IdOrName id_or_name(const YAML::Node& node, const std::string& path, const std::string& s) {
    IdOrName out;
    if (s.empty()) return out;
    if (is_decimal_digits(s)) {
      out.id = parse_id(node, path, s);
    } else if (is_valid_account_name(s)) {
      out.name = s;
    } else {
      fail(node, fmt::format("{} must be a uid/gid or a user/group name, not \"{}\"", path,
                             printable(s)));
    }
    return out;
  }

  std::uint32_t read_id(const YAML::Node& node, const std::string& path) {
    return parse_id(node, path, read_string(node, path));
  }

  std::uint32_t parse_id(const YAML::Node& node, const std::string& path, const std::string& s) {
    std::uint32_t value = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (!is_decimal_digits(s) || ec != std::errc() || end != s.data() + s.size() ||
        value == 0xffffffffu)
      fail(node,
           fmt::format("{} must be a number from 0 to 4294967294, not \"{}\"", path, printable(s)));
    return value;
  }

  // File modes: a plain YAML integer follows YAML 1.1 as yip does (0644 and 0o644 octal, 420
  // decimal); a quoted string is always octal ("644", "0644").
  unsigned read_mode(const YAML::Node& node, const std::string& path) {
    if (!node.IsScalar())
      fail(node, fmt::format("{} must be a file mode, not {}", path, type_name(node)));
    std::string_view s = node.Scalar();
    bool quoted = node.Tag() == "!";
    int base = 10;
    if (s.starts_with("0o") || s.starts_with("0O")) {
      s.remove_prefix(2);
      base = 8;
    } else if (quoted || (s.size() > 1 && s.front() == '0')) {
      base = 8;
    }
    unsigned value = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value, base);
    bool digits_ok = base == 8 ? is_octal_digits(s) : is_decimal_digits(s);
    if (!digits_ok || ec != std::errc() || end != s.data() + s.size() || value > 07777)
      fail(node, fmt::format("{} must be a file mode like 0644, not \"{}\"", path,
                             printable(node.Scalar())));
    return value;
  }

  IdOrName read_id_or_name(const YAML::Node& node, const std::string& path) {
    return id_or_name(node, path, read_string(node, path));
  }

  std::string read_account_name(const YAML::Node& node, const std::string& path) {
    std::string s = read_string(node, path);
    if (!is_valid_account_name(s))
      fail(node, fmt::format("{} is not a valid user or group name: \"{}\"", path, printable(s)));
    return s;
  }

  std::string read_path(const YAML::Node& node, const std::string& path) {
    std::string s = read_string(node, path);
    if (!is_clean_absolute_path(s))
      fail(node, fmt::format("{} must be an absolute path without \".\" or \"..\", not \"{}\"",
                             path, printable(s)));
    return s;
  }

  std::string read_hostname(const YAML::Node& node, const std::string& path) {
    std::string s = read_string(node, path);
    if (!s.empty() && !is_valid_hostname(s))
      fail(node, fmt::format("{} is not a valid host name (RFC 1123): \"{}\"", path, printable(s)));
    return s;
  }

  void read_stages(const YAML::Node& node, CloudConfig& config) {
    if (node.IsNull()) return;
    expect(node, YAML::NodeType::Map, "stages", "a map of stage names to lists of steps");
    for_each_key(
        node, "stages",
        [&](const std::string& stage, const YAML::Node& key_node, const YAML::Node& steps) {
          if (!is_known_stage(stage)) {
            // yip runs any stage it is asked for; neither Kairos nor pok8s asks for this one.
            std::vector<std::string> names;
            for (auto base : kStageBases) {
              names.emplace_back(base);
              names.push_back(std::string(base) + ".before");
              names.push_back(std::string(base) + ".after");
            }
            std::vector<std::string_view> views(names.begin(), names.end());
            warn(key_node, fmt::format("stage \"{}\" is never run{}", printable(stage),
                                       did_you_mean(stage, views)));
          }
          std::string path = join("stages", stage);
          auto& out = config.stages[stage];
          if (steps.IsNull()) return;
          expect(steps, YAML::NodeType::Sequence, path, "a list of steps");
          check_length(steps, path);
          for (std::size_t i = 0; i < steps.size(); ++i) {
            count(steps[i]);
            out.push_back(read_step(steps[i], index(path, i)));
          }
        });
  }

  Step read_step(const YAML::Node& node, const std::string& path) {
    Step step;
    step.line = node.Mark().line + 1;
    expect(node, YAML::NodeType::Map, path, "a map");
    for_each_key(
        node, path,
        [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
          std::string sub = join(path, key);
          if (key == "name") {
            step.name = read_line_string(value, sub, true);
          } else if (key == "if") {
            step.if_condition = read_string(value, sub);
          } else if (key == "commands") {
            step.commands = read_string_list(value, sub);
          } else if (key == "files") {
            if (value.IsNull()) return;
            expect(value, YAML::NodeType::Sequence, sub, "a list");
            check_length(value, sub);
            for (std::size_t i = 0; i < value.size(); ++i) {
              count(value[i]);
              step.files.push_back(read_file(value[i], index(sub, i)));
            }
          } else if (key == "directories") {
            if (value.IsNull()) return;
            expect(value, YAML::NodeType::Sequence, sub, "a list");
            check_length(value, sub);
            for (std::size_t i = 0; i < value.size(); ++i) {
              count(value[i]);
              step.directories.push_back(read_directory(value[i], index(sub, i)));
            }
          } else if (key == "users") {
            if (value.IsNull()) return;
            expect(value, YAML::NodeType::Map, sub, "a map of user names to users");
            for_each_key(
                value, sub,
                [&](const std::string& name, const YAML::Node& name_node, const YAML::Node& user) {
                  std::string user_path = join(sub, name);
                  UserSpec spec = read_user(user, user_path, true);
                  if (spec.name.empty()) spec.name = read_account_name(name_node, user_path);
                  spec.line = name_node.Mark().line + 1;
                  step.users.push_back(std::move(spec));
                });
          } else if (key == "hostname") {
            step.hostname = read_hostname(value, sub);
          } else if (key == "systemctl") {
            step.systemctl = read_systemctl(value, sub);
          } else if (key == "environment") {
            step.environment =
                read_map(value, sub, [&](const YAML::Node& k, const std::string& name) {
                  if (!is_valid_env_name(name))
                    fail(k, fmt::format("{} has an invalid variable name \"{}\"", sub,
                                        printable(name)));
                });
          } else if (key == "environment_file") {
            step.environment_file = read_path(value, sub);
          } else if (key == "sysctl") {
            step.sysctl = read_map(value, sub, [&](const YAML::Node& k, const std::string& name) {
              if (!is_valid_sysctl_key(name))
                fail(k, fmt::format("{} has an invalid key \"{}\"", sub, printable(name)));
            });
          } else {
            unknown(key_node, key, value, path, kStepKeys, kUnsupportedStepKeys);
          }
        });
    return step;
  }

  // A map of names to one-line string values, in document order.
  template <typename CheckKey>
  std::vector<std::pair<std::string, std::string>> read_map(const YAML::Node& node,
                                                            const std::string& path,
                                                            CheckKey&& check_key) {
    std::vector<std::pair<std::string, std::string>> out;
    if (node.IsNull()) return out;
    expect(node, YAML::NodeType::Map, path, "a map");
    for_each_key(node, path,
                 [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
                   check_key(key_node, key);
                   out.emplace_back(key, read_line_string(value, join(path, key), true));
                 });
    return out;
  }

  FileSpec read_file(const YAML::Node& node, const std::string& path) {
    FileSpec file;
    expect(node, YAML::NodeType::Map, path, "a map");
    std::optional<YAML::Node> content;
    for_each_key(node, path,
                 [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
                   std::string sub = join(path, key);
                   if (read_file_key(file, content, key, value, sub)) return;
                   if (key == "owner") {
                     file.owner = read_id_or_name(value, sub);
                   } else if (key == "owner_string") {  // yip's name for an owner given by name
                     file.owner = read_id_or_name(value, sub);
                   } else if (key == "group") {
                     file.group = read_id_or_name(value, sub);
                   } else {
                     unknown(key_node, key, value, path, kFileKeys);
                   }
                 });
    finish_file(file, node, content, path);
    return file;
  }

  DirectorySpec read_directory(const YAML::Node& node, const std::string& path) {
    DirectorySpec dir;
    expect(node, YAML::NodeType::Map, path, "a map");
    for_each_key(node, path,
                 [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
                   std::string sub = join(path, key);
                   if (key == "path")
                     dir.path = read_path(value, sub);
                   else if (key == "permissions")
                     dir.permissions = read_mode(value, sub);
                   else if (key == "owner")
                     dir.owner = read_id_or_name(value, sub);
                   else if (key == "group")
                     dir.group = read_id_or_name(value, sub);
                   else
                     unknown(key_node, key, value, path, kDirectoryKeys);
                 });
    if (dir.path.empty()) fail(node, fmt::format("{} has no path", path));
    return dir;
  }

  UserSpec read_user(const YAML::Node& node, const std::string& path, bool in_step) {
    UserSpec user;
    user.line = node.Mark().line + 1;
    if (in_step && node.IsNull()) return user;
    expect(node, YAML::NodeType::Map, path, "a map");
    for_each_key(node, path,
                 [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
                   std::string sub = join(path, key);
                   if (key == "name") {
                     user.name = read_account_name(value, sub);
                   } else if (key == "passwd") {
                     std::string s = read_line_string(value, sub, false);
                     if (!s.empty()) user.passwd = std::move(s);
                   } else if (key == "ssh_authorized_keys") {
                     user.ssh_authorized_keys = read_string_list(value, sub);
                     for (std::size_t i = 0; i < user.ssh_authorized_keys.size(); ++i)
                       if (user.ssh_authorized_keys[i].find('\n') != std::string::npos)
                         fail(value[i], fmt::format("{} must be one line", index(sub, i)));
                   } else if (key == "groups") {
                     user.groups = read_string_list(value, sub);
                     for (std::size_t i = 0; i < user.groups.size(); ++i)
                       if (!is_valid_account_name(user.groups[i]))
                         fail(value[i], fmt::format("{} is not a valid group name: \"{}\"",
                                                    index(sub, i), printable(user.groups[i])));
                   } else if (key == "primary_group") {
                     user.primary_group = read_account_name(value, sub);
                   } else if (key == "homedir") {
                     user.homedir = read_path(value, sub);
                     if (user.homedir.find(':') != std::string::npos)
                       fail(value, fmt::format("{} must not contain ':'", sub));
                   } else if (key == "shell") {
                     user.shell = read_path(value, sub);
                     if (user.shell.find(':') != std::string::npos)
                       fail(value, fmt::format("{} must not contain ':'", sub));
                   } else if (key == "gecos") {
                     user.gecos = read_line_string(value, sub, false);
                   } else if (key == "uid") {
                     user.uid = read_id(value, sub);
                   } else if (key == "lock_passwd") {
                     user.lock_passwd = read_bool(value, sub);
                   } else {
                     unknown(key_node, key, value, path, kUserKeys, kUnsupportedUserKeys);
                   }
                 });
    return user;
  }

  void read_top_level_users(const YAML::Node& node, std::vector<UserSpec>& out) {
    if (node.IsNull()) return;
    expect(node, YAML::NodeType::Sequence, "users", "a list");
    check_length(node, "users");
    for (std::size_t i = 0; i < node.size(); ++i) {
      count(node[i]);
      std::string path = index("users", i);
      UserSpec user = read_user(node[i], path, false);
      if (user.name.empty()) fail(node[i], fmt::format("{} has no name", path));
      out.push_back(std::move(user));
    }
  }

  SystemctlSpec read_systemctl(const YAML::Node& node, const std::string& path) {
    SystemctlSpec spec;
    if (node.IsNull()) return spec;
    expect(node, YAML::NodeType::Map, path, "a map");
    for_each_key(node, path,
                 [&](const std::string& key, const YAML::Node& key_node, const YAML::Node& value) {
                   std::string sub = join(path, key);
                   std::vector<std::string>* list = nullptr;
                   if (key == "enable")
                     list = &spec.enable;
                   else if (key == "disable")
                     list = &spec.disable;
                   else if (key == "start")
                     list = &spec.start;
                   else if (key == "mask")
                     list = &spec.mask;
                   if (!list) {
                     constexpr std::string_view kLater[] = {"overrides"};
                     return unknown(key_node, key, value, path, kSystemctlKeys, kLater);
                   }
                   *list = read_string_list(value, sub);
                   for (std::size_t i = 0; i < list->size(); ++i)
                     if (!is_valid_unit_name((*list)[i]))
                       fail(value[i], fmt::format("{} is not a valid unit name: \"{}\"",
                                                  index(sub, i), printable((*list)[i])));
                 });
    return spec;
  }
};

}  // namespace

std::span<const std::string_view> known_stage_bases() {
  return kStageBases;
}

bool is_known_stage(std::string_view name) {
  if (contains(kStageBases, name)) return true;
  for (std::string_view suffix : {".before", ".after"})
    if (name.ends_with(suffix) &&
        contains(kStageBases, name.substr(0, name.size() - suffix.size())))
      return true;
  return false;
}

std::span<const std::string_view> known_sections() {
  return kSections;
}

bool has_cloud_config_header(std::string_view text) {
  if (!text.starts_with(kHeader)) return false;
  std::string_view rest = text.substr(kHeader.size());
  rest = rest.substr(0, rest.find('\n'));
  return std::all_of(rest.begin(), rest.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\r'; });
}

CloudConfig parse_cloud_config(std::string_view text, std::string_view source_name) {
  if (text.size() > kMaxCloudConfigBytes)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read cloud-config {}: {} bytes exceeds the limit of {}",
                            source_name, text.size(), kMaxCloudConfigBytes));
  if (!has_cloud_config_header(text))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read cloud-config {}: line 1: the file does not start with "
                            "\"#cloud-config\"",
                            source_name));
  if (text.find('\0') != std::string_view::npos)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read cloud-config {}: it contains a NUL byte", source_name));
  return CloudConfigParser(source_name).parse(text);
}

std::vector<ConfigFile> expand_config_paths(const std::vector<util::Path>& paths) {
  std::vector<ConfigFile> out;
  for (const auto& path : paths) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) continue;
    if (!S_ISDIR(st.st_mode)) {
      out.push_back({path, true});
      continue;
    }
    std::vector<util::Path> files;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
      auto ext = entry.path().extension();
      if ((ext == ".yaml" || ext == ".yml") && entry.is_regular_file(ec))
        files.push_back(entry.path());
    }
    if (ec)
      throw Error(ErrorKind::kIo, fmt::format("Failed to list cloud-config directory {}: {}",
                                              path.string(), ec.message()));
    std::sort(files.begin(), files.end());
    for (auto& f : files) out.push_back({std::move(f), false});
  }
  return out;
}

std::optional<CloudConfig> load_cloud_config_file(const ConfigFile& file) {
  std::string text = util::read_file(file.path, kMaxCloudConfigBytes);
  if (!file.named_directly && !has_cloud_config_header(text)) return std::nullopt;
  return parse_cloud_config(text, file.path.string());
}

std::vector<CloudConfig> load_cloud_configs(const std::vector<util::Path>& paths) {
  std::vector<CloudConfig> out;
  for (const auto& file : expand_config_paths(paths))
    if (auto config = load_cloud_config_file(file)) out.push_back(std::move(*config));
  return out;
}

std::vector<std::string> ignored_section_warnings(const CloudConfig& config) {
  // Read by install_config, lifecycle_config, kubernetes_config and config_url; the rest is
  // accepted and left alone.
  constexpr std::string_view kRead[] = {"install",   "upgrade", "reset",      "k3s",
                                        "k3s-agent", "k0s",     "k0s-worker", "config_url"};
  std::vector<std::string> out = config.warnings;
  for (const auto& [key, node] : config.sections)
    if (contains(kSections, key) && !contains(kRead, key))
      out.push_back(
          fmt::format("cloud-config {}: line {}: {} is ignored: pok8s does not implement "
                      "it yet",
                      config.source, node.Mark().line + 1, key));
  return out;
}

CloudConfig validate_cloud_config(const util::Path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to read cloud-config {}: no such file", path.string()));
  if (S_ISDIR(st.st_mode))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read cloud-config {}: it is a directory", path.string()));
  return *load_cloud_config_file({path, true});
}

}  // namespace pok8s::config
