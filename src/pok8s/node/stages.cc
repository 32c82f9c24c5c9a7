// The step runner of pok8s-agent: yip's step semantics on a target root, one action after
// the other, every failure reported through the caller's sink.
#include "pok8s/node/stages.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>
#include <map>
#include <set>

#include "pok8s/node/command.h"
#include "pok8s/node/users.h"
#include "pok8s/util/error.h"

namespace pok8s::node {
namespace {

bool path_exists(const util::Path& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

bool root_is_host(const StageContext& context) {
  return context.root.empty() || context.root == "/";
}

std::string first_line(std::string_view text) {
  std::string_view line = text.substr(0, text.find('\n'));
  if (line.size() > 80) return std::string(line.substr(0, 80)) + "…";
  return std::string(line) + (line.size() < text.size() ? " …" : "");
}

void emit(const StageContext& context, const StageEvent& where, StageEvent::Kind kind,
          std::string message = {}) {
  if (!context.sink) return;
  StageEvent event = where;
  event.kind = kind;
  event.message = std::move(message);
  context.sink(event);
}

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : " ") + n;
  return out;
}

// A uid or gid from a number or a name in the root's account files.
std::optional<std::uint32_t> resolve(const config::IdOrName& who, const util::Path& root,
                                     bool group) {
  if (who.empty()) return std::nullopt;
  if (who.id) return who.id;
  AccountDatabase db(root);
  auto id = group ? db.gid_of(who.name) : db.uid_of(who.name);
  if (!id)
    throw Error(ErrorKind::kNotFound, fmt::format("Failed to resolve {} \"{}\": not in {}/etc/{}",
                                                  group ? "group" : "user", who.name, root.string(),
                                                  group ? "group" : "passwd"));
  return id;
}

void apply_owner(int fd, const util::Path& path, const config::IdOrName& owner,
                 const config::IdOrName& group, const util::Path& root) {
  auto uid = resolve(owner, root, false);
  auto gid = resolve(group, root, true);
  if (!uid && !gid) return;
  uid_t u = uid ? *uid : static_cast<uid_t>(-1);
  gid_t g = gid ? *gid : static_cast<gid_t>(-1);
  int rc = fd >= 0 ? ::fchown(fd, u, g) : ::lchown(path.c_str(), u, g);
  if (rc != 0) throw_errno("Failed to change the owner of " + path.string(), errno);
}

// --- environment ---------------------------------------------------------------------------

// A value for an environment file: bare when it is plain, else double-quoted with \, ", $ and `
// escaped (what systemd's EnvironmentFile= and yip's godotenv read back).
std::string quote_env(std::string_view value) {
  bool plain = !value.empty() && std::all_of(value.begin(), value.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.' || c == '/' || c == ':' || c == ',' || c == '+' || c == '=' ||
           c == '@' || c == '%';
  });
  if (plain) return std::string(value);
  std::string out = "\"";
  for (char c : value) {
    if (c == '\\' || c == '"' || c == '$' || c == '`') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

std::string env_line_key(std::string_view line) {
  std::size_t i = line.find_first_not_of(" \t");
  if (i == std::string_view::npos || line[i] == '#') return {};
  line.remove_prefix(i);
  if (line.starts_with("export ")) line.remove_prefix(7);
  auto eq = line.find('=');
  return eq == std::string_view::npos ? std::string() : std::string(line.substr(0, eq));
}

void write_environment(const config::Step& step, const StageContext& context) {
  util::Path file = path_in_root(
      context.root, step.environment_file.empty() ? "/etc/environment" : step.environment_file);
  std::vector<std::string> lines;
  unsigned mode = 0644;
  struct stat st {};
  if (::stat(file.c_str(), &st) == 0) {
    mode = st.st_mode & 07777;
    std::string text = util::read_file(file, 1u << 20);
    std::size_t start = 0;
    while (start < text.size()) {
      std::size_t nl = text.find('\n', start);
      lines.push_back(text.substr(start, nl == std::string::npos ? std::string::npos : nl - start));
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
  }
  std::map<std::string, std::string> values(step.environment.begin(), step.environment.end());
  std::vector<std::string> out;
  std::set<std::string> written;
  for (auto& line : lines) {
    std::string key = env_line_key(line);
    auto it = values.find(key);
    if (key.empty() || it == values.end()) {
      out.push_back(std::move(line));
    } else if (written.insert(key).second) {
      out.push_back(key + "=" + quote_env(it->second));
    }
  }
  for (const auto& [key, value] : step.environment)
    if (written.insert(key).second) out.push_back(key + "=" + quote_env(values[key]));
  std::string text;
  for (const auto& line : out) text += line + "\n";
  util::make_dirs(file.parent_path());
  util::write_file_atomic(file, text, mode);
}

// --- hostname, directories, files, sysctl ----------------------------------------------------

void set_hostname(const std::string& hostname, const StageContext& context) {
  util::Path file = path_in_root(context.root, "/etc/hostname");
  util::make_dirs(file.parent_path());
  util::write_file_atomic(file, hostname + "\n", 0644);
  if (root_is_host(context) && ::sethostname(hostname.data(), hostname.size()) != 0)
    throw_errno(fmt::format("Failed to set the host name to {}", hostname), errno);
}

void make_directory(const config::DirectorySpec& dir, const StageContext& context) {
  util::Path path = path_in_root(context.root, dir.path);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode))
      throw Error(ErrorKind::kIo, fmt::format("Failed to create directory {}: it exists and is "
                                              "not a directory",
                                              dir.path));
  } else {
    util::make_dirs(path.parent_path());
    if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST)
      throw_errno("Failed to create directory " + dir.path, errno);
    if (!dir.permissions && ::chmod(path.c_str(), 0755) != 0)
      throw_errno("Failed to chmod " + dir.path, errno);
  }
  if (dir.permissions && ::chmod(path.c_str(), *dir.permissions) != 0)
    throw_errno("Failed to chmod " + dir.path, errno);
  apply_owner(-1, path, dir.owner, dir.group, context.root);
}

