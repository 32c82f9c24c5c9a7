// `pok8s convert SRC DST`: a distribution image becomes an immutable OS image.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace pok8s::cli {

struct GlobalOptions;

void add_convert_command(CLI::App& app, GlobalOptions& global, std::function<int()>& run);

}  // namespace pok8s::cli
