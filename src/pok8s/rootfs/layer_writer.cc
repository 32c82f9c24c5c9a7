// Layers from directory trees: the whole tree for an import, the changes since a snapshot
// for a conversion.
#include "pok8s/rootfs/layer_writer.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "pok8s/util/archive_filters.h"
#include "pok8s/util/error.h"

namespace pok8s::rootfs {

namespace {

constexpr std::size_t kMaxEntries = 4'000'000;
constexpr std::size_t kMaxPath = 4096;
constexpr std::size_t kMaxDepth = 512;  // each level holds a directory descriptor open
constexpr std::size_t kMaxXattrBytes = 64u << 10;
constexpr std::uint64_t kMaxLayerBytes = 64ull << 30;
constexpr std::size_t kCopyBuffer = 1 << 20;

struct EntryFree {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};
using EntryPtr = std::unique_ptr<archive_entry, EntryFree>;

// Walks a directory tree in sorted order, never following symlinks, into the layer.
// The names in a directory, sorted, without "." and "..".
std::vector<std::string> list_directory(int dirfd, const util::Path& what) {
  int dup = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) throw_errno("Failed to read directory " + what.string(), errno);
  DIR* d = ::fdopendir(dup);
  if (!d) {
    ::close(dup);
    throw_errno("Failed to read directory " + what.string(), errno);
  }
  std::vector<std::string> names;
  errno = 0;
  while (dirent* de = ::readdir(d)) {
    std::string_view n = de->d_name;
    if (n != "." && n != "..") names.emplace_back(n);
  }
  int err = errno;
  ::closedir(d);
  if (err) throw_errno("Failed to read directory " + what.string(), err);
  std::sort(names.begin(), names.end());
  return names;
}

TreeStamp stamp_of(const struct stat& st) {
  auto ns = [](const timespec& t) {
    return static_cast<std::int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
  };
  return {st.st_ino,  ns(st.st_ctim), ns(st.st_mtim), static_cast<std::uint64_t>(st.st_size),
          st.st_mode, st.st_uid,      st.st_gid};
}

class TreeWalker {
 public:
  TreeWalker(LayerWriter& out, const util::Path& root, const TreeLayerOptions& options)
      : out_(out), root_(root), options_(options), buf_(kCopyBuffer) {}

  void run() {
    int fd = ::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw_errno("Failed to open directory " + root_.string(), errno);
    util::UniqueFd dir(fd);
    walk(dir.get(), "", 0);
  }

