// `pok8s build SRC --artifact iso -o DIR`: bootable artifacts from an image.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace pok8s::cli {

struct GlobalOptions;

void add_build_command(CLI::App& app, GlobalOptions& global, std::function<int()>& run);

}  // namespace pok8s::cli
