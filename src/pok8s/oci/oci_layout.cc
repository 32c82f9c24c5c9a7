// The oci: and oci-archive: transports, after the OCI image-layout specification (oci-layout,
// index.json, blobs/<alg>/<hex>, tags in org.opencontainers.image.ref.name), plus the tar
// helpers the file transports share.
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "pok8s/oci/image.h"
#include "pok8s/oci/layout.h"
#include "pok8s/util/archive_filters.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::oci {

namespace layout {

namespace {
constexpr std::size_t kCopyBuffer = 1 << 20;
}

TarReader::TarReader(const util::Path& path, std::string what)
    : fd_(util::open_file(path, O_RDONLY)), archive_(archive_read_new()), what_(std::move(what)) {
  if (!archive_) throw Error(ErrorKind::kInternal, "Failed to allocate a libarchive reader");
  util::support_in_process_filters(archive_);
  archive_read_support_format_tar(archive_);
  if (archive_read_open_fd(archive_, fd_.get(), 64 << 10) != ARCHIVE_OK) {
    std::string why = util::archive_error_text(archive_);
    // The destructor does not run for a constructor that throws.
    archive_read_free(archive_);
    archive_ = nullptr;
    throw Error(ErrorKind::kFormat, fmt::format("Failed to read {}: {}", what_, why));
  }
}

TarReader::~TarReader() {
  archive_read_free(archive_);
}

archive_entry* TarReader::next() {
  archive_entry* entry = nullptr;
  int r = archive_read_next_header(archive_, &entry);
  if (r == ARCHIVE_EOF) return nullptr;
  if (r < ARCHIVE_WARN)
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read {}: {}", what_, util::archive_error_text(archive_)));
  if (++entries_ > kMaxArchiveEntries)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read {}: more than {} entries", what_, kMaxArchiveEntries));
  return entry;
}

std::size_t TarReader::read(std::span<std::byte> buffer) {
  la_ssize_t n = archive_read_data(archive_, buffer.data(), buffer.size());
  if (n < 0)
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read {}: {}", what_, util::archive_error_text(archive_)));
  return static_cast<std::size_t>(n);
}

std::string TarReader::read_all(std::uint64_t limit, std::string_view entry) {
  std::string out;
  std::byte buf[64 << 10];
  while (std::size_t n = read(buf)) {
    if (out.size() + n > limit)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read {} in {}: larger than the limit of {} bytes", entry,
                              what_, limit));
    out.append(reinterpret_cast<const char*>(buf), n);
  }
  return out;
}

