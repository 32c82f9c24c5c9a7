// The flat view of an image, built from tar headers alone with the rules apply_layer follows
// on disk: the same path normalisation and refusals, symlinks resolved inside the root,
// whiteouts hiding lower layers only, hardlinks sharing one entry's data.
#include "pok8s/rootfs/flat_tree.h"

#include <fmt/format.h>

#include <deque>
#include <set>

#include "pok8s/rootfs/apply.h"
#include "pok8s/util/error.h"

namespace pok8s::rootfs {

namespace {

std::string child_of(const std::string& dir, const std::string& name) {
  return dir.empty() ? name : dir + "/" + name;
}

TarEntry implicit_directory() {
  TarEntry meta;
  meta.type = EntryType::kDirectory;
  meta.mode = 0755;
  return meta;
}

class TreeBuilder {
 public:
  explicit TreeBuilder(std::map<std::string, FlatEntry>& entries) : entries_(entries) {
    entries_[""] = FlatEntry{"", implicit_directory(), 0, 0};
  }

  void apply(const LayerBlob& layer, std::size_t layer_index, const Limits& limits) {
    what_ = layer.what;
    created_.clear();
    LayerReader reader(layer.path, layer.what, limits);
    TarEntry entry;
    std::uint64_t index = 0;
    while (reader.next(entry)) apply_entry(std::move(entry), layer_index, ++index);
    oci::Digest actual = reader.finish();
    if (layer.diff_id && actual != *layer.diff_id)
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to verify {}: its uncompressed content hashes to {}, the "
                              "image config says {}",
                              layer.what, actual.str(), layer.diff_id->str()));
  }

 private:
  [[noreturn]] void fail(const TarEntry& e, ErrorKind kind, const std::string& reason) const {
    throw Error(kind, fmt::format("Failed to unpack {}: entry \"{}\": {}", what_, e.path, reason));
  }

  // The entry that holds the inode of `entry` (itself unless a hardlink).
  const FlatEntry& inode_of(const FlatEntry& entry) const {
    if (entry.meta.type != EntryType::kHardlink) return entry;
    return entries_.at(entry.meta.link_target);
  }

  // The directory holding components[0..n), resolved as RESOLVE_IN_ROOT would (symlinks
  // followed inside the root, ".." in their targets stopping at the root). Missing
  // directories are added when `create`, else nullopt.
  std::optional<std::string> resolve_dir(const TarEntry& e, const std::vector<std::string>& comps,
                                         std::size_t n, bool create) {
    std::vector<std::string> cur;
    std::deque<std::string> todo(comps.begin(), comps.begin() + static_cast<std::ptrdiff_t>(n));
    int links = 0;
    while (!todo.empty()) {
      std::string c = std::move(todo.front());
      todo.pop_front();
      if (c.empty() || c == ".") continue;
      if (c == "..") {
        if (!cur.empty()) cur.pop_back();
        continue;
      }
      std::string candidate = child_of(join_components(cur), c);
      auto it = entries_.find(candidate);
      if (it == entries_.end()) {
        if (!create) return std::nullopt;
        entries_[candidate] = FlatEntry{candidate, implicit_directory(), 0, 0};
        cur.push_back(std::move(c));
        continue;
      }
      const TarEntry& meta = inode_of(it->second).meta;
      if (meta.type == EntryType::kSymlink) {
        if (++links > kMaxSymlinks)
          fail(e, ErrorKind::kInvalidInput,
               fmt::format("Failed to resolve \"{}\": too many levels of symbolic links (a "
                           "symlink loop?)",
                           candidate));
        const std::string& target = meta.link_target;
        if (target.starts_with('/')) cur.clear();
        std::vector<std::string> parts = split_link_target(target);
        todo.insert(todo.begin(), parts.begin(), parts.end());
        continue;
      }
      if (meta.type != EntryType::kDirectory)
        fail(e, ErrorKind::kInvalidInput,
             fmt::format("Failed to open \"{}\": a path component is not a directory", candidate));
      cur.push_back(std::move(c));
    }
    return join_components(cur);
  }

  bool created_below(const std::string& path) const { return has_path_below(created_, path); }

