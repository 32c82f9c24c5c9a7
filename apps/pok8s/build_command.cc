// `pok8s build`: converts first when the source is not a pok8s image, then builds artifacts.
#include "build_command.h"

#include <fmt/format.h>
#include <unistd.h>

#include "common.h"
#include "pok8s/build/live_iso.h"
#include "pok8s/convert/convert.h"
#include "pok8s/util/error.h"
#include "pok8s/util/userns.h"

namespace pok8s::cli {
namespace {

struct BuildFlags {
  std::string artifact = "iso";
  std::string output;
  std::string config;
  std::string compression = "zstd";
  int level = 0;
};

int run_build(const GlobalOptions& g, const std::string& src, const BuildFlags& b,
              const ConvertFlags& c, const TransportFlags& t) {
  Output out(g.output_mode());
  auto store = open_cache(g);
  build::LiveIsoOptions options;
  options.output_dir = b.output;
  if (!b.config.empty()) options.cloud_config = util::Path(b.config);
  options.compression = image::parse_squashfs_compression(b.compression);
  if (b.level > 0) options.compression_level = b.level;
  options.source_date_epoch = source_date_epoch();
  options.log = [&out](std::string_view line) {
    if (line.starts_with("  | "))
      out.detail(std::string(line.substr(4)));
    else
      out.step(std::string(line));
  };
  options.progress = [&out](std::string_view step, std::uint64_t done, std::uint64_t total) {
    out.progress_bytes(std::string(step), done, total);
  };

  out.step(fmt::format("Fetching {}", src));
  oci::ResolvedImage image = fetch_image(src, store, t, out.progress());
  if (!convert::is_converted(image)) {
    if (c.version.empty())
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to build {}: it is not a pok8s image; pass --version (and "
                              "the other convert options) to convert it first",
                              src));
    auto convert_options = c.options();
    convert::validate_convert_options(convert_options);
    if (::geteuid() != 0) {
      out.step("Converting without root: continuing in a user namespace");
      return util::run_self_in_user_namespace(g.argv);
    }
    convert_options.log = options.log;
    image = convert::convert_image(image, store, convert_options).image;
  }
  build::LiveIsoResult r = build::build_live_iso(image, store, options);
  std::string human =
      fmt::format("Built {} (kernel {}, build id {})\n", src, r.kernel_version, r.build_id);
  nlohmann::json artifacts = nlohmann::json::array();
  for (const auto& a : r.artifacts) {
    human += fmt::format("  {}  {}  sha256:{}\n", (util::Path(b.output) / a.name).string(),
                         human_size(static_cast<std::int64_t>(a.size)), a.sha256);
    artifacts.push_back({{"name", a.name}, {"size", a.size}, {"sha256", a.sha256}});
  }
  human += fmt::format("Manifest: {}", r.manifest.string());
  out.result(human, {{"source", src},
                     {"buildId", r.build_id},
                     {"kernel", r.kernel_version},
                     {"artifacts", artifacts},
                     {"manifest", r.manifest.string()},
                     {"cached", {{"rootfs", r.rootfs_cached}, {"initramfs", r.initramfs_cached}}}});
  return 0;
}

}  // namespace

void add_build_command(CLI::App& app, GlobalOptions& g, std::function<int()>& run) {
  CLI::App* cmd = app.add_subcommand(
      "build", "Build bootable artifacts (a live ISO) from an image, converting it if needed");
  auto src = std::make_shared<std::string>();
  auto b = std::make_shared<BuildFlags>();
  auto c = std::make_shared<ConvertFlags>();
  auto t = std::make_shared<TransportFlags>();
  cmd->add_option("SRC", *src, "A pok8s image, or a distribution image to convert first")
      ->required();
  cmd->add_option("--artifact", b->artifact, "What to build")
      ->check(CLI::IsMember({"iso"}))
      ->default_val("iso");
  cmd->add_option("-o,--output", b->output, "Directory that receives the artifacts")->required();
  cmd->add_option("--config", b->config, "A #cloud-config file, put on the ISO as /config.yaml");
  cmd->add_option("--compression", b->compression, "Rootfs compression: zstd or xz")
      ->check(CLI::IsMember({"zstd", "xz", "gzip"}))
      ->default_val("zstd");
  cmd->add_option("--compression-level", b->level, "Compression level (default: the codec's)");
  c->add_to(cmd, false);
  t->add_to(cmd);
  cmd->callback([&run, &g, src, b, c, t] {
    run = [&g, src, b, c, t] { return run_build(g, *src, *b, *c, *t); };
  });
}

}  // namespace pok8s::cli