 private:
  void walk(int dirfd, const std::string& prefix, std::size_t depth) {
    if (depth > kMaxDepth)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read tree {}: {} is nested deeper than {}", root_.string(),
                              prefix, kMaxDepth));
    auto names = list_directory(dirfd, root_ / prefix);
    if (options_.since) write_whiteouts(prefix, names);
    for (const auto& name : names) entry(dirfd, prefix + name, name, depth);
  }

  void entry(int dirfd, const std::string& rel, const std::string& name, std::size_t depth) {
    if (rel.size() > kMaxPath)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read tree {}: a path is longer than {} bytes",
                              root_.string(), kMaxPath));
    util::Path full = root_ / rel;
    struct stat st {};
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
      throw_errno("Failed to stat " + full.string(), errno);
    if (S_ISSOCK(st.st_mode)) return;  // a socket is a running process's, not the image's
    bool replaced_directory = false;
    if (options_.since) {
      auto it = options_.since->find(rel);
      if (it != options_.since->end() && it->second == stamp_of(st)) {
        if (S_ISDIR(st.st_mode)) descend(dirfd, rel, name, depth);
        return;  // untouched since the snapshot: the lower layers have it
      }
      replaced_directory = S_ISDIR(st.st_mode) && it != options_.since->end() &&
                           (!it->second.directory() || it->second.inode != st.st_ino);
    }
    EntryPtr e(archive_entry_new());
    archive_entry_set_pathname(e.get(), rel.c_str());
    archive_entry_set_uid(e.get(), st.st_uid);
    archive_entry_set_gid(e.get(), st.st_gid);
    archive_entry_set_perm(e.get(), st.st_mode & 07777);
    archive_entry_set_mtime(e.get(), st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    clamp_mtime(e.get(), options_.source_date_epoch);
    add_xattrs(e.get(), full);
    util::UniqueFd file;
    if (S_ISDIR(st.st_mode)) {
      archive_entry_set_filetype(e.get(), AE_IFDIR);
    } else if (S_ISLNK(st.st_mode)) {
      archive_entry_set_filetype(e.get(), AE_IFLNK);
      std::string target(kMaxPath + 1, '\0');
      ssize_t n = ::readlinkat(dirfd, name.c_str(), target.data(), target.size());
      if (n < 0) throw_errno("Failed to read symlink " + full.string(), errno);
      if (static_cast<std::size_t>(n) > kMaxPath)
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to read {}: symlink target longer than {} bytes",
                                full.string(), kMaxPath));
      target.resize(static_cast<std::size_t>(n));
      archive_entry_set_symlink(e.get(), target.c_str());
    } else if (S_ISREG(st.st_mode)) {
      archive_entry_set_filetype(e.get(), AE_IFREG);
      if (st.st_nlink > 1) {
        auto [it, first] = links_.emplace(std::pair(st.st_dev, st.st_ino), rel);
        if (!first) {
          archive_entry_set_hardlink(e.get(), it->second.c_str());
          archive_entry_set_size(e.get(), 0);
          out_.header(e.get());
          return;
        }
      }
      int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) throw_errno("Failed to open " + full.string(), errno);
      file.reset(fd);
      archive_entry_set_size(e.get(), st.st_size);
    } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      archive_entry_set_filetype(e.get(), S_ISCHR(st.st_mode) ? AE_IFCHR : AE_IFBLK);
      archive_entry_set_rdevmajor(e.get(), major(st.st_rdev));
      archive_entry_set_rdevminor(e.get(), minor(st.st_rdev));
    } else if (S_ISFIFO(st.st_mode)) {
      archive_entry_set_filetype(e.get(), AE_IFIFO);
    } else {
      return;
    }
    out_.header(e.get());
    if (file.valid()) copy_file(file.get(), st.st_size, full);
    // A directory made anew where one was: what the lower layers had in it is gone.
    if (replaced_directory) write_marker(rel + "/.wh..wh..opq");
    if (S_ISDIR(st.st_mode)) descend(dirfd, rel, name, depth);
  }

  void descend(int dirfd, const std::string& rel, const std::string& name, std::size_t depth) {
    int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) throw_errno("Failed to open directory " + (root_ / rel).string(), errno);
    util::UniqueFd sub(fd);
    walk(sub.get(), rel + "/", depth + 1);
  }

  // Whiteouts for the entries of `prefix` that the snapshot had and the tree no longer has
  // (only the topmost: a whiteout hides everything below it).
  void write_whiteouts(const std::string& prefix, const std::vector<std::string>& names) {
    const TreeSnapshot& since = *options_.since;
    for (auto it = since.lower_bound(prefix); it != since.end() && it->first.starts_with(prefix);) {
      std::string_view child = std::string_view(it->first).substr(prefix.size());
      if (child.empty() || child.find('/') != std::string_view::npos) {
        ++it;
        continue;
      }
      if (!std::binary_search(names.begin(), names.end(), child))
        write_marker(prefix + ".wh." + std::string(child));
      // Skip the child's own subtree: its keys follow "child/", and '0' sorts right after '/'.
      it = since.lower_bound(prefix + std::string(child) + "0");
    }
  }

  void write_marker(const std::string& path) {
    EntryPtr e(archive_entry_new());
    archive_entry_set_pathname(e.get(), path.c_str());
    archive_entry_set_filetype(e.get(), AE_IFREG);
    archive_entry_set_perm(e.get(), 0);
    archive_entry_set_size(e.get(), 0);
    archive_entry_set_mtime(e.get(), options_.source_date_epoch.value_or(0), 0);
    out_.header(e.get());
  }

  void copy_file(int fd, off_t size, const util::Path& full) {
    std::uint64_t done = 0;
    while (true) {
      ssize_t n = ::read(fd, buf_.data(), buf_.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw_errno("Failed to read " + full.string(), errno);
      if (n == 0) break;
      done += static_cast<std::uint64_t>(n);
      if (done > static_cast<std::uint64_t>(size)) break;
      out_.data(buf_.data(), static_cast<std::size_t>(n), full.string());
    }
    if (done != static_cast<std::uint64_t>(size))
      throw Error(ErrorKind::kIo, fmt::format("Failed to read {}: it changed size while being read",
                                              full.string()));
  }

  void add_xattrs(archive_entry* e, const util::Path& full) {
    std::string names(kMaxXattrBytes, '\0');
    ssize_t n = ::llistxattr(full.c_str(), names.data(), names.size());
    if (n < 0) {
      if (errno == ENOTSUP || errno == ENODATA) return;
      throw_errno("Failed to list the extended attributes of " + full.string(), errno);
    }
    names.resize(static_cast<std::size_t>(n));
    std::vector<std::string> kept;
    for (std::size_t p = 0; p < names.size();) {
      std::string key(names.c_str() + p);
      p += key.size() + 1;
      if (keep_xattr(key)) kept.push_back(key);
    }
    std::sort(kept.begin(), kept.end());
    std::size_t total = 0;
    for (const auto& key : kept) {
      std::string value(kMaxXattrBytes, '\0');
      ssize_t v = ::lgetxattr(full.c_str(), key.c_str(), value.data(), value.size());
      if (v < 0)
        throw_errno(fmt::format("Failed to read attribute {} of {}", key, full.string()), errno);
      total += key.size() + static_cast<std::size_t>(v);
      if (total > kMaxXattrBytes)
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to read {}: its extended attributes exceed {} bytes",
                                full.string(), kMaxXattrBytes));
      archive_entry_xattr_add_entry(e, key.c_str(), value.data(), static_cast<std::size_t>(v));
    }
  }

  LayerWriter& out_;
  util::Path root_;
  const TreeLayerOptions& options_;
  std::map<std::pair<dev_t, ino_t>, std::string> links_;
  std::vector<char> buf_;
};

}  // namespace

