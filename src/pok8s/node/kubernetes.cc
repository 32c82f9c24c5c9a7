// The command line of each role, quoted for the service manager that runs it.
#include "pok8s/node/kubernetes.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include "pok8s/node/command.h"
#include "pok8s/node/users.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

namespace pok8s::node {
namespace {

struct Role {
  const char* binary;
  const char* service;
  std::vector<std::string> command;   // always there: the subcommand
  std::vector<std::string> defaults;  // left out with replace_args
};

Role role_of(config::KubernetesRole role) {
  switch (role) {
    case config::KubernetesRole::kK3sServer:
      return {"/usr/bin/k3s", "k3s", {"server"}, {}};
    case config::KubernetesRole::kK3sAgent:
      return {"/usr/bin/k3s", "k3s", {"agent"}, {}};
    case config::KubernetesRole::kK0sController:
      return {"/usr/bin/k0s", "k0s", {"controller"}, {"--config=/etc/k0s/k0s.yaml"}};
    case config::KubernetesRole::kK0sWorker:
      return {"/usr/bin/k0s", "k0s", {"worker"}, {}};
  }
  return {"", "", {}, {}};
}

// systemd's quoting for ExecStart= and Environment= (systemd.service(5), "Command lines"):
// double quotes, backslash escapes, "%" doubled so that no specifier is expanded, and in a
// command line "$" doubled so that no variable is.
std::string systemd_quote(std::string_view s, bool command) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '%' || (command && c == '$')) out += c;
    out += c;
  }
  return out + "\"";
}

}  // namespace

KubernetesFiles kubernetes_files(const config::KubernetesConfig& c, ServiceManager manager) {
  Role role = role_of(c.role);
  KubernetesFiles f;
  f.binary = role.binary;
  f.argv = {role.binary};
  f.argv.insert(f.argv.end(), role.command.begin(), role.command.end());
  if (!c.replace_args) f.argv.insert(f.argv.end(), role.defaults.begin(), role.defaults.end());
  f.argv.insert(f.argv.end(), c.args.begin(), c.args.end());
  std::string header = fmt::format("# Written by pok8s-agent from the cloud-config's {} ({}).\n",
                                   c.section, c.origin);
  if (manager == ServiceManager::kOpenRC) {
    f.service = role.service;
    std::string args;
    for (std::size_t i = 1; i < f.argv.size(); ++i)
      args += (i > 1 ? " " : "") + util::single_quote(f.argv[i]);
    std::string text = header;
    // k3s.openrc and k0s.openrc take their arguments from these.
    text += fmt::format(
        "{}_ARGS={}\n",
        c.role == config::KubernetesRole::kK3sServer || c.role == config::KubernetesRole::kK3sAgent
            ? "K3S"
            : "K0S",
        util::single_quote(args));
    for (const auto& [k, v] : c.env)
      text += fmt::format("export {}={}\n", k, util::single_quote(v));
    f.files.emplace_back(fmt::format("/etc/conf.d/{}", role.service), text);
  } else {
    f.service = std::string(role.service) + ".service";
    std::string text = header + "[Service]\n";
    for (const auto& [k, v] : c.env)
      text += "Environment=" + systemd_quote(k + "=" + v, false) + "\n";
    text += "ExecStart=\nExecStart=";
    for (std::size_t i = 0; i < f.argv.size(); ++i)
      text += (i ? " " : "") + systemd_quote(f.argv[i], true);
    text += "\n";
    f.files.emplace_back(
        fmt::format("/run/systemd/system/{}.d/60-pok8s-cloud-config.conf", f.service), text);
  }
  return f;
}

void apply_kubernetes(const KubernetesFiles& f, const util::Path& root, bool start) {
  struct stat st {};
  if (::stat(path_in_root(root, f.binary).c_str(), &st) != 0 || !S_ISREG(st.st_mode))
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to start {}: the image has no {} (convert it with --k8s {})",
                            f.service, f.binary, util::Path(f.binary).filename().string()));
  for (const auto& [path, content] : f.files) {
    util::Path p = path_in_root(root, path);
    util::make_dirs(p.parent_path());
    // Environment values may be tokens: readable by root only.
    util::write_file_atomic(p, content, 0600);
  }
  if (!start) return;
  auto run = [&](std::vector<std::string> argv) {
    int status = run_command({argv, {}, {}});
    if (status != 0)
      throw Error(ErrorKind::kIo, fmt::format("Failed to start {}: {} exited with status {}",
                                              f.service, argv[0], status));
  };
  if (f.service.ends_with(".service")) {
    run({"systemctl", "daemon-reload"});
    // --no-block: called from a boot unit, which the service is ordered after.
    run({"systemctl", "start", "--no-block", f.service});
  } else {
    run({"rc-service", f.service, "start"});
  }
}

}  // namespace pok8s::node