std::optional<std::string> normalize_member_name(std::string_view name) {
  std::string out;
  std::size_t start = 0;
  while (start <= name.size()) {
    std::size_t slash = name.find('/', start);
    std::string_view part =
        name.substr(start, slash == std::string_view::npos ? name.npos : slash - start);
    if (part == "..") return std::nullopt;
    if (!part.empty() && part != ".") {
      if (!out.empty()) out += '/';
      out += part;
    }
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  if (out.empty()) return std::nullopt;
  return out;
}

namespace {

std::int64_t tar_mtime() {
  // Reproducible builds' convention: the caller pins every timestamp with SOURCE_DATE_EPOCH.
  const char* env = std::getenv("SOURCE_DATE_EPOCH");
  if (!env || !*env) return 0;
  char* end = nullptr;
  long long v = std::strtoll(env, &end, 10);
  return (*end == '\0' && v >= 0) ? v : 0;
}

struct ArchiveWriteFree {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct EntryFree {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};

}  // namespace

void write_tar(int fd, std::vector<TarMember> members, std::string_view what) {
  std::sort(members.begin(), members.end(),
            [](const TarMember& a, const TarMember& b) { return a.name < b.name; });
  std::unique_ptr<archive, ArchiveWriteFree> a(archive_write_new());
  auto fail = [&](std::string_view step) {
    throw Error(ErrorKind::kIo, fmt::format("Failed to write {}: {}: {}", what, step,
                                            util::archive_error_text(a.get())));
  };
  if (archive_write_set_format_pax_restricted(a.get()) != ARCHIVE_OK ||
      archive_write_add_filter_none(a.get()) != ARCHIVE_OK ||
      archive_write_open_fd(a.get(), fd) != ARCHIVE_OK)
    fail("opening the tar writer");
  const std::int64_t mtime = tar_mtime();
  std::vector<char> buf(kCopyBuffer);
  for (const TarMember& m : members) {
    std::unique_ptr<archive_entry, EntryFree> e(archive_entry_new());
    archive_entry_set_pathname(e.get(), m.name.c_str());
    archive_entry_set_mtime(e.get(), mtime, 0);
    archive_entry_set_uid(e.get(), 0);
    archive_entry_set_gid(e.get(), 0);
    util::UniqueFd in;
    std::int64_t size = static_cast<std::int64_t>(m.bytes.size());
    if (m.directory) {
      archive_entry_set_filetype(e.get(), AE_IFDIR);
      archive_entry_set_perm(e.get(), 0755);
      size = 0;
    } else {
      archive_entry_set_filetype(e.get(), AE_IFREG);
      archive_entry_set_perm(e.get(), 0644);
      if (!m.file.empty()) {
        in = util::open_file(m.file, O_RDONLY);
        struct stat st {};
        if (::fstat(in.get(), &st) != 0) throw_errno("Failed to stat " + m.file.string(), errno);
        size = st.st_size;
      }
    }
    archive_entry_set_size(e.get(), size);
    if (archive_write_header(a.get(), e.get()) != ARCHIVE_OK) fail("entry " + m.name);
    auto put = [&](const char* data, std::size_t n) {
      if (archive_write_data(a.get(), data, n) != static_cast<la_ssize_t>(n))
        fail("entry " + m.name);
    };
    if (m.directory) continue;
    if (m.file.empty()) {
      put(m.bytes.data(), m.bytes.size());
      continue;
    }
    util::Sha256 hash;
    std::int64_t copied = 0;
    while (true) {
      ssize_t n = ::read(in.get(), buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw_errno("Failed to read " + m.file.string(), errno);
      if (n == 0) break;
      copied += n;
      if (copied > size)
        throw Error(ErrorKind::kIo, fmt::format("Failed to write {}: {} grew while being copied",
                                                what, m.file.string()));
      if (m.verify) hash.update(std::as_bytes(std::span(buf.data(), static_cast<std::size_t>(n))));
      put(buf.data(), static_cast<std::size_t>(n));
    }
    if (copied != size)
      throw Error(ErrorKind::kIo, fmt::format("Failed to write {}: {} shrank while being copied",
                                              what, m.file.string()));
    if (m.verify && hash.hex_digest() != m.verify->hex())
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to write {}: cached blob {} is corrupt; remove {} and retry",
                              what, m.verify->str(), m.file.string()));
  }
  if (archive_write_close(a.get()) != ARCHIVE_OK) fail("closing the tar");
}

std::uint64_t copy_blob(const BlobStore& store, const Digest& digest, int fd,
                        std::string_view what) {
  util::Path path = store.path_for(digest);
  util::UniqueFd in = util::open_file(path, O_RDONLY);
  util::Sha256 hash;
  std::vector<char> buf(kCopyBuffer);
  std::uint64_t copied = 0;
  while (true) {
    ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("Failed to read " + path.string(), errno);
    if (n == 0) break;
    auto chunk = std::as_bytes(std::span(buf.data(), static_cast<std::size_t>(n)));
    hash.update(chunk);
    util::write_all(fd, chunk, what);
    copied += static_cast<std::uint64_t>(n);
  }
  if (digest.algorithm() == "sha256" && hash.hex_digest() != digest.hex())
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to write {}: cached blob {} is corrupt; remove {} and retry",
                            what, digest.str(), path.string()));
  return copied;
}

