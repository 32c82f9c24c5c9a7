// Making a base image from a root filesystem: a tree (dir:PATH) or a tarball becomes one
// gzip layer with a config and manifest, written through any image destination.
#pragma once

#include <optional>
#include <string>

#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"

namespace pok8s::rootfs {

struct ImportOptions {
  oci::Platform platform = oci::Platform::host();
  std::optional<std::int64_t> source_date_epoch;  // clamps mtimes and sets "created"
  std::map<std::string, std::string> labels;
};

// Builds a single-layer image from `source` (dir:PATH, or a path to a tar archive, any
// compression) into `store` and returns it resolved, ready for ImageDestination::write.
oci::ResolvedImage import_rootfs(const std::string& source, oci::BlobStore& store,
                                 const ImportOptions& options);

}  // namespace pok8s::rootfs
