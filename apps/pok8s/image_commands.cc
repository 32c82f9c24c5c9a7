// `pok8s image copy|inspect|unpack|import`: argument parsing and printing around the library.
#include "image_commands.h"

#include <fmt/format.h>

#include <optional>

#include "common.h"
#include "global_options.h"
#include "pok8s/oci/image.h"
#include "pok8s/rootfs/apply.h"
#include "pok8s/rootfs/flat_tree.h"
#include "pok8s/rootfs/image_file.h"
#include "pok8s/rootfs/import.h"
#include "pok8s/util/error.h"

namespace pok8s::cli {

namespace {

nlohmann::json stats_json(const rootfs::ApplyStats& s) {
  return {{"entries", s.entries},
          {"files", s.files},
          {"directories", s.directories},
          {"symlinks", s.symlinks},
          {"hardlinks", s.hardlinks},
          {"whiteouts", s.whiteouts},
          {"devicesSkipped", s.devices_skipped},
          {"xattrsDropped", s.xattrs_dropped},
          {"bytes", s.bytes}};
}

int run_copy(const GlobalOptions& g, const std::string& src, const std::string& dst,
             const TransportFlags& t) {
  Output out(g.output_mode());
  auto store = open_cache(g);
  oci::ImageName from = oci::ImageName::parse(src);
  oci::ImageName to = oci::ImageName::parse(dst);
  out.step(fmt::format("Copying {} to {}", from.str(), to.str()));
  oci::CopyResult r =
      oci::copy_image(from, to, store, t.options(), t.wanted_platform(), out.progress());
  out.result(fmt::format("Copied {} layers ({}) to {}\nManifest digest: {}", r.layers,
                         human_size(static_cast<std::int64_t>(r.bytes)), to.str(),
                         r.manifest_digest.str()),
             {{"source", from.str()},
              {"destination", to.str()},
              {"manifestDigest", r.manifest_digest.str()},
              {"layers", r.layers},
              {"bytes", r.bytes}});
  return 0;
}

int run_inspect(const GlobalOptions& g, const std::string& src, const TransportFlags& t, bool raw,
                bool os_release) {
  Output out(raw ? OutputMode::kQuiet : g.output_mode());
  auto store = open_cache(g);
  oci::ImageName name = oci::ImageName::parse(src);
  auto source = oci::open_source(name, t.options());
  oci::ResolvedImage img = oci::resolve_image(*source, store, t.wanted_platform());
  if (raw) {
    std::fwrite(img.manifest_doc.bytes.data(), 1, img.manifest_doc.bytes.size(), stdout);
    return 0;
  }
  std::map<std::string, std::string> osr;
  if (os_release) {
    oci::fetch_layers(*source, img, store, t.options(), out.progress());
    auto layers = rootfs::layer_blobs(img, store);
    auto tree = rootfs::FlatTree::build(layers);
    auto text = rootfs::read_image_file(tree, layers, "etc/os-release");
    if (!text) text = rootfs::read_image_file(tree, layers, "usr/lib/os-release");
    if (text) osr = rootfs::parse_os_release(*text);
  }
  nlohmann::json layers = nlohmann::json::array();
  std::int64_t total = 0;
  for (std::size_t i = 0; i < img.manifest.layers.size(); ++i) {
    const auto& l = img.manifest.layers[i];
    total += l.size;
    layers.push_back({{"digest", l.digest.str()},
                      {"size", l.size},
                      {"mediaType", l.media_type},
                      {"diffID", img.config.diff_ids[i].str()}});
  }
  nlohmann::json j = {{"name", name.str()},
                      {"manifestDigest", img.manifest_digest().str()},
                      {"mediaType", img.manifest.media_type},
                      {"platform", img.config.platform.str()},
                      {"created", img.config.created},
                      {"labels", img.config.labels},
                      {"env", img.config.env},
                      {"layers", layers},
                      {"size", total},
                      {"configDigest", img.manifest.config.digest.str()}};
  if (img.index) j["indexDigest"] = img.index->digest().str();
  if (os_release) j["osRelease"] = osr;
  std::string human = fmt::format(
      "Name:        {}\nDigest:      {}\nMedia type:  {}\nPlatform:    {}\n", name.str(),
      img.manifest_digest().str(), img.manifest.media_type, img.config.platform.str());
  if (!img.config.created.empty()) human += fmt::format("Created:     {}\n", img.config.created);
  if (!osr.empty()) {
    std::string pretty = osr.count("PRETTY_NAME") ? osr["PRETTY_NAME"] : osr["NAME"];
    human += fmt::format("OS:          {} (ID={}{})\n", pretty, osr["ID"],
                         osr.count("VERSION_ID") ? " VERSION_ID=" + osr["VERSION_ID"] : "");
  }
  for (const auto& [k, v] : img.config.labels) human += fmt::format("Label:       {}={}\n", k, v);
  human += fmt::format("Layers:      {} ({})\n", img.manifest.layers.size(), human_size(total));
  for (const auto& l : img.manifest.layers)
    human += fmt::format("  {}  {:>10}  {}\n", l.digest.str(), human_size(l.size), l.media_type);
  out.result(human, j);
  return 0;
}

int run_unpack(const GlobalOptions& g, const std::string& src, const std::string& dest,
               const TransportFlags& t, const rootfs::ApplyOptions& opts) {
  Output out(g.output_mode());
  auto store = open_cache(g);
  oci::ImageName name = oci::ImageName::parse(src);
  auto source = oci::open_source(name, t.options());
  oci::ResolvedImage img = oci::resolve_image(*source, store, t.wanted_platform());
  oci::fetch_layers(*source, img, store, t.options(), out.progress());
  out.step(fmt::format("Unpacking {} layers of {} into {}", img.manifest.layers.size(), name.str(),
                       dest));
  rootfs::ApplyStats s = rootfs::unpack_image(img, store, dest, opts);
  std::string human = fmt::format(
      "Unpacked {} into {}: {} entries ({} files, {} directories, {} symlinks, {} hardlinks), {} "
      "whiteouts, {} of data",
      name.str(), dest, s.entries, s.files, s.directories, s.symlinks, s.hardlinks, s.whiteouts,
      human_size(static_cast<std::int64_t>(s.bytes)));
  if (s.devices_skipped)
    human += fmt::format("\n{} device nodes skipped (pass --devices as root to create them)",
                         s.devices_skipped);
  if (s.xattrs_dropped)
    human += fmt::format(
        "\n{} extended attributes dropped (only security.capability and user.* are kept)",
        s.xattrs_dropped);
  nlohmann::json j = stats_json(s);
  j["destination"] = dest;
  j["manifestDigest"] = img.manifest_digest().str();
  out.result(human, j);
  return 0;
}

int run_import(const GlobalOptions& g, const std::string& src, const std::string& dst,
               const std::string& tag, const std::string& platform,
               const std::vector<std::string>& labels, const TransportFlags& t) {
  Output out(g.output_mode());
  auto store = open_cache(g);
  oci::ImageName to = oci::ImageName::parse(dst);
  if (!tag.empty()) {
    if (!oci::is_valid_tag(tag))
      throw Error(ErrorKind::kInvalidInput, fmt::format("Invalid tag \"{}\"", tag));
    if (to.transport == oci::Transport::kDocker)
      to.docker.tag = tag, to.docker.digest.reset();
    else if (to.transport == oci::Transport::kDockerArchive)
      to.docker.tag = tag;
    else
      to.tag = tag;
  }
  if (src.starts_with("oci-archive:") || src.starts_with("oci:") ||
      src.starts_with("docker-archive:") || src.starts_with("docker://")) {
    out.step(fmt::format("Importing {} as {}", src, to.str()));
    auto r = oci::copy_image(oci::ImageName::parse(src), to, store, t.options(),
                             t.wanted_platform(), out.progress());
    out.result(
        fmt::format("Imported {} as {}\nManifest digest: {}", src, to.str(),
                    r.manifest_digest.str()),
        {{"source", src}, {"destination", to.str()}, {"manifestDigest", r.manifest_digest.str()}});
    return 0;
  }
  rootfs::ImportOptions opts;
  if (!platform.empty()) opts.platform = oci::Platform::parse(platform);
  opts.source_date_epoch = source_date_epoch();
  for (const auto& l : labels) {
    auto eq = l.find('=');
    if (eq == std::string::npos || eq == 0)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Invalid --label \"{}\": expected KEY=VALUE", l));
    opts.labels[l.substr(0, eq)] = l.substr(eq + 1);
  }
  out.step(fmt::format("Importing the root filesystem {} as {}", src, to.str()));
  oci::ResolvedImage img = rootfs::import_rootfs(src, store, opts);
  auto dest = oci::open_destination(to, t.options());
  oci::Digest written = dest->write(img, store, t.options(), out.progress());
  const auto& layer = img.manifest.layers.at(0);
  out.result(fmt::format("Imported {} as {}\nLayer: {} ({})\nManifest digest: {}", src, to.str(),
                         layer.digest.str(), human_size(layer.size), written.str()),
             {{"source", src},
              {"destination", to.str()},
              {"manifestDigest", written.str()},
              {"layer",
               {{"digest", layer.digest.str()},
                {"size", layer.size},
                {"diffID", img.config.diff_ids.at(0).str()}}}});
  return 0;
}

}  // namespace