void write_file(const config::FileSpec& file, const StageContext& context) {
  util::Path path = path_in_root(context.root, file.path);
  util::make_dirs(path.parent_path());
  util::TempFile tmp(path);
  util::write_all(tmp.fd(), file.content, file.path);
  unsigned mode = file.permissions.value_or(0644);
  if (::fchmod(tmp.fd(), mode) != 0) throw_errno("Failed to chmod " + file.path, errno);
  apply_owner(tmp.fd(), tmp.path(), file.owner, file.group, context.root);
  tmp.commit();
}

void write_sysctl(const std::string& key, const std::string& value, const StageContext& context) {
  util::Path dir =
      context.proc_sys.empty() ? path_in_root(context.root, "/proc/sys") : context.proc_sys;
  std::string rel = key;
  // sysctl(8): dots separate the levels unless the key already uses slashes.
  if (rel.find('/') == std::string::npos) std::replace(rel.begin(), rel.end(), '.', '/');
  util::Path path = dir / rel;
  int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to set sysctl {}: no such key ({})", key, path.string()));
    throw_errno(fmt::format("Failed to set sysctl {}", key), err);
  }
  util::UniqueFd owned(fd);
  util::write_all(fd, value + "\n", fmt::format("sysctl {}", key));
}

// --- services --------------------------------------------------------------------------------

ServiceManager detect_service_manager(const StageContext& context) {
  if (context.service_manager != ServiceManager::kAuto) return context.service_manager;
  auto in_root = [&](std::string_view p) { return path_exists(path_in_root(context.root, p)); };
  bool systemd = in_root("/usr/lib/systemd/systemd") || in_root("/lib/systemd/systemd");
  bool openrc = in_root("/sbin/openrc") || in_root("/usr/sbin/openrc") ||
                in_root("/sbin/openrc-run") || in_root("/usr/sbin/openrc-run");
  return openrc && !systemd ? ServiceManager::kOpenRC : ServiceManager::kSystemd;
}

void check_status(int status, std::string_view verb, const std::vector<std::string>& units,
                  std::string_view tool) {
  if (status != 0)
    throw Error(ErrorKind::kIo, fmt::format("Failed to {} {}: {} exited with status {}", verb,
                                            join_names(units), tool, status));
}