void copy_fd_to_store(int fd, BlobStore::Writer& writer, std::string_view what) {
  std::vector<char> buf(kCopyBuffer);
  while (true) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno(fmt::format("Failed to read {}", what), errno);
    if (n == 0) break;
    writer.write(std::string_view(buf.data(), static_cast<std::size_t>(n)));
  }
}

}  // namespace layout

namespace {

using nlohmann::json;

constexpr std::string_view kRefName = "org.opencontainers.image.ref.name";
constexpr std::string_view kLayoutVersion = "1.0.0";
constexpr std::uint64_t kMaxLayoutFileBytes = 64 << 10;

// Opens `name` in `dirfd` without following a symlink: a layout from someone else must not
// make pok8s read files outside it.
util::UniqueFd open_in(int dirfd, const std::string& name, int flags, const std::string& what) {
  int fd = ::openat(dirfd, name.c_str(), flags | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ELOOP)
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format("Failed to open {}: it is a symlink, which an OCI layout must not hold",
                      what));
    if (err == ENOENT)
      throw Error(ErrorKind::kNotFound, fmt::format("Failed to open {}: it does not exist", what));
    throw_errno("Failed to open " + what, err);
  }
  return util::UniqueFd(fd);
}

std::string read_fd(int fd, std::uint64_t limit, const std::string& what) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno("Failed to stat " + what, errno);
  if (!S_ISREG(st.st_mode))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read {}: not a regular file", what));
  if (static_cast<std::uint64_t>(st.st_size) > limit)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read {}: {} bytes exceeds the limit of {}", what, st.st_size,
                            limit));
  std::string out(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::read(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("Failed to read " + what, errno);
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  out.resize(done);
  return out;
}

void check_layout_version(const std::string& bytes, const std::string& where) {
  json j = json::parse(bytes, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read {}/oci-layout: not a JSON object", where));
  auto v = j.find("imageLayoutVersion");
  if (v == j.end() || !v->is_string())
    throw Error(
        ErrorKind::kFormat,
        fmt::format("Failed to read {}/oci-layout: no \"imageLayoutVersion\" string", where));
  if (v->get<std::string>() != kLayoutVersion)
    throw Error(
        ErrorKind::kUnsupported,
        fmt::format("Failed to read {}/oci-layout: imageLayoutVersion \"{}\" (pok8s reads {})",
                    where, v->get<std::string>(), kLayoutVersion));
}

// An OCI layout directory opened for reading; blobs are reached only through validated digests
// and descriptors that never follow symlinks.
class LayoutDir {
 public:
  LayoutDir(const util::Path& root, std::string display) : display_(std::move(display)) {
    int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == ENOENT)
        throw Error(ErrorKind::kNotFound,
                    fmt::format("Failed to open {}: {} does not exist", display_, root.string()));
      throw_errno(fmt::format("Failed to open {}", display_), err);
    }
    root_.reset(fd);
    util::UniqueFd layout_fd =
        open_in(root_.get(), "oci-layout", O_RDONLY, display_ + "/oci-layout");
    check_layout_version(read_fd(layout_fd.get(), kMaxLayoutFileBytes, display_ + "/oci-layout"),
                         display_);
    util::UniqueFd index_fd =
        open_in(root_.get(), "index.json", O_RDONLY, display_ + "/index.json");
    index_bytes_ = read_fd(index_fd.get(), kMaxManifestBytes, display_ + "/index.json");
    try {
      index_ = Index::parse(index_bytes_);
    } catch (const Error& e) {
      throw Error(e.kind(), fmt::format("Failed to read {}/index.json: {}", display_, e.what()));
    }
  }

  const Index& index() const { return index_; }
  const std::string& index_bytes() const { return index_bytes_; }
  const std::string& display() const { return display_; }

  // The blob's file, checked to be a regular file of the descriptor's size.
  util::UniqueFd open_blob(const Descriptor& d) const {
    std::string what = fmt::format("blob {} of {}", d.digest.str(), display_);
    // The digest grammar (checked when the descriptor was parsed) admits [a-z0-9] only, so
    // these names cannot climb out; O_NOFOLLOW on each step refuses symlinks.
    util::UniqueFd blobs = open_in(root_.get(), "blobs", O_RDONLY | O_DIRECTORY, what);
    util::UniqueFd alg = open_in(blobs.get(), d.digest.algorithm(), O_RDONLY | O_DIRECTORY, what);
    util::UniqueFd fd = open_in(alg.get(), d.digest.hex(), O_RDONLY, what);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw_errno("Failed to stat " + what, errno);
    if (!S_ISREG(st.st_mode))
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to open {}: not a regular file", what));
    if (st.st_size != d.size)
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to verify {}: {} bytes, its descriptor declares {}", what,
                              st.st_size, d.size));
    return fd;
  }

  // A manifest or index blob, verified against its descriptor.
  std::string read_document(const Descriptor& d) const {
    std::string what = fmt::format("blob {} of {}", d.digest.str(), display_);
    if (d.digest.algorithm() != "sha256")
      throw Error(ErrorKind::kUnsupported,
                  fmt::format("Failed to verify {}: {} digests are not supported", what,
                              d.digest.algorithm()));
    util::UniqueFd fd = open_blob(d);
    std::string bytes = read_fd(fd.get(), kMaxManifestBytes, what);
    if (Digest actual = Digest::sha256_of(bytes); actual != d.digest)
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to verify {}: content hashes to {}", what, actual.str()));
    return bytes;
  }

 private:
  util::UniqueFd root_;
  std::string display_;
  std::string index_bytes_;
  Index index_;
};

