// The build pipeline: make_rootfs_image and assemble_initramfs (at once, cached under
// <cache>/artifacts by keys derived from the image digest and their options), GRUB, then each
// artifact (write_live_iso, build/disk_image), then one manifest for all of them.
#include "pok8s/build/artifacts.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>

#include "pok8s/boot/authenticode.h"
#include "pok8s/boot/grub.h"
#include "pok8s/boot/initramfs.h"
#include "pok8s/boot/kernel.h"
#include "pok8s/build/disk_image.h"
#include "pok8s/build/uki_artifacts.h"
#include "pok8s/config/cloud_config.h"
#include "pok8s/config/config_url.h"
#include "pok8s/config/install_config.h"
#include "pok8s/config/kubernetes_config.h"
#include "pok8s/config/lifecycle_config.h"
#include "pok8s/convert/convert.h"
#include "pok8s/image/disk_layout.h"
#include "pok8s/image/fat.h"
#include "pok8s/image/iso.h"
#include "pok8s/node/netboot.h"
#include "pok8s/rootfs/flat_tree.h"
#include "pok8s/rootfs/image_file.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"
#include "pok8s/util/time.h"

namespace pok8s::build {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Bumped when a step's output for the same inputs changes (a writer fix, a new layout).
constexpr int kRootfsStepVersion = 1;
// 2: multi-threaded zstd; 3: network drivers; 4: pok8s-luks, dm-crypt and TPM modules
constexpr int kInitramfsStepVersion = 4;
constexpr const char* kInitInImage = "usr/lib/pok8s/pok8s-init";

std::string compression_name(image::SquashfsCompression c) {
  switch (c) {
    case image::SquashfsCompression::kZstd:
      return "zstd";
    case image::SquashfsCompression::kXz:
      return "xz";
    case image::SquashfsCompression::kGzip:
      return "gzip";
  }
  return "?";
}

struct Build {
  Build(const oci::ResolvedImage& image_, oci::BlobStore& store_, const BuildOptions& options_)
      : image(image_), store(store_), options(options_), layers(rootfs::layer_blobs(image, store)) {
    cache = (options.cache_dir.empty() ? store.root() : options.cache_dir) / "artifacts";
    if (options.source_date_epoch)
      timestamp = *options.source_date_epoch;
    else if (auto t = util::parse_rfc3339(image.config.created))
      timestamp = *t;
    else
      timestamp = static_cast<std::int64_t>(std::time(nullptr));
  }

  const oci::ResolvedImage& image;
  oci::BlobStore& store;
  const BuildOptions& options;
  util::Path cache;
  std::int64_t timestamp = 0;
  std::vector<rootfs::LayerBlob> layers;
  std::optional<rootfs::FlatTree> tree;
  // The rootfs and initramfs steps run at once: the caller's callbacks are called under
  // `report_mutex`, and the flat view is built once, by whichever step asks first.
  std::mutex report_mutex;
  std::mutex tree_mutex;

