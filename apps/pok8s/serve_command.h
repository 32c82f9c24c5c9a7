// `pok8s serve` (the HTTP API, web builder and build queue) and `pok8s worker` (builds from a
// shared PostgreSQL queue, without HTTP).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

#include "global_options.h"

namespace pok8s::cli {

void add_serve_commands(CLI::App& app, GlobalOptions& g, std::function<int()>& run);

}  // namespace pok8s::cli
