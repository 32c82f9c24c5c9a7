// Helpers shared by the pok8s commands.
#include "common.h"

#include <fmt/format.h>

#include <charconv>
#include <cstdint>
#include <cstdlib>

#include "pok8s/oci/outbound.h"
#include "pok8s/util/error.h"

namespace pok8s::cli {

std::vector<std::string> set_network_policy(const GlobalOptions& g, bool public_only,
                                            const std::vector<std::string>& more_networks) {
  oci::OutboundPolicy policy;
  policy.public_only = public_only || g.public_network_only;
  std::vector<std::string> networks;
  for (const auto* list : {&g.allowed_networks, &more_networks})
    for (const auto& text : *list) {
      policy.allowed.push_back(oci::parse_cidr(text));
      networks.push_back(policy.allowed.back().str());
    }
  oci::set_outbound_policy(std::move(policy));
  return networks;
}

oci::BlobStore open_cache(const GlobalOptions& g) {
  return oci::BlobStore(g.cache_dir.empty() ? util::default_cache_dir() : util::Path(g.cache_dir));
}

std::string human_size(std::int64_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  if (n < (1 << 20)) return fmt::format("{:.1f} KiB", static_cast<double>(n) / 1024);
  if (n < (1 << 30)) return fmt::format("{:.1f} MiB", static_cast<double>(n) / (1 << 20));
  return fmt::format("{:.2f} GiB", static_cast<double>(n) / (1 << 30));
}

std::optional<std::int64_t> source_date_epoch() {
  const char* sde = std::getenv("SOURCE_DATE_EPOCH");
  if (!sde || !*sde) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(sde, &end, 10);
  if (errno != 0 || *end != '\0' || v < 0)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Invalid SOURCE_DATE_EPOCH \"{}\": not a number of seconds", sde));
  return v;
}

void ConvertFlags::add_to(CLI::App* cmd, bool version_required) {
  auto* v = cmd->add_option("--version", version, "The OS release version, e.g. v1.0.0");
  if (version_required) v->required();
  cmd->add_option("--variant", variant, "core (no Kubernetes) or standard")
      ->check(CLI::IsMember({"core", "standard"}))
      ->default_val("core");
  cmd->add_option("--k8s", k8s, "Kubernetes distribution for standard: k3s or k0s")
      ->check(CLI::IsMember({"k3s", "k0s"}))
      ->default_val("k3s");
  cmd->add_option("--k8s-version", k8s_version, "Kubernetes version, e.g. v1.31.2+k3s1");
  cmd->add_option("--k8s-binary", k8s_binary, "The k3s/k0s binary: a FILE or an http(s) URL");
  cmd->add_option("--k8s-sha256", k8s_sha256,
                  "The binary's sha256 (required for a URL, checked for a file)");
  cmd->add_option("--model", model, "Hardware model")->default_val("generic");
  cmd->add_option("--arch", arch, "amd64 or arm64 (default: the image's)");
  cmd->add_option("--packages", packages, "Extra distribution packages, comma-separated")
      ->delimiter(',');
  cmd->add_flag("--no-cache", no_cache,
                "Convert again even when a conversion with the same inputs is in the cache");
}

convert::ConvertOptions ConvertFlags::options() const {
  convert::ConvertOptions o;
  o.version = version;
  o.variant = variant;
  o.kubernetes = k8s;
  o.kubernetes_version = k8s_version;
  o.kubernetes_binary = k8s_binary;
  o.kubernetes_sha256 = k8s_sha256;
  o.model = model;
  o.arch = arch;
  o.packages = packages;
  o.reuse_cached = !no_cache;
  o.source_date_epoch = source_date_epoch();
  return o;
}

oci::ResolvedImage fetch_image(const std::string& name, oci::BlobStore& store,
                               const TransportFlags& t, const oci::ProgressFn& progress) {
  auto source = oci::open_source(oci::ImageName::parse(name), t.options());
  oci::ResolvedImage image = oci::resolve_image(*source, store, t.wanted_platform());
  oci::fetch_layers(*source, image, store, t.options(), progress);
  return image;
}

std::uint64_t parse_size(const std::string& text, std::string_view option) {
  std::uint64_t n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  std::string_view unit(p, static_cast<std::size_t>(text.data() + text.size() - p));
  unsigned shift = 0;
  if (unit == "K" || unit == "KiB")
    shift = 10;
  else if (unit == "M" || unit == "MiB")
    shift = 20;
  else if (unit == "G" || unit == "GiB")
    shift = 30;
  else if (!unit.empty())
    ec = std::errc::invalid_argument;
  if (ec != std::errc() || n == 0 || n > (UINT64_MAX >> 1 >> shift))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read {} {:?}: give bytes, or a number with K, M or G",
                            option, text));
  return n << shift;
}

}  // namespace pok8s::cli
