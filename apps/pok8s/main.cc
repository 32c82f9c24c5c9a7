// The pok8s command line: parses arguments, calls the library, prints, maps errors to exit codes.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "pok8s/util/error.h"

int main(int argc, char** argv) {
  CLI::App app{"pok8s: a factory for immutable, Kubernetes-ready OS images"};
  app.require_subcommand(1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}
