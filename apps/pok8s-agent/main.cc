// pok8s-agent, the node's cloud-config runner: parses arguments, loads configs, runs a stage,
// prints one line per step and maps failures to exit codes (0 ok, 1 a step failed, 2 config).
// Also reports the boot status (which image booted and why) and marks a boot as good, and
// installs the system from the live medium to a disk.
#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "pok8s/config/cloud_config.h"
#include "pok8s/config/install_config.h"
#include "pok8s/config/kubernetes_config.h"
#include "pok8s/config/lifecycle_config.h"
#include "pok8s/config/merge.h"
#include "pok8s/image/disk_layout.h"
#include "pok8s/node/boot_status.h"
#include "pok8s/node/config_url.h"
#include "pok8s/node/grubenv.h"
#include "pok8s/node/install.h"
#include "pok8s/node/kubernetes.h"
#include "pok8s/node/reset.h"
#include "pok8s/node/stages.h"
#include "pok8s/node/upgrade.h"
#include "pok8s/util/error.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitStepFailed = 1;
constexpr int kExitConfigError = 2;

// Where configs come from on every boot, in order, relative to the target root.
std::vector<pok8s::util::Path> default_sources(const pok8s::util::Path& root) {
  return {root / "usr/lib/pok8s/stages", root / "etc/pok8s", root / "oem",
          root / "run/pok8s/media/config.yaml",
          root / std::string(pok8s::node::kDatasourceDir).substr(1)};
}

const char* kind_name(pok8s::node::StageEvent::Kind kind) {
  using Kind = pok8s::node::StageEvent::Kind;
  switch (kind) {
    case Kind::kStepStarted:
      return "started";
    case Kind::kStepSkipped:
      return "skipped";
    case Kind::kStepFailed:
      return "failed";
    case Kind::kStepSucceeded:
      return "succeeded";
    case Kind::kNote:
      return "note";
  }
  return "unknown";
}

void print_event(const pok8s::node::StageEvent& e, bool json) {
  using Kind = pok8s::node::StageEvent::Kind;
  if (json) {
    nlohmann::json j = {{"event", kind_name(e.kind)},
                        {"stage", e.stage},
                        {"source", e.source},
                        {"line", e.line},
                        {"step", e.step},
                        {"message", e.message}};
    std::fprintf(stdout, "%s\n", j.dump().c_str());
    std::fflush(stdout);
  }
  std::string where =
      fmt::format("pok8s-agent: {}: \"{}\" ({}:{})", e.stage, e.step, e.source, e.line);
  switch (e.kind) {
    case Kind::kStepStarted:
      std::fprintf(stderr, "%s\n", where.c_str());
      break;
    case Kind::kStepSkipped:
      std::fprintf(stderr, "%s skipped: %s\n", where.c_str(), e.message.c_str());
      break;
    case Kind::kStepFailed:
      std::fprintf(stderr, "%s failed: %s\n", where.c_str(), e.message.c_str());
      break;
    case Kind::kNote:
      std::fprintf(stderr, "%s: %s\n", where.c_str(), e.message.c_str());
      break;
    case Kind::kStepSucceeded:
      break;
  }
}

// Fetches the configs' config_url into the datasource directory; false when one failed (each
// named on stderr).
bool fetch_config_url(const pok8s::util::Path& root) {
  using namespace pok8s;
  std::vector<config::CloudConfig> configs;
  for (const auto& file : config::expand_config_paths(default_sources(root))) {
    try {
      if (auto c = config::load_cloud_config_file(file)) configs.push_back(std::move(*c));
    } catch (const Error&) {
      // Reported when the stage loads the configs.
    }
  }
  node::ConfigUrlOptions o;
  o.datasource_dir = root / std::string(node::kDatasourceDir).substr(1);
  o.sysimage_dir = root / std::string(node::kSysimageDir).substr(1);
  o.log = [](std::string_view line) {
    std::fprintf(stderr, "pok8s-agent: config_url: %.*s\n", static_cast<int>(line.size()),
                 line.data());
  };
  try {
    node::ConfigUrlResult r = node::fetch_config_urls(configs, o);
    for (const auto& e : r.errors) std::fprintf(stderr, "pok8s-agent: %s\n", e.c_str());
    return r.errors.empty();
  } catch (const Error& e) {
    std::fprintf(stderr, "pok8s-agent: %s\n", e.what());
    return false;
  }
}

