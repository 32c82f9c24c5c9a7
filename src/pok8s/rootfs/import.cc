// Importing a root filesystem as a single-layer image: a deterministic pax tar, gzipped
// in-process, hashed compressed (digest) and uncompressed (diffID) as it streams.
#include "pok8s/rootfs/import.h"

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
#include <ctime>
#include <exception>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "pok8s/util/archive_filters.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::rootfs {

namespace {

using nlohmann::json;

constexpr std::size_t kMaxEntries = 4'000'000;
constexpr std::size_t kMaxPath = 4096;
constexpr std::size_t kMaxDepth = 512;  // each level holds a directory descriptor open
constexpr std::size_t kMaxXattrBytes = 64u << 10;
constexpr std::uint64_t kMaxLayerBytes = 64ull << 30;
constexpr std::size_t kCopyBuffer = 1 << 20;

struct ArchiveWriteFree {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct ArchiveReadFree {
  void operator()(archive* a) const { archive_read_free(a); }
};
struct EntryFree {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};
using WritePtr = std::unique_ptr<archive, ArchiveWriteFree>;
using EntryPtr = std::unique_ptr<archive_entry, EntryFree>;

std::string error_text(archive* a) {
  const char* s = archive_error_string(a);
  return s ? s : "unknown error";
}

// Only file capabilities and user attributes describe the image; security.selinux and
// trusted.* belong to the host the tree was made on.
bool keep_xattr(std::string_view name) {
  return name == "security.capability" || name.starts_with("user.");
}

// Two libarchive writers in a chain: a pax tar whose bytes are hashed for the diffID, fed into
// a raw writer with the gzip filter whose output is hashed for the digest and written to a file.
// C callbacks cannot carry exceptions through libarchive, so failures are parked and rethrown.
class LayerWriter {
 public:
  LayerWriter(int out_fd, std::string what) : out_fd_(out_fd), what_(std::move(what)) {
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
        archive_write_open(tar_.get(), this, nullptr, &LayerWriter::on_tar, nullptr) != ARCHIVE_OK)
      fail(tar_.get(), "starting the tar");
  }

  LayerWriter(const LayerWriter&) = delete;
  LayerWriter& operator=(const LayerWriter&) = delete;
  // A layer abandoned on an error is not worth flushing: the callbacks drop what they get.
  ~LayerWriter() { abandoned_ = true; }

  void header(archive_entry* e) {
    if (++entries_ > kMaxEntries)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to import {}: more than {} entries", what_, kMaxEntries));
    if (archive_write_header(tar_.get(), e) != ARCHIVE_OK)
      fail(tar_.get(), fmt::format("entry {}", archive_entry_pathname(e)));
  }

  void data(const void* buf, std::size_t n, std::string_view entry) {
    if (archive_write_data(tar_.get(), buf, n) != static_cast<la_ssize_t>(n))
      fail(tar_.get(), fmt::format("entry {}", entry));
  }

  struct Result {
    oci::Digest digest = oci::Digest::sha256_of("");
    oci::Digest diff_id = oci::Digest::sha256_of("");
    std::uint64_t size = 0;
  };

  Result finish() {
    if (archive_write_close(tar_.get()) != ARCHIVE_OK) fail(tar_.get(), "closing the tar");
    if (archive_write_close(gz_.get()) != ARCHIVE_OK) fail(gz_.get(), "closing gzip");
    return {oci::Digest::sha256(blob_hash_.hex_digest()),
            oci::Digest::sha256(diff_hash_.hex_digest()), blob_bytes_};
  }

 private:
  [[noreturn]] void fail(archive* a, const std::string& step) {
    if (parked_) std::rethrow_exception(parked_);
    throw Error(ErrorKind::kIo,
                fmt::format("Failed to write the layer of {}: {}: {}", what_, step, error_text(a)));
  }

  static la_ssize_t on_tar(archive*, void* self_ptr, const void* buf, size_t n) {
    auto* self = static_cast<LayerWriter*>(self_ptr);
    if (self->abandoned_) return static_cast<la_ssize_t>(n);
    try {
      self->tar_bytes_ += n;
      if (self->tar_bytes_ > kMaxLayerBytes)
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to import {}: the layer exceeds {} bytes", self->what_,
                                kMaxLayerBytes));
      self->diff_hash_.update(std::span(static_cast<const std::byte*>(buf), n));
      if (archive_write_data(self->gz_.get(), buf, n) != static_cast<la_ssize_t>(n))
        throw Error(ErrorKind::kIo, fmt::format("Failed to compress the layer of {}: {}",
                                                self->what_, error_text(self->gz_.get())));
    } catch (...) {
      if (!self->parked_) self->parked_ = std::current_exception();
      return -1;
    }
    return static_cast<la_ssize_t>(n);
  }

  static la_ssize_t on_gzip(archive*, void* self_ptr, const void* buf, size_t n) {
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

  int out_fd_;
  std::string what_;
  // Everything the callbacks touch is declared before the writers, which flush into the
  // callbacks when freed; gz_ before tar_ because the tar writes into gzip.
  util::Sha256 diff_hash_;
  util::Sha256 blob_hash_;
  std::uint64_t tar_bytes_ = 0;
  std::uint64_t blob_bytes_ = 0;
  std::size_t entries_ = 0;
  std::exception_ptr parked_;
  bool abandoned_ = false;
  WritePtr gz_;
  WritePtr tar_;
};

