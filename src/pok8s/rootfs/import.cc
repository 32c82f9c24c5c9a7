// Importing a root filesystem as a single-layer image: a tree or a tarball becomes one
// deterministic gzip layer (rootfs/layer_writer.h), a config and a manifest.
#include "pok8s/rootfs/import.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <nlohmann/json.hpp>
#include <vector>

#include "pok8s/rootfs/layer_writer.h"
#include "pok8s/util/archive_filters.h"
#include "pok8s/util/error.h"
#include "pok8s/util/time.h"

namespace pok8s::rootfs {

namespace {

using nlohmann::json;

constexpr std::size_t kMaxPath = 4096;
constexpr std::size_t kCopyBuffer = 1 << 20;

struct ArchiveReadFree {
  void operator()(archive* a) const { archive_read_free(a); }
};

bool has_dotdot(std::string_view path) {
  for (std::size_t s = 0;;) {
    std::size_t p = path.find('/', s);
    if (path.substr(s, p == std::string_view::npos ? path.npos : p - s) == "..") return true;
    if (p == std::string_view::npos) return false;
    s = p + 1;
  }
}

// Re-streams a tarball's entries into the layer with the same normalisation as a tree:
// relative names, no owner names, kept xattrs only, mtimes clamped.
void restream_tar(LayerWriter& out, const util::Path& file, const ImportOptions& options) {
  util::UniqueFd fd = util::open_file(file, O_RDONLY);
  std::unique_ptr<archive, ArchiveReadFree> in(archive_read_new());
  util::support_in_process_filters(in.get());
  archive_read_support_format_tar(in.get());
  if (archive_read_open_fd(in.get(), fd.get(), 64 << 10) != ARCHIVE_OK)
    throw Error(ErrorKind::kFormat, fmt::format("Failed to read {}: {}", file.string(),
                                                util::archive_error_text(in.get())));
  std::vector<char> buf(kCopyBuffer);
  archive_entry* e = nullptr;
  while (true) {
    int r = archive_read_next_header(in.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN)
      throw Error(ErrorKind::kFormat, fmt::format("Failed to read {}: {}", file.string(),
                                                  util::archive_error_text(in.get())));
    const char* raw = archive_entry_pathname(e);
    std::string name = raw ? raw : "";
    auto refuse = [&](std::string_view why) {
      throw Error(ErrorKind::kInvalidInput, fmt::format("Failed to import {}: entry \"{}\" {}",
                                                        file.string(), name.substr(0, 200), why));
    };
    if (name.size() > kMaxPath) refuse("has a name that is too long");
    if (has_dotdot(name)) refuse("has a \"..\" component");
    std::string rel = name.substr(std::min(name.find_first_not_of('/'), name.size()));
    if (rel.empty()) continue;
    if (const char* link = archive_entry_hardlink(e)) {
      if (has_dotdot(link)) refuse("is a hardlink with a \"..\" component");
      std::string target = link;
      archive_entry_set_hardlink(
          e, target.substr(std::min(target.find_first_not_of('/'), target.size())).c_str());
    }
    archive_entry_set_pathname(e, rel.c_str());
    archive_entry_set_uname(e, nullptr);
    archive_entry_set_gname(e, nullptr);
    archive_entry_unset_atime(e);
    archive_entry_unset_ctime(e);
    archive_entry_unset_birthtime(e);
    archive_entry_acl_clear(e);
    archive_entry_sparse_clear(e);
    clamp_mtime(e, options.source_date_epoch);
    std::vector<std::pair<std::string, std::string>> xattrs;
    archive_entry_xattr_reset(e);
    const char* xname = nullptr;
    const void* xvalue = nullptr;
    std::size_t xsize = 0;
    while (archive_entry_xattr_next(e, &xname, &xvalue, &xsize) == ARCHIVE_OK)
      if (keep_xattr(xname))
        xattrs.emplace_back(xname, std::string(static_cast<const char*>(xvalue), xsize));
    archive_entry_xattr_clear(e);
    for (const auto& [k, v] : xattrs)
      archive_entry_xattr_add_entry(e, k.c_str(), v.data(), v.size());
    out.header(e);
    if (archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e)) continue;
    while (true) {
      la_ssize_t n = archive_read_data(in.get(), buf.data(), buf.size());
      if (n < 0) refuse(fmt::format("cannot be read: {}", util::archive_error_text(in.get())));
      if (n == 0) break;
      out.data(buf.data(), static_cast<std::size_t>(n), rel);
    }
  }
}

}  // namespace

oci::ResolvedImage import_rootfs(const std::string& source, oci::BlobStore& store,
                                 const ImportOptions& options) {
  bool is_dir = source.starts_with("dir:");
  util::Path path = is_dir ? util::Path(source.substr(4)) : util::Path(source);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw_errno("Failed to import " + source, errno);
  if (is_dir && !S_ISDIR(st.st_mode))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to import {}: {} is not a directory", source, path.string()));
  if (!is_dir && !S_ISREG(st.st_mode))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to import {}: expected dir:PATH or a tar archive", source));

  LayerBlobInfo layer;
  if (is_dir) {
    layer = write_tree_layer(path, store, source, {.source_date_epoch = options.source_date_epoch});
  } else {
    // The layer is written aside and then moved in, because the store names a blob by a
    // digest known only once the last byte is compressed.
    util::make_dirs(store.root() / "tmp");
    util::TempFile layer_file(store.root() / "tmp" / "import-layer");
    LayerWriter writer(layer_file.fd(), source);
    restream_tar(writer, path, options);
    layer = writer.finish();
    store.put_file(layer.digest, layer_file.path(), "the layer of " + source);
    store.record_diff_id(layer.digest, layer.diff_id);
  }

  std::string created = options.source_date_epoch
                            ? util::rfc3339(*options.source_date_epoch)
                            : util::rfc3339(static_cast<std::int64_t>(std::time(nullptr)));
  json config = {
      {"architecture", options.platform.architecture},
      {"os", options.platform.os},
      {"created", created},
      {"config", json::object()},
      {"rootfs", {{"type", "layers"}, {"diff_ids", json::array({layer.diff_id.str()})}}},
      {"history", json::array({{{"created", created}, {"created_by", "pok8s image import"}}})},
  };
  if (!options.platform.variant.empty()) config["variant"] = options.platform.variant;
  if (!options.labels.empty()) config["config"]["Labels"] = options.labels;
  std::string config_bytes = config.dump();

  return image_with_layer({}, std::move(config_bytes), layer, store, source);
}

}  // namespace pok8s::rootfs