  void log(std::string_view line) {
    std::lock_guard lock(report_mutex);
    if (options.log) options.log(line);
  }
  void progress(std::string_view step, std::uint64_t done, std::uint64_t total) {
    std::lock_guard lock(report_mutex);
    if (options.progress) options.progress(step, done, total);
  }
  const rootfs::FlatTree& flat() {
    std::lock_guard lock(tree_mutex);
    if (!tree) tree = rootfs::FlatTree::build(layers);
    return *tree;
  }
};

// The squashfs of the whole image, keyed by its manifest digest and the writer's options.
util::Path make_rootfs_image(Build& b, bool& was_cached) {
  std::optional<int> level = b.options.compression_level;
  if (!level && b.options.compression == image::SquashfsCompression::kZstd) level = 9;
  json key = {{"step", "rootfs"},
              {"v", kRootfsStepVersion},
              {"image", b.image.manifest_digest().str()},
              {"compression", compression_name(b.options.compression)},
              {"level", level ? *level : -1},
              {"block", b.options.block_size},
              {"time", b.timestamp}};
  util::Path out = b.cache / "rootfs" / (util::sha256_hex(key.dump()) + ".squashfs");
  was_cached = util::is_regular_file(out);
  if (was_cached) {
    b.log("Rootfs image: cached");
    return out;
  }
  b.log("Writing the squashfs rootfs image from the image's layers");
  util::make_dirs(out.parent_path());
  image::SquashfsOptions o;
  o.compression = b.options.compression;
  o.level = level;
  o.block_size = b.options.block_size;
  o.mkfs_time = b.timestamp;
  if (b.options.progress)
    o.progress = [&](std::uint64_t done, std::uint64_t total) {
      b.progress("rootfs", done, total);
    };
  image::write_squashfs(b.flat(), out, o);
  return out;
}

struct BootFiles {
  util::Path kernel;
  util::Path initrd;
  std::string kernel_version;
};

// pok8s's initramfs from the image's own pok8s-init and kernel modules (its newest kernel).
// The key needs no look into the image, so a cache hit reads no layer at all.
BootFiles assemble_initramfs(Build& b, bool& was_cached) {
  json key = {{"step", "initramfs"},
              {"v", kInitramfsStepVersion},
              {"image", b.image.manifest_digest().str()},
              {"time", b.timestamp}};
  if (b.options.initramfs_level) key["level"] = *b.options.initramfs_level;
  util::Path dir = b.cache / "initramfs" / util::sha256_hex(key.dump());
  BootFiles files{dir / "kernel", dir / "initrd", {}};
  util::Path version_file = dir / "kernel-version";
  was_cached = util::is_regular_file(files.kernel) && util::is_regular_file(files.initrd) &&
               util::is_regular_file(version_file);
  if (was_cached) {
    files.kernel_version = util::read_file(version_file, 4096);
    b.log(fmt::format("Kernel {} and initramfs: cached", files.kernel_version));
    return files;
  }
  auto kernels = boot::find_kernels(b.flat());
  if (kernels.empty())
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to build {}: the image has no kernel (is it "
                            "converted? run pok8s convert first)",
                            b.image.source_name));
  const boot::KernelInfo& kernel = kernels.front();
  files.kernel_version = kernel.version;
  b.log(fmt::format("Assembling the initramfs for kernel {}", kernel.version));
  auto init = rootfs::read_image_file(b.flat(), b.layers, kInitInImage, 256u << 20);
  if (!init)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to build {}: the image has no /{} (is it "
                            "converted? run pok8s convert first)",
                            b.image.source_name, kInitInImage));
  util::make_dirs(dir);
  util::TempDir scratch = util::TempDir::scratch(b.cache);
  util::Path init_path = scratch.path() / "pok8s-init";
  util::write_file_atomic(init_path, *init, 0755);
  boot::InitramfsOptions o;
  o.init_binary = init_path;
  o.mtime = b.timestamp;
  if (b.options.initramfs_level) o.zstd_level = *b.options.initramfs_level;
  boot::write_initramfs(b.flat(), kernel, o, files.initrd, files.kernel);
  // Written last: only a complete entry is a cache hit.
  util::write_file_atomic(version_file, kernel.version);
  return files;
}

void require_converted(const oci::ResolvedImage& image) {
  if (!convert::is_converted(image))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to build {}: it is not a pok8s image (convert it first, or "
                            "pass --version to build so it is converted)",
                            image.source_name));
}

// The rootfs image and the kernel with pok8s's initramfs, each from the cache or made.
std::pair<util::Path, BootFiles> make_system_parts(Build& b, bool& rootfs_cached,
                                                   bool& initramfs_cached) {
  // The squashfs leaves a core idle part of the time (reading layers is one thread), which the
  // initramfs (decompressing the layers again for the modules) fills.
  auto initramfs = std::async(std::launch::async, [&] {
    bool was_cached = false;
    BootFiles files = assemble_initramfs(b, was_cached);
    return std::pair{files, was_cached};
  });
  util::Path rootfs = make_rootfs_image(b, rootfs_cached);
  auto [boot_files, was_cached] = initramfs.get();
  initramfs_cached = was_cached;
  return {rootfs, boot_files};
}

std::string grub_config(const std::string& label) {
  std::string base = fmt::format("console=tty0 console=ttyS0,115200 pok8s.media={}", label);
  std::vector<boot::LiveMenuEntry> entries = {
      {"pok8s (live)", "/boot/kernel", "/boot/initrd", base + " pok8s.mode=live"},
      {"pok8s (live, debug)", "/boot/kernel", "/boot/initrd",
       base + " pok8s.mode=live pok8s.debug pok8s.shell"},
  };
  return boot::live_grub_config(entries, 5);
}

