// Layer blobs as tar entry streams: one libarchive reader undoes the compression (raw
// format, exactly one filter chosen from the magic bytes), a second parses tar from the
// bytes the first yields, and every byte between them is hashed and counted.
#include "pok8s/rootfs/layer_reader.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <exception>
#include <map>
#include <optional>
#include <string_view>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "pok8s/util/archive_filters.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::rootfs {

namespace {

constexpr std::size_t kBufferSize = 256u << 10;

enum class Compression { kNone, kGzip, kZstd };

// The compression of a blob, from its first bytes. Anything that is neither gzip nor zstd
// is handed to the tar parser as is, which refuses what is not tar.
Compression detect_compression(int fd, const std::string& what) {
  std::array<unsigned char, 6> magic{};
  ssize_t n;
  do {
    n = ::pread(fd, magic.data(), magic.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) throw_errno(fmt::format("Failed to read {}", what), errno);
  if (n >= 2 && magic[0] == 0x1f && magic[1] == 0x8b) return Compression::kGzip;
  if (n >= 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd)
    return Compression::kZstd;
  if (n >= 6 && std::memcmp(magic.data(),
                            "\xfd"
                            "7zXZ\0",
                            6) == 0)
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to read {}: xz-compressed layers are not supported", what));
  if (n >= 3 && std::memcmp(magic.data(), "BZh", 3) == 0)
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to read {}: bzip2-compressed layers are not supported", what));
  return Compression::kNone;
}

// libarchive falls back to spawning gzip/zstd when it was built without the library; a
// layer must never be handed to another program, so insist on the linked-in codec.
void require_builtin_codec(Compression c, const std::string& what) {
  // Asked once: libarchive rebuilds (and leaks) the string on every call.
  static const std::string details = archive_version_details();
  std::string_view needed = c == Compression::kGzip ? "zlib/" : "libzstd/";
  if (details.find(needed) == std::string::npos)
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to read {}: libarchive lacks built-in {} support ({})", what,
                            c == Compression::kGzip ? "gzip" : "zstd", details));
}

// Archive strings are raw bytes in the archive's encoding; prefer those, and fall back to
// the UTF-8 form when the C locale cannot represent a pax UTF-8 name.
const char* entry_string(const char* mbs, const char* utf8) {
  return mbs ? mbs : utf8;
}

}  // namespace

struct LayerReader::Impl {
  std::string what;
  Limits limits;
  util::UniqueFd fd;
  archive* outer = nullptr;
  archive* inner = nullptr;
  util::Sha256 hash;
  std::uint64_t expanded = 0;
  std::uint64_t entries = 0;
  std::exception_ptr callback_error;
  bool outer_eof = false;
  bool at_end = false;
  std::optional<oci::Digest> digest;
  // The current entry.
  bool has_entry = false;
  std::string entry_path;
  bool entry_is_file = false;
  std::uint64_t entry_size = 0;
  std::uint64_t entry_done = 0;

  ~Impl() {
    stop_producer();
    if (inner) archive_read_free(inner);
    if (outer) archive_read_free(outer);
  }

  std::string entry_context() const {
    return has_entry ? fmt::format("{}: entry \"{}\"", what, entry_path) : what;
  }

  // Decompression and hashing run on a producer thread, a few chunks ahead of the tar parser
  // and the writes it drives, so a layer unpacks on two cores the way `tar -xzf` does with
  // its gzip child. The chunks are handed over through a small bounded pool.
  static constexpr std::size_t kChunks = 4;
  struct Chunk {
    std::vector<std::byte> data = std::vector<std::byte>(kBufferSize);
    std::size_t size = 0;
  };
  std::array<Chunk, kChunks> chunks;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::size_t> free_chunks{0, 1, 2, 3};
  std::deque<std::size_t> filled;
  std::optional<std::size_t> lent;  // the chunk libarchive may still be reading
  std::exception_ptr producer_error;
  bool stop = false;
  std::thread producer;

