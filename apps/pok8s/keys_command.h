// `pok8s keys generate DIR` and `pok8s keys check DIR`: Secure Boot and PCR policy keys.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace pok8s::cli {

struct GlobalOptions;

void add_keys_commands(CLI::App& app, GlobalOptions& global, std::function<int()>& run);

}  // namespace pok8s::cli