// Two libarchive writers in a chain: a pax tar whose bytes are hashed for the diffID, fed into
// a raw writer with the gzip filter whose output is hashed for the digest and written to a file.
// C callbacks cannot carry exceptions through libarchive, so failures are parked and rethrown.
bool TreeStamp::directory() const {
  return S_ISDIR(mode);
}

void write_tree(LayerWriter& out, const util::Path& root, const TreeLayerOptions& options) {
  TreeWalker(out, root, options).run();
}

TreeSnapshot snapshot_tree(const util::Path& root) {
  TreeSnapshot snapshot;
  // An explicit stack of open directories keeps deep trees off the call stack.
  struct Dir {
    util::UniqueFd fd;
    std::string prefix;
  };
  int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_errno("Failed to open directory " + root.string(), errno);
  std::vector<Dir> stack;
  stack.push_back({util::UniqueFd(fd), ""});
  while (!stack.empty()) {
    Dir dir = std::move(stack.back());
    stack.pop_back();
    for (const auto& name : list_directory(dir.fd.get(), root / dir.prefix)) {
      std::string rel = dir.prefix + name;
      struct stat st {};
      if (::fstatat(dir.fd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
        throw_errno("Failed to stat " + (root / rel).string(), errno);
      snapshot[rel] = stamp_of(st);
      if (!S_ISDIR(st.st_mode)) continue;
      if (snapshot.size() > kMaxEntries)
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to read tree {}: more than {} entries", root.string(),
                                kMaxEntries));
      int sub =
          ::openat(dir.fd.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) throw_errno("Failed to open directory " + (root / rel).string(), errno);
      stack.push_back({util::UniqueFd(sub), rel + "/"});
    }
  }
  return snapshot;
}

LayerBlobInfo write_tree_layer(const util::Path& root, oci::BlobStore& store,
                               const std::string& what, const TreeLayerOptions& options) {
  // The layer is written aside and then moved in, because the store names a blob by a
  // digest known only once the last byte is compressed.
  util::make_dirs(store.root() / "tmp");
  util::TempFile layer_file(store.root() / "tmp" / "tree-layer");
  LayerWriter writer(layer_file.fd(), what);
  write_tree(writer, root, options);
  LayerBlobInfo layer = writer.finish();
  store.put_file(layer.digest, layer_file.path(), "the layer of " + what);
  store.record_diff_id(layer.digest, layer.diff_id);
  return layer;
}

oci::ResolvedImage image_with_layer(oci::Manifest manifest, std::string config_bytes,
                                    const LayerBlobInfo& layer, oci::BlobStore& store,
                                    std::string source_name) {
  manifest.media_type = std::string(oci::media_type::kOciManifest);
  manifest.config.media_type = std::string(oci::media_type::kOciConfig);
  manifest.config.digest = oci::Digest::sha256_of(config_bytes);
  manifest.config.size = static_cast<std::int64_t>(config_bytes.size());
  oci::Descriptor desc;
  desc.media_type = std::string(oci::media_type::kOciLayerGzip);
  desc.digest = layer.digest;
  desc.size = static_cast<std::int64_t>(layer.size);
  manifest.layers.push_back(desc);
  store.put(manifest.config.digest, config_bytes, "the config of " + source_name);

  oci::ResolvedImage image;
  image.source_name = std::move(source_name);
  image.manifest_doc.bytes = manifest.to_json();
  image.manifest_doc.media_type = manifest.media_type;
  image.manifest = oci::Manifest::parse(image.manifest_doc.bytes, manifest.media_type);
  image.config_bytes = std::move(config_bytes);
  image.config = oci::ImageConfig::parse(image.config_bytes);
  return image;
}

void LayerWriter::WriteFree::operator()(archive* a) const {
  archive_write_free(a);
}