  void account(const Chunk& c) {
    expanded += c.size;
    if (expanded > limits.max_layer_bytes)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read {}: it expands to more than the limit of {} bytes",
                              what, limits.max_layer_bytes));
    hash.update(std::span<const std::byte>(c.data.data(), c.size));
  }

  void produce() {
    try {
      while (true) {
        std::size_t idx;
        {
          std::unique_lock lock(mu);
          cv.wait(lock, [&] { return stop || !free_chunks.empty(); });
          if (stop) return;
          idx = free_chunks.front();
          free_chunks.pop_front();
        }
        Chunk& c = chunks[idx];
        la_ssize_t n = archive_read_data(outer, c.data.data(), c.data.size());
        if (n < 0)
          throw Error(ErrorKind::kFormat, fmt::format("Failed to decompress {}: {}", what,
                                                      util::archive_error_text(outer)));
        c.size = static_cast<std::size_t>(n);
        account(c);
        {
          std::lock_guard lock(mu);
          filled.push_back(idx);
        }
        cv.notify_all();
        if (n == 0) return;
      }
    } catch (...) {
      {
        std::lock_guard lock(mu);
        producer_error = std::current_exception();
      }
      cv.notify_all();
    }
  }

  void start() {
    if (!outer_eof) producer = std::thread([this] { produce(); });
  }

  void stop_producer() {
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    cv.notify_all();
    if (producer.joinable()) producer.join();
  }

  // The next chunk of the uncompressed stream; empty at its end. The chunk stays valid
  // until the next call.
  std::span<const std::byte> pull() {
    if (outer_eof) return {};
    std::unique_lock lock(mu);
    if (lent) {
      free_chunks.push_back(*lent);
      lent.reset();
      cv.notify_all();
    }
    cv.wait(lock, [&] { return !filled.empty() || producer_error; });
    if (filled.empty()) std::rethrow_exception(producer_error);
    std::size_t idx = filled.front();
    filled.pop_front();
    if (chunks[idx].size == 0) {
      outer_eof = true;
      lock.unlock();
      if (producer.joinable()) producer.join();
      return {};
    }
    lent = idx;
    return {chunks[idx].data.data(), chunks[idx].size};
  }

  static la_ssize_t read_callback(archive* a, void* client, const void** out) {
    auto* self = static_cast<Impl*>(client);
    // Exceptions must not cross libarchive's C frames: park it and rethrow on our side.
    try {
      std::span<const std::byte> chunk = self->pull();
      *out = chunk.data();
      return static_cast<la_ssize_t>(chunk.size());
    } catch (...) {
      self->callback_error = std::current_exception();
      archive_set_error(a, EIO, "layer stream failed");
      return -1;
    }
  }

  // Throws the parked callback error, else a format error with libarchive's reason.
  [[noreturn]] void fail(archive* a, const std::string& context) {
    if (callback_error) std::rethrow_exception(callback_error);
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read {}: {}", context, util::archive_error_text(a)));
  }
};

