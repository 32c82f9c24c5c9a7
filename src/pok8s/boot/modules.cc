// The depmod text indexes, read by hand: modules.dep and modules.builtin are one path (and a
// colon-separated dependency list) per line, as depmod(8) writes them. libkmod reads only the
// binary .bin indexes of a directory on disk, while pok8s reads an image's files from its
// layers, so the two small text formats are parsed here.
#include "pok8s/boot/modules.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <functional>

#include "pok8s/util/error.h"

namespace pok8s::boot {
namespace {

// Real chains are a handful of modules deep; the limit keeps a hostile index off the stack.
constexpr std::size_t kMaxDependencyDepth = 256;

constexpr std::string_view kSuffixes[] = {".ko.xz", ".ko.zst", ".ko.gz", ".ko"};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// Calls fn(line, number) for every line of `text`.
void for_each_line(std::string_view text,
                   const std::function<void(std::string_view, std::size_t)>& fn) {
  std::size_t number = 0;
  while (!text.empty()) {
    auto nl = text.find('\n');
    ++number;
    fn(text.substr(0, nl), number);
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
}

bool has_module_suffix(std::string_view path) {
  for (auto s : kSuffixes)
    if (path.size() > s.size() && path.ends_with(s)) return true;
  return false;
}

}  // namespace

std::string module_name(std::string_view path_or_name) {
  std::string_view base = path_or_name;
  if (auto slash = base.rfind('/'); slash != std::string_view::npos) base.remove_prefix(slash + 1);
  for (auto s : kSuffixes) {
    if (base.size() > s.size() && base.ends_with(s)) {
      base.remove_suffix(s.size());
      break;
    }
  }
  std::string name(base);
  for (char& c : name)
    if (c == '-') c = '_';
  return name;
}

std::string uncompressed_module_path(std::string_view path) {
  for (auto s : kSuffixes) {
    if (path.ends_with(s)) {
      path.remove_suffix(s.size());
      return std::string(path) + ".ko";
    }
  }
  return std::string(path);
}

ModuleIndex ModuleIndex::parse(std::string_view modules_dep, std::string_view modules_builtin,
                               std::string_view what, const ModuleIndexLimits& limits) {
  ModuleIndex index;
  index.what_ = what;
  auto fail = [&](std::string_view file, std::size_t line, const std::string& reason) {
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read {} of {}: line {}: {}", file, what, line, reason));
  };
  if (modules_dep.size() > limits.max_bytes || modules_builtin.size() > limits.max_bytes)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read the module indexes of {}: larger than {} bytes", what,
                            limits.max_bytes));

  // A path as depmod writes it: relative to the module directory (older depmod wrote
  // absolute paths under /lib/modules/<kver>/). Nothing may leave that directory.
  auto check_path = [&](std::string_view file, std::size_t line, std::string_view p) {
    if (p.size() > limits.max_path) fail(file, line, "a path is too long");
    if (p.starts_with('/')) {
      std::string_view rest = p;
      if (rest.starts_with("/usr")) rest.remove_prefix(4);
      if (!rest.starts_with("/lib/modules/"))
        fail(file, line, fmt::format("{} is outside the module directory", p));
      rest.remove_prefix(13);
      auto slash = rest.find('/');
      if (slash == std::string_view::npos)
        fail(file, line, fmt::format("{} is not a module path", p));
      p = rest.substr(slash + 1);
    }
    if (!has_module_suffix(p)) fail(file, line, fmt::format("\"{}\" is not a .ko file", p));
    std::string_view r = p;
    while (true) {
      auto slash = r.find('/');
      auto comp = r.substr(0, slash);
      if (comp.empty() || comp == "." || comp == "..")
        fail(file, line, fmt::format("\"{}\" is not a plain relative path", p));
      if (slash == std::string_view::npos) break;
      r.remove_prefix(slash + 1);
    }
    return std::string(p);
  };

