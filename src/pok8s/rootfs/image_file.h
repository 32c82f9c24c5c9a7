// Reading one file (such as /etc/os-release) out of an image's final tree without unpacking
// it: symlinks are resolved inside the image, the data read from the layer that provides it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "pok8s/rootfs/flat_tree.h"

namespace pok8s::rootfs {

// The contents of `path` in the image, or nullopt when it is absent or not a regular file.
// Symlinks (absolute ones too) are resolved inside the image, at most 40 of them.
std::optional<std::string> read_image_file(const FlatTree& tree,
                                           const std::vector<LayerBlob>& layers,
                                           const std::string& path, std::uint64_t limit = 1u << 20);

// The layers of a resolved image as the flat view reads them.
std::vector<LayerBlob> layer_blobs(const oci::ResolvedImage& image, const oci::BlobStore& store);

// Parses os-release KEY=value lines (quotes and escapes per os-release(5)).
std::map<std::string, std::string> parse_os_release(const std::string& text);

}  // namespace pok8s::rootfs
