// `pok8s build`: converts first when the source is not a pok8s image, then builds artifacts.
#include "build_command.h"

#include <fmt/format.h>
#include <unistd.h>

#include "common.h"
#include "pok8s/build/artifacts.h"
#include "pok8s/build/spec_build.h"
#include "pok8s/config/build_spec.h"
#include "pok8s/convert/convert.h"
#include "pok8s/util/error.h"
#include "pok8s/util/userns.h"

namespace pok8s::cli {
namespace {

struct BuildFlags {
  std::string spec;  // -f: a build spec instead of SRC and the flags
  std::vector<std::string> artifacts = {"iso"};
  std::string disk_size;
  bool expandable = false;
  bool bios = false;
  int boot_tries = 3;
  std::string keys;
  std::string secure_boot_enroll = "force";
  std::string splash;
  std::string encryption = "none";
  std::string netboot_url;
  std::string output;
  std::string config;
  std::string compression = "zstd";
  int level = 0;
};

nlohmann::json artifacts_json(const build::BuildResult& r, const util::Path& dir,
                              std::string& human);

int run_build(const GlobalOptions& g, const std::string& src, const BuildFlags& b,
              const ConvertFlags& c, const TransportFlags& t) {
  Output out(g.output_mode());
  auto store = open_cache(g);
  build::BuildOptions options;
  options.kinds = b.artifacts;
  if (!b.disk_size.empty()) options.disk.size = parse_size(b.disk_size, "--disk-size");
  options.disk.expandable = b.expandable;
  options.disk.bios = b.bios;
  options.disk.boot_tries = b.boot_tries;
  if (!b.keys.empty()) options.keys_dir = util::Path(b.keys);
  options.secure_boot_enroll = b.secure_boot_enroll;
  if (!b.splash.empty()) options.splash = util::Path(b.splash);
  options.encryption = b.encryption;
  options.netboot_url = b.netboot_url;
  options.output_dir = b.output;
  if (!b.config.empty()) options.cloud_config = util::Path(b.config);
  options.compression = image::parse_squashfs_compression(b.compression);
  if (b.level > 0) options.compression_level = b.level;
  options.source_date_epoch = source_date_epoch();
  options.log = out.log();
  options.progress = out.byte_progress();

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
  build::BuildResult r = build::build_artifacts(image, store, options);
  std::string human =
      fmt::format("Built {} (kernel {}, build id {})\n", src, r.kernel_version, r.build_id);
  nlohmann::json artifacts = artifacts_json(r, b.output, human);
  if (r.uki_size != 0)
    human += fmt::format("UKI: {} (no rootfs inside), command line: {}\n",
                         human_size(static_cast<std::int64_t>(r.uki_size)), r.uki_cmdline);
  human += fmt::format("Manifest: {}", r.manifest.string());
  nlohmann::json uki;
  if (r.uki_size != 0) uki = {{"size", r.uki_size}, {"cmdline", r.uki_cmdline}};
  out.result(human, {{"source", src},
                     {"uki", uki},
                     {"buildId", r.build_id},
                     {"kernel", r.kernel_version},
                     {"artifacts", artifacts},
                     {"manifest", r.manifest.string()},
                     {"cached", {{"rootfs", r.rootfs_cached}, {"initramfs", r.initramfs_cached}}}});
  return 0;
}

nlohmann::json artifacts_json(const build::BuildResult& r, const util::Path& dir,
                              std::string& human) {
  nlohmann::json artifacts = nlohmann::json::array();
  for (const auto& a : r.artifacts) {
    human += fmt::format("  {}  {}  sha256:{}\n", (dir / a.name).string(),
                         human_size(static_cast<std::int64_t>(a.size)), a.sha256);
    artifacts.push_back(
        {{"name", a.name}, {"type", a.type}, {"size", a.size}, {"sha256", a.sha256}});
  }
  return artifacts;
}

int run_spec_build(const GlobalOptions& g, const BuildFlags& b, const ConvertFlags& c,
                   const TransportFlags& t) {
  Output out(g.output_mode());
  config::BuildSpec spec = config::load_build_spec(b.spec);
  build::check_buildable(spec);
  auto store = open_cache(g);
  out.step(fmt::format("Fetching {}", spec.base));
  oci::ResolvedImage base = fetch_image(spec.base, store, t, out.progress());
  build::SpecIdentity identity = build::identify_spec(spec, base, POK8S_VERSION);
  bool convert = build::spec_needs_conversion(spec, base);
  if (convert) convert::validate_convert_options(build::spec_convert_options(spec));
  if (convert && ::geteuid() != 0) {
    out.step("Converting without root: continuing in a user namespace");
    return util::run_self_in_user_namespace(g.argv);
  }
  out.step(fmt::format("Building spec {} (build id {})", b.spec, identity.id));
  build::SpecBuildOptions options;
  options.output_dir = b.output;
  options.source_date_epoch = source_date_epoch();
  options.reuse_conversion = !c.no_cache;
  options.log = out.log();
  options.progress = out.byte_progress();
  build::SpecBuildResult r = build::build_spec(spec, base, identity, store, options);
  std::string human = fmt::format("Built {} (spec id {}, kernel {})\n", b.spec, identity.id,
                                  r.build.kernel_version);
  nlohmann::json artifacts = artifacts_json(r.build, b.output, human);
  human += fmt::format("Manifest: {}", r.build.manifest.string());
  out.result(
      human,
      {{"spec", b.spec},
       {"specId", identity.id},
       {"buildId", r.build.build_id},
       {"kernel", r.build.kernel_version},
       {"artifacts", artifacts},
       {"manifest", r.build.manifest.string()},
       {"converted", r.converted},
       {"conversionCached", r.conversion_cached},
       {"cached", {{"rootfs", r.build.rootfs_cached}, {"initramfs", r.build.initramfs_cached}}}});
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
  auto* src_opt =
      cmd->add_option("SRC", *src, "A pok8s image, or a distribution image to convert first");
  auto* spec_opt = cmd->add_option("-f,--file", b->spec,
                                   "A build spec (YAML, docs/build-spec.md): base, conversion, "
                                   "toppings, artifacts and cloud-config in one file");
  src_opt->excludes(spec_opt);
  cmd->add_option("--artifact", b->artifacts,
                  "What to build: iso, raw, qcow2, vhd, uki, uki-iso, netboot (repeat, or separate "
                  "with commas)")
      ->delimiter(',')
      ->check(CLI::IsMember({"iso", "raw", "qcow2", "vhd", "uki", "uki-iso", "netboot"}));
  cmd->add_option("--netboot-url", b->netboot_url,
                  "Where the netboot files will be served from, like http://192.168.1.10/pok8s/ "
                  "(an IPv4 address: the initramfs has no resolver)");
  cmd->add_option("--keys", b->keys,
                  "Key set (pok8s keys generate) that signs the uki and uki-iso artifacts: "
                  "systemd-boot and the UKI with db, the PCR policies with the PCR key");
  cmd->add_option("--secure-boot-enroll", b->secure_boot_enroll,
                  "What systemd-boot on the uki-iso does with its keys when the firmware is in "
                  "setup mode: force (enroll, after a countdown a key press aborts), manual (a "
                  "menu entry), off")
      ->check(CLI::IsMember({"force", "manual", "off"}))
      ->default_val("force");
  cmd->add_option("--splash", b->splash,
                  "A BMP image systemd-stub shows while the UKIs boot (uki, uki-iso; measured "
                  "into PCR 11 with the rest)");
  cmd->add_option("--disk-size", b->disk_size,
                  "Size of raw/qcow2/vhd disks, like 8G or 6000M (default: what the layout "
                  "needs plus 1 GiB of COS_PERSISTENT)");
  cmd->add_flag("--expandable", b->expandable,
                "Disks with only COS_GRUB, COS_OEM and COS_RECOVERY: the first boot (recovery) "
                "makes COS_STATE and COS_PERSISTENT to fill the disk, then boots active");
  cmd->add_flag("--bios", b->bios,
                "Disks that boot on BIOS firmware too: a BIOS boot partition with GRUB's core "
                "image and GRUB's boot code in the MBR (UEFI boots them either way)");
  cmd->add_option("--boot-tries", b->boot_tries,
                  "Boots a new active image may fail before the installed system falls back to "
                  "passive (GRUB's boot assessment on disks and ISOs, systemd-boot's boot "
                  "counting on the uki-iso)")
      ->check(CLI::Range(1, 9))
      ->default_val(3);
  cmd->add_option("--encryption", b->encryption,
                  "What the installer does to COS_OEM and COS_PERSISTENT: none, tpm (LUKS2 with a "
                  "key sealed to the TPM against the signed UKIs' PCR policy and PCR 7; uki-iso) "
                  "or passphrase (install.passphrase in --config); either way a recovery key is "
                  "printed once at install")
      ->check(CLI::IsMember({"none", "tpm", "passphrase"}))
      ->default_val("none");
  cmd->add_option("-o,--output", b->output, "Directory that receives the artifacts")->required();
  cmd->add_option("--config", b->config,
                  "A #cloud-config file: /config.yaml on the ISO, /oem/90_custom.yaml on disks");
  cmd->add_option("--compression", b->compression, "Rootfs compression: zstd or xz")
      ->check(CLI::IsMember({"zstd", "xz", "gzip"}))
      ->default_val("zstd");
  cmd->add_option("--compression-level", b->level,
                  "Compression level (default: 9 for zstd, else the codec's)");
  c->add_to(cmd, false);
  t->add_to(cmd);
  cmd->callback([&run, &g, cmd, src, b, c, t] {
    if (!b->spec.empty()) {
      // The spec says everything the flags would; both at once would leave one of them unused.
      for (const char* flag :
           {"--artifact",   "--disk-size",  "--expandable",  "--bios",
            "--boot-tries", "--keys",       "--encryption",  "--secure-boot-enroll",
            "--splash",     "--config",     "--compression", "--compression-level",
            "--version",    "--variant",    "--k8s",         "--k8s-version",
            "--k8s-binary", "--k8s-sha256", "--model",       "--arch",
            "--packages"})
        if (cmd->count(flag) > 0)
          throw CLI::ValidationError(flag, "comes from the build spec given with -f");
      run = [&g, b, c, t] { return run_spec_build(g, *b, *c, *t); };
      return;
    }
    if (src->empty()) throw CLI::RequiredError("SRC or -f SPEC");
    run = [&g, src, b, c, t] { return run_build(g, *src, *b, *c, *t); };
  });
}

}  // namespace pok8s::cli