  for_each_line(modules_dep, [&](std::string_view raw, std::size_t line) {
    std::string_view text = trim(raw);
    if (text.empty() || text.front() == '#') return;
    if (index.modules_.size() >= limits.max_modules)
      fail("modules.dep", line, fmt::format("more than {} modules", limits.max_modules));
    auto colon = text.find(':');
    if (colon == std::string_view::npos)
      fail("modules.dep", line, "no \":\" after the module path");
    ModuleEntry entry;
    entry.path = check_path("modules.dep", line, trim(text.substr(0, colon)));
    entry.name = module_name(entry.path);
    std::string_view deps = text.substr(colon + 1);
    while (true) {
      deps = trim(deps);
      if (deps.empty()) break;
      auto end = deps.find_first_of(" \t");
      if (entry.dependencies.size() >= limits.max_dependencies)
        fail("modules.dep", line,
             fmt::format("more than {} dependencies", limits.max_dependencies));
      entry.dependencies.push_back(check_path("modules.dep", line, deps.substr(0, end)));
      if (end == std::string_view::npos) break;
      deps.remove_prefix(end);
    }
    // depmod lists a name once; should a second path carry it, the first wins, as in modprobe.
    if (index.modules_.contains(entry.name) || index.by_path_.contains(entry.path)) return;
    index.by_path_.emplace(entry.path, entry.name);
    index.modules_.emplace(entry.name, std::move(entry));
  });

  for_each_line(modules_builtin, [&](std::string_view raw, std::size_t line) {
    std::string_view text = trim(raw);
    if (text.empty() || text.front() == '#') return;
    index.builtin_.insert(module_name(check_path("modules.builtin", line, text)));
  });
  return index;
}

const ModuleEntry* ModuleIndex::find(std::string_view name) const {
  auto it = modules_.find(module_name(name));
  return it == modules_.end() ? nullptr : &it->second;
}

bool ModuleIndex::is_builtin(std::string_view name) const {
  return builtin_.contains(module_name(name));
}

std::vector<const ModuleEntry*> resolve_modules(const ModuleIndex& index,
                                                const std::vector<std::string>& wanted,
                                                std::vector<std::string>* skipped) {
  std::vector<const ModuleEntry*> order;
  std::set<std::string, std::less<>> done;      // names emitted
  std::set<std::string, std::less<>> visiting;  // names on the current path
  std::vector<std::string> missing;

  // Depth first: every dependency is emitted before the module that lists it. modules.dep
  // already holds the transitive closure, but walking it again costs little and does not
  // depend on the order depmod wrote it in.
  std::function<void(const ModuleEntry&)> visit = [&](const ModuleEntry& m) {
    if (done.contains(m.name)) return;
    if (!visiting.insert(m.name).second)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to resolve the modules of {}: {} depends on itself",
                              index.what_, m.name));
    if (visiting.size() > kMaxDependencyDepth)
      throw Error(
          ErrorKind::kFormat,
          fmt::format("Failed to resolve the modules of {}: dependencies too deep", index.what_));
    for (const auto& dep_path : m.dependencies) {
      auto it = index.by_path_.find(dep_path);
      if (it == index.by_path_.end()) {
        // A dependency on a module depmod reports as builtin needs nothing loaded.
        if (index.is_builtin(dep_path)) continue;
        throw Error(ErrorKind::kFormat,
                    fmt::format("Failed to resolve the modules of {}: {} depends on {}, which "
                                "modules.dep does not list",
                                index.what_, m.name, dep_path));
      }
      visit(index.modules_.find(it->second)->second);
    }
    visiting.erase(m.name);
    done.insert(m.name);
    order.push_back(&m);
  };

  for (const auto& w : wanted) {
    std::string_view name = w;
    bool optional = name.ends_with('?');
    if (optional) name.remove_suffix(1);
    if (name.empty()) continue;
    if (index.is_builtin(name)) continue;
    if (const ModuleEntry* m = index.find(name)) {
      visit(*m);
    } else if (optional) {
      if (skipped) skipped->push_back(module_name(name));
    } else {
      missing.push_back(std::string(name));
    }
  }
  if (!missing.empty())
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to resolve the modules of {}: no module {} in modules.dep or "
                            "modules.builtin",
                            index.what_, fmt::join(missing, ", ")));
  return order;
}

}  // namespace pok8s::boot