void systemctl(const config::SystemctlSpec& spec, const StageContext& context,
               const std::function<void(const std::string&)>& fail,
               const std::function<void(const std::string&)>& note) {
  bool host = root_is_host(context);
  bool running = host && path_exists("/run/systemd/system");
  auto run = [&](std::string_view verb, const std::vector<std::string>& units,
                 std::vector<std::string> extra = {}) {
    if (units.empty()) return;
    try {
      std::vector<std::string> argv = {"systemctl"};
      if (!host) argv.push_back("--root=" + context.root.string());
      argv.insert(argv.end(), extra.begin(), extra.end());
      argv.emplace_back(verb);
      argv.insert(argv.end(), units.begin(), units.end());
      check_status(run_command({argv, {}, {}}), verb, units, "systemctl");
    } catch (const std::exception& e) {
      fail(e.what());
    }
  };
  run("mask", spec.mask);
  run("disable", spec.disable);
  run("enable", spec.enable);
  if (spec.start.empty()) return;
  if (running)
    // --no-block: a step of a boot unit must not wait for a unit ordered after that boot unit.
    run("start", spec.start, {"--no-block"});
  else
    note(fmt::format("not starting {}: systemd is not running on the target root",
                     join_names(spec.start)));
}

std::string openrc_name(const std::string& unit) {
  return unit.ends_with(".service") ? unit.substr(0, unit.size() - 8) : unit;
}

void openrc(const config::SystemctlSpec& spec, const StageContext& context,
            const std::function<void(const std::string&)>& fail,
            const std::function<void(const std::string&)>& note) {
  bool host = root_is_host(context);
  auto each = [&](std::string_view verb, const std::vector<std::string>& units, auto&& action) {
    for (const auto& unit : units) {
      try {
        action(openrc_name(unit));
      } catch (const std::exception& e) {
        fail(e.what());
      }
    }
    (void)verb;
  };
  if (!spec.mask.empty())
    fail(fmt::format("Failed to mask {}: OpenRC has no masking", join_names(spec.mask)));
  // Another root: do what rc-update does, a link in the default runlevel.
  util::Path runlevel = path_in_root(context.root, "/etc/runlevels/default");
  each("disable", spec.disable, [&](const std::string& name) {
    if (host)
      return check_status(run_command({{"rc-update", "del", name, "default"}, {}, {}}), "disable",
                          {name}, "rc-update");
    if (::unlink((runlevel / name).c_str()) != 0 && errno != ENOENT)
      throw_errno("Failed to disable " + name, errno);
  });
  each("enable", spec.enable, [&](const std::string& name) {
    if (host)
      return check_status(run_command({{"rc-update", "add", name, "default"}, {}, {}}), "enable",
                          {name}, "rc-update");
    if (!path_exists(path_in_root(context.root, "/etc/init.d/" + name)))
      throw Error(
          ErrorKind::kNotFound,
          fmt::format("Failed to enable {}: no /etc/init.d/{} in the target root", name, name));
    util::make_dirs(runlevel);
    util::Path link = runlevel / name;
    if (path_exists(link)) return;
    if (::symlink(("/etc/init.d/" + name).c_str(), link.c_str()) != 0)
      throw_errno("Failed to enable " + name, errno);
  });
  if (spec.start.empty()) return;
  if (host && path_exists("/run/openrc"))
    each("start", spec.start, [&](const std::string& name) {
      check_status(run_command({{"rc-service", name, "start"}, {}, {}}), "start", {name},
                   "rc-service");
    });
  else
    note(fmt::format("not starting {}: OpenRC is not running on the target root",
                     join_names(spec.start)));
}

// --- the step ----------------------------------------------------------------------------------

enum class StepOutcome { kSucceeded, kFailed, kSkipped };

