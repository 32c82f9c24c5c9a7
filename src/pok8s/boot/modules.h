// Kernel modules as an initramfs needs them: the depmod indexes of a kernel (modules.dep,
// modules.builtin) and the closure of a wanted set, in the order the modules must be loaded.
#pragma once

#include <cstddef>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace pok8s::boot {

// Limits on the indexes read from an image (they are untrusted input).
struct ModuleIndexLimits {
  std::size_t max_bytes = 32u << 20;     // bytes of modules.dep or modules.builtin
  std::size_t max_modules = 100'000;     // lines of modules.dep
  std::size_t max_dependencies = 1'000;  // dependencies of one module
  std::size_t max_path = 4096;           // bytes of one module path
};

// A module's name as the kernel and modprobe know it: the file name without its directory
// and its ".ko", ".ko.xz", ".ko.zst" or ".ko.gz" suffix, with "-" written "_"
// ("kernel/fs/nls/nls_iso8859-1.ko.xz" -> "nls_iso8859_1"). Names given by users are
// normalised the same way, so "usb-storage" and "usb_storage" are one module.
std::string module_name(std::string_view path_or_name);

// A module path without its compression suffix ("a/b.ko.zst" -> "a/b.ko").
std::string uncompressed_module_path(std::string_view path);

// One line of modules.dep: a module and every module it needs, paths relative to the
// kernel's module directory (/lib/modules/<kver>/).
struct ModuleEntry {
  std::string name;
  std::string path;
  std::vector<std::string> dependencies;  // paths, as listed
};

// What depmod knows about one kernel's modules.
class ModuleIndex {
 public:
  // Parses the text of modules.dep and modules.builtin (see depmod(8), modules.dep(5)).
  // Absolute paths under /lib/modules/<kver>/ are made relative. `what` names the kernel in
  // errors. Throws Error(kFormat) naming the line of a malformed file.
  static ModuleIndex parse(std::string_view modules_dep, std::string_view modules_builtin,
                           std::string_view what, const ModuleIndexLimits& limits = {});

  const ModuleEntry* find(std::string_view name) const;
  bool is_builtin(std::string_view name) const;
  std::size_t size() const { return modules_.size(); }

 private:
  std::string what_;
  std::map<std::string, ModuleEntry, std::less<>> modules_;  // by name
  std::map<std::string, std::string, std::less<>> by_path_;  // path -> name
  std::set<std::string, std::less<>> builtin_;               // names

  friend std::vector<const ModuleEntry*> resolve_modules(const ModuleIndex&,
                                                         const std::vector<std::string>&,
                                                         std::vector<std::string>*);
};

// The modules to load for `wanted` and everything they depend on, each once, dependencies
// before the modules that need them. Builtin modules are skipped. A name ending in "?" is
// optional: when the kernel has no such module it is left out (and named in `skipped` if
// given); a required one that is missing is an error naming every missing module.
// A dependency cycle is an error (kFormat).
std::vector<const ModuleEntry*> resolve_modules(const ModuleIndex& index,
                                                const std::vector<std::string>& wanted,
                                                std::vector<std::string>* skipped = nullptr);

}  // namespace pok8s::boot
