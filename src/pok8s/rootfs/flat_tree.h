// The flattened view of an image: the final tree after every layer and whiteout, with exact
// metadata, built from the layers' headers alone. File data is streamed from the layers on
// demand, so artifact builders can write squashfs, ext4 or cpio without unpacking and
// without root.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"
#include "pok8s/rootfs/layer_reader.h"

namespace pok8s::rootfs {

struct FlatEntry {
  std::string path;  // normalised, relative, no leading "./" or "/"; "" is the root
  TarEntry meta;     // type, mode, ownership, times, size, link target, xattrs (filtered)
  std::size_t layer = 0;  // the layer whose data this entry has (files)
};

// One layer as the flat view reads it.
struct LayerBlob {
  util::Path path;
  std::string what;
  std::optional<oci::Digest> diff_id;
};

class FlatTree {
 public:
  // Reads the headers of every layer in order and applies them (whiteouts, opaque
  // directories, replacement) to an in-memory tree. The same refusals as apply_layer.
  static FlatTree build(const std::vector<LayerBlob>& layers, const Limits& limits = {});
  static FlatTree build(const oci::ResolvedImage& image, const oci::BlobStore& store,
                        const Limits& limits = {});

  // Every entry of the final tree, ordered by path (parents before children).
  const std::map<std::string, FlatEntry>& entries() const { return entries_; }

  // Streams each layer once, in order, calling `fn` for every regular file of the final tree
  // with a reader positioned at that file's data (hardlinks are reported as their own
  // entries with meta.type == kHardlink and no data).
  void read_files(const std::function<void(const FlatEntry&, LayerReader&)>& fn) const;

 private:
  std::vector<LayerBlob> layers_;
  Limits limits_;
  std::map<std::string, FlatEntry> entries_;
};

}  // namespace pok8s::rootfs
