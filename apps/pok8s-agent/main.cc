// pok8s-agent, the node's cloud-config runner: parses arguments, loads configs, runs a stage,
// prints one line per step and maps failures to exit codes (0 ok, 1 a step failed, 2 config).
#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "pok8s/config/cloud_config.h"
#include "pok8s/node/stages.h"
#include "pok8s/util/error.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitStepFailed = 1;
constexpr int kExitConfigError = 2;

// Where configs come from on every boot, in order, relative to the target root.
std::vector<pok8s::util::Path> default_sources(const pok8s::util::Path& root) {
  return {root / "usr/lib/pok8s/stages", root / "etc/pok8s", root / "oem",
          root / "run/pok8s/media/config.yaml"};
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

int run_stage_command(const std::string& name, const pok8s::util::Path& root,
                      const std::vector<std::string>& extra, bool no_defaults, bool json) {
  using namespace pok8s;
  std::vector<util::Path> sources;
  if (!no_defaults) sources = default_sources(root);
  for (const auto& p : extra) sources.emplace_back(p);

  // A broken file is reported and left out; the others still run so a boot still gets its
  // users and services. The exit code still says a config was refused.
  bool config_error = false;
  std::vector<config::CloudConfig> configs;
  for (const auto& file : config::expand_config_paths(sources)) {
    try {
      if (auto c = config::load_cloud_config_file(file)) configs.push_back(std::move(*c));
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

int validate_command(const std::vector<std::string>& files) {
  int rc = kExitOk;
  for (const auto& file : files) {
    try {
      pok8s::config::validate_cloud_config(file);
      std::fprintf(stdout, "%s: ok\n", file.c_str());
    } catch (const pok8s::Error& e) {
      std::fprintf(stderr, "pok8s-agent: %s\n", e.what());
      rc = kExitConfigError;
    }
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pok8s-agent: runs cloud-config stages on a pok8s node"};
  app.require_subcommand(1);
  std::function<int()> run;

  auto* stage = app.add_subcommand("stage", "Run <stage>.before, <stage> and <stage>.after");
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

  auto* validate = app.add_subcommand("validate", "Check cloud-config files");
  std::vector<std::string> files;
  validate->add_option("FILE", files, "cloud-config file")->required();
  validate->callback([&] { run = [&] { return validate_command(files); }; });

  auto* version = app.add_subcommand("version", "Print the version");
  version->callback([&] {
    run = [] {
      std::printf("pok8s-agent %s\n", POK8S_VERSION);
      return kExitOk;
    };
  });

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