BuiltArtifact describe(const util::Path& file, std::string sha256, std::string type) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) throw_errno("Failed to read " + file.string(), errno);
  return {file.filename().string(), std::move(type), static_cast<std::uint64_t>(st.st_size),
          std::move(sha256)};
}

// The kernel parameters of every entry of an installed system's menu (pok8s's own follow).
// panic=10: a kernel that cannot boot an image restarts, so boot assessment moves on.
constexpr const char* kDiskCmdline = "console=tty0 console=ttyS0,115200 panic=10";
// Where COS_GRUB keeps grub.cfg.
constexpr const char* kDiskGrubPrefix = "/grub";

// qemu-img's version: it writes the qcow2 and vhd files.
std::string disk_tool_version() {
  auto r = util::run_process({"qemu-img", "--version"});
  if (r.status != 0)
    throw Error(ErrorKind::kNotFound,
                "Failed to build disk images: qemu-img --version failed (install qemu-utils)");
  return r.output.substr(0, r.output.find('\n'));
}

// `cloud_config` (empty: none) with install.encryption set to `mode`; a different mode already
// there is refused, naming `source`. Comments are not kept: the result is re-emitted.
std::string with_install_encryption(const std::string& cloud_config, const std::string& mode,
                                    const std::string& source) {
  YAML::Node root =
      cloud_config.empty() ? YAML::Node(YAML::NodeType::Map) : YAML::Load(cloud_config);
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  YAML::Node install = root["install"];
  if (install && !install.IsNull()) {
    YAML::Node current = install["encryption"];
    if (current && current.IsScalar() && current.as<std::string>() != mode)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to build: {} sets install.encryption: {}, but encryption "
                              "{} was asked for",
                              source, current.as<std::string>(), mode));
  } else {
    root["install"] = YAML::Node(YAML::NodeType::Map);
  }
  root["install"]["encryption"] = mode;
  YAML::Emitter out;
  out << root;
  return fmt::format("#cloud-config\n{}\n", out.c_str());
}

// The cloud-config as the ISO's /config.yaml, when there is one.
void add_cloud_config(const std::string& cloud_config, const util::Path& scratch,
                      std::vector<image::IsoFile>& files) {
  if (cloud_config.empty()) return;
  util::Path copy = scratch / "config.yaml";
  util::write_file_atomic(copy, cloud_config);
  files.push_back({"config.yaml", copy});
}

image::IsoOptions iso_options_of(const Build& b) {
  image::IsoOptions o;
  o.volume_id = b.options.volume_label;
  o.timestamp = b.timestamp;
  return o;
}

// The live ISO; its /install holds what the installer puts on COS_GRUB and COS_OEM.
BuiltArtifact write_live_iso(Build& b, const boot::GrubImages& grub,
                             const boot::GrubImages& disk_grub, const InstallFiles& install,
                             const util::Path& rootfs, const BootFiles& boot_files,
                             const std::string& cloud_config, const util::Path& scratch,
                             const util::Path& iso) {
  util::Path efi_img = scratch / "efi.img";
  image::write_fat_image({{"EFI/BOOT/BOOTX64.EFI", grub.efi_binary}}, "", b.timestamp, efi_img);
  util::Path cfg = scratch / "grub.cfg";
  util::write_file_atomic(cfg, grub_config(b.options.volume_label));

  std::vector<image::IsoFile> files = {
      {"boot/kernel", boot_files.kernel},
      {"boot/initrd", boot_files.initrd},
      {"boot/grub/grub.cfg", cfg},
      {"boot/grub/i386-pc/eltorito.img", grub.bios_eltorito},
      {"EFI/BOOT/BOOTX64.EFI", grub.efi_binary},
      {"rootfs.squashfs", rootfs},
      {"install/EFI/BOOT/BOOTX64.EFI", disk_grub.efi_binary},
      {"install/grub/grub.cfg", install.grub_cfg},
      {"install/grubenv", install.grubenv},
      {"install/bios/core.img", disk_grub.bios_core},
      {"install/bios/boot.img", disk_grub.bios_boot},
  };
  add_cloud_config(cloud_config, scratch, files);
  image::IsoOptions iso_options = iso_options_of(b);
  iso_options.bios_boot_image = "boot/grub/i386-pc/eltorito.img";
  iso_options.hybrid_mbr = grub.bios_hybrid_mbr;
  iso_options.efi_image = efi_img;
  if (b.options.progress)
    iso_options.progress = [&](std::uint64_t done, std::uint64_t total) {
      b.progress("iso", done, total);
    };
  std::string sha256 = image::write_iso(files, iso_options, iso);
  return describe(iso, std::move(sha256), "iso");
}

