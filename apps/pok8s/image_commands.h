// The `pok8s image …` verbs: copy, inspect, unpack, import.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace pok8s::cli {

struct GlobalOptions;

// Adds the `image` command and its verbs to `app`; each verb sets `run` when chosen.
void add_image_commands(CLI::App& app, GlobalOptions& global, std::function<int()>& run);

}  // namespace pok8s::cli