  // Removes `path` and everything below it. A removed file that other names still link to
  // lives on in the first of them, as it does on disk.
  void remove_entry(const std::string& path) {
    std::vector<std::string> doomed;
    if (entries_.contains(path)) doomed.push_back(path);
    std::string prefix = path + "/";
    for (auto it = entries_.lower_bound(prefix);
         it != entries_.end() && it->first.starts_with(prefix); ++it)
      doomed.push_back(it->first);
    for (const auto& d : doomed) {
      const FlatEntry& e = entries_.at(d);
      if (e.meta.type != EntryType::kHardlink) continue;
      auto l = links_.find(e.meta.link_target);
      if (l == links_.end()) continue;
      l->second.erase(d);
      if (l->second.empty()) links_.erase(l);
    }
    for (const auto& d : doomed) {
      auto l = links_.find(d);
      if (l == links_.end()) continue;
      std::set<std::string> rest = std::move(l->second);
      links_.erase(l);
      std::string heir = *rest.begin();
      rest.erase(rest.begin());
      FlatEntry moved = entries_.at(d);
      moved.path = heir;
      entries_[heir] = std::move(moved);
      for (const auto& r : rest) entries_.at(r).meta.link_target = heir;
      if (!rest.empty()) links_[heir] = std::move(rest);
    }
    for (const auto& d : doomed) entries_.erase(d);
  }

  void clear_lower(const std::string& dir, const std::string& archive_dir) {
    std::string prefix = dir.empty() ? std::string() : dir + "/";
    std::vector<std::string> children;
    for (auto it = entries_.lower_bound(prefix);
         it != entries_.end() && it->first.starts_with(prefix); ++it) {
      std::string_view rest = std::string_view(it->first).substr(prefix.size());
      if (!rest.empty() && rest.find('/') == std::string_view::npos) children.emplace_back(rest);
    }
    for (const auto& child : children) hide_lower(prefix + child, child_of(archive_dir, child));
  }

  void hide_lower(const std::string& path, const std::string& archive_path) {
    if (created_.contains(archive_path)) return;
    auto it = entries_.find(path);
    if (it == entries_.end()) return;
    if (created_below(archive_path) && it->second.meta.type == EntryType::kDirectory) {
      clear_lower(path, archive_path);
      return;
    }
    remove_entry(path);
  }

  void apply_entry(TarEntry e, std::size_t layer, std::uint64_t index) {
    std::vector<std::string> comps = split_entry_path(e.path, what_);
    Whiteout wh = classify_whiteout(comps, e.path, what_);
    std::string archive_path = join_components(comps);
    std::size_t n = comps.empty() ? 0 : comps.size() - 1;
    switch (wh.kind) {
      case WhiteoutKind::kIgnored:
        return;
      case WhiteoutKind::kOpaque: {
        std::string dir = *resolve_dir(e, comps, n, true);
        clear_lower(dir, join_components(comps, n));
        return;
      }
      case WhiteoutKind::kRemove: {
        std::optional<std::string> dir = resolve_dir(e, comps, n, false);
        if (dir)
          hide_lower(child_of(*dir, wh.target), child_of(join_components(comps, n), wh.target));
        return;
      }
      case WhiteoutKind::kNone:
        break;
    }

    // The same xattrs survive as on disk: filtered, and none on what cannot hold them.
    bool holds_xattrs = e.type == EntryType::kFile || e.type == EntryType::kDirectory;
    std::erase_if(e.xattrs, [&](const auto& x) { return !holds_xattrs || !keep_xattr(x.first); });

    if (comps.empty()) {
      if (e.type != EntryType::kDirectory)
        fail(e, ErrorKind::kInvalidInput,
             "the root directory cannot be replaced by a non-directory");
      entries_[""] = FlatEntry{"", std::move(e), layer, index};
      created_.insert("");
      return;
    }

    if (e.type == EntryType::kHardlink) {
      apply_hardlink(std::move(e), comps, archive_path, layer, index);
      return;
    }
    std::string path = child_of(*resolve_dir(e, comps, n, true), comps.back());
    auto it = entries_.find(path);
    if (it != entries_.end() &&
        !(e.type == EntryType::kDirectory && it->second.meta.type == EntryType::kDirectory))
      remove_entry(path);
    entries_[path] = FlatEntry{path, std::move(e), layer, index};
    created_.insert(archive_path);
  }