int run_stage_command(const std::string& name, const pok8s::util::Path& root,
                      const std::vector<std::string>& extra, bool no_defaults, bool json) {
  using namespace pok8s;
  std::vector<util::Path> sources;
  if (!no_defaults) sources = default_sources(root);
  for (const auto& p : extra) sources.emplace_back(p);

  // A broken file is reported and left out; the others still run so a boot still gets its
  // users and services. The exit code still says a config was refused.
  bool config_error = false;
  // The network is up: fetch what config_url names, for this stage and every later one.
  if (name == "network" && !no_defaults) config_error = !fetch_config_url(root);
  std::vector<config::CloudConfig> configs;
  for (const auto& file : config::expand_config_paths(sources)) {
    try {
      if (auto c = config::load_cloud_config_file(file)) {
        for (const auto& w : c->warnings) std::fprintf(stderr, "pok8s-agent: %s\n", w.c_str());
        configs.push_back(std::move(*c));
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "pok8s-agent: %s\n", e.what());
      config_error = true;
    }
  }
  for (const auto& p : extra) {
    if (!std::filesystem::exists(p)) {
      std::fprintf(stderr, "pok8s-agent: Failed to read cloud-config %s: no such file\n",
                   p.c_str());
      config_error = true;
    }
  }
  node::StageContext context;
  context.root = root;
  context.sink = [json](const node::StageEvent& e) { print_event(e, json); };
  node::StageResult result = node::run_stage(name, configs, context);
  std::fprintf(stderr, "pok8s-agent: stage %s: %zu steps run, %zu failed, %zu skipped\n",
               name.c_str(), result.steps_run, result.steps_failed, result.steps_skipped);
  if (config_error) return kExitConfigError;
  return result.ok() ? kExitOk : kExitStepFailed;
}

// Starts k3s or k0s as the merged cloud-config's k3s, k3s-agent, k0s or k0s-worker section
// says; nothing when none is enabled.
int kubernetes_command(const std::string& root, bool start) {
  using namespace pok8s;
  std::vector<config::CloudConfig> configs = config::load_cloud_configs(default_sources(root));
  std::vector<std::string> warnings;
  auto k8s = config::read_kubernetes_config(configs, warnings);
  for (const auto& w : warnings) std::fprintf(stderr, "pok8s-agent: %s\n", w.c_str());
  if (!k8s) {
    std::fprintf(stderr,
                 "pok8s-agent: kubernetes: no k3s, k3s-agent, k0s or k0s-worker section "
                 "is enabled\n");
    return kExitOk;
  }
  node::StageContext context;
  context.root = root;
  auto files = node::kubernetes_files(*k8s, node::service_manager_of(context));
  node::apply_kubernetes(files, root, start && root == "/");
  std::string command;
  for (const auto& a : files.argv) command += (command.empty() ? "" : " ") + a;
  std::fprintf(stderr, "pok8s-agent: kubernetes: %s %s (%s from %s): %s\n",
               start && root == "/" ? "started" : "configured", files.service.c_str(),
               k8s->section.c_str(), k8s->origin.c_str(), command.c_str());
  return kExitOk;
}

int validate_command(const std::vector<std::string>& files) {
  int rc = kExitOk;
  for (const auto& file : files) {
    try {
      pok8s::config::CloudConfig config = pok8s::config::validate_cloud_config(file);
      // The install block is read here too, so a typo in it shows before an install.
      auto install = pok8s::config::read_install_config({&config, 1});
      for (const auto& w : install.warnings) std::fprintf(stderr, "pok8s-agent: %s\n", w.c_str());
      std::vector<std::string> k8s_warnings;
      pok8s::config::read_kubernetes_config({&config, 1}, k8s_warnings);
      for (auto& w : pok8s::config::read_upgrade_config({&config, 1}).warnings)
        k8s_warnings.push_back(std::move(w));
      for (auto& w : pok8s::config::read_reset_config({&config, 1}).warnings)
        k8s_warnings.push_back(std::move(w));
      for (auto& w : pok8s::config::ignored_section_warnings(config))
        k8s_warnings.push_back(std::move(w));
      for (const auto& w : k8s_warnings) std::fprintf(stderr, "pok8s-agent: %s\n", w.c_str());
      std::fprintf(stdout, "%s: ok\n", file.c_str());
    } catch (const pok8s::Error& e) {
      std::fprintf(stderr, "pok8s-agent: %s\n", e.what());
      rc = kExitConfigError;
    }
  }
  return rc;
}

