// The pok8s command line: parses arguments, calls the library, prints, maps errors to exit codes.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <functional>

#include "build_command.h"
#include "common.h"
#include "convert_command.h"
#include "global_options.h"
#include "image_commands.h"
#include "keys_command.h"
#include "pok8s/util/error.h"
#include "serve_command.h"

int main(int argc, char** argv) {
  using namespace pok8s;
  CLI::App app{
      "pok8s: a factory for immutable, Kubernetes-ready OS images built from any Linux base image"};
  app.set_version_flag("--version", std::string("pok8s ") + POK8S_VERSION);
  app.require_subcommand(1);
  cli::GlobalOptions global;
  global.argv.assign(argv, argv + argc);
  app.add_option("--cache", global.cache_dir,
                 "Blob cache directory (default: $XDG_CACHE_HOME/pok8s)")
      ->envname("POK8S_CACHE");
  app.add_flag("--json", global.json,
               "Print the result as JSON on stdout (progress as JSON lines on stderr)");
  app.add_flag("-q,--quiet", global.quiet, "Print no progress");
  app.add_flag("--public-network-only", global.public_network_only,
               "Fetch only from public addresses: refuse loopback, private, link-local and other "
               "non-public ones (pok8s serve and worker always do)");
  app.add_option("--allow-network", global.allowed_networks,
                 "A network (CIDR) --public-network-only still fetches from (repeatable)");

  std::function<int()> run;
  cli::add_image_commands(app, global, run);
  cli::add_convert_command(app, global, run);
  cli::add_build_command(app, global, run);
  cli::add_keys_commands(app, global, run);
  cli::add_serve_commands(app, global, run);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    // Before any command runs: every fetch it makes goes through this policy.
    cli::set_network_policy(global);
    return run ? run() : 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "pok8s: %s\n", e.what());
    return exit_code(e.kind());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pok8s: internal error: %s\n", e.what());
    return exit_code(ErrorKind::kInternal);
  }
}
