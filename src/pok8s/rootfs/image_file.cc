// Reading single files from an image's flattened view.
#include "pok8s/rootfs/image_file.h"

#include <fmt/format.h>

#include "pok8s/util/error.h"

namespace pok8s::rootfs {

namespace {

// Joins `target` onto the directory `dir` lexically inside the image root: ".." stops at the
// root, an absolute target starts from the root.
std::string resolve_link(const std::string& dir, const std::string& target) {
  std::vector<std::string> parts;
  auto push_all = [&](const std::string& p) {
    std::size_t start = 0;
    while (start <= p.size()) {
      auto pos = p.find('/', start);
      std::string c = p.substr(start, pos == std::string::npos ? std::string::npos : pos - start);
      if (c == "..") {
        if (!parts.empty()) parts.pop_back();
      } else if (!c.empty() && c != ".") {
        parts.push_back(c);
      }
      if (pos == std::string::npos) break;
      start = pos + 1;
    }
  };
  if (target.empty() || target[0] != '/') push_all(dir);
  push_all(target);
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : "/") + p;
  return out;
}

}  // namespace

std::optional<std::string> read_image_file(const FlatTree& tree,
                                           const std::vector<LayerBlob>& layers,
                                           const std::string& path, std::uint64_t limit) {
  const auto& entries = tree.entries();
  std::string current = resolve_link("", path);
  // Resolve symlinks in every component, not only the last, the way the kernel would.
  for (int hops = 0; hops <= 40; ++hops) {
    std::string resolved;
    bool changed = false;
    std::size_t start = 0;
    while (start <= current.size()) {
      auto pos = current.find('/', start);
      std::string comp =
          current.substr(start, pos == std::string::npos ? std::string::npos : pos - start);
      std::string candidate = resolved.empty() ? comp : resolved + "/" + comp;
      auto it = entries.find(candidate);
      if (it == entries.end()) return std::nullopt;
      if (it->second.meta.type == EntryType::kSymlink) {
        std::string rest = pos == std::string::npos ? "" : current.substr(pos + 1);
        std::string target = resolve_link(resolved, it->second.meta.link_target);
        current = rest.empty() ? target : (target.empty() ? rest : target + "/" + rest);
        changed = true;
        break;
      }
      resolved = candidate;
      if (pos == std::string::npos) break;
      start = pos + 1;
    }
    if (changed) continue;
    const FlatEntry& entry = entries.at(resolved);
    std::string want = resolved;
    if (entry.meta.type == EntryType::kHardlink) want = resolve_link("", entry.meta.link_target);
    auto target_it = entries.find(want);
    if (target_it == entries.end() || (target_it->second.meta.type != EntryType::kFile &&
                                       target_it->second.meta.type != EntryType::kHardlink))
      return std::nullopt;
    const FlatEntry& file = target_it->second;
    if (file.meta.size > limit)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read /{} from the image: {} bytes exceeds the limit of {}",
                              want, file.meta.size, limit));
    if (file.layer >= layers.size()) return std::nullopt;
    LayerReader reader(layers[file.layer].path, layers[file.layer].what);
    TarEntry e;
    while (reader.next(e)) {
      std::string norm = resolve_link("", e.path);
      if (norm != want || e.type != EntryType::kFile) continue;
      std::string data(e.size, '\0');
      std::size_t got = 0;
      while (got < data.size()) {
        std::size_t n =
            reader.read(std::as_writable_bytes(std::span(data.data() + got, data.size() - got)));
        if (n == 0) break;
        got += n;
      }
      data.resize(got);
      return data;  // the last occurrence in a layer wins, but a layer rarely repeats a path
    }
    return std::nullopt;
  }
  throw Error(ErrorKind::kInvalidInput,
              fmt::format("Failed to read /{} from the image: too many symlinks", path));
}

std::vector<LayerBlob> layer_blobs(const oci::ResolvedImage& image, const oci::BlobStore& store) {
  std::vector<LayerBlob> out;
  for (std::size_t i = 0; i < image.manifest.layers.size(); ++i)
    out.push_back({store.path_for(image.manifest.layers[i].digest), image.layer_name(i),
                   i < image.config.diff_ids.size() ? std::optional(image.config.diff_ids[i])
                                                    : std::nullopt});
  return out;
}

std::map<std::string, std::string> parse_os_release(const std::string& text) {
  std::map<std::string, std::string> out;
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    std::string line =
        text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    start = end == std::string::npos ? text.size() : end + 1;
    auto eq = line.find('=');
    if (line.empty() || line[0] == '#' || eq == std::string::npos) continue;
    std::string key = line.substr(0, eq), raw = line.substr(eq + 1), value;
    char quote = 0;
    for (std::size_t i = 0; i < raw.size(); ++i) {
      char c = raw[i];
      if (!quote && (c == '"' || c == '\''))
        quote = c;
      else if (quote && c == quote)
        quote = 0;
      else if (c == '\\' && quote != '\'' && i + 1 < raw.size())
        value += raw[++i];
      else
        value += c;
    }
    out[key] = value;
  }
  return out;
}

}  // namespace pok8s::rootfs
