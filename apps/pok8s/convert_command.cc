// `pok8s convert`: argument parsing and printing around convert::convert_image.
#include "convert_command.h"

#include <fmt/format.h>
#include <unistd.h>

#include "common.h"
#include "pok8s/convert/convert.h"
#include "pok8s/util/error.h"
#include "pok8s/util/userns.h"

namespace pok8s::cli {
namespace {

// With no tag in DST, the image is tagged with the suggested one's tag part.
oci::ImageName destination(const std::string& dst, const std::string& suggested_tag) {
  oci::ImageName to = oci::ImageName::parse(dst);
  std::string tag = suggested_tag.substr(suggested_tag.find(':') + 1);
  if ((to.transport == oci::Transport::kOci || to.transport == oci::Transport::kOciArchive) &&
      to.tag.empty())
    to.tag = tag;
  return to;
}

int run_convert(const GlobalOptions& g, const std::string& src, const std::string& dst,
                const ConvertFlags& flags, const TransportFlags& t) {
  auto options = flags.options();
  convert::validate_convert_options(options);
  if (::geteuid() != 0) return util::run_self_in_user_namespace(g.argv);
  Output out(g.output_mode());
  auto store = open_cache(g);
  out.step(fmt::format("Fetching {}", src));
  oci::ResolvedImage base = fetch_image(src, store, t, out.progress());
  options.log = out.log();
  convert::ConvertResult r = convert::convert_image(base, store, options);
  oci::ImageName to = destination(dst, r.suggested_tag);
  out.step(fmt::format("Writing {}", to.str()));
  auto dest = oci::open_destination(to, t.options());
  oci::Digest digest = dest->write(r.image, store, t.options(), out.progress());
  const auto& layer = r.image.manifest.layers.back();
  out.result(fmt::format("Converted {} ({}) into {}\nSuggested tag: {}\nBuild id: {}\n"
                         "Added layer: {} ({})\nManifest digest: {}\n\n/etc/pok8s-release:\n{}",
                         src, r.distro.pretty, to.str(), r.suggested_tag, r.build_id,
                         layer.digest.str(), human_size(layer.size), digest.str(), r.release_file),
             {{"source", src},
              {"destination", to.str()},
              {"manifestDigest", digest.str()},
              {"suggestedTag", r.suggested_tag},
              {"buildId", r.build_id},
              {"cached", r.cached},
              {"family", convert::family_name(r.distro.family)},
              {"flavor", r.flavor},
              {"layer", {{"digest", layer.digest.str()}, {"size", layer.size}}}});
  return 0;
}

}  // namespace

void add_convert_command(CLI::App& app, GlobalOptions& g, std::function<int()>& run) {
  CLI::App* cmd = app.add_subcommand(
      "convert", "Turn a distribution image into an immutable, bootable OS image");
  auto src = std::make_shared<std::string>();
  auto dst = std::make_shared<std::string>();
  auto flags = std::make_shared<ConvertFlags>();
  auto t = std::make_shared<TransportFlags>();
  cmd->add_option("SRC", *src, "The base image (docker://, oci:, oci-archive:, docker-archive:)")
      ->required();
  cmd->add_option("DST", *dst,
                  "Where to write the converted image (its tag defaults to the "
                  "suggested one for oci: layouts)")
      ->required();
  flags->add_to(cmd, true);
  t->add_to(cmd);
  cmd->callback([&run, &g, src, dst, flags, t] {
    run = [&g, src, dst, flags, t] { return run_convert(g, *src, *dst, *flags, *t); };
  });
}

}  // namespace pok8s::cli
