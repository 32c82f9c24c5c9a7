// Applying layers to a directory so that a hostile image cannot reach outside it: every path
// resolved inside the root by descriptor (openat2 RESOLVE_IN_ROOT), final components never
// followed, whiteouts per the OCI image spec.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"
#include "pok8s/rootfs/layer_reader.h"
#include "pok8s/util/file.h"

namespace pok8s::rootfs {

// The kernel's limit on symlinks followed in one lookup (MAXSYMLINKS); every path walk over a
// layer tree keeps to it.
inline constexpr int kMaxSymlinks = 40;

struct ApplyOptions {
  Limits limits;
  bool devices = false;                // create device nodes (only honoured as root)
  std::optional<bool> keep_ownership;  // default: when running as root
};

struct ApplyStats {
  std::uint64_t entries = 0;
  std::uint64_t files = 0;
  std::uint64_t directories = 0;
  std::uint64_t symlinks = 0;
  std::uint64_t hardlinks = 0;
  std::uint64_t whiteouts = 0;
  std::uint64_t devices_skipped = 0;
  std::uint64_t xattrs_dropped = 0;
  std::uint64_t bytes = 0;  // file data written
  ApplyStats& operator+=(const ApplyStats& o);
};

// Applies one layer blob onto the tree open at `root_fd`. Verifies the uncompressed stream
// against `diff_id` when given. `what` names the layer in errors.
ApplyStats apply_layer(int root_fd, const util::Path& blob, const std::string& what,
                       const std::optional<oci::Digest>& diff_id, const ApplyOptions& options);

// Unpacks all layers of `image` (already in `store`) into a new directory `dest`, which must
// not exist or be empty. Works in a hidden sibling and renames at the end, so a failure
// leaves no `dest` behind.
ApplyStats unpack_image(const oci::ResolvedImage& image, const oci::BlobStore& store,
                        const util::Path& dest, const ApplyOptions& options);

}  // namespace pok8s::rootfs
