// Kernel lookup in the flat view of an image.
#include "pok8s/boot/kernel.h"

#include <algorithm>
#include <deque>
#include <map>

#include "pok8s/rootfs/layer_reader.h"

namespace pok8s::boot {
namespace {

// The kernel's own limit on symlinks followed in one lookup.
constexpr int kMaxSymlinks = 40;

using rootfs::EntryType;

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// Files directly in `dir` ("boot"), by name.
std::vector<std::string> children(const rootfs::FlatTree& tree, const std::string& dir) {
  std::vector<std::string> out;
  std::string prefix = dir.empty() ? "" : dir + "/";
  for (auto it = tree.entries().lower_bound(prefix); it != tree.entries().end(); ++it) {
    if (!it->first.starts_with(prefix)) break;
    std::string_view rest = std::string_view(it->first).substr(prefix.size());
    if (!rest.empty() && rest.find('/') == std::string_view::npos) out.emplace_back(rest);
  }
  return out;
}

}  // namespace

bool version_less(std::string_view a, std::string_view b) {
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (is_digit(a[i]) && is_digit(b[j])) {
      std::size_t i0 = i, j0 = j;
      while (i < a.size() && is_digit(a[i])) ++i;
      while (j < b.size() && is_digit(b[j])) ++j;
      std::string_view na = a.substr(i0, i - i0), nb = b.substr(j0, j - j0);
      while (na.size() > 1 && na.front() == '0') na.remove_prefix(1);
      while (nb.size() > 1 && nb.front() == '0') nb.remove_prefix(1);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;
}

std::optional<std::string> resolve_tree_path(const rootfs::FlatTree& tree, std::string_view path) {
  const auto& entries = tree.entries();
  std::deque<std::string> todo;
  for (const auto& c : rootfs::split_link_target(path)) todo.push_back(c);
  std::vector<std::string> cur;
  int links = 0;
  while (!todo.empty()) {
    std::string c = std::move(todo.front());
    todo.pop_front();
    if (c.empty() || c == ".") continue;
    if (c == "..") {
      if (!cur.empty()) cur.pop_back();
      continue;
    }
    cur.push_back(c);
    auto it = entries.find(rootfs::join_components(cur));
    if (it == entries.end()) return std::nullopt;
    if (it->second.meta.type == EntryType::kSymlink) {
      if (++links > kMaxSymlinks) return std::nullopt;
      cur.pop_back();
      const std::string& target = it->second.meta.link_target;
      if (target.starts_with('/')) cur.clear();
      auto parts = rootfs::split_link_target(target);
      todo.insert(todo.begin(), parts.begin(), parts.end());
    }
  }
  return rootfs::join_components(cur);
}

const rootfs::FlatEntry* file_entry(const rootfs::FlatTree& tree, std::string_view path) {
  auto resolved = resolve_tree_path(tree, path);
  if (!resolved) return nullptr;
  auto it = tree.entries().find(*resolved);
  if (it == tree.entries().end()) return nullptr;
  if (it->second.meta.type == EntryType::kHardlink)
    it = tree.entries().find(it->second.meta.link_target);
  if (it == tree.entries().end() || it->second.meta.type != EntryType::kFile) return nullptr;
  return &it->second;
}

std::vector<KernelInfo> find_kernels(const rootfs::FlatTree& tree) {
  std::map<std::string, KernelInfo> found;  // by version; the first place wins
  auto is_kernel_file = [&](const std::string& path) {
    auto it = tree.entries().find(path);
    if (it == tree.entries().end()) return false;
    auto type = it->second.meta.type;
    return type == EntryType::kFile || type == EntryType::kHardlink;
  };
  for (const auto& name : children(tree, "boot")) {
    if (!name.starts_with("vmlinuz-") || name.size() == 8) continue;
    std::string path = "boot/" + name;
    if (is_kernel_file(path)) found.try_emplace(name.substr(8), KernelInfo{name.substr(8), path});
  }
  for (std::string dir : {"usr/lib/modules", "lib/modules"}) {
    auto real = resolve_tree_path(tree, dir);
    if (!real) continue;
    for (const auto& version : children(tree, *real)) {
      std::string path = *real + "/" + version + "/vmlinuz";
      if (is_kernel_file(path)) found.try_emplace(version, KernelInfo{version, path});
    }
  }
  std::vector<KernelInfo> out;
  for (auto& [version, info] : found) out.push_back(std::move(info));
  std::sort(out.begin(), out.end(), [](const KernelInfo& a, const KernelInfo& b) {
    return version_less(b.version, a.version);
  });
  return out;
}

}  // namespace pok8s::boot