StepOutcome run_step(const config::Step& step, const StageEvent& where,
                     const StageContext& context) {
  bool ok = true;
  auto fail = [&](const std::string& message) {
    ok = false;
    emit(context, where, StageEvent::Kind::kStepFailed, message);
  };
  auto note = [&](const std::string& message) {
    emit(context, where, StageEvent::Kind::kNote, message);
  };
  auto attempt = [&](auto&& action) {
    try {
      action();
    } catch (const std::exception& e) {
      fail(e.what());
    }
  };
  util::Path chroot_dir = root_is_host(context) ? util::Path() : context.root;

  if (!step.if_condition.empty()) {
    int status = 0;
    try {
      status = run_command({{"/bin/sh", "-c", step.if_condition}, chroot_dir, step.environment});
    } catch (const std::exception& e) {
      emit(context, where, StageEvent::Kind::kStepFailed,
           fmt::format("Failed to evaluate if: {}", e.what()));
      return StepOutcome::kFailed;
    }
    if (status != 0) {
      emit(context, where, StageEvent::Kind::kStepSkipped,
           fmt::format("if: {} exited with status {}", first_line(step.if_condition), status));
      return StepOutcome::kSkipped;
    }
  }
  emit(context, where, StageEvent::Kind::kStepStarted);

  if (!step.environment.empty()) attempt([&] { write_environment(step, context); });
  if (!step.hostname.empty()) attempt([&] { set_hostname(step.hostname, context); });
  for (const auto& dir : step.directories) attempt([&] { make_directory(dir, context); });
  for (const auto& file : step.files)
    attempt([&] {
      try {
        write_file(file, context);
      } catch (const Error& e) {
        throw Error(e.kind(), fmt::format("Failed to write file {}: {}", file.path, e.what()));
      }
    });
  if (!step.users.empty()) attempt([&] { apply_users(step.users, context.root); });
  // Named copies: clang 14 cannot capture structured bindings in a lambda.
  for (const auto& entry : step.sysctl)
    attempt([&] { write_sysctl(entry.first, entry.second, context); });
  if (!step.systemctl.empty()) {
    if (detect_service_manager(context) == ServiceManager::kOpenRC)
      openrc(step.systemctl, context, fail, note);
    else
      systemctl(step.systemctl, context, fail, note);
  }
  for (std::size_t i = 0; i < step.commands.size(); ++i) {
    const std::string& command = step.commands[i];
    bool command_ok = false;
    attempt([&] {
      int status = run_command({{"/bin/sh", "-c", command}, chroot_dir, step.environment});
      if (status != 0)
        throw Error(ErrorKind::kIo, fmt::format("Failed to run commands[{}] ({}): exit status {}",
                                                i, first_line(command), status));
      command_ok = true;
    });
    if (!command_ok) break;
  }
  if (!ok) return StepOutcome::kFailed;
  emit(context, where, StageEvent::Kind::kStepSucceeded);
  return StepOutcome::kSucceeded;
}

void count(StageResult& result, StepOutcome outcome) {
  if (outcome == StepOutcome::kSkipped) {
    ++result.steps_skipped;
    return;
  }
  ++result.steps_run;
  if (outcome == StepOutcome::kFailed) ++result.steps_failed;
}

}  // namespace

ServiceManager service_manager_of(const StageContext& context) {
  return detect_service_manager(context);
}

StageResult run_stage(std::string_view name, std::span<const config::CloudConfig> configs,
                      const StageContext& context) {
  if (!config::is_known_stage(name))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to run stage {}: unknown stage", name));
  std::vector<std::string> sub_stages;
  if (name.ends_with(".before") || name.ends_with(".after"))
    sub_stages.emplace_back(name);
  else
    sub_stages = {fmt::format("{}.before", name), std::string(name), fmt::format("{}.after", name)};

  StageResult result;
  for (const auto& sub : sub_stages) {
    for (const auto& config : configs) {
      if (sub == "initramfs" && (!config.users.empty() || !config.hostname.empty())) {
        // Kairos applies the top-level users and hostname in the initramfs stage.
        config::Step implicit;
        implicit.users = config.users;
        implicit.hostname = config.hostname;
        StageEvent where{StageEvent::Kind::kStepStarted,
                         sub,
                         config.source,
                         config.users.empty() ? 0 : config.users.front().line,
                         config.users.empty() ? "hostname" : "users",
                         {}};
        count(result, run_step(implicit, where, context));
      }
      auto it = config.stages.find(sub);
      if (it == config.stages.end()) continue;
      for (std::size_t i = 0; i < it->second.size(); ++i) {
        const config::Step& step = it->second[i];
        StageEvent where{StageEvent::Kind::kStepStarted,
                         sub,
                         config.source,
                         step.line,
                         step.name.empty() ? fmt::format("stages.{}[{}]", sub, i) : step.name,
                         {}};
        count(result, run_step(step, where, context));
      }
    }
  }
  return result;
}

}  // namespace pok8s::node