// The tags of a layout, sorted, for messages.
std::string tags_of(const Index& index) {
  std::vector<std::string> tags;
  for (const auto& d : index.manifests)
    if (auto it = d.annotations.find(std::string(kRefName)); it != d.annotations.end())
      tags.push_back(it->second);
  std::sort(tags.begin(), tags.end());
  std::string out;
  for (const auto& t : tags) out += (out.empty() ? "" : ", ") + t;
  return out.empty() ? "none" : out;
}

// Extracts an oci-archive into `dir`, admitting only what an OCI layout holds: directories
// blobs and blobs/<alg>, files oci-layout, index.json and blobs/<alg>/<hex> with a valid digest.
void extract_layout_archive(const util::Path& file, const util::Path& dir,
                            const std::string& display) {
  layout::TarReader reader(file, display);
  std::uint64_t total = 0;
  std::vector<char> buf(1 << 20);
  while (archive_entry* e = reader.next()) {
    const char* raw = archive_entry_pathname(e);
    std::string shown = raw ? raw : "";
    auto refuse = [&](std::string_view why) {
      throw Error(ErrorKind::kInvalidInput, fmt::format("Failed to read {}: entry \"{}\" {}",
                                                        display, shown.substr(0, 200), why));
    };
    std::optional<std::string> name = layout::normalize_member_name(shown);
    auto type = archive_entry_filetype(e);
    if (!name) {
      bool root = shown.find_first_not_of("./") == std::string::npos &&
                  shown.find("..") == std::string::npos;
      if (type == AE_IFDIR && root) continue;  // the archive's own root, "./"
      refuse("leaves the archive");
    }
    if (archive_entry_hardlink(e)) refuse("is a hardlink, which an OCI layout must not hold");
    if (type == AE_IFLNK) refuse("is a symlink, which an OCI layout must not hold");
    if (type != AE_IFDIR && type != AE_IFREG) refuse("is neither a regular file nor a directory");
    std::vector<std::string> parts;
    for (std::size_t s = 0;;) {
      std::size_t p = name->find('/', s);
      parts.push_back(name->substr(s, p == std::string::npos ? std::string::npos : p - s));
      if (p == std::string::npos) break;
      s = p + 1;
    }
    bool alg_ok =
        parts.size() >= 2 && parts[0] == "blobs" && (parts[1] == "sha256" || parts[1] == "sha512");
    if (type == AE_IFDIR) {
      if (!(parts == std::vector<std::string>{"blobs"} || (alg_ok && parts.size() == 2)))
        refuse("is a directory that does not belong in an OCI layout");
      util::make_dirs(dir / *name);
      continue;
    }
    bool top = parts.size() == 1 && (parts[0] == "oci-layout" || parts[0] == "index.json");
    bool blob =
        alg_ok && parts.size() == 3 && Digest::try_parse(parts[1] + ":" + parts[2]).has_value();
    if (!top && !blob) refuse("is a file that does not belong in an OCI layout");
    std::int64_t size = archive_entry_size(e);
    if (size < 0) refuse("has a negative size");
    if (top && static_cast<std::uint64_t>(size) > kMaxManifestBytes)
      refuse("is larger than the manifest limit");
    total += static_cast<std::uint64_t>(size);
    if (total > layout::kMaxArchiveBytes)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read {}: more than {} bytes of content", display,
                              layout::kMaxArchiveBytes));
    if (blob) util::make_dirs(dir / parts[0] / parts[1]);
    util::Path out_path = dir / *name;
    int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST) refuse("appears twice");
    if (fd < 0) throw_errno("Failed to create " + out_path.string(), errno);
    util::UniqueFd out(fd);
    std::uint64_t written = 0;
    while (std::size_t n = reader.read(std::as_writable_bytes(std::span(buf)))) {
      util::write_all(out.get(), std::string_view(buf.data(), n), out_path.string());
      written += n;
    }
    if (written != static_cast<std::uint64_t>(size)) refuse("is truncated");
  }
}