LayerWriter::LayerWriter(int out_fd, std::string what) : out_fd_(out_fd), what_(std::move(what)) {
  gz_.reset(archive_write_new());
  if (archive_write_set_format_raw(gz_.get()) != ARCHIVE_OK ||
      archive_write_add_filter_gzip(gz_.get()) != ARCHIVE_OK ||
      // No mtime in the gzip header: the same tree must give the same blob.
      archive_write_set_filter_option(gz_.get(), "gzip", "timestamp", nullptr) != ARCHIVE_OK ||
      archive_write_set_bytes_in_last_block(gz_.get(), 1) != ARCHIVE_OK ||
      archive_write_open(gz_.get(), this, nullptr, &LayerWriter::on_gzip, nullptr) != ARCHIVE_OK)
    fail(gz_.get(), "starting gzip");
  EntryPtr raw(archive_entry_new());
  archive_entry_set_pathname(raw.get(), "layer.tar");
  archive_entry_set_filetype(raw.get(), AE_IFREG);
  if (archive_write_header(gz_.get(), raw.get()) != ARCHIVE_OK) fail(gz_.get(), "starting gzip");

  tar_.reset(archive_write_new());
  if (archive_write_set_format_pax_restricted(tar_.get()) != ARCHIVE_OK ||
      archive_write_add_filter_none(tar_.get()) != ARCHIVE_OK ||
      // Names are bytes, as the kernel has them; no translation through the locale.
      archive_write_set_format_option(tar_.get(), "pax", "hdrcharset", "BINARY") != ARCHIVE_OK ||
      archive_write_open(tar_.get(), this, nullptr, &LayerWriter::on_tar, nullptr) != ARCHIVE_OK)
    fail(tar_.get(), "starting the tar");
}

LayerWriter::~LayerWriter() {
  abandoned_ = true;
}

void LayerWriter::header(archive_entry* e) {
  if (++entries_ > kMaxEntries)
    throw Error(
        ErrorKind::kInvalidInput,
        fmt::format("Failed to write the layer of {}: more than {} entries", what_, kMaxEntries));
  if (archive_write_header(tar_.get(), e) != ARCHIVE_OK)
    fail(tar_.get(), fmt::format("entry {}", archive_entry_pathname(e)));
}

void LayerWriter::data(const void* buf, std::size_t n, std::string_view entry) {
  if (archive_write_data(tar_.get(), buf, n) != static_cast<la_ssize_t>(n))
    fail(tar_.get(), fmt::format("entry {}", entry));
}

LayerBlobInfo LayerWriter::finish() {
  if (archive_write_close(tar_.get()) != ARCHIVE_OK) fail(tar_.get(), "closing the tar");
  if (archive_write_close(gz_.get()) != ARCHIVE_OK) fail(gz_.get(), "closing gzip");
  return {oci::Digest::sha256(blob_hash_.hex_digest()),
          oci::Digest::sha256(diff_hash_.hex_digest()), blob_bytes_};
}

void LayerWriter::fail(archive* a, const std::string& step) {
  if (parked_) std::rethrow_exception(parked_);
  throw Error(ErrorKind::kIo, fmt::format("Failed to write the layer of {}: {}: {}", what_, step,
                                          util::archive_error_text(a)));
}

long LayerWriter::on_tar(archive*, void* self_ptr, const void* buf, std::size_t n) {
  auto* self = static_cast<LayerWriter*>(self_ptr);
  if (self->abandoned_) return static_cast<la_ssize_t>(n);
  try {
    self->tar_bytes_ += n;
    if (self->tar_bytes_ > kMaxLayerBytes)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to write the layer of {}: it exceeds {} bytes", self->what_,
                              kMaxLayerBytes));
    self->diff_hash_.update(std::span(static_cast<const std::byte*>(buf), n));
    if (archive_write_data(self->gz_.get(), buf, n) != static_cast<la_ssize_t>(n))
      throw Error(ErrorKind::kIo, fmt::format("Failed to compress the layer of {}: {}", self->what_,
                                              util::archive_error_text(self->gz_.get())));
  } catch (...) {
    if (!self->parked_) self->parked_ = std::current_exception();
    return -1;
  }
  return static_cast<la_ssize_t>(n);
}

long LayerWriter::on_gzip(archive*, void* self_ptr, const void* buf, std::size_t n) {
  auto* self = static_cast<LayerWriter*>(self_ptr);
  if (self->abandoned_) return static_cast<la_ssize_t>(n);
  try {
    auto bytes = std::span(static_cast<const std::byte*>(buf), n);
    self->blob_hash_.update(bytes);
    util::write_all(self->out_fd_, bytes, "the layer of " + self->what_);
    self->blob_bytes_ += n;
  } catch (...) {
    if (!self->parked_) self->parked_ = std::current_exception();
    return -1;
  }
  return static_cast<la_ssize_t>(n);
}

void clamp_mtime(archive_entry* e, const std::optional<std::int64_t>& epoch) {
  if (epoch && archive_entry_mtime(e) > *epoch) archive_entry_set_mtime(e, *epoch, 0);
}

}  // namespace pok8s::rootfs
