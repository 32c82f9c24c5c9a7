// Reading one layer blob as a stream of tar entries: decompressed in-process (gzip, zstd or
// none, detected from the bytes), the uncompressed stream hashed for its diffID, and every
// header checked against limits before anything is allocated or written.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pok8s/oci/digest.h"
#include "pok8s/util/file.h"

namespace pok8s::rootfs {

struct Limits {
  std::uint64_t max_layer_bytes = 64ull << 30;  // expanded bytes of one layer
  std::uint64_t max_entries = 4'000'000;        // entries in one layer
  std::size_t max_path = 4096;                  // bytes of a path or link target
  std::size_t max_xattr_bytes = 64u << 10;      // bytes of one entry's xattrs together
};

enum class EntryType { kFile, kDirectory, kSymlink, kHardlink, kCharDevice, kBlockDevice, kFifo };

struct TarEntry {
  std::string path;  // as in the archive (not yet normalised)
  EntryType type = EntryType::kFile;
  std::uint32_t mode = 0;  // permission bits incl. setuid/setgid/sticky
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::int64_t mtime_sec = 0;
  std::int64_t mtime_nsec = 0;
  std::uint64_t size = 0;   // bytes of data (regular files only)
  std::string link_target;  // symlink target (verbatim) or hardlink target (archive path)
  std::uint32_t dev_major = 0;
  std::uint32_t dev_minor = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;
};

class LayerReader {
 public:
  // `what` names the layer in every error ("layer 2/5 (sha256:…) of docker://…").
  LayerReader(const util::Path& blob, std::string what, const Limits& limits = {});
  ~LayerReader();
  LayerReader(const LayerReader&) = delete;
  LayerReader& operator=(const LayerReader&) = delete;

  // The next entry, or false at the end of the archive. Throws kFormat / kInvalidInput with
  // the layer and entry named.
  bool next(TarEntry& entry);
  // Reads the current entry's data; returns 0 at its end. A header that declares more data
  // than follows is an error.
  std::size_t read(std::span<std::byte> buffer);
  // Writes the current entry's data to `fd`; returns the bytes written.
  std::uint64_t copy_to(int fd, const std::string& entry_name);
  // Drains the stream to its end and returns the digest of the uncompressed bytes.
  oci::Digest finish();

  const std::string& what() const { return what_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string what_;
};

// Rules shared by apply_layer and FlatTree, so the unpacked tree and the flat view agree.

// The components of an archive path inside the root: leading "/" and "./" are stripped (the
// path is scoped inside the root), empty and "." components dropped. A ".." component is
// refused (kInvalidInput) rather than resolved: no legitimate layer needs one. Empty means
// the root itself. `what` names the layer in the error.
std::vector<std::string> split_entry_path(std::string_view path, std::string_view what);
// The first `n` components joined with "/" (all of them by default).
std::string join_components(const std::vector<std::string>& components,
                            std::size_t n = static_cast<std::size_t>(-1));

// True when `paths` (normalised, sorted) holds something strictly below `path` ("" is the
// root): the test an opaque whiteout uses to keep what the same layer created.
// The components of a symlink target split at every "/", empty ones and "." and ".." kept,
// for a resolver that walks them one by one.
std::vector<std::string> split_link_target(std::string_view target);

bool has_path_below(const std::set<std::string>& paths, const std::string& path);

// What an entry's name means under the OCI image spec's whiteout rules.
enum class WhiteoutKind {
  kNone,     // an ordinary entry
  kRemove,   // ".wh.NAME": hide NAME of lower layers
  kOpaque,   // ".wh..wh..opq": hide every lower-layer child of the directory
  kIgnored,  // other ".wh..wh.*" names: aufs bookkeeping with no meaning in OCI layers
};
struct Whiteout {
  WhiteoutKind kind = WhiteoutKind::kNone;
  std::string target;  // NAME for kRemove
};
// Classifies the entry at `components`; throws kInvalidInput for a whiteout whose target
// would leave its directory (".wh.", ".wh..", ".wh...") and for a whiteout name used as a
// directory ("a/.wh.b/c").
Whiteout classify_whiteout(const std::vector<std::string>& components, std::string_view raw_path,
                           std::string_view what);

// The xattrs pok8s carries from a layer into a tree: file capabilities and the user
// namespace. Everything else (security.selinux, trusted.*, system.* ACLs) describes the
// build host, not the image; user.pok8s.* is ours and never taken from a layer.
bool keep_xattr(std::string_view name);

}  // namespace pok8s::rootfs
