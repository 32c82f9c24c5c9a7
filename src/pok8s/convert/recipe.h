// What a family needs to become a bootable OS, as data (share/pok8s/recipes/<family>.yaml):
// its package manager's commands, the packages (kernel, init, tools), services to enable,
// files to add and paths to clean. Code only reads recipes; adding a family is a new file.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/convert/family.h"
#include "pok8s/util/file.h"

namespace pok8s::convert {

enum class InitSystem { kSystemd, kOpenrc };

struct RecipeFile {
  std::string path;  // absolute, in the image
  std::string content;
  unsigned mode = 0644;
};

struct Recipe {
  std::string name;  // the file it came from, for messages
  Family family = Family::kDebian;
  InitSystem init = InitSystem::kSystemd;
  std::map<std::string, std::string> env;  // for every package manager command
  std::vector<std::string> update;
  std::vector<std::string> install;  // the package names are appended
  std::vector<std::string> clean;
  std::map<std::string, std::vector<std::string>> packages;  // "all" and per architecture
  // What a build spec topping needs from the family's archive ("wireguard": wireguard-tools).
  std::map<std::string, std::vector<std::string>> topping_packages;
  std::vector<std::string> services;
  std::vector<RecipeFile> files;
  std::vector<std::string> remove;  // absolute paths; a trailing "*" matches a name prefix

  // The packages to install on `arch` (amd64, arm64): "all", then the architecture's.
  std::vector<std::string> packages_for(std::string_view arch) const;
};

// Parses a recipe; every refusal names the recipe, line and key.
Recipe parse_recipe(std::string_view text, std::string_view name);

// Reads <data_dir>/recipes/<family>.yaml.
Recipe load_recipe(Family family, const util::Path& data_dir);

}  // namespace pok8s::convert