// Where status and mark-booted read; the options exist for tests.
struct BootFiles {
  std::string boot_state{pok8s::node::kBootStateFile};
  std::string grubenv{pok8s::node::kOemGrubEnvFile};
  std::string release{pok8s::node::kReleaseFile};
  std::string efivars{pok8s::node::kEfiVarsDir};

  void add_options(CLI::App* command) {
    // Hidden (empty group): a running system has one place for each.
    command->add_option("--efivars", efivars)->group("");
    command->add_option("--boot-state", boot_state)->group("");
    command->add_option("--grubenv", grubenv)->group("");
    command->add_option("--release", release)->group("");
  }
};

int status_command(const BootFiles& files, bool json) {
  using namespace pok8s;
  node::BootStatus s = node::read_boot_status(files.boot_state, files.grubenv, files.release);
  if (json) {
    nlohmann::json j = node::boot_status_json(s);
    // On an installed system the boot media is COS_STATE (or COS_RECOVERY): what each image is.
    if (s.mode != "live")
      j["images"] = node::installed_images(util::Path(std::string(node::kMediaMount)) /
                                           std::string(image::kImagesDir));
    std::printf("%s\n", j.dump(2).c_str());
    return kExitOk;
  }
  std::string booted = s.mode == "live" ? "the live medium" : fmt::format("the {} image", s.mode);
  if (!s.image.empty()) booted += fmt::format(", {}", s.image);
  if (!s.media_device.empty()) booted += fmt::format(" on {}", s.media_device);
  std::string next = "-", tries = "-";
  if (auto entry = node::next_boot_entry(s)) next = *entry;
  if (s.tries)
    tries =
        s.max_tries ? fmt::format("{} of {}", *s.tries, *s.max_tries) : fmt::format("{}", *s.tries);
  std::printf("%s",
              fmt::format("{:<12}{}\n{:<12}{}\n{:<12}{}\n{:<12}{}\n{:<12}{}\n", "Booted:", booted,
                          "Why:", s.reason, "Version:", s.version.empty() ? "unknown" : s.version,
                          "Next boot:", next, "Tries left:", tries)
                  .c_str());
  return kExitOk;
}

void print_stage_summary(const char* name, const pok8s::node::StageResult& r);

struct UpgradeArgs {
  pok8s::node::UpgradeOptions options;
  bool json = false;
  bool reboot = false;
  bool poweroff = false;
};

// The merged cloud-config, with the files it came from as comments.
int config_show_command(const pok8s::util::Path& root) {
  using namespace pok8s;
  config::MergedConfig merged =
      config::merge_cloud_config_files(config::expand_config_paths(default_sources(root)));
  std::string out = "#cloud-config\n";
  if (merged.sources.empty()) out += "# no cloud-config files found\n";
  for (const auto& source : merged.sources) out += "# from " + source + "\n";
  out += merged.yaml.substr(std::string_view("#cloud-config\n").size());
  std::printf("%s", out.c_str());
  return kExitOk;
}