void clamp_mtime(archive_entry* e, const std::optional<std::int64_t>& epoch) {
  if (epoch && archive_entry_mtime(e) > *epoch) archive_entry_set_mtime(e, *epoch, 0);
}

// Walks a directory tree in sorted order, never following symlinks, into the layer.
class TreeWalker {
 public:
  TreeWalker(LayerWriter& out, const util::Path& root, const ImportOptions& options)
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
                  fmt::format("Failed to import {}: {} is nested deeper than {}", root_.string(),
                              prefix, kMaxDepth));
    int dup = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) throw_errno("Failed to read directory " + (root_ / prefix).string(), errno);
    DIR* d = ::fdopendir(dup);
    if (!d) {
      ::close(dup);
      throw_errno("Failed to read directory " + (root_ / prefix).string(), errno);
    }
    std::vector<std::string> names;
    errno = 0;
    while (dirent* de = ::readdir(d)) {
      std::string_view n = de->d_name;
      if (n != "." && n != "..") names.emplace_back(n);
    }
    int err = errno;
    ::closedir(d);
    if (err) throw_errno("Failed to read directory " + (root_ / prefix).string(), err);
    std::sort(names.begin(), names.end());
    for (const auto& name : names) entry(dirfd, prefix + name, name, depth);
  }

  void entry(int dirfd, const std::string& rel, const std::string& name, std::size_t depth) {
    if (rel.size() > kMaxPath)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to import {}: a path is longer than {} bytes", root_.string(),
                              kMaxPath));
    util::Path full = root_ / rel;
    struct stat st {};
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
      throw_errno("Failed to stat " + full.string(), errno);
    if (S_ISSOCK(st.st_mode)) return;  // a socket is a running process's, not the image's
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
                    fmt::format("Failed to import {}: symlink target longer than {} bytes",
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
    if (S_ISDIR(st.st_mode)) {
      int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0) throw_errno("Failed to open directory " + full.string(), errno);
      util::UniqueFd sub(fd);
      walk(sub.get(), rel + "/", depth + 1);
    }
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
      throw Error(
          ErrorKind::kIo,
          fmt::format("Failed to import {}: it changed size while being read", full.string()));
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
                    fmt::format("Failed to import {}: its extended attributes exceed {} bytes",
                                full.string(), kMaxXattrBytes));
      archive_entry_xattr_add_entry(e, key.c_str(), value.data(), static_cast<std::size_t>(v));
    }
  }

  LayerWriter& out_;
  util::Path root_;
  const ImportOptions& options_;
  std::map<std::pair<dev_t, ino_t>, std::string> links_;
  std::vector<char> buf_;
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
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read {}: {}", file.string(), error_text(in.get())));
  std::vector<char> buf(kCopyBuffer);
  archive_entry* e = nullptr;
  while (true) {
    int r = archive_read_next_header(in.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read {}: {}", file.string(), error_text(in.get())));
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
      if (n < 0) refuse(fmt::format("cannot be read: {}", error_text(in.get())));
      if (n == 0) break;
      out.data(buf.data(), static_cast<std::size_t>(n), rel);
    }
  }
}

std::string rfc3339(std::int64_t epoch) {
  std::time_t t = static_cast<std::time_t>(epoch);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char out[32];
  std::strftime(out, sizeof out, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return out;
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

  // The layer is written aside and then copied in, because the store names a blob by a
  // digest known only once the last byte is compressed.
  util::make_dirs(store.root() / "tmp");
  util::TempFile layer_file(store.root() / "tmp" / "import-layer");
  LayerWriter writer(layer_file.fd(), source);
  if (is_dir)
    TreeWalker(writer, path, options).run();
  else
    restream_tar(writer, path, options);
  LayerWriter::Result layer = writer.finish();
  store.put_file(layer.digest, layer_file.path(), "the layer of " + source);
  store.record_diff_id(layer.digest, layer.diff_id);

  std::string created = options.source_date_epoch
                            ? rfc3339(*options.source_date_epoch)
                            : rfc3339(static_cast<std::int64_t>(std::time(nullptr)));
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

  oci::Manifest manifest;
  manifest.media_type = std::string(oci::media_type::kOciManifest);
  manifest.config.media_type = std::string(oci::media_type::kOciConfig);
  manifest.config.digest = oci::Digest::sha256_of(config_bytes);
  manifest.config.size = static_cast<std::int64_t>(config_bytes.size());
  oci::Descriptor layer_desc;
  layer_desc.media_type = std::string(oci::media_type::kOciLayerGzip);
  layer_desc.digest = layer.digest;
  layer_desc.size = static_cast<std::int64_t>(layer.size);
  manifest.layers.push_back(layer_desc);
  store.put(manifest.config.digest, config_bytes, "the config of " + source);

  oci::ResolvedImage image;
  image.source_name = source;
  image.manifest_doc.bytes = manifest.to_json();
  image.manifest_doc.media_type = manifest.media_type;
  image.manifest = oci::Manifest::parse(image.manifest_doc.bytes, manifest.media_type);
  image.config_bytes = std::move(config_bytes);
  image.config = oci::ImageConfig::parse(image.config_bytes);
  return image;
}

}  // namespace pok8s::rootfs