class OciLayoutSource final : public ImageSource {
 public:
  OciLayoutSource(std::string display, std::optional<util::TempDir> scratch, const util::Path& root,
                  const std::string& tag)
      : scratch_(std::move(scratch)), dir_(root, display) {
    const Index& index = dir_.index();
    std::vector<const Descriptor*> matches;
    for (const auto& d : index.manifests) {
      auto it = d.annotations.find(std::string(kRefName));
      if (tag.empty() || (it != d.annotations.end() && it->second == tag)) matches.push_back(&d);
    }
    if (tag.empty() && matches.size() != 1)
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format(
              "Failed to choose an image in {}: it holds {} images; name one by tag (tags: {})",
              display, matches.size(), tags_of(index)));
    if (matches.empty())
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to find tag \"{}\" in {}: the layout has tags: {}", tag,
                              display, tags_of(index)));
    entry_ = *matches.back();  // the spec leaves duplicates open; the last written wins
  }

  std::string name() const override { return dir_.display(); }
  RawDocument top_document() override { return {dir_.read_document(entry_), entry_.media_type}; }
  RawDocument document(const Descriptor& d) override {
    return {dir_.read_document(d), d.media_type};
  }

  void fetch_blob(const Descriptor& d, BlobStore& store, const ProgressFn& progress) override {
    std::string what = fmt::format("blob {} of {}", d.digest.str(), dir_.display());
    util::UniqueFd fd = dir_.open_blob(d);
    auto total = static_cast<std::uint64_t>(d.size);
    if (progress) progress({ProgressEvent::Kind::kBlobStart, what, 0, total});
    BlobStore::Writer writer = store.begin(d.digest, total);
    layout::copy_fd_to_store(fd.get(), writer, what);
    writer.commit(what);
    if (progress) progress({ProgressEvent::Kind::kBlobDone, what, total, total});
  }

 private:
  std::optional<util::TempDir> scratch_;  // the extracted oci-archive, removed with the source
  LayoutDir dir_;
  Descriptor entry_;
};

// What a layout destination writes: the manifest (converted to OCI media types when it was a
// Docker one, so umoci and other OCI-only readers accept it) and the blobs it references.
struct LayoutPlan {
  std::string manifest_bytes;
  Descriptor entry;               // the index.json entry
  std::vector<Descriptor> blobs;  // config and layers, each once
};