LayerReader::LayerReader(const util::Path& blob, std::string what, const Limits& limits)
    : impl_(std::make_unique<Impl>()), what_(std::move(what)) {
  Impl& s = *impl_;
  s.what = what_;
  s.limits = limits;
  int fd = ::open(blob.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno(fmt::format("Failed to open {} ({})", what_, blob.string()), errno);
  s.fd.reset(fd);
  Compression compression = detect_compression(fd, what_);

  s.outer = archive_read_new();
  if (!s.outer) throw Error(ErrorKind::kInternal, "Failed to allocate a libarchive reader");
  if (archive_read_support_format_raw(s.outer) != ARCHIVE_OK) s.fail(s.outer, what_);
  // append_filter (not support_filter) applies exactly one decoder and skips bidding, so a
  // gzip inside the gzip is data, not a second layer of compression.
  if (compression != Compression::kNone) {
    require_builtin_codec(compression, what_);
    int code = compression == Compression::kGzip ? ARCHIVE_FILTER_GZIP : ARCHIVE_FILTER_ZSTD;
    if (archive_read_append_filter(s.outer, code) != ARCHIVE_OK) s.fail(s.outer, what_);
  }
  if (archive_read_open_fd(s.outer, fd, kBufferSize) != ARCHIVE_OK) s.fail(s.outer, what_);
  archive_entry* raw_entry = nullptr;
  int r = archive_read_next_header(s.outer, &raw_entry);
  if (r == ARCHIVE_EOF) {
    s.outer_eof = true;
  } else if (r != ARCHIVE_OK) {
    s.fail(s.outer, what_);
  }

  s.inner = archive_read_new();
  if (!s.inner) throw Error(ErrorKind::kInternal, "Failed to allocate a libarchive reader");
  // Tar only (ustar, pax and GNU extensions) and no filters: the layer's one level of
  // compression was removed above.
  if (archive_read_support_format_tar(s.inner) != ARCHIVE_OK) s.fail(s.inner, what_);
  s.start();
  if (archive_read_open(s.inner, &s, nullptr, &Impl::read_callback, nullptr) != ARCHIVE_OK)
    s.fail(s.inner, what_);
}

LayerReader::~LayerReader() = default;

bool LayerReader::next(TarEntry& entry) {
  Impl& s = *impl_;
  if (s.at_end) return false;
  archive_entry* e = nullptr;
  int r = archive_read_next_header(s.inner, &e);
  if (r == ARCHIVE_EOF) {
    s.at_end = true;
    s.has_entry = false;
    return false;
  }
  // A warning is a charset or pax-attribute oddity; anything else (RETRY on a damaged
  // header, FATAL on truncation) is a broken layer.
  if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
    std::string context =
        s.has_entry ? fmt::format("{}: after entry \"{}\"", s.what, s.entry_path) : s.what;
    s.fail(s.inner, context);
  }
  s.has_entry = false;
  if (++s.entries > s.limits.max_entries)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read {}: more than the limit of {} entries", s.what,
                            s.limits.max_entries));

  const char* path = entry_string(archive_entry_pathname(e), archive_entry_pathname_utf8(e));
  if (!path || !*path)
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read {}: entry {} has no path", s.what, s.entries));
  std::size_t path_len = std::strlen(path);
  if (path_len > s.limits.max_path)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read {}: entry \"{}…\": its path of {} bytes exceeds the "
                            "limit of {}",
                            s.what, std::string_view(path, std::min<std::size_t>(path_len, 64)),
                            path_len, s.limits.max_path));
  entry = TarEntry{};
  entry.path.assign(path, path_len);
  s.entry_path = entry.path;
  s.has_entry = true;
  s.entry_is_file = false;
  s.entry_size = 0;
  s.entry_done = 0;

  auto check_target = [&](const char* target, const char* kind) {
    if (!target || !*target)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read {}: {} has no target", s.entry_context(), kind));
    std::size_t len = std::strlen(target);
    if (len > s.limits.max_path)
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format("Failed to read {}: its {} target of {} bytes exceeds the limit of {}",
                      s.entry_context(), kind, len, s.limits.max_path));
    entry.link_target.assign(target, len);
  };

  const char* hardlink = entry_string(archive_entry_hardlink(e), archive_entry_hardlink_utf8(e));
  if (hardlink) {
    entry.type = EntryType::kHardlink;
    check_target(hardlink, "hardlink");
  } else {
    switch (archive_entry_filetype(e)) {
      case AE_IFREG:
        entry.type = EntryType::kFile;
        break;
      case AE_IFDIR:
        entry.type = EntryType::kDirectory;
        break;
      case AE_IFLNK:
        entry.type = EntryType::kSymlink;
        check_target(entry_string(archive_entry_symlink(e), archive_entry_symlink_utf8(e)),
                     "symlink");
        break;
      case AE_IFCHR:
        entry.type = EntryType::kCharDevice;
        break;
      case AE_IFBLK:
        entry.type = EntryType::kBlockDevice;
        break;
      case AE_IFIFO:
        entry.type = EntryType::kFifo;
        break;
      default:
        throw Error(ErrorKind::kUnsupported,
                    fmt::format("Failed to read {}: entry type {:o} is not supported",
                                s.entry_context(), archive_entry_filetype(e)));
    }
  }

  if (entry.type == EntryType::kFile) {
    la_int64_t size = archive_entry_size(e);
    if (size < 0)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read {}: negative size {}", s.entry_context(), size));
    // Checked before a byte is written: the header alone cannot make us fill a disk.
    if (static_cast<std::uint64_t>(size) > s.limits.max_layer_bytes)
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format("Failed to read {}: its size of {} bytes exceeds the layer limit of {}",
                      s.entry_context(), size, s.limits.max_layer_bytes));
    entry.size = static_cast<std::uint64_t>(size);
    s.entry_is_file = true;
    s.entry_size = entry.size;
  }

  entry.mode = static_cast<std::uint32_t>(archive_entry_perm(e)) & 07777;
  la_int64_t uid = archive_entry_uid(e);
  la_int64_t gid = archive_entry_gid(e);
  // (uid_t)-1 means "leave unchanged" to chown(2); refuse it with everything out of range.
  if (uid < 0 || gid < 0 || uid >= 0xffffffffLL || gid >= 0xffffffffLL)
    throw Error(
        ErrorKind::kInvalidInput,
        fmt::format("Failed to read {}: owner {}:{} is out of range", s.entry_context(), uid, gid));
  entry.uid = static_cast<std::uint32_t>(uid);
  entry.gid = static_cast<std::uint32_t>(gid);
  entry.mtime_sec = archive_entry_mtime(e);
  entry.mtime_nsec = archive_entry_mtime_nsec(e);
  if (entry.mtime_nsec < 0 || entry.mtime_nsec > 999'999'999) entry.mtime_nsec = 0;
  if (entry.type == EntryType::kCharDevice || entry.type == EntryType::kBlockDevice) {
    entry.dev_major = static_cast<std::uint32_t>(archive_entry_rdevmajor(e));
    entry.dev_minor = static_cast<std::uint32_t>(archive_entry_rdevminor(e));
  }

  std::size_t xattr_bytes = 0;
  std::map<std::string, std::size_t> xattr_slot;  // name -> index in entry.xattrs
  archive_entry_xattr_reset(e);
  const char* name = nullptr;
  const void* value = nullptr;
  std::size_t size = 0;
  while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK) {
    if (!name) continue;
    std::string key(name);
    std::string val(static_cast<const char*>(value), size);
    // libarchive's pax writer records each xattr twice (LIBARCHIVE.xattr and SCHILY.xattr);
    // the reader hands both back. One name, one value: the last wins.
    auto [slot, fresh] = xattr_slot.try_emplace(key, entry.xattrs.size());
    if (!fresh) {
      auto& old = entry.xattrs[slot->second].second;
      xattr_bytes = xattr_bytes - old.size() + val.size();
      old = std::move(val);
    } else {
      xattr_bytes += key.size() + val.size();
    }
    if (xattr_bytes > s.limits.max_xattr_bytes)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read {}: its xattrs exceed the limit of {} bytes",
                              s.entry_context(), s.limits.max_xattr_bytes));
    if (fresh) entry.xattrs.emplace_back(std::move(key), std::move(val));
  }
  return true;
}

