// Compares two directory trees the way a user would: names, types, modes, owners, link
// targets and file contents. Returns "" when equal, else the first differences.
#pragma once

#include <filesystem>
#include <string>

namespace pok8s::test {

std::string compare_trees(const std::filesystem::path& expected,
                          const std::filesystem::path& actual);

}  // namespace pok8s::test