LayoutPlan plan_layout(const ResolvedImage& image, const BlobStore& store, const std::string& tag,
                       const std::string& display) {
  LayoutPlan plan;
  if (is_docker_media_type(image.manifest.media_type))
    plan.manifest_bytes = image.manifest.to_oci().to_json();
  else
    plan.manifest_bytes = image.manifest_doc.bytes;
  plan.entry.media_type = std::string(media_type::kOciManifest);
  plan.entry.digest = Digest::sha256_of(plan.manifest_bytes);
  plan.entry.size = static_cast<std::int64_t>(plan.manifest_bytes.size());
  if (!tag.empty()) plan.entry.annotations[std::string(kRefName)] = tag;
  std::map<Digest, Descriptor> seen;
  auto add = [&](const Descriptor& d, const std::string& what) {
    if (!store.has(d.digest))
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to write {}: {} is not in the blob cache", display, what));
    if (seen.emplace(d.digest, d).second) plan.blobs.push_back(d);
  };
  add(image.manifest.config, "the config " + image.manifest.config.digest.short_str());
  for (std::size_t i = 0; i < image.manifest.layers.size(); ++i)
    add(image.manifest.layers[i], image.layer_name(i));
  return plan;
}

std::string layout_file() {
  return json{{"imageLayoutVersion", kLayoutVersion}}.dump();
}

// Writes one blob into `root`/blobs via a temporary renamed into place, unless it is there.
void put_layout_blob(const util::Path& root, const Digest& digest, std::int64_t size,
                     const std::function<void(int)>& fill) {
  util::Path dir = root / "blobs" / digest.algorithm();
  util::make_dirs(dir);
  util::Path path = dir / digest.hex();
  struct stat st {};
  // Content-addressed: a regular file of the right size under this name is this blob.
  if (::lstat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size == size) return;
  util::TempFile tmp(path);
  fill(tmp.fd());
  ::fchmod(tmp.fd(), 0644);
  tmp.commit();
}

void write_layout_blobs(const util::Path& root, const LayoutPlan& plan, const BlobStore& store,
                        const std::string& display, const ProgressFn& progress) {
  for (const auto& d : plan.blobs) {
    std::string what = fmt::format("blob {} of {}", d.digest.str(), display);
    auto total = static_cast<std::uint64_t>(d.size);
    if (progress) progress({ProgressEvent::Kind::kBlobStart, what, 0, total});
    put_layout_blob(root, d.digest, d.size,
                    [&](int fd) { layout::copy_blob(store, d.digest, fd, what); });
    if (progress) progress({ProgressEvent::Kind::kBlobDone, what, total, total});
  }
  put_layout_blob(root, plan.entry.digest, plan.entry.size,
                  [&](int fd) { util::write_all(fd, plan.manifest_bytes, display); });
}

// index.json with `entry` added, replacing an entry of the same tag (or, untagged, of the same
// digest). Edits the JSON itself so fields pok8s does not model survive.
std::string updated_index(const std::string& old_bytes, const Descriptor& entry) {
  json j = json::parse(old_bytes);  // already validated by Index::parse
  json kept = json::array();
  auto tag_of = [](const json& d) -> std::string {
    auto a = d.find("annotations");
    if (a == d.end() || !a->is_object()) return {};
    auto r = a->find(std::string(kRefName));
    return r != a->end() && r->is_string() ? r->get<std::string>() : std::string();
  };
  std::string tag;
  if (auto it = entry.annotations.find(std::string(kRefName)); it != entry.annotations.end())
    tag = it->second;
  for (const auto& d : j["manifests"]) {
    std::string t = tag_of(d);
    bool same = tag.empty() ? (t.empty() && d.value("digest", "") == entry.digest.str()) : t == tag;
    if (!same) kept.push_back(d);
  }
  kept.push_back(entry.to_json());
  j["manifests"] = kept;
  return j.dump();
}

std::string fresh_index(const Descriptor& entry) {
  Index index;
  index.media_type = std::string(media_type::kOciIndex);
  index.manifests.push_back(entry);
  return index.to_json();
}

class OciLayoutDestination final : public ImageDestination {
 public:
  explicit OciLayoutDestination(ImageName name) : name_(std::move(name)) {}
  std::string name() const override { return name_.str(); }