void add_image_commands(CLI::App& app, GlobalOptions& g, std::function<int()>& run) {
  CLI::App* image =
      app.add_subcommand("image", "Copy, inspect, unpack and import container images");
  image->require_subcommand(1);

  {
    auto* cmd =
        image->add_subcommand("copy", "Copy an image between registries, OCI layouts and archives");
    auto src = std::make_shared<std::string>(), dst = std::make_shared<std::string>();
    auto t = std::make_shared<TransportFlags>();
    cmd->add_option("SOURCE", *src,
                    "docker://…, oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE")
        ->required();
    cmd->add_option("DESTINATION", *dst, "Where to write the image (same transports)")->required();
    t->add_to(cmd);
    cmd->callback([&g, &run, src, dst, t] {
      run = [&g, src, dst, t] { return run_copy(g, *src, *dst, *t); };
    });
  }
  {
    auto* cmd =
        image->add_subcommand("inspect", "Show an image's manifest, config, layers and os-release");
    auto src = std::make_shared<std::string>();
    auto t = std::make_shared<TransportFlags>();
    auto raw = std::make_shared<bool>(false), no_osr = std::make_shared<bool>(false);
    cmd->add_option("SOURCE", *src, "The image")->required();
    cmd->add_flag("--raw", *raw, "Print the manifest exactly as stored");
    cmd->add_flag("--no-os-release", *no_osr, "Do not fetch the layers to read /etc/os-release");
    t->add_to(cmd);
    cmd->callback([&g, &run, src, t, raw, no_osr] {
      run = [&g, src, t, raw, no_osr] { return run_inspect(g, *src, *t, *raw, !*no_osr); };
    });
  }
  {
    auto* cmd =
        image->add_subcommand("unpack", "Apply an image's layers, in order, into a new directory");
    auto src = std::make_shared<std::string>(), dest = std::make_shared<std::string>();
    auto t = std::make_shared<TransportFlags>();
    auto opts = std::make_shared<rootfs::ApplyOptions>();
    cmd->add_option("SOURCE", *src, "The image")->required();
    cmd->add_option("DEST", *dest, "A directory that does not exist yet (or is empty)")->required();
    cmd->add_flag("--devices", opts->devices,
                  "Create device nodes (as root only; skipped and counted otherwise)");
    cmd->add_option("--max-layer-bytes", opts->limits.max_layer_bytes,
                    "Most bytes one layer may expand to")
        ->default_val(opts->limits.max_layer_bytes);
    cmd->add_option("--max-entries", opts->limits.max_entries, "Most entries in one layer")
        ->default_val(opts->limits.max_entries);
    cmd->add_option("--max-path", opts->limits.max_path, "Longest path or link target in bytes")
        ->default_val(opts->limits.max_path);
    t->add_to(cmd);
    cmd->callback([&g, &run, src, dest, t, opts] {
      run = [&g, src, dest, t, opts] { return run_unpack(g, *src, *dest, *t, *opts); };
    });
  }
  {
    auto* cmd =
        image->add_subcommand("import", "Make a base image from a root filesystem tree or tarball");
    auto src = std::make_shared<std::string>(), dst = std::make_shared<std::string>(),
         tag = std::make_shared<std::string>();
    auto labels = std::make_shared<std::vector<std::string>>();
    auto t = std::make_shared<TransportFlags>();
    cmd->add_option("SOURCE", *src,
                    "dir:PATH, ROOTFS.tar[.gz|.zst|.xz], or an image (oci-archive:…)")
        ->required();
    cmd->add_option("DESTINATION", *dst,
                    "Where to write the image (oci:DIR, oci-archive:FILE, docker://…)")
        ->required();
    cmd->add_option("--tag", *tag, "Tag to give the image in the destination");
    cmd->add_option("--label", *labels, "KEY=VALUE label for the image config (repeatable)");
    t->add_to(cmd);
    cmd->callback([&g, &run, src, dst, tag, labels, t] {
      run = [&g, src, dst, tag, labels, t] {
        // --platform names the platform recorded for a root filesystem, or the one picked
        // from a multi-platform source.
        return run_import(g, *src, *dst, *tag, t->platform, *labels, *t);
      };
    });
  }
}

}  // namespace pok8s::cli
