// `pok8s convert`: an ordinary distribution image becomes an immutable, bootable OS image, as
// one new layer on its base: kernel and system packages installed with the image's own package
// manager (sandboxed), the pok8s framework added, /etc/pok8s-release written.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/config/build_spec.h"
#include "pok8s/convert/family.h"
#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"
#include "pok8s/util/file.h"

namespace pok8s::convert {

struct ConvertOptions {
  std::string version;             // the OS release version (required)
  std::string variant = "core";    // core | standard (with Kubernetes)
  std::string kubernetes = "k3s";  // k3s | k0s, for standard
  std::string kubernetes_version;
  std::string kubernetes_binary;  // a file, or an http(s) URL (then kubernetes_sha256 is required)
  std::string kubernetes_sha256;  // hex; checked whenever given
  std::string model = "generic";
  std::string arch;  // amd64 | arm64; default: the image's
  std::vector<std::string> packages;
  config::Toppings toppings;  // manifests, WireGuard, cluster join (from a build spec)
  // Reuse an earlier conversion with the same build id (every input the same) from the store;
  // false converts again (newer packages from the archive, say).
  bool reuse_cached = true;
  std::optional<std::int64_t> source_date_epoch;
  util::Path data_dir;         // share/pok8s; default util::data_dir()
  util::Path agent_binary;     // default util::node_binary("pok8s-agent")
  util::Path init_binary;      // default util::node_binary("pok8s-init")
  util::Path sysimage_binary;  // default util::node_binary("pok8s-sysimage"), with its libraries
  util::Path luks_binary;      // default util::node_binary("pok8s-luks"), with its libraries
  std::function<void(std::string_view)> log;  // one line per step, and the tools' output
};

struct ConvertResult {
  oci::ResolvedImage image;  // the converted image; its blobs are in the store
  Distro distro;
  std::string flavor;         // "debian"
  std::string suggested_tag;  // <flavor>:<release>-<variant>-<arch>-<model>-<version>
  std::string build_id;
  std::string release_file;  // the /etc/pok8s-release written
  bool cached = false;       // an earlier conversion with the same inputs was reused
};

// Checks the options that need no image (values, the Kubernetes binary's presence); throws
// kInvalidInput naming the option.
void validate_convert_options(const ConvertOptions& options);

// Converts `base` (its layers already in `store`). Everything happens in a scratch directory
// under the store; on failure nothing is added to the store but blobs.
ConvertResult convert_image(const oci::ResolvedImage& base, oci::BlobStore& store,
                            ConvertOptions options);

// The /etc/pok8s-release text for these values (KEY="value" lines, sorted keys fixed).
std::string release_file_text(const std::vector<std::pair<std::string, std::string>>& values);

// True if the image already carries the pok8s framework (a converted image).
bool is_converted(const oci::ResolvedImage& image);

}  // namespace pok8s::convert