  Digest write(const ResolvedImage& image, const BlobStore& store, const TransportOptions&,
               const ProgressFn& progress) override {
    LayoutPlan plan = plan_layout(image, store, name_.tag, name());
    if (name_.transport == Transport::kOciArchive) {
      write_archive(plan, store);
    } else {
      write_dir(plan, store, progress);
    }
    return plan.entry.digest;
  }

 private:
  void write_dir(const LayoutPlan& plan, const BlobStore& store, const ProgressFn& progress) {
    const util::Path& dir = name_.path;
    std::error_code ec;
    bool exists = std::filesystem::exists(std::filesystem::symlink_status(dir, ec));
    bool empty_dir =
        exists && std::filesystem::is_directory(dir, ec) && std::filesystem::is_empty(dir, ec);
    if (!exists || empty_dir) {
      // A new layout appears whole or not at all.
      util::TempDir tmp(dir);
      util::write_file_atomic(tmp.path() / "oci-layout", layout_file());
      util::make_dirs(tmp.path() / "blobs" / "sha256");
      write_layout_blobs(tmp.path(), plan, store, name(), progress);
      util::write_file_atomic(tmp.path() / "index.json", fresh_index(plan.entry));
      tmp.commit();
      return;
    }
    if (!std::filesystem::exists(dir / "oci-layout", ec))
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format(
              "Failed to write {}: {} exists and is not an OCI layout (it has no oci-layout file)",
              name(), dir.string()));
    LayoutDir existing(dir, name());  // validates oci-layout and index.json
    // Blobs first, index.json last: until the rename of index.json, readers see the old image.
    write_layout_blobs(dir, plan, store, name(), progress);
    util::write_file_atomic(dir / "index.json", updated_index(existing.index_bytes(), plan.entry));
  }

  void write_archive(const LayoutPlan& plan, const BlobStore& store) {
    std::vector<layout::TarMember> members;
    members.push_back({"oci-layout", false, layout_file(), {}, {}});
    members.push_back({"index.json", false, fresh_index(plan.entry), {}, {}});
    members.push_back({"blobs", true, {}, {}, {}});
    std::set<std::string> alg_dirs;
    auto blob_name = [](const Digest& d) { return "blobs/" + d.algorithm() + "/" + d.hex(); };
    for (const auto& d : plan.blobs) {
      alg_dirs.insert(d.digest.algorithm());
      members.push_back({blob_name(d.digest), false, {}, store.path_for(d.digest), d.digest});
    }
    alg_dirs.insert(plan.entry.digest.algorithm());
    members.push_back({blob_name(plan.entry.digest), false, plan.manifest_bytes, {}, {}});
    for (const auto& alg : alg_dirs) members.push_back({"blobs/" + alg, true, {}, {}, {}});
    util::TempFile tmp(name_.path);
    layout::write_tar(tmp.fd(), std::move(members), name());
    ::fchmod(tmp.fd(), 0644);
    tmp.commit();
  }

  ImageName name_;
};

}  // namespace

std::unique_ptr<ImageSource> open_oci_layout_source(const ImageName& name,
                                                    const TransportOptions&) {
  if (name.transport == Transport::kOciArchive) {
    util::TempDir scratch = util::TempDir::scratch();
    extract_layout_archive(name.path, scratch.path(), name.str());
    util::Path root = scratch.path();
    return std::make_unique<OciLayoutSource>(name.str(), std::move(scratch), root, name.tag);
  }
  return std::make_unique<OciLayoutSource>(name.str(), std::nullopt, name.path, name.tag);
}

std::unique_ptr<ImageDestination> open_oci_layout_destination(const ImageName& name,
                                                              const TransportOptions&) {
  if (name.transport != Transport::kOci && name.transport != Transport::kOciArchive)
    throw Error(ErrorKind::kInternal, "open_oci_layout_destination called for " + name.str());
  return std::make_unique<OciLayoutDestination>(name);
}

}  // namespace pok8s::oci
