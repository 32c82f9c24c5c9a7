// The flattened view of an image: the final tree after every layer and whiteout, with exact
// metadata, built from the layers' headers alone. File data is streamed from the layers on
// demand, so artifact builders can write squashfs, ext4 or cpio without unpacking and
// without root.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"
#include "pok8s/rootfs/layer_reader.h"

namespace pok8s::rootfs {

struct FlatEntry {
  std::string path;  // normalised, relative, no leading "./" or "/"; "" is the root
  // Type, mode, ownership, times, size, link target, xattrs (filtered as apply_layer does).
  // For a hardlink, link_target is the path in this tree of the entry holding the inode
  // (never itself a hardlink); meta.path stays the path in the archive.
  TarEntry meta;
  std::size_t layer = 0;          // the layer whose data this entry has (files)
  std::uint64_t entry_index = 0;  // its position in that layer (1 = first entry)
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

  // Streams each layer that holds data of the final tree once, in order, calling `fn` for
  // every regular file with a reader positioned at that file's data. Hardlinks are not
  // called back: they are entries() of type kHardlink naming the file that has the data.
  // Device nodes are kept in the view (an image builder can write them without root).
  void read_files(const std::function<void(const FlatEntry&, LayerReader&)>& fn) const;
  // As read_files, for the regular files at `paths` (entry paths; others are ignored) only:
  // layers holding none of them are not read, and each is read up to the last of them.
  void read_files(const std::set<std::string>& paths,
                  const std::function<void(const FlatEntry&, LayerReader&)>& fn) const;

 private:
  void read_wanted(const std::set<std::string>* paths,
                   const std::function<void(const FlatEntry&, LayerReader&)>& fn) const;
  std::vector<LayerBlob> layers_;
  Limits limits_;
  std::map<std::string, FlatEntry> entries_;
};

}  // namespace pok8s::rootfs