// The uki and uki-iso artifacts from one signed UKI: the UKI and its rootfs image, and/or the
// ISO whose ESP has systemd-boot, the UKI and the keys to enroll, and whose install/ directory
// has what the installer writes to a disk (uki_artifacts.h).
void write_uki_artifacts(Build& b, const boot::SecureBootKeys& keys, const util::Path& rootfs,
                         const BootFiles& boot_files, const std::string& cloud_config,
                         const std::string& name, const util::Path& scratch, bool want_uki,
                         bool want_iso, BuildResult& result, json& manifest_uki) {
  VerityRootfs verity = make_verity_rootfs(b.cache, rootfs, rootfs.stem().string(),
                                           [&](std::string_view l) { b.log(l); });
  const auto& labels = b.image.config.labels;
  auto version_label = labels.find("io.pok8s.version");
  std::string version = version_label == labels.end() ? "" : version_label->second;
  const std::string verity_args = image::verity_cmdline(verity.tree);
  constexpr const char* kConsole = "console=tty0 console=ttyS0,115200";
  UkiPlan plan;
  plan.kernel = boot_files.kernel;
  plan.initrd = boot_files.initrd;
  plan.kernel_version = boot_files.kernel_version;
  plan.os_release = uki_os_release(name, version);
  plan.cmdline = fmt::format("{} pok8s.media={} pok8s.mode=live {}", kConsole,
                             b.options.volume_label, verity_args);
  plan.sbat = fmt::format("pok8s,1,pok8s,pok8s,{},-\n", POK8S_VERSION);
  plan.splash = b.options.splash;
  plan.signing_time = b.timestamp;
  b.log(fmt::format("Assembling and signing the UKI (kernel {})", boot_files.kernel_version));
  SignedUki uki = make_signed_uki(plan, keys);
  result.uki_size = uki.bytes.size();
  result.uki_cmdline = plan.cmdline;
  manifest_uki = {{"size", uki.bytes.size()},
                  {"cmdline", plan.cmdline},
                  {"rootHash", verity.tree.root_hash},
                  {"sections", json::array()}};
  for (const auto& s : uki.sections)
    manifest_uki["sections"].push_back({{"name", s.name}, {"size", s.size}});

  if (want_uki) {
    util::Path out = b.options.output_dir / (name + ".efi");
    b.log(fmt::format("Writing {}", out.string()));
    util::write_file_atomic(out, uki.bytes);
    result.artifacts.push_back(describe(out, util::sha256_hex(uki.bytes), "uki"));
    util::Path img = b.options.output_dir / (name + ".rootfs.img");
    b.log(fmt::format("Writing {}", img.string()));
    util::copy_file_atomic(verity.image, img);
    result.artifacts.push_back(describe(img, util::file_sha256(img), "rootfs-verity"));
  }
  if (!want_iso) return;
  util::Path iso = b.options.output_dir / (name + ".uki.iso");
  b.log(fmt::format("Writing {}", iso.string()));
  util::Path uki_file = scratch / (name + ".efi");
  util::write_file_atomic(uki_file, uki.bytes);
  util::Path boot_efi = scratch / "systemd-bootx64.efi";
  boot::sign_pe_file(kHostSystemdBoot, boot_efi, keys.db_cert.get(), keys.db_key.get(),
                     b.timestamp);
  util::Path conf = scratch / "loader.conf";
  util::write_file_atomic(conf, loader_conf(b.options.secure_boot_enroll));
  std::vector<image::FatFile> esp = {{"EFI/BOOT/BOOTX64.EFI", boot_efi},
                                     {"EFI/Linux/" + name + ".efi", uki_file},
                                     {"loader/loader.conf", conf}};
  for (std::string_view key : boot::kKeyNames)
    esp.push_back(
        {fmt::format("loader/keys/auto/{}.auth", key), keys.dir / (std::string(key) + ".auth")});
  util::Path efi_img = scratch / "esp.img";
  image::write_fat_image(esp, "", b.timestamp, efi_img);

  // What pok8s-agent install copies to the disk's ESP: the same systemd-boot, and a UKI for each
  // installed image.
  util::Path installed_conf = scratch / "installed-loader.conf";
  util::write_file_atomic(installed_conf, loader_conf("off"));
  std::vector<image::IsoFile> files = {{"rootfs.squashfs", verity.image},
                                       {"install/EFI/BOOT/BOOTX64.EFI", boot_efi},
                                       {"install/loader/loader.conf", installed_conf}};
  manifest_uki["installed"] = json::array();
  for (const InstalledUki& slot : installed_ukis(kConsole, b.options.disk.boot_tries)) {
    UkiPlan slot_plan = plan;
    slot_plan.os_release =
        uki_os_release(fmt::format("{} ({})", name, slot.mode), version, slot.image_id);
    slot_plan.cmdline = fmt::format("{} {}", slot.cmdline, verity_args);
    b.log(fmt::format("Assembling and signing the UKI of the installed {} image", slot.mode));
    util::Path file = scratch / slot.file;
    util::write_file_atomic(file, make_signed_uki(slot_plan, keys).bytes);
    files.push_back({"install/EFI/Linux/" + slot.file, file});
    manifest_uki["installed"].push_back({{"file", slot.file}, {"cmdline", slot_plan.cmdline}});
  }
  add_cloud_config(cloud_config, scratch, files);
  image::IsoOptions iso_options = iso_options_of(b);
  iso_options.efi_image = efi_img;
  if (b.options.progress)
    iso_options.progress = [&](std::uint64_t done, std::uint64_t total) {
      b.progress("uki-iso", done, total);
    };
  std::string sha256 = image::write_iso(files, iso_options, iso);
  result.artifacts.push_back(describe(iso, std::move(sha256), "uki-iso"));
}

