// Running cloud-config stages on a node: each step's actions (environment, hostname,
// directories, files, users, sysctl, systemctl, commands) against a target root.
#pragma once

#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "pok8s/config/cloud_config.h"
#include "pok8s/util/file.h"

namespace pok8s::node {

// What run_stage reports to its caller; the library itself never prints.
struct StageEvent {
  enum class Kind {
    kStepStarted,    // message empty
    kStepSkipped,    // message says why (the `if:` result)
    kStepFailed,     // one per failed action; message is the one-line error
    kStepSucceeded,  // message empty
    kNote,           // something worth a line that is not a failure (e.g. a start skipped)
  };
  Kind kind;
  std::string stage;   // the sub-stage, e.g. "boot.before"
  std::string source;  // the config file
  int line = 0;        // where the step starts in it
  std::string step;    // the step's name, or "stages.boot[0]" when it has none
  std::string message;
};
using StageSink = std::function<void(const StageEvent&)>;

enum class ServiceManager { kAuto, kSystemd, kOpenRC };

struct StageContext {
  util::Path root = "/";  // the target root; commands are chrooted into it when it is not "/"
  util::Path proc_sys;    // where sysctl writes; empty means <root>/proc/sys
  // kAuto: OpenRC when the root has openrc and no systemd, systemd otherwise.
  ServiceManager service_manager = ServiceManager::kAuto;
  StageSink sink;  // may be empty
};

// The service manager of context.root: context.service_manager, or, for kAuto, what the root
// has (OpenRC when it has openrc and no systemd).
ServiceManager service_manager_of(const StageContext& context);

struct StageResult {
  std::size_t steps_run = 0;
  std::size_t steps_skipped = 0;
  std::size_t steps_failed = 0;
  bool ok() const { return steps_failed == 0; }
};

// Runs `<name>.before`, `<name>` and `<name>.after` (or only `name` when it already ends in
// .before/.after), each across `configs` in order. The initramfs stage first applies each
// config's top-level `users` and `hostname`. A failing step is reported and the others still
// run. Within a step the actions run in order: environment (merged into environment_file,
// default /etc/environment, and exported to this step's commands), hostname, directories,
// files, users, sysctl, systemctl, commands (the first failing command ends the list); each
// failing action is reported and the next one still runs. Throws Error(kInvalidInput) only for
// a stage name pok8s does not know.
StageResult run_stage(std::string_view name, std::span<const config::CloudConfig> configs,
                      const StageContext& context);

}  // namespace pok8s::node