std::size_t LayerReader::read(std::span<std::byte> buffer) {
  Impl& s = *impl_;
  if (!s.has_entry || buffer.empty()) return 0;
  la_ssize_t n = archive_read_data(s.inner, buffer.data(), buffer.size());
  if (n < 0) s.fail(s.inner, s.entry_context());
  if (n == 0) {
    if (s.entry_is_file && s.entry_done != s.entry_size)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read {}: the header declares {} bytes, only {} follow",
                              s.entry_context(), s.entry_size, s.entry_done));
    return 0;
  }
  s.entry_done += static_cast<std::uint64_t>(n);
  if (s.entry_is_file && s.entry_done > s.entry_size)
    throw Error(
        ErrorKind::kFormat,
        fmt::format("Failed to read {}: more data than the header declares", s.entry_context()));
  return static_cast<std::size_t>(n);
}

std::uint64_t LayerReader::copy_to(int fd, const std::string& entry_name) {
  std::vector<std::byte> chunk(kBufferSize);
  std::uint64_t total = 0;
  while (std::size_t n = read(chunk)) {
    util::write_all(fd, std::span<const std::byte>(chunk.data(), n), entry_name);
    total += n;
  }
  return total;
}

oci::Digest LayerReader::finish() {
  Impl& s = *impl_;
  if (s.digest) return *s.digest;
  // Whatever the tar parser has not pulled (entries left unread, the padding after the end
  // marker) is still part of the diffID.
  while (!s.pull().empty()) {
  }
  s.digest = oci::Digest::sha256(s.hash.hex_digest());
  return *s.digest;
}

}  // namespace pok8s::rootfs