// The netboot files: kernel, initramfs and rootfs image as they are, the cloud-config, and the
// iPXE script whose kernel command line names the rootfs image's URL and sha256.
void write_netboot(Build& b, const util::Path& rootfs, const BootFiles& boot_files,
                   const std::string& cloud_config, const std::string& name, BuildResult& result) {
  const std::string& url = b.options.netboot_url;
  auto publish = [&](const util::Path& from, const std::string& file, const char* type) {
    util::Path out = b.options.output_dir / file;
    b.log(fmt::format("Writing {}", out.string()));
    util::copy_file_atomic(from, out);
    std::string sha256 = util::file_sha256(out);
    result.artifacts.push_back(describe(out, sha256, type));
    return sha256;
  };
  auto publish_text = [&](const std::string& text, const std::string& file, const char* type) {
    util::Path out = b.options.output_dir / file;
    b.log(fmt::format("Writing {}", out.string()));
    util::write_file_atomic(out, text);
    std::string sha256 = util::sha256_hex(text);
    result.artifacts.push_back(describe(out, sha256, type));
    return sha256;
  };
  std::string kernel = name + "-kernel", initrd = name + "-initrd", image = name + ".squashfs",
              config = name + ".config.yaml";
  publish(boot_files.kernel, kernel, "netboot-kernel");
  publish(boot_files.initrd, initrd, "netboot-initrd");
  std::string cmdline = fmt::format(
      "initrd={} console=tty0 console=ttyS0,115200 pok8s.mode=live pok8s.fetch={}{} "
      "pok8s.fetch.sha256={}",
      initrd, url, image, publish(rootfs, image, "netboot-rootfs"));
  if (!cloud_config.empty())
    cmdline += fmt::format(" pok8s.fetch.config={}{} pok8s.fetch.config.sha256={}", url, config,
                           publish_text(cloud_config, config, "netboot-config"));
  // iPXE script (https://ipxe.org/scripting): absolute URLs, as QEMU's and many firmware's iPXE
  // builds have no ${cwduri}.
  std::string script = fmt::format(
      "#!ipxe\n"
      "# pok8s netboot: {} (build {}), served from {}\n"
      "kernel {}{} {}\n"
      "initrd {}{}\n"
      "boot\n",
      name, result.build_id, url, url, kernel, cmdline, url, initrd);
  publish_text(script, name + ".ipxe", "netboot-script");
}

}  // namespace

std::string artifact_base_name(const oci::ResolvedImage& image) {
  const auto& l = image.config.labels;
  auto get = [&](const char* k) -> std::string {
    auto it = l.find(std::string("io.pok8s.") + k);
    return it == l.end() || it->second.empty() ? "unknown" : it->second;
  };
  std::string name = fmt::format("{}-{}-{}-{}-{}-{}", get("flavor"), get("flavor-release"),
                                 get("variant"), get("arch"), get("model"), get("version"));
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') c = '-';
  return name;
}

