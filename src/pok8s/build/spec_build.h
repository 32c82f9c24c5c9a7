// A build spec (config/build_spec.h) through the engine: what can be built is checked first,
// the spec's identity (canonical form and build id) is computed with its base resolved to a
// digest, the base is converted when it is a distribution image, and each artifact is built.
// The CLI (`pok8s build -f`) and the service run specs through here.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "pok8s/build/artifacts.h"
#include "pok8s/config/build_spec.h"
#include "pok8s/convert/convert.h"
#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"

namespace pok8s::build {

// Throws kUnsupported listing every part of `spec` the engine cannot build yet, before any
// work is done: an option is never accepted and then dropped.
void check_buildable(const config::BuildSpec& spec);

struct SpecIdentity {
  nlohmann::json canonical;
  std::string id;  // 16 hex digits
};

// The identity of `spec` with its base resolved to `base` (by manifest digest, so the same
// image under another name is the same build) and built by `tool_version`.
SpecIdentity identify_spec(const config::BuildSpec& spec, const oci::ResolvedImage& base,
                           std::string_view tool_version);

// Whether `base` must be converted first. A base that is already a pok8s image is built as it
// is; then the spec may not ask for what only conversion does (packages, toppings, Kubernetes,
// another version), and saying so is an error naming the field.
bool spec_needs_conversion(const config::BuildSpec& spec, const oci::ResolvedImage& base);

// The conversion the spec asks for.
convert::ConvertOptions spec_convert_options(const config::BuildSpec& spec);

struct SpecBuildOptions {
  util::Path output_dir;
  std::optional<std::int64_t> source_date_epoch;
  bool reuse_conversion = true;  // an earlier conversion with the same inputs, from the store
  std::function<void(std::string_view)> log;
  std::function<void(std::string_view, std::uint64_t, std::uint64_t)> progress;
};

struct SpecBuildResult {
  oci::ResolvedImage image;  // the converted image the artifacts were made from
  BuildResult build;
  bool converted = false;          // whether the base needed converting
  bool conversion_cached = false;  // ... and an earlier conversion was reused
};

// Builds `spec` from its fetched `base` (blobs in `store`): converts when needed, then writes
// the artifacts and a manifest carrying the spec's id and canonical form into output_dir.
SpecBuildResult build_spec(const config::BuildSpec& spec, const oci::ResolvedImage& base,
                           const SpecIdentity& identity, oci::BlobStore& store,
                           const SpecBuildOptions& options);

}  // namespace pok8s::build
