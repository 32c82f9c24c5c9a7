// `pok8s build --artifact iso`: a converted image becomes a hybrid live ISO (UEFI GRUB and BIOS
// El Torito, label COS_LIVE) holding the kernel, pok8s's initramfs, the squashfs rootfs and the
// cloud-config. Each step is cached by a key derived from its inputs, so changing only the
// cloud-config rebuilds only the ISO.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/image/squashfs.h"
#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"
#include "pok8s/util/file.h"

namespace pok8s::build {

struct LiveIsoOptions {
  util::Path output_dir;                   // receives <name>.iso and <name>.manifest.json
  std::optional<util::Path> cloud_config;  // validated, then /config.yaml on the ISO
  image::SquashfsCompression compression = image::SquashfsCompression::kZstd;
  // Unset: zstd at level 9, else the codec's default. With 1 MiB blocks, zstd 9 makes a smaller
  // Debian rootfs than mksquashfs's defaults (128 KiB, zstd 15) with a sixth of the CPU time
  // (docs/benchmarks.md).
  std::optional<int> compression_level;
  std::uint32_t block_size = 1u << 20;
  std::optional<std::int64_t> source_date_epoch;  // default: the image's creation time
  util::Path cache_dir;                           // step results; default: the blob store's
  std::string volume_label = "COS_LIVE";
  // The build spec this ISO was made from, if any: its id and canonical form go into the
  // manifest.
  std::string spec_id;
  nlohmann::json spec;
  std::function<void(std::string_view)> log;  // one line per step
  // Progress of the long steps: step name, bytes done, bytes total.
  std::function<void(std::string_view, std::uint64_t, std::uint64_t)> progress;
};

struct BuiltArtifact {
  std::string name;  // file name in output_dir
  std::uint64_t size = 0;
  std::string sha256;
};

struct LiveIsoResult {
  std::string build_id;  // hashes every input: image, options, cloud-config, tool versions
  std::vector<BuiltArtifact> artifacts;
  util::Path manifest;  // <name>.manifest.json
  std::string kernel_version;
  bool rootfs_cached = false;
  bool initramfs_cached = false;
};

// Builds the live ISO of `image` (a converted image whose blobs are in `store`).
LiveIsoResult build_live_iso(const oci::ResolvedImage& image, oci::BlobStore& store,
                             const LiveIsoOptions& options);

// The base name of the artifacts: <flavor>-<release>-<variant>-<arch>-<model>-<version>, from
// the image's io.pok8s.* labels.
std::string artifact_base_name(const oci::ResolvedImage& image);

}  // namespace pok8s::build