BuildResult build_artifacts(const oci::ResolvedImage& image, oci::BlobStore& store,
                            const BuildOptions& options) {
  auto wants = [&](std::string_view kind) {
    return std::find(options.kinds.begin(), options.kinds.end(), kind) != options.kinds.end();
  };
  if (options.kinds.empty())
    throw Error(ErrorKind::kInvalidInput, "Failed to build: no artifact kinds asked for");
  for (const auto& kind : options.kinds) {
    if (std::find(std::begin(kBuiltKinds), std::end(kBuiltKinds), kind) == std::end(kBuiltKinds))
      throw Error(ErrorKind::kUnsupported,
                  fmt::format("Failed to build {}: artifact kind '{}' is not built by this "
                              "release",
                              image.source_name, kind));
    if (std::count(options.kinds.begin(), options.kinds.end(), kind) > 1)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to build {}: artifact kind '{}' is asked for twice",
                              image.source_name, kind));
  }
  require_converted(image);
  // Signing keys and signing tools are checked before any work, like the cloud-config.
  bool want_uki = wants("uki"), want_uki_iso = wants("uki-iso");
  std::optional<boot::SecureBootKeys> keys;
  if (want_uki || want_uki_iso) {
    if (!options.keys_dir)
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format("Failed to build {}: the {} artifact is signed: pass --keys DIR (pok8s "
                      "keys generate DIR makes a key set)",
                      image.source_name, want_uki ? "uki" : "uki-iso"));
    keys = boot::load_secure_boot_keys(*options.keys_dir);
    if (std::find(std::begin(kSecureBootEnrollModes), std::end(kSecureBootEnrollModes),
                  options.secure_boot_enroll) == std::end(kSecureBootEnrollModes))
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to build {}: secure-boot-enroll '{}' is none of force, "
                              "manual, off",
                              image.source_name, options.secure_boot_enroll));
    for (const char* tool : {boot::kHostSystemdStub, kHostSystemdBoot})
      if (!util::is_regular_file(tool))
        throw Error(ErrorKind::kNotFound,
                    fmt::format("Failed to build {}: {} is missing (install systemd-boot-efi)",
                                image.source_name, tool));
  } else if (options.keys_dir) {
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to build {}: --keys signs the uki and uki-iso artifacts, and "
                            "none of them is asked for",
                            image.source_name));
  }
  if (options.splash) {
    if (!want_uki && !want_uki_iso)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to build {}: --splash is shown by the uki and uki-iso "
                              "artifacts' UKIs, and none of them is asked for",
                              image.source_name));
    check_splash(*options.splash);
  }
  if (wants("netboot")) {
    if (options.netboot_url.empty())
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to build {}: the netboot artifact needs --netboot-url, where "
                              "its files will be served from (http://IPv4[:port]/dir/)",
                              image.source_name));
    if (!options.netboot_url.ends_with("/"))
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to build {}: --netboot-url {} must end with /",
                              image.source_name, options.netboot_url));
    try {
      node::parse_http_url(options.netboot_url);  // what pok8s-init will fetch from
    } catch (const Error& e) {
      throw Error(ErrorKind::kInvalidInput, fmt::format("Failed to build {}: --netboot-url: {}",
                                                        image.source_name, e.what()));
    }
  } else if (!options.netboot_url.empty()) {
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to build {}: --netboot-url is for the netboot artifact, which "
                            "is not asked for",
                            image.source_name));
  }
  // A bad cloud-config is refused before any work, naming file, line and key.
  std::string cloud_config;
  if (options.cloud_config) {
    auto parsed = config::validate_cloud_config(*options.cloud_config);
    // The installer reads the install block on the node; a typo in it stops the build instead.
    std::vector<std::string> warnings = config::read_install_config({&parsed, 1}).warnings;
    config::read_kubernetes_config({&parsed, 1}, warnings);
    for (auto& w : config::read_upgrade_config({&parsed, 1}).warnings) warnings.push_back(w);
    for (auto& w : config::read_reset_config({&parsed, 1}).warnings) warnings.push_back(w);
    config::read_config_urls({&parsed, 1});  // fetched on the node: a bad URL stops the build
    for (auto& w : config::ignored_section_warnings(parsed)) warnings.push_back(std::move(w));
    for (const auto& warning : warnings)
      if (options.log) options.log(warning);
    cloud_config = util::read_file(*options.cloud_config, 1u << 20);
  }
  if (options.encryption != "none") {
    for (const auto& kind : options.kinds)
      if (kind == "raw" || kind == "qcow2" || kind == "vhd" || kind == "netboot")
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to build {}: --encryption is done by the installer, and "
                                "the {} artifact is not installed from; ask for iso or uki-iso",
                                image.source_name, kind));
    if (!wants("iso") && !wants("uki-iso"))
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to build {}: --encryption is done by the installer; ask "
                              "for iso or uki-iso",
                              image.source_name));
    if (options.encryption == "tpm" && !wants("uki-iso"))
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to build {}: --encryption tpm seals the disk key to the "
                              "signed UKIs' PCR policy; ask for the uki-iso artifact",
                              image.source_name));
    cloud_config = with_install_encryption(
        cloud_config, options.encryption,
        options.cloud_config ? options.cloud_config->string() : std::string("--encryption"));
    auto parsed = config::parse_cloud_config(cloud_config, "the medium's config.yaml");
    config::read_install_config({&parsed, 1});  // passphrase mode needs install.passphrase
  }
  Build b(image, store, options);
  BuildResult result;
  auto [rootfs, boot_files] = make_system_parts(b, result.rootfs_cached, result.initramfs_cached);
  result.kernel_version = boot_files.kernel_version;

  b.log("Preparing GRUB");
  bool disks = wants("raw") || wants("qcow2") || wants("vhd");
  boot::GrubImages live_grub;
  if (wants("iso")) live_grub = boot::make_grub_images(b.cache / "..", options.volume_label);
  // The ISO carries an installed system's GRUB for the installer too.
  boot::GrubImages disk_grub =
      boot::make_grub_images(b.cache / "..", image::kGrubLabel, kDiskGrubPrefix);

  std::vector<std::string> kinds = options.kinds;  // a set: its order builds nothing else
  std::sort(kinds.begin(), kinds.end());
  json inputs = {{"image", image.manifest_digest().str()},
                 {"artifacts", kinds},
                 {"rootfs", rootfs.filename().string()},
                 {"initramfs", boot_files.initrd.parent_path().filename().string()},
                 {"cloudConfig", util::sha256_hex(cloud_config)},
                 {"time", b.timestamp}};
  inputs["diskGrub"] = util::file_sha256(disk_grub.efi_binary);
  inputs["diskGrubBios"] = util::file_sha256(disk_grub.bios_core);
  inputs["bootTries"] = options.disk.boot_tries;
  inputs["cmdline"] = kDiskCmdline;
  if (wants("iso")) {
    inputs["grub"] = util::file_sha256(live_grub.efi_binary);
    inputs["label"] = options.volume_label;
  }
  if (disks) {
    inputs["disk"] = {{"size", options.disk.size},
                      {"expandable", options.disk.expandable},
                      {"bios", options.disk.bios}};
    // qemu-img writes qcow2 and vhd; a raw disk does not need it.
    if (wants("qcow2") || wants("vhd")) inputs["disk"]["qemuImg"] = disk_tool_version();
  }
  if (wants("netboot")) inputs["netbootUrl"] = options.netboot_url;
  if (keys) {
    // The keys by their public halves and the .auth files the ISO carries.
    std::string key_ids;
    for (std::string_view k : boot::kKeyNames)
      for (const char* ext : {".crt", ".auth"})
        key_ids += util::file_sha256(keys->dir / (std::string(k) + ext));
    key_ids += util::sha256_hex(keys->pcr_public);
    inputs["uki"] = {{"keys", util::sha256_hex(key_ids)},
                     {"stub", util::file_sha256(boot::kHostSystemdStub)},
                     {"label", options.volume_label},
                     {"version", POK8S_VERSION}};
    if (options.splash) inputs["uki"]["splash"] = util::file_sha256(*options.splash);
    if (want_uki_iso) {
      inputs["uki"]["systemdBoot"] = util::file_sha256(kHostSystemdBoot);
      inputs["uki"]["enroll"] = options.secure_boot_enroll;
    }
  }
  result.build_id = util::sha256_hex(inputs.dump()).substr(0, 16);

  DiskContents contents{rootfs,
                        boot_files.kernel,
                        boot_files.initrd,
                        disk_grub.efi_binary,
                        disk_grub.bios_core,
                        disk_grub.bios_boot,
                        options.cloud_config ? std::optional(cloud_config) : std::nullopt,
                        kDiskCmdline,
                        result.build_id,
                        b.timestamp};
  // A disk the image does not fit is refused before any artifact is written.
  if (disks) plan_disk_image(contents, options.disk);

  std::string name = artifact_base_name(image);
  util::make_dirs(options.output_dir);
  util::TempDir scratch = util::TempDir::scratch(b.cache);
  if (wants("iso")) {
    util::Path iso = options.output_dir / (name + ".iso");
    b.log(fmt::format("Writing {}", iso.string()));
    InstallFiles install = stage_install_files(contents, options.disk, scratch.path() / "install");
    result.artifacts.push_back(write_live_iso(b, live_grub, disk_grub, install, rootfs, boot_files,
                                              cloud_config, scratch.path(), iso));
  }
  if (disks) {
    util::Path raw = options.output_dir / (name + ".raw");
    util::Path raw_scratch = scratch.path() / "disk.raw";
    b.log(
        fmt::format("Writing the disk image ({})", wants("raw") ? raw.string() : "for conversion"));
    const util::Path& disk = wants("raw") ? raw : raw_scratch;
    write_disk_image(contents, options.disk, scratch.path() / "disk", disk);
    if (wants("raw")) result.artifacts.push_back(describe(raw, util::file_sha256(raw), "raw"));
    for (const char* format : {"qcow2", "vhd"}) {
      if (!wants(format)) continue;
      util::Path out = options.output_dir / fmt::format("{}.{}", name, format);
      b.log(fmt::format("Writing {}", out.string()));
      convert_disk_image(disk, format, out, b.timestamp, result.build_id);
      result.artifacts.push_back(describe(out, util::file_sha256(out), format));
    }
  }

  if (wants("netboot")) write_netboot(b, rootfs, boot_files, cloud_config, name, result);
  json manifest_uki;
  if (keys)
    write_uki_artifacts(b, *keys, rootfs, boot_files, cloud_config, name, scratch.path(), want_uki,
                        want_uki_iso, result, manifest_uki);

  json manifest = {
      {"buildId", result.build_id},
      {"image", {{"name", image.source_name}, {"digest", image.manifest_digest().str()}}},
      {"kernel", result.kernel_version},
      {"inputs", inputs},
      {"artifacts", json::array()}};
  if (keys) manifest["uki"] = manifest_uki;
  if (!options.spec_id.empty()) {
    manifest["specId"] = options.spec_id;
    manifest["spec"] = options.spec;
  }
  for (const auto& a : result.artifacts)
    manifest["artifacts"].push_back(
        {{"name", a.name}, {"type", a.type}, {"size", a.size}, {"sha256", a.sha256}});
  result.manifest = options.output_dir / (name + ".manifest.json");
  util::write_file_atomic(result.manifest, manifest.dump(2) + "\n");
  return result;
}

SystemFiles write_system_files(const oci::ResolvedImage& image, oci::BlobStore& store,
                               const BuildOptions& options, const util::Path& dir) {
  require_converted(image);
  Build b(image, store, options);
  bool rootfs_cached = false, initramfs_cached = false;
  auto [rootfs, boot_files] = make_system_parts(b, rootfs_cached, initramfs_cached);
  SystemFiles files;
  files.kernel_version = boot_files.kernel_version;
  util::make_dirs(dir);
  for (auto [from, name] :
       {std::pair{&rootfs, image::kRootfsFile}, std::pair{&boot_files.kernel, image::kKernelFile},
        std::pair{&boot_files.initrd, image::kInitrdFile}}) {
    util::Path to = dir / name;
    b.log(fmt::format("Writing {}", to.string()));
    // A cache on the same file system gives its file away; elsewhere it is copied.
    std::error_code ec;
    fs::remove(to, ec);
    fs::create_hard_link(*from, to, ec);
    if (ec) fs::copy_file(*from, to, fs::copy_options::overwrite_existing);
    files.files.push_back(
        {std::string(name), static_cast<std::uint64_t>(fs::file_size(to)), util::file_sha256(to)});
  }
  return files;
}

}  // namespace pok8s::build
