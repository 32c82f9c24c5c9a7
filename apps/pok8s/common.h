// What several pok8s commands share: transport flags, the blob cache, sizes,
// SOURCE_DATE_EPOCH, and the conversion flags of `convert` and `build`.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "global_options.h"
#include "pok8s/convert/convert.h"
#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"

namespace pok8s::cli {

struct TransportFlags {
  bool tls_verify = true;
  std::string authfile;
  std::string creds;
  int jobs = 4;
  std::string platform;

  void add_to(CLI::App* cmd) {
    cmd->add_option("--tls-verify", tls_verify,
                    "Require HTTPS with a verified certificate (false allows plain HTTP)")
        ->default_val(true);
    cmd->add_option("--authfile", authfile,
                    "Credentials file (containers auth.json or docker config.json)");
    cmd->add_option("--creds", creds, "Registry credentials USER:PASSWORD");
    cmd->add_option("--jobs", jobs, "Blobs transferred at once")
        ->default_val(4)
        ->check(CLI::Range(1, 32));
    cmd->add_option("--platform", platform, "OS/ARCH[/VARIANT] to pick from a multi-platform index")
        ->default_str("the host's");
  }
  oci::TransportOptions options() const {
    oci::TransportOptions o;
    o.tls_verify = tls_verify;
    if (!authfile.empty()) o.auth_file = authfile;
    o.credentials = creds;
    o.jobs = jobs;
    return o;
  }
  std::optional<oci::Platform> wanted_platform() const {
    if (platform.empty()) return std::nullopt;
    return oci::Platform::parse(platform);
  }
};

// Sets the process-wide outbound policy from --public-network-only and --allow-network, with
// `public_only` forcing the former and `more_networks` added to the latter (serve, worker).
// Returns the allowed networks, normalized, to pass on to child processes; throws
// kInvalidInput naming a network that does not parse.
std::vector<std::string> set_network_policy(const GlobalOptions& g, bool public_only = false,
                                            const std::vector<std::string>& more_networks = {});

// The blob cache: --cache, $POK8S_CACHE, or the XDG cache directory.
oci::BlobStore open_cache(const GlobalOptions& g);

// "1.5 MiB"
std::string human_size(std::int64_t n);

// A size given to `option`: bytes, or a number with K, M or G (KiB, MiB, GiB).
std::uint64_t parse_size(const std::string& text, std::string_view option);

// SOURCE_DATE_EPOCH from the environment, if set; throws kInvalidInput if it is not a number.
std::optional<std::int64_t> source_date_epoch();

// The flags of `pok8s convert`, which `pok8s build` takes too for an unconverted source.
struct ConvertFlags {
  std::string version;
  std::string variant = "core";
  std::string k8s = "k3s";
  std::string k8s_version;
  std::string k8s_binary;
  std::string k8s_sha256;
  std::string model = "generic";
  std::string arch;
  std::vector<std::string> packages;
  bool no_cache = false;

  void add_to(CLI::App* cmd, bool version_required);
  convert::ConvertOptions options() const;
};

// Pulls `name` into the cache (manifest, config, every layer) and returns it resolved.
oci::ResolvedImage fetch_image(const std::string& name, oci::BlobStore& store,
                               const TransportFlags& t, const oci::ProgressFn& progress);

}  // namespace pok8s::cli