int upgrade_command(UpgradeArgs& a) {
  using namespace pok8s;
  a.options.log = [&](std::string_view line) {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  };
  node::require_installed(a.options.boot_state_file);  // before any stage runs
  std::vector<config::CloudConfig> configs = config::load_cloud_configs(default_sources("/"));
  config::UpgradeConfig settings = config::read_upgrade_config(configs);
  for (const auto& w : settings.warnings) std::fprintf(stderr, "pok8s-agent: %s\n", w.c_str());
  a.options.recovery = a.options.recovery || settings.recovery;
  bool reboot = a.reboot || (!a.poweroff && settings.reboot);
  bool poweroff = a.poweroff || (!a.reboot && settings.poweroff);
  node::StageContext stage_context;
  stage_context.sink = [&](const node::StageEvent& e) { print_event(e, false); };
  print_stage_summary("before-upgrade", node::run_stage("before-upgrade", configs, stage_context));
  node::UpgradeResult r = node::upgrade_system(a.options);
  print_stage_summary("after-upgrade", node::run_stage("after-upgrade", configs, stage_context));
  std::string version = r.image.value("version", "");
  // An image from a registry or layout is named by its digest; a uki-iso's by its root hash.
  std::string id = r.image.contains("digest") ? r.image.value("digest", "")
                                              : "root hash " + r.image.value("rootHash", "");
  if (a.json) {
    nlohmann::json j = {
        {"target", r.target}, {"image", r.image}, {"passiveReplaced", r.passive_replaced}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("%s", fmt::format("upgraded the {} image to {} ({}, {}){}; reboot to use it\n",
                                  r.target, version.empty() ? "an unversioned image" : version,
                                  r.image.value("source", ""), id,
                                  r.passive_replaced ? "; the previous one is now passive" : "")
                          .c_str());
  }
  std::fflush(stdout);
  node::finish_install(reboot     ? node::AfterInstall::kReboot
                       : poweroff ? node::AfterInstall::kPowerOff
                                  : node::AfterInstall::kNothing);
  return kExitOk;
}

int mark_booted_command(const BootFiles& files) {
  using namespace pok8s;
  if (node::mark_booted(files.boot_state, files.grubenv)) {
    auto env = node::read_grubenv(files.grubenv);
    std::string tries = env ? env->get("pok8s_tries").value_or("?") : "?";
    std::printf("marked this boot as good: pok8s_tries=%s in %s\n", tries.c_str(),
                files.grubenv.c_str());
  } else if (auto entry = node::mark_entry_booted(files.boot_state, files.efivars)) {
    std::printf("marked this boot as good: systemd-boot's entry is now %s on %s\n", entry->c_str(),
                std::string(image::kGrubLabel).c_str());
  } else if (node::read_boot_status(files.boot_state, files.grubenv, files.release).mode ==
             "live") {
    std::printf("nothing to mark: a live boot\n");
  } else {
    std::printf(
        "nothing to mark: no %s and no boot-counted systemd-boot entry, so no boot "
        "assessment\n",
        files.grubenv.c_str());
  }
  return kExitOk;
}

struct InstallArgs {
  std::string device;
  std::vector<std::string> configs;
  bool reboot = false;
  bool poweroff = false;
  bool auto_from_config = false;
  bool json = false;
  std::string media{pok8s::node::kMediaMount};
};

void print_install_line(const char* event, const std::string& step, const std::string& message,
                        bool json) {
  if (json) {
    nlohmann::json j = {
        {"event", event}, {"stage", "install"}, {"step", step}, {"message", message}};
    std::fprintf(stdout, "%s\n", j.dump().c_str());
    std::fflush(stdout);
  }
  std::fprintf(stderr, "pok8s-agent: install: %s\n", message.c_str());
}

void print_stage_summary(const char* name, const pok8s::node::StageResult& r) {
  if (r.steps_run + r.steps_skipped == 0) return;
  std::fprintf(stderr, "pok8s-agent: stage %s: %zu steps run, %zu failed, %zu skipped\n", name,
               r.steps_run, r.steps_failed, r.steps_skipped);
}

struct ResetArgs {
  bool keep_persistent = false;
  bool reset_oem = false;
  bool reboot = false;
  bool poweroff = false;
};

int reset_command(const ResetArgs& a) {
  using namespace pok8s;
  std::vector<config::CloudConfig> configs = config::load_cloud_configs(default_sources("/"));
  config::ResetConfig settings = config::read_reset_config(configs);
  for (const auto& w : settings.warnings) std::fprintf(stderr, "pok8s-agent: %s\n", w.c_str());
  node::ResetRequest request;
  request.reset_persistent = !a.keep_persistent && settings.reset_persistent;
  request.reset_oem = a.reset_oem || settings.reset_oem;
  bool reboot = a.reboot || (!a.poweroff && settings.reboot);
  bool poweroff = a.poweroff || (!a.reboot && settings.poweroff);
  request.log = [](std::string_view line) {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  };
  request.stage_sink = [&](const node::StageEvent& e) { print_event(e, false); };
  node::ResetOutcome outcome = node::run_reset(request, configs);
  print_stage_summary("before-reset", outcome.before_reset);
  print_stage_summary("after-reset", outcome.after_reset);
  std::printf("reset the active and passive images from recovery%s%s\n",
              request.reset_persistent ? "; COS_PERSISTENT is empty" : "",
              request.reset_oem ? "; COS_OEM holds only the GRUB environment" : "");
  std::fflush(stdout);
  node::finish_install(reboot     ? node::AfterInstall::kReboot
                       : poweroff ? node::AfterInstall::kPowerOff
                                  : node::AfterInstall::kNothing);
  return outcome.before_reset.ok() && outcome.after_reset.ok() ? kExitOk : kExitStepFailed;
}

int expand_command(bool reboot) {
  using namespace pok8s;
  node::ExpandRequest request;
  request.log = [](std::string_view line) {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  };
  if (!node::expand_disk(request)) {
    std::printf(
        "nothing to expand: this system does not run a self-expanding disk's first "
        "boot\n");
    return kExitOk;
  }
  std::printf(
      "expanded the disk: COS_STATE and COS_PERSISTENT made, active and passive "
      "written%s\n",
      reboot ? "; rebooting into active" : "; reboot to boot active");
  std::fflush(stdout);
  if (reboot) node::finish_install(node::AfterInstall::kReboot);
  return kExitOk;
}

int install_command(const InstallArgs& a) {
  using namespace pok8s;
  try {
    // The configs of every boot, with the medium's own config.yaml (wherever --media says it
    // is), then the --config files.
    std::vector<util::Path> sources = default_sources("/");
    std::replace(sources.begin(), sources.end(), util::Path("/run/pok8s/media/config.yaml"),
                 util::Path(a.media) / node::kMediaConfigFile);
    for (const auto& c : a.configs) {
      config::validate_cloud_config(c);  // named directly: missing or headerless is an error
      sources.emplace_back(c);
    }
    std::vector<config::CloudConfig> configs = config::load_cloud_configs(sources);
    config::InstallConfig install = config::read_install_config(configs);
    for (const auto& w : install.warnings) print_install_line("warning", "config", w, a.json);

    node::InstallRequest request;
    request.media = a.media;
    request.device = a.device;
    for (const auto& c : a.configs) request.config_files.emplace_back(c);
    if (a.reboot) request.after = node::AfterInstall::kReboot;
    if (a.poweroff) request.after = node::AfterInstall::kPowerOff;
    request.auto_from_config = a.auto_from_config;
    request.sink = [&](const node::InstallEvent& e) {
      print_install_line("step", e.step, e.message, a.json);
    };
    request.stage_sink = [&](const node::StageEvent& e) { print_event(e, a.json); };
    node::InstallOutcome outcome = node::run_install(request, configs, install);
    if (!outcome.installed) {
      print_install_line("skipped", "auto", "not installing: " + outcome.not_installed_because,
                         a.json);
      return kExitOk;
    }
    if (!outcome.recovery_key.empty()) {
      // Shown this once and kept nowhere: without it, a lost passphrase or a changed machine
      // (firmware, Secure Boot keys) locks the data away.
      print_install_line("recovery-key", "encrypt", "recovery key: " + outcome.recovery_key,
                         a.json);
      print_install_line("step", "encrypt",
                         "write the recovery key down now: it opens COS_OEM and COS_PERSISTENT "
                         "when the TPM or the passphrase cannot, and it is not stored anywhere",
                         a.json);
    }
    print_stage_summary("before-install", outcome.before_install);
    print_stage_summary("after-install", outcome.after_install);
    if (outcome.after != node::AfterInstall::kNothing)
      print_install_line(
          "step", "finish",
          outcome.after == node::AfterInstall::kReboot ? "rebooting" : "powering off", a.json);
    node::finish_install(outcome.after);
    return outcome.before_install.ok() && outcome.after_install.ok() ? kExitOk : kExitStepFailed;
  } catch (const Error& e) {
    if (a.json) {
      nlohmann::json j = {{"event", "failed"}, {"stage", "install"}, {"message", e.what()}};
      std::fprintf(stdout, "%s\n", j.dump().c_str());
      std::fflush(stdout);
    }
    throw;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pok8s-agent: runs cloud-config stages on a pok8s node"};
  app.require_subcommand(1);
  std::function<int()> run;

  auto* stage = app.add_subcommand("stage", "Run <stage>.before, <stage> and <stage>.after");
  stage->alias("run-stage");  // kairos-agent's name for it
  std::string stage_name;
  std::string root = "/";
  std::vector<std::string> configs;
  bool no_defaults = false;
  bool json = false;
  stage->add_option("NAME", stage_name, "Stage: rootfs, initramfs, boot, network, …")->required();
  stage->add_option("--root", root, "Target root directory (default /)");
  stage->add_option("--config", configs, "Extra cloud-config file or directory (repeatable)");
  stage->add_flag("--no-defaults", no_defaults,
                  "Skip /usr/lib/pok8s/stages, /etc/pok8s, /oem and the boot media's config");
  stage->add_flag("--json", json, "Also print events as JSON lines on stdout");
  stage->callback([&] {
    run = [&] { return run_stage_command(stage_name, root, configs, no_defaults, json); };
  });

  auto* config_cmd = app.add_subcommand("config", "Show the cloud-config this node acts on");
  config_cmd->require_subcommand(1);
  auto* show = config_cmd->add_subcommand(
      "show", "Print the merged cloud-config (stages appended, later files winning per key)");
  std::string show_root = "/";
  show->add_option("--root", show_root, "Target root directory (default /)");
  show->callback([&] { run = [&] { return config_show_command(show_root); }; });

  auto* validate = app.add_subcommand("validate", "Check cloud-config files");
  std::vector<std::string> files;
  validate->add_option("FILE", files, "cloud-config file")->required();
  validate->callback([&] { run = [&] { return validate_command(files); }; });

  auto* kubernetes = app.add_subcommand(
      "kubernetes",
      "Start k3s or k0s as the cloud-config's k3s, k3s-agent, k0s or k0s-worker says");
  std::string k8s_root = "/";
  bool k8s_no_start = false;
  kubernetes->add_option("--root", k8s_root, "Target root directory (default /)");
  kubernetes->add_flag("--no-start", k8s_no_start, "Write the service's settings only");
  kubernetes->callback([&] { run = [&] { return kubernetes_command(k8s_root, !k8s_no_start); }; });

  auto* version = app.add_subcommand("version", "Print the version");
  version->callback([&] {
    run = [] {
      std::printf("pok8s-agent %s\n", POK8S_VERSION);
      return kExitOk;
    };
  });

  auto* status = app.add_subcommand("status", "Say which image booted, why, and what boots next");
  BootFiles boot_files;
  bool status_json = false;
  status->add_flag("--json", status_json, "Print the status as JSON");
  boot_files.add_options(status);
  status->callback([&] { run = [&] { return status_command(boot_files, status_json); }; });

  auto* mark = app.add_subcommand("mark-booted",
                                  "Reset the boot tries once the system is up (boot assessment)");
  boot_files.add_options(mark);
  mark->callback([&] { run = [&] { return mark_booted_command(boot_files); }; });

  auto* install = app.add_subcommand(
      "install", "Install the system from the live medium to a disk (partitions and formats it)");
  InstallArgs install_args;
  install->add_option("--device", install_args.device,
                      "The disk to install to, or auto: the one blank disk (default: "
                      "install.device, else auto)");
  install->add_option("--config", install_args.configs,
                      "A cloud-config file to use and copy to COS_OEM (repeatable)");
  auto* reboot_flag = install->add_flag("--reboot", install_args.reboot, "Reboot when done");
  install->add_flag("--poweroff", install_args.poweroff, "Power off when done")
      ->excludes(reboot_flag);
  install->add_flag("--auto-from-config", install_args.auto_from_config,
                    "Install only on a live boot whose cloud-config sets install.auto: true "
                    "(otherwise say why not and exit 0)");
  install->add_flag("--json", install_args.json, "Also print events as JSON lines on stdout");
  install->add_option("--media", install_args.media,
                      "Where the live medium is mounted (default /run/pok8s/media)");
  install->callback([&] { run = [&] { return install_command(install_args); }; });

  auto* upgrade = app.add_subcommand(
      "upgrade", "Install a new active (or recovery) image from an image source; reboot to use it");
  UpgradeArgs upgrade_args;
  upgrade
      ->add_option("--source", upgrade_args.options.source,
                   "The new image: docker://REGISTRY/REPO:TAG, oci:DIR[:TAG], "
                   "oci-archive:FILE; on a system installed from a uki-iso, uki-iso:FILE (a "
                   "uki-iso built with its keys, or the drive it is on)")
      ->required();
  upgrade->add_flag("--recovery", upgrade_args.options.recovery,
                    "Replace the recovery image instead of the active one");
  upgrade
      ->add_option("--tls-verify", upgrade_args.options.tls_verify,
                   "Require HTTPS with a verified certificate (false allows plain HTTP)")
      ->default_val(true);
  upgrade->add_option("--authfile", upgrade_args.options.authfile,
                      "Registry credentials file (auth.json or docker config.json)");
  upgrade->add_option("--creds", upgrade_args.options.creds, "Registry credentials USER:PASSWORD");
  upgrade->add_flag("--json", upgrade_args.json, "Print the result as JSON");
  auto* upgrade_reboot =
      upgrade->add_flag("--reboot", upgrade_args.reboot, "Reboot into the new image when done");
  upgrade->add_flag("--poweroff", upgrade_args.poweroff, "Power off when done")
      ->excludes(upgrade_reboot);
  upgrade->add_option("--boot-state", upgrade_args.options.boot_state_file)->group("");
  upgrade->add_option("--grubenv", upgrade_args.options.grubenv)->group("");
  upgrade->add_option("--sysimage-dir", upgrade_args.options.sysimage_dir)->group("");
  upgrade->callback([&] { run = [&] { return upgrade_command(upgrade_args); }; });

  auto* reset =
      app.add_subcommand("reset",
                         "From the recovery image: rewrite active and passive from it and wipe "
                         "COS_PERSISTENT");
  ResetArgs reset_args;
  reset->add_flag("--keep-persistent", reset_args.keep_persistent,
                  "Keep COS_PERSISTENT's data (/home, /etc/ssh, /var/lib/…)");
  reset->add_flag("--reset-oem", reset_args.reset_oem,
                  "Also remove COS_OEM's cloud-configs (its GRUB environment block stays)");
  auto* reset_reboot = reset->add_flag("--reboot", reset_args.reboot, "Reboot when done");
  reset->add_flag("--poweroff", reset_args.poweroff, "Power off when done")->excludes(reset_reboot);
  reset->callback([&] { run = [&] { return reset_command(reset_args); }; });

  auto* expand =
      app.add_subcommand("expand",
                         "On a self-expanding disk's first boot (recovery): make COS_STATE and "
                         "COS_PERSISTENT to fill the disk and write active and passive");
  bool expand_reboot = false;
  expand->add_flag("--reboot", expand_reboot, "Reboot into active when done");
  expand->callback([&] { run = [&] { return expand_command(expand_reboot); }; });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitConfigError;
  }
  try {
    return run ? run() : kExitOk;
  } catch (const pok8s::Error& e) {
    std::fprintf(stderr, "pok8s-agent: %s\n", e.what());
    return e.kind() == pok8s::ErrorKind::kInvalidInput ? kExitConfigError : kExitStepFailed;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pok8s-agent: internal error: %s\n", e.what());
    return kExitStepFailed;
  }
}
