// Reading recipes with yaml-cpp, strictly: an unknown key is a mistake in the recipe.
#include "pok8s/convert/recipe.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <charconv>
#include <set>

#include "pok8s/util/error.h"

namespace pok8s::convert {
namespace {

[[noreturn]] void refuse(std::string_view name, const YAML::Node& node, std::string_view why) {
  throw Error(ErrorKind::kFormat, fmt::format("Failed to read recipe {}: line {}: {}", name,
                                              node.Mark().line + 1, why));
}

std::string scalar(std::string_view name, const YAML::Node& node, std::string_view key) {
  if (!node.IsScalar()) refuse(name, node, fmt::format("{} must be a string", key));
  return node.as<std::string>();
}

std::vector<std::string> strings(std::string_view name, const YAML::Node& node,
                                 std::string_view key) {
  if (!node.IsSequence()) refuse(name, node, fmt::format("{} must be a list of strings", key));
  std::vector<std::string> out;
  for (const auto& item : node) out.push_back(scalar(name, item, key));
  return out;
}

void only_keys(std::string_view name, const YAML::Node& map, std::string_view where,
               const std::set<std::string>& known) {
  if (!map.IsMap()) refuse(name, map, fmt::format("{} must be a mapping", where));
  for (const auto& kv : map) {
    auto key = kv.first.as<std::string>();
    if (!known.contains(key))
      refuse(name, kv.first, fmt::format("unknown key \"{}\" in {}", key, where));
  }
}

Family family_from(std::string_view name, const YAML::Node& node) {
  auto text = scalar(name, node, "family");
  for (Family f : {Family::kDebian, Family::kUbuntu, Family::kAlpine, Family::kFedora,
                   Family::kRhel, Family::kOpensuse, Family::kArch})
    if (family_name(f) == text) return f;
  refuse(name, node, fmt::format("unknown family \"{}\"", text));
}

}  // namespace

std::vector<std::string> Recipe::packages_for(std::string_view arch) const {
  std::vector<std::string> out;
  if (auto it = packages.find("all"); it != packages.end()) out = it->second;
  if (auto it = packages.find(std::string(arch)); it != packages.end())
    out.insert(out.end(), it->second.begin(), it->second.end());
  return out;
}

Recipe parse_recipe(std::string_view text, std::string_view name) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read recipe {}: line {}: {}", name, e.mark.line + 1, e.msg));
  }
  only_keys(
      name, root, "the recipe",
      {"family", "init", "package_manager", "packages", "toppings", "services", "files", "remove"});
  Recipe recipe;
  recipe.name = name;
  if (!root["family"]) refuse(name, root, "the recipe has no family");
  recipe.family = family_from(name, root["family"]);
  if (auto init = root["init"]) {
    auto v = scalar(name, init, "init");
    if (v == "systemd")
      recipe.init = InitSystem::kSystemd;
    else if (v == "openrc")
      recipe.init = InitSystem::kOpenrc;
    else
      refuse(name, init, fmt::format("init \"{}\" is not systemd or openrc", v));
  }
  auto pm = root["package_manager"];
  if (!pm) refuse(name, root, "the recipe has no package_manager");
  only_keys(name, pm, "package_manager", {"env", "update", "install", "clean"});
  if (auto env = pm["env"]) {
    if (!env.IsMap()) refuse(name, env, "package_manager.env must be a mapping");
    for (const auto& kv : env)
      recipe.env[kv.first.as<std::string>()] = scalar(name, kv.second, "package_manager.env");
  }
  if (pm["update"]) recipe.update = strings(name, pm["update"], "package_manager.update");
  if (!pm["install"]) refuse(name, pm, "package_manager has no install command");
  recipe.install = strings(name, pm["install"], "package_manager.install");
  if (recipe.install.empty()) refuse(name, pm, "package_manager.install is empty");
  if (pm["clean"]) recipe.clean = strings(name, pm["clean"], "package_manager.clean");
  if (auto packages = root["packages"]) {
    only_keys(name, packages, "packages", {"all", "amd64", "arm64"});
    for (const auto& kv : packages)
      recipe.packages[kv.first.as<std::string>()] =
          strings(name, kv.second, "packages." + kv.first.as<std::string>());
  }
  if (auto toppings = root["toppings"]) {
    only_keys(name, toppings, "toppings", {"wireguard"});
    for (const auto& kv : toppings)
      recipe.topping_packages[kv.first.as<std::string>()] =
          strings(name, kv.second, "toppings." + kv.first.as<std::string>());
  }
  if (root["services"]) recipe.services = strings(name, root["services"], "services");
  if (auto files = root["files"]) {
    if (!files.IsSequence()) refuse(name, files, "files must be a list");
    for (const auto& f : files) {
      only_keys(name, f, "files[]", {"path", "content", "mode"});
      RecipeFile file;
      if (!f["path"]) refuse(name, f, "a file has no path");
      file.path = scalar(name, f["path"], "files[].path");
      if (!file.path.starts_with("/") || file.path.find("..") != std::string::npos)
        refuse(name, f["path"],
               fmt::format("file path {} must be absolute, without ..", file.path));
      if (f["content"]) file.content = scalar(name, f["content"], "files[].content");
      if (f["mode"]) {
        auto text = scalar(name, f["mode"], "files[].mode");
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), file.mode, 8);
        if (ec != std::errc() || end != text.data() + text.size() || file.mode > 07777)
          refuse(name, f["mode"], fmt::format("mode {} is not an octal file mode", text));
      }
      recipe.files.push_back(std::move(file));
    }
  }
  if (root["remove"]) {
    recipe.remove = strings(name, root["remove"], "remove");
    for (const auto& p : recipe.remove)
      if (!p.starts_with("/") || p.find("..") != std::string::npos)
        refuse(name, root["remove"], fmt::format("remove path {} must be absolute, without ..", p));
  }
  return recipe;
}

Recipe load_recipe(Family family, const util::Path& data_dir) {
  auto path = data_dir / "recipes" / (std::string(family_name(family)) + ".yaml");
  std::string text;
  try {
    text = util::read_file(path, 1u << 20);
  } catch (const Error& e) {
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to find the recipe for {}: {}", family_name(family), e.what()));
  }
  return parse_recipe(text, path.string());
}

}  // namespace pok8s::convert
