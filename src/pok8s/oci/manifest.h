// The documents of an image: descriptors, manifests, indexes and configs, in both the OCI
// and the Docker v2 schema 2 media types, parsed strictly from untrusted bytes.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/oci/digest.h"

namespace pok8s::oci {

namespace media_type {
inline constexpr std::string_view kOciManifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr std::string_view kOciIndex = "application/vnd.oci.image.index.v1+json";
inline constexpr std::string_view kOciConfig = "application/vnd.oci.image.config.v1+json";
inline constexpr std::string_view kOciLayer = "application/vnd.oci.image.layer.v1.tar";
inline constexpr std::string_view kOciLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip";
inline constexpr std::string_view kOciLayerZstd = "application/vnd.oci.image.layer.v1.tar+zstd";
inline constexpr std::string_view kOciLayerNondistGzip =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
inline constexpr std::string_view kDockerManifest =
    "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr std::string_view kDockerManifestList =
    "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr std::string_view kDockerConfig = "application/vnd.docker.container.image.v1+json";
inline constexpr std::string_view kDockerLayerGzip =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";
inline constexpr std::string_view kDockerLayerForeignGzip =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
inline constexpr std::string_view kDockerLayerTar = "application/vnd.docker.image.rootfs.diff.tar";
}  // namespace media_type

// Limits on documents read from untrusted sources.
inline constexpr std::uint64_t kMaxManifestBytes = 4u << 20;
inline constexpr std::uint64_t kMaxConfigBytes = 8u << 20;
inline constexpr std::size_t kMaxLayers = 1000;
inline constexpr std::size_t kMaxIndexEntries = 1000;

struct Platform {
  std::string os;
  std::string architecture;
  std::string variant;

  // "linux/amd64", "linux/arm64/v8"; throws kInvalidInput.
  static Platform parse(std::string_view text);
  // The platform of this machine ("linux/amd64" on x86-64).
  static Platform host();
  std::string str() const;
  // True if `candidate` (from an index) satisfies this wanted platform; an empty variant
  // matches any (with arm64 treating "" and "v8" alike).
  bool matches(const Platform& candidate) const;
  bool operator==(const Platform&) const = default;
};

struct Descriptor {
  std::string media_type;
  Digest digest = Digest::sha256_of("");
  std::int64_t size = 0;
  std::optional<Platform> platform;
  std::map<std::string, std::string> annotations;
  std::vector<std::string> urls;

  // `where` names the document and field for error messages.
  static Descriptor from_json(const nlohmann::json& j, std::string_view where);
  nlohmann::json to_json() const;
};

enum class LayerCompression { kNone, kGzip, kZstd };

// The compression a layer media type declares; throws kUnsupported for non-layer types.
LayerCompression layer_compression(std::string_view media_type);
// True for Docker media types (manifest, list, config, layers).
bool is_docker_media_type(std::string_view media_type);

struct Manifest {
  std::string media_type;  // kOciManifest or kDockerManifest (resolved even when absent)
  Descriptor config;
  std::vector<Descriptor> layers;
  std::map<std::string, std::string> annotations;

  // Parses an image manifest; `content_type` is what the transport said (may be empty).
  // Refuses indexes, schema 1, unknown media types and any layer or config descriptor whose
  // media type does not belong in that slot.
  static Manifest parse(std::string_view bytes, std::string_view content_type = {});
  // Serialises with the manifest's own media type (stable key order).
  std::string to_json() const;
  // The same image as an OCI manifest (media types mapped; config and layers unchanged).
  Manifest to_oci() const;
};

struct Index {
  std::string media_type;  // kOciIndex or kDockerManifestList
  std::vector<Descriptor> manifests;
  std::map<std::string, std::string> annotations;

  static Index parse(std::string_view bytes, std::string_view content_type = {});
  std::string to_json() const;
  // The entry for `wanted`; throws kNotFound listing the platforms the index has.
  const Descriptor& select(const Platform& wanted) const;
};

enum class DocumentKind { kManifest, kIndex };

// Tells a manifest from an index by the content type, then the mediaType field, then the
// shape of the document; throws kFormat for anything else (schema 1 included).
DocumentKind classify_document(std::string_view bytes, std::string_view content_type = {});

struct ImageConfig {
  Platform platform;
  std::vector<Digest> diff_ids;
  std::map<std::string, std::string> labels;
  std::string created;
  std::vector<std::string> env;
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::string working_dir;
  std::string user;
  nlohmann::json raw;  // the whole document, for fields pok8s does not model

  static ImageConfig parse(std::string_view bytes);
};

}  // namespace pok8s::oci