  void apply_hardlink(TarEntry e, const std::vector<std::string>& comps,
                      const std::string& archive_path, std::size_t layer, std::uint64_t index) {
    std::vector<std::string> target = split_entry_path(e.link_target, what_);
    if (target.empty()) fail(e, ErrorKind::kInvalidInput, "a hardlink cannot point at the root");
    std::optional<std::string> target_dir = resolve_dir(e, target, target.size() - 1, false);
    auto it = target_dir ? entries_.find(child_of(*target_dir, target.back())) : entries_.end();
    if (it == entries_.end())
      fail(e, ErrorKind::kInvalidInput,
           fmt::format("the hardlink target \"{}\" does not exist inside the root", e.link_target));
    if (it->second.meta.type == EntryType::kDirectory)
      fail(e, ErrorKind::kInvalidInput,
           fmt::format("the hardlink target \"{}\" is a directory", e.link_target));
    std::string primary = inode_of(it->second).path;
    std::string path = child_of(*resolve_dir(e, comps, comps.size() - 1, true), comps.back());
    created_.insert(archive_path);
    auto existing = entries_.find(path);
    if (path == primary ||
        (existing != entries_.end() && existing->second.meta.type == EntryType::kHardlink &&
         existing->second.meta.link_target == primary))
      return;  // already this very file
    if (existing != entries_.end()) remove_entry(path);
    // Removing `path` may have moved the inode to a new holder.
    if (!entries_.contains(primary))
      fail(e, ErrorKind::kInvalidInput, "the hardlink replaces its own target");
    e.link_target = primary;
    e.size = 0;
    entries_[path] = FlatEntry{path, std::move(e), layer, index};
    links_[primary].insert(path);
  }

  std::map<std::string, FlatEntry>& entries_;
  // For each entry holding an inode, the hardlinks that share it.
  std::map<std::string, std::set<std::string>> links_;
  // Normalised archive paths this layer created (whiteouts never hide those).
  std::set<std::string> created_;
  std::string what_;
};

}  // namespace

FlatTree FlatTree::build(const std::vector<LayerBlob>& layers, const Limits& limits) {
  FlatTree tree;
  tree.layers_ = layers;
  tree.limits_ = limits;
  TreeBuilder builder(tree.entries_);
  for (std::size_t i = 0; i < layers.size(); ++i) builder.apply(layers[i], i, limits);
  return tree;
}

FlatTree FlatTree::build(const oci::ResolvedImage& image, const oci::BlobStore& store,
                         const Limits& limits) {
  std::vector<LayerBlob> layers;
  for (std::size_t i = 0; i < image.manifest.layers.size(); ++i) {
    LayerBlob blob{store.path_for(image.manifest.layers[i].digest), image.layer_name(i), {}};
    if (i < image.config.diff_ids.size()) blob.diff_id = image.config.diff_ids[i];
    layers.push_back(std::move(blob));
  }
  return build(layers, limits);
}

void FlatTree::read_files(const std::function<void(const FlatEntry&, LayerReader&)>& fn) const {
  read_wanted(nullptr, fn);
}

void FlatTree::read_files(const std::set<std::string>& paths,
                          const std::function<void(const FlatEntry&, LayerReader&)>& fn) const {
  read_wanted(&paths, fn);
}

void FlatTree::read_wanted(const std::set<std::string>* paths,
                           const std::function<void(const FlatEntry&, LayerReader&)>& fn) const {
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    std::map<std::uint64_t, const FlatEntry*> wanted;
    auto consider = [&](const FlatEntry& entry) {
      if (entry.meta.type == EntryType::kFile && entry.layer == i && entry.entry_index > 0)
        wanted[entry.entry_index] = &entry;
    };
    if (paths) {
      for (const auto& p : *paths)
        if (auto it = entries_.find(p); it != entries_.end()) consider(it->second);
    } else {
      for (const auto& [path, entry] : entries_) consider(entry);
    }
    // A layer holding none of the wanted files is not decompressed at all.
    if (wanted.empty()) continue;
    const LayerBlob& layer = layers_[i];
    LayerReader reader(layer.path, layer.what, limits_);
    TarEntry t;
    std::uint64_t index = 0;
    // Stop after the last wanted file: the rest of the layer was checked by build().
    while (!wanted.empty() && reader.next(t)) {
      auto it = wanted.find(++index);
      if (it == wanted.end()) continue;
      const FlatEntry& entry = *it->second;
      if (t.type != EntryType::kFile || t.path != entry.meta.path || t.size != entry.meta.size)
        throw Error(ErrorKind::kSignature,
                    fmt::format("Failed to read {}: entry {} is \"{}\", not \"{}\" as when the "
                                "tree was built; the blob changed",
                                layer.what, index, t.path, entry.meta.path));
      fn(entry, reader);
      wanted.erase(it);
    }
    if (!wanted.empty())
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to read {}: it ends before entry \"{}\"; the blob changed",
                              layer.what, wanted.begin()->second->meta.path));
  }
}

}  // namespace pok8s::rootfs
