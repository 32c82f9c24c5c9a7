// The mapping from the spec's fields to the convert and live ISO options is all here, so the
// CLI and the service cannot drift apart.
#include "pok8s/build/spec_build.h"

#include <fmt/format.h>

#include "pok8s/util/error.h"

namespace pok8s::build {

void check_buildable(const config::BuildSpec& spec) {
  auto reasons = config::unbuildable(spec);
  if (reasons.empty()) return;
  std::string joined;
  for (const auto& r : reasons) joined += (joined.empty() ? "" : "; ") + r;
  throw Error(ErrorKind::kUnsupported,
              fmt::format("Failed to build {}: {}", spec.source.empty() ? "the spec" : spec.source,
                          joined));
}

SpecIdentity identify_spec(const config::BuildSpec& spec, const oci::ResolvedImage& base,
                           std::string_view tool_version) {
  SpecIdentity id;
  id.canonical = config::canonical_spec(spec, base.manifest_digest().str(), tool_version);
  id.id = config::build_id(id.canonical);
  return id;
}

bool spec_needs_conversion(const config::BuildSpec& spec, const oci::ResolvedImage& base) {
  if (!convert::is_converted(base)) return true;
  auto refuse = [&](std::string_view field, std::string_view why) {
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to build {}: {}: {} is already a pok8s image, {}", spec.source,
                            field, spec.base, why));
  };
  const auto& labels = base.config.labels;
  auto label = [&](const char* key) {
    auto it = labels.find(key);
    return it == labels.end() ? std::string() : it->second;
  };
  if (label("io.pok8s.version") != spec.version)
    refuse("version", fmt::format("version {}, not {}", label("io.pok8s.version"), spec.version));
  if (!spec.packages.empty())
    refuse("packages", "so packages cannot be added (use its distribution image as base)");
  const auto& t = spec.toppings;
  if (!t.manifests.empty() || t.wireguard || t.cluster)
    refuse("toppings", "so toppings cannot be added (use its distribution image as base)");
  std::string k8s = spec.kubernetes.distribution;
  if (k8s != label("io.pok8s.kubernetes"))
    refuse("kubernetes", fmt::format("made with kubernetes {}", label("io.pok8s.kubernetes")));
  return false;
}

convert::ConvertOptions spec_convert_options(const config::BuildSpec& spec) {
  convert::ConvertOptions o;
  o.version = spec.version;
  o.variant = spec.variant;
  o.model = spec.model;
  o.arch = spec.arch;
  o.packages = spec.packages;
  o.toppings = spec.toppings;
  if (spec.kubernetes.distribution != "none") {
    o.kubernetes = spec.kubernetes.distribution;
    o.kubernetes_version = spec.kubernetes.version;
    o.kubernetes_binary = spec.kubernetes.binary;
    o.kubernetes_sha256 = spec.kubernetes.sha256;
  }
  return o;
}

SpecBuildResult build_spec(const config::BuildSpec& spec, const oci::ResolvedImage& base,
                           const SpecIdentity& identity, oci::BlobStore& store,
                           const SpecBuildOptions& options) {
  check_buildable(spec);
  SpecBuildResult result{base, {}, false};
  if (spec_needs_conversion(spec, base)) {
    auto convert_options = spec_convert_options(spec);
    convert_options.source_date_epoch = options.source_date_epoch;
    convert_options.log = options.log;
    convert_options.reuse_cached = options.reuse_conversion;
    auto converted = convert::convert_image(base, store, convert_options);
    result.image = converted.image;
    result.converted = true;
    result.conversion_cached = converted.cached;
  }
  BuildOptions build;
  build.kinds = spec.artifacts;
  build.output_dir = options.output_dir;
  if (!spec.cloud_config.empty()) build.cloud_config = util::Path(spec.cloud_config);
  build.compression = image::parse_squashfs_compression(spec.compression);
  build.compression_level = spec.compression_level;
  if (!spec.security.keys.empty()) build.keys_dir = util::Path(spec.security.keys);
  if (!spec.security.splash.empty()) build.splash = util::Path(spec.security.splash);
  build.encryption = spec.security.encryption;
  build.source_date_epoch = options.source_date_epoch;
  build.log = options.log;
  build.progress = options.progress;
  build.spec_id = identity.id;
  build.spec = identity.canonical;
  result.build = build_artifacts(result.image, store, build);
  return result;
}

}  // namespace pok8s::build