namespace pok8s::rootfs {

std::vector<std::string> split_entry_path(std::string_view path, std::string_view what) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= path.size()) {
    std::size_t slash = path.find('/', pos);
    if (slash == std::string_view::npos) slash = path.size();
    std::string_view part = path.substr(pos, slash - pos);
    pos = slash + 1;
    if (part.empty() || part == ".") continue;
    if (part == "..")
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to unpack {}: entry \"{}\": the path leaves the root through "
                              "\"..\"",
                              what, path));
    out.emplace_back(part);
  }
  return out;
}

std::string join_components(const std::vector<std::string>& components, std::size_t n) {
  std::string out;
  n = std::min(n, components.size());
  for (std::size_t i = 0; i < n; ++i) {
    if (i) out += '/';
    out += components[i];
  }
  return out;
}

Whiteout classify_whiteout(const std::vector<std::string>& components, std::string_view raw_path,
                           std::string_view what) {
  constexpr std::string_view kPrefix = ".wh.";
  constexpr std::string_view kMeta = ".wh..wh.";
  constexpr std::string_view kOpaque = ".wh..wh..opq";
  auto refuse = [&](std::string_view reason) {
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to unpack {}: entry \"{}\": {}", what, raw_path, reason));
  };
  for (std::size_t i = 0; i + 1 < components.size(); ++i)
    if (components[i].starts_with(kPrefix)) refuse("a whiteout name is used as a directory");
  if (components.empty() || !components.back().starts_with(kPrefix)) return {};
  const std::string& name = components.back();
  if (name == kOpaque) return {WhiteoutKind::kOpaque, {}};
  if (name.starts_with(kMeta)) return {WhiteoutKind::kIgnored, {}};
  std::string target = name.substr(kPrefix.size());
  if (target.empty() || target == "." || target == "..")
    refuse("the whiteout's target would leave its directory");
  return {WhiteoutKind::kRemove, std::move(target)};
}

bool keep_xattr(std::string_view name) {
  if (name == "security.capability") return true;
  return name.starts_with("user.") && !name.starts_with("user.pok8s.");
}

std::vector<std::string> split_link_target(std::string_view target) {
  std::vector<std::string> parts;
  for (std::size_t pos = 0; pos <= target.size();) {
    std::size_t slash = std::min(target.find('/', pos), target.size());
    parts.emplace_back(target.substr(pos, slash - pos));
    pos = slash + 1;
  }
  return parts;
}

bool has_path_below(const std::set<std::string>& paths, const std::string& path) {
  std::string prefix = path.empty() ? std::string() : path + "/";
  auto it = paths.lower_bound(prefix);
  if (path.empty()) return it != paths.end() && !it->empty();
  return it != paths.end() && it->starts_with(prefix);
}

}  // namespace pok8s::rootfs
