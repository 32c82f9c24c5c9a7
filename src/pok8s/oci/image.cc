// Resolving, fetching and copying images across transports.
#include "pok8s/oci/image.h"

#include <fmt/format.h>

#include <mutex>
#include <vector>

#include "pok8s/util/error.h"
#include "pok8s/util/parallel.h"

namespace pok8s::oci {

std::string ResolvedImage::layer_name(std::size_t i) const {
  std::string digest = i < manifest.layers.size() ? manifest.layers[i].digest.short_str() : "?";
  return fmt::format("layer {}/{} ({}) of {}", i + 1, manifest.layers.size(), digest, source_name);
}

std::unique_ptr<ImageSource> open_source(const ImageName& name, const TransportOptions& options) {
  switch (name.transport) {
    case Transport::kDocker:
      return open_registry_source(name, options);
    case Transport::kOci:
    case Transport::kOciArchive:
      return open_oci_layout_source(name, options);
    case Transport::kDockerArchive:
      return open_docker_archive_source(name, options);
    case Transport::kDir:
      break;
  }
  throw Error(
      ErrorKind::kUnsupported,
      fmt::format(
          "Cannot read an image from {}: a dir: tree becomes an image with `pok8s image import`",
          name.str()));
}

std::unique_ptr<ImageDestination> open_destination(const ImageName& name,
                                                   const TransportOptions& options) {
  switch (name.transport) {
    case Transport::kDocker:
      return open_registry_destination(name, options);
    case Transport::kOci:
    case Transport::kOciArchive:
      return open_oci_layout_destination(name, options);
    case Transport::kDockerArchive:
      return open_docker_archive_destination(name, options);
    case Transport::kDir:
      break;
  }
  throw Error(
      ErrorKind::kUnsupported,
      fmt::format("Cannot write an image to {}: use `pok8s image unpack` to make a root tree",
                  name.str()));
}

ResolvedImage resolve_image(ImageSource& source, BlobStore& store,
                            const std::optional<Platform>& platform) {
  ResolvedImage img;
  img.source_name = source.name();
  RawDocument top = source.top_document();
  if (classify_document(top.bytes, top.media_type) == DocumentKind::kIndex) {
    Index index = Index::parse(top.bytes, top.media_type);
    const Descriptor& chosen = index.select(platform.value_or(Platform::host()));
    img.manifest_doc = source.document(chosen);
    if (img.manifest_doc.digest() != chosen.digest)
      throw Error(
          ErrorKind::kSignature,
          fmt::format("Failed to verify the manifest of {}: it hashes to {}, the index says {}",
                      img.source_name, img.manifest_doc.digest().str(), chosen.digest.str()));
    if (img.manifest_doc.media_type.empty()) img.manifest_doc.media_type = chosen.media_type;
    img.index = std::move(top);
  } else {
    img.manifest_doc = std::move(top);
  }
  try {
    img.manifest = Manifest::parse(img.manifest_doc.bytes, img.manifest_doc.media_type);
  } catch (const Error& e) {
    throw Error(e.kind(), fmt::format("{} (in {})", e.what(), img.source_name));
  }
  if (img.manifest_doc.media_type.empty()) img.manifest_doc.media_type = img.manifest.media_type;
  const Descriptor& cfg = img.manifest.config;
  if (!store.has(cfg.digest)) source.fetch_blob(cfg, store, {});
  img.config_bytes = store.read(cfg.digest, kMaxConfigBytes);
  try {
    img.config = ImageConfig::parse(img.config_bytes);
  } catch (const Error& e) {
    throw Error(e.kind(), fmt::format("{} (in {})", e.what(), img.source_name));
  }
  if (img.config.diff_ids.size() != img.manifest.layers.size())
    throw Error(
        ErrorKind::kFormat,
        fmt::format("Invalid image {}: the manifest lists {} layers, the config {} diff_ids",
                    img.source_name, img.manifest.layers.size(), img.config.diff_ids.size()));
  if (platform && !platform->matches(img.config.platform))
    throw Error(ErrorKind::kNotFound, fmt::format("Image {} is for {}, not {}", img.source_name,
                                                  img.config.platform.str(), platform->str()));
  return img;
}

void fetch_layers(ImageSource& source, const ResolvedImage& image, BlobStore& store,
                  const TransportOptions& options, const ProgressFn& progress) {
  const auto& layers = image.manifest.layers;
  std::mutex mu;
  auto report = [&](const ProgressEvent& ev) {
    if (!progress) return;
    std::lock_guard lock(mu);
    progress(ev);
  };
  util::parallel_for(layers.size(), options.jobs, [&](std::size_t i) {
    const Descriptor& d = layers[i];
    if (store.has(d.digest)) {
      report({ProgressEvent::Kind::kBlobCached, image.layer_name(i),
              static_cast<std::uint64_t>(d.size), static_cast<std::uint64_t>(d.size)});
      return;
    }
    source.fetch_blob(d, store, report);
  });
}

CopyResult copy_image(const ImageName& from, const ImageName& to, BlobStore& store,
                      const TransportOptions& options, const std::optional<Platform>& platform,
                      const ProgressFn& progress) {
  auto source = open_source(from, options);
  auto destination = open_destination(to, options);
  ResolvedImage image = resolve_image(*source, store, platform);
  fetch_layers(*source, image, store, options, progress);
  Digest written = destination->write(image, store, options, progress);
  CopyResult result{written, image.manifest.layers.size(), 0};
  for (const auto& l : image.manifest.layers) result.bytes += static_cast<std::uint64_t>(l.size);
  return result;
}

}  // namespace pok8s::oci
