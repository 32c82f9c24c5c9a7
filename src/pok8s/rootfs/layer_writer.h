// Writing layers: a deterministic pax tar, gzipped in-process, hashed compressed (digest) and
// uncompressed (diffID) as it streams; from a whole directory tree, or from what changed in a
// tree since a snapshot (the layer a conversion adds on top of its base).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/digest.h"
#include "pok8s/oci/image.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

struct archive;
struct archive_entry;

namespace pok8s::rootfs {

// The blob and diffID of a layer just written.
struct LayerBlobInfo {
  oci::Digest digest = oci::Digest::sha256_of("");
  oci::Digest diff_id = oci::Digest::sha256_of("");
  std::uint64_t size = 0;
};

// Two libarchive writers in a chain: a pax tar whose bytes are hashed for the diffID, fed into
// a raw writer with the gzip filter whose output is hashed for the digest and written to a file.
// C callbacks cannot carry exceptions through libarchive, so failures are parked and rethrown.
class LayerWriter {
 public:
  LayerWriter(int out_fd, std::string what);
  LayerWriter(const LayerWriter&) = delete;
  LayerWriter& operator=(const LayerWriter&) = delete;
  // A layer abandoned on an error is not worth flushing: the callbacks drop what they get.
  ~LayerWriter();

  void header(archive_entry* e);
  void data(const void* buf, std::size_t n, std::string_view entry);
  LayerBlobInfo finish();

 private:
  struct WriteFree {
    void operator()(archive* a) const;
  };
  [[noreturn]] void fail(archive* a, const std::string& step);
  static long on_tar(archive*, void* self_ptr, const void* buf, std::size_t n);
  static long on_gzip(archive*, void* self_ptr, const void* buf, std::size_t n);

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
  std::unique_ptr<archive, WriteFree> gz_;
  std::unique_ptr<archive, WriteFree> tar_;
};

// What a tree looked like: every path with what tells whether it was touched since. The
// change time moves on any write, chmod, chown or xattr change, but only at the kernel's
// clock tick, so the cheap fields that a quick change alters are compared too.
struct TreeStamp {
  ino_t inode = 0;
  std::int64_t ctime_ns = 0;
  std::int64_t mtime_ns = 0;
  std::uint64_t size = 0;
  std::uint32_t mode = 0;  // type and permissions
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  bool directory() const;
  friend bool operator==(const TreeStamp&, const TreeStamp&) = default;
};
using TreeSnapshot = std::map<std::string, TreeStamp>;

TreeSnapshot snapshot_tree(const util::Path& root);

struct TreeLayerOptions {
  std::optional<std::int64_t> source_date_epoch;  // clamps mtimes
  // With a snapshot, only what changed since goes in: new and touched entries, whiteouts for
  // what disappeared, and an opaque marker in a directory that was replaced.
  const TreeSnapshot* since = nullptr;
};

// Walks `root` in sorted order, never following symlinks, into `out`.
void write_tree(LayerWriter& out, const util::Path& root, const TreeLayerOptions& options);

// Writes `root` (or its changes) as a gzip layer into `store`; `what` names it in errors.
LayerBlobInfo write_tree_layer(const util::Path& root, oci::BlobStore& store,
                               const std::string& what, const TreeLayerOptions& options);

// The image made of `manifest`'s layers plus `layer` (a gzip layer already in `store`) with the
// config `config_bytes`, which is stored: what import and convert return to be written out.
oci::ResolvedImage image_with_layer(oci::Manifest manifest, std::string config_bytes,
                                    const LayerBlobInfo& layer, oci::BlobStore& store,
                                    std::string source_name);

// Only file capabilities and user attributes describe the image; security.selinux and
// trusted.* belong to the host the tree was made on.
bool keep_xattr(std::string_view name);
void clamp_mtime(archive_entry* e, const std::optional<std::int64_t>& epoch);

}  // namespace pok8s::rootfs
