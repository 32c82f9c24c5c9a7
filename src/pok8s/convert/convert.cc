// The conversion pipeline, one step per function: read_distro, unpack_base, install_packages,
// apply_recipe_files, add_framework, add_kubernetes, write_release, clear_identity,
// commit_layer.
#include "pok8s/convert/convert.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>

#include "pok8s/convert/download.h"
#include "pok8s/convert/image_files.h"
#include "pok8s/convert/recipe.h"
#include "pok8s/convert/sandbox.h"
#include "pok8s/convert/sysimage_bundle.h"
#include "pok8s/convert/toppings.h"
#include "pok8s/rootfs/apply.h"
#include "pok8s/rootfs/flat_tree.h"
#include "pok8s/rootfs/image_file.h"
#include "pok8s/rootfs/layer_writer.h"
#include "pok8s/util/error.h"
#include "pok8s/util/install_paths.h"
#include "pok8s/util/sha256.h"
#include "pok8s/util/time.h"
#include "pok8s/util/userns.h"

namespace pok8s::convert {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kReleasePath = "etc/pok8s-release";
constexpr const char* kAgentPath = "usr/bin/pok8s-agent";
constexpr const char* kInitPath = "usr/lib/pok8s/pok8s-init";
constexpr const char* kStagesDir = "usr/lib/pok8s/stages";
// Bumped when add_framework puts something else into the image. 2: /oem. 3: pok8s-booted and
// pok8s-install. 4: the default stages start Kubernetes.
constexpr int kFrameworkVersion = 5;  // 5: pok8s-sysimage for upgrades

[[noreturn]] void bad_option(std::string_view option, std::string_view why) {
  throw Error(ErrorKind::kInvalidInput, fmt::format("Invalid {}: {}", option, why));
}

bool is_url(std::string_view s) {
  return s.starts_with("http://") || s.starts_with("https://");
}

// A value that goes into a tag and a release file: letters, digits, . _ + -
bool is_plain_value(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
           c == '+';
  });
}

std::string tag_safe(std::string s) {
  std::replace(s.begin(), s.end(), '+', '-');
  return s;
}

struct Work {
  const oci::ResolvedImage& base;
  oci::BlobStore& store;
  ConvertOptions& options;
  util::Path root;
  Distro distro;
  Recipe recipe;
  std::string arch;
  util::Path kubernetes_binary;  // verified, on the host
  std::string build_id;

  void log(std::string_view line) const {
    if (options.log) options.log(line);
  }
  SandboxOptions sandbox() const {
    SandboxOptions s;
    s.env = recipe.env;
    s.output = [this](std::string_view line) { log(fmt::format("  | {}", line)); };
    return s;
  }
};

Distro read_distro(const oci::ResolvedImage& base, const oci::BlobStore& store) {
  auto layers = rootfs::layer_blobs(base, store);
  auto tree = rootfs::FlatTree::build(layers);
  auto text = rootfs::read_image_file(tree, layers, "etc/os-release");
  if (!text) text = rootfs::read_image_file(tree, layers, "usr/lib/os-release");
  if (!text)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to convert {}: the image has no /etc/os-release or "
                            "/usr/lib/os-release, so its distribution is unknown",
                            base.source_name));
  return detect_distro(rootfs::parse_os_release(*text), base.source_name);
}

void verify_kubernetes_binary(Work& w) {
  const auto& o = w.options;
  if (o.variant != "standard") return;
  if (is_url(o.kubernetes_binary)) {
    auto dest = w.store.root() / "tmp" / fmt::format("{}-{}", o.kubernetes, o.kubernetes_sha256);
    util::make_dirs(dest.parent_path());
    w.log(fmt::format("Downloading {}", o.kubernetes_binary));
    download_verified(o.kubernetes_binary, o.kubernetes_sha256, dest);
    w.kubernetes_binary = dest;
    return;
  }
  w.kubernetes_binary = o.kubernetes_binary;
  std::string actual = util::file_sha256(w.kubernetes_binary);
  if (!o.kubernetes_sha256.empty() && actual != o.kubernetes_sha256)
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to verify {}: its sha256 is {}, expected {}",
                            o.kubernetes_binary, actual, o.kubernetes_sha256));
}

void install_packages(const Work& w) {
  std::vector<std::string> packages = w.recipe.packages_for(w.arch);
  packages.insert(packages.end(), w.options.packages.begin(), w.options.packages.end());
  if (w.options.toppings.wireguard) {
    auto it = w.recipe.topping_packages.find("wireguard");
    if (it == w.recipe.topping_packages.end())
      throw Error(ErrorKind::kUnsupported,
                  fmt::format("Failed to add the WireGuard topping: the {} recipe names no "
                              "packages for it (toppings.wireguard)",
                              w.recipe.name));
    packages.insert(packages.end(), it->second.begin(), it->second.end());
  }
  auto sandbox = w.sandbox();
  if (!w.recipe.update.empty()) {
    w.log(fmt::format("Updating the package lists ({})", w.recipe.update[0]));
    run_in_root_checked(w.root, w.recipe.update, sandbox, "update the package lists");
  }
  w.log(fmt::format("Installing {} packages with {}", packages.size(), w.recipe.install[0]));
  std::vector<std::string> argv = w.recipe.install;
  argv.insert(argv.end(), packages.begin(), packages.end());
  run_in_root_checked(w.root, argv, sandbox,
                      fmt::format("install packages into {}", w.base.source_name));
  if (!w.recipe.clean.empty()) run_in_root_checked(w.root, w.recipe.clean, sandbox, "clean up");
}

void remove_matching(const util::Path& root, const std::string& pattern) {
  std::string rel = pattern.substr(1);
  auto star = rel.find('*');
  if (star == std::string::npos) {
    if (fs::exists(fs::symlink_status(root / rel))) util::remove_tree(root / rel);
    return;
  }
  util::Path dir = (root / rel.substr(0, star)).parent_path();
  std::string prefix = util::Path(rel.substr(0, star)).filename().string();
  if (rel.back() == '/') prefix.clear();
  std::error_code ec;
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().filename().string().starts_with(prefix)) util::remove_tree(entry.path());
}

void apply_recipe_files(const Work& w) {
  for (const auto& f : w.recipe.files) put_file(w.root, f.path, f.content, f.mode);
  for (const auto& r : w.recipe.remove) remove_matching(w.root, r);
}

bool has_kernel(const util::Path& root) {
  std::error_code ec;
  for (const char* dir : {"boot", "lib/modules", "usr/lib/modules"}) {
    if (!fs::is_directory(root / dir, ec)) continue;
    for (const auto& e : fs::directory_iterator(root / dir, ec)) {
      auto name = e.path().filename().string();
      if (name.starts_with("vmlinuz") || name.starts_with("vmlinux") ||
          fs::exists(e.path() / "vmlinuz", ec))
        return true;
    }
  }
  return false;
}

void add_framework(const Work& w) {
  const auto& data = w.options.data_dir;
  w.log("Adding the pok8s framework (pok8s-init, pok8s-agent, services, default stages)");
  copy_into(w.root, kAgentPath, w.options.agent_binary, 0755);
  copy_into(w.root, kInitPath, w.options.init_binary, 0755);
  for (const auto& f : sysimage_bundle(w.options.sysimage_binary))
    copy_into(w.root, f.path, f.source, 0755);
  for (const auto& f : luks_bundle(w.options.luks_binary))
    copy_into(w.root, f.path, f.source, 0755);
  // The mount point of COS_OEM on an installed system (the root is read-only there).
  util::make_dirs(w.root / "oem");
  for (const auto& entry : fs::directory_iterator(data / "stages"))
    copy_into(w.root, fmt::format("{}/{}", kStagesDir, entry.path().filename().string()),
              entry.path(), 0644);
  auto sandbox = w.sandbox();
  if (w.recipe.init == InitSystem::kSystemd) {
    std::vector<std::string> units;
    for (const auto& entry : fs::directory_iterator(data / "framework/systemd")) {
      auto name = entry.path().filename().string();
      copy_into(w.root, "usr/lib/systemd/system/" + name, entry.path(), 0644);
      units.push_back(name);
    }
    std::sort(units.begin(), units.end());
    std::vector<std::string> argv = {"systemctl", "enable"};
    argv.insert(argv.end(), units.begin(), units.end());
    argv.insert(argv.end(), w.recipe.services.begin(), w.recipe.services.end());
    run_in_root_checked(w.root, argv, sandbox, "enable the services");
  } else {
    for (const auto& entry : fs::directory_iterator(data / "framework/openrc")) {
      auto name = entry.path().filename().string();
      copy_into(w.root, "etc/init.d/" + name, entry.path(), 0755);
      run_in_root_checked(w.root,
                          {"rc-update", "add", name, name == "pok8s-boot" ? "boot" : "default"},
                          sandbox, "enable " + name);
    }
    for (const auto& service : w.recipe.services)
      run_in_root_checked(w.root, {"rc-update", "add", service, "default"}, sandbox,
                          "enable " + service);
  }
}

void add_toppings(const Work& w) {
  const auto& t = w.options.toppings;
  if (t.manifests.empty() && !t.wireguard && !t.cluster) return;
  w.log("Adding the toppings (manifests, WireGuard, cluster join)");
  std::string kubernetes = w.options.variant == "standard" ? w.options.kubernetes : "";
  auto services = write_toppings(w.root, t, kubernetes, w.recipe.init, w.options.data_dir);
  auto sandbox = w.sandbox();
  if (w.recipe.init == InitSystem::kSystemd) {
    std::vector<std::string> argv = {"systemctl", "enable"};
    for (const auto& s : services) argv.push_back(s.name);
    if (argv.size() > 2)
      run_in_root_checked(w.root, argv, sandbox, "enable the toppings' services");
  } else {
    for (const auto& s : services)
      run_in_root_checked(w.root, {"rc-update", "add", s.name, s.runlevel}, sandbox,
                          "enable " + s.name);
  }
}

// What the toppings put into the image, for the build id.
json toppings_inputs(const ConvertOptions& o) {
  json manifests = json::array();
  for (const auto& f : manifest_files(o.toppings))
    manifests.push_back({f.filename().string(), util::file_sha256(f)});
  json out = {{"manifests", manifests}};
  if (o.toppings.wireguard)
    out["wireguard"] = util::sha256_hex(wireguard_config(*o.toppings.wireguard));
  if (o.toppings.cluster)
    out["cluster"] =
        util::sha256_hex(k3s_join_config(*o.toppings.cluster) + "\n" + o.toppings.cluster->token);
  return out;
}

void add_kubernetes(const Work& w) {
  const auto& o = w.options;
  if (o.variant != "standard") return;
  w.log(fmt::format("Adding {} {}", o.kubernetes, o.kubernetes_version));
  copy_into(w.root, "usr/bin/" + o.kubernetes, w.kubernetes_binary, 0755);
  auto data = o.data_dir / "k8s";
  if (w.recipe.init == InitSystem::kSystemd)
    copy_into(w.root, fmt::format("usr/lib/systemd/system/{}.service", o.kubernetes),
              data / (o.kubernetes + ".service"), 0644);
  else
    copy_into(w.root, "etc/init.d/" + o.kubernetes, data / (o.kubernetes + ".openrc"), 0755);
  std::vector<std::string> dirs =
      o.kubernetes == "k3s" ? std::vector<std::string>{"etc/rancher/k3s/config.yaml.d",
                                                       "var/lib/rancher/k3s/server/manifests"}
                            : std::vector<std::string>{"etc/k0s", "var/lib/k0s/manifests"};
  for (const auto& d : dirs) util::make_dirs(w.root / d);
}

std::vector<std::pair<std::string, std::string>> release_values(const Work& w) {
  const auto& o = w.options;
  bool k8s = o.variant == "standard";
  return {{"ID", "pok8s"},
          {"NAME", "pok8s"},
          {"VERSION", o.version},
          {"FAMILY", std::string(family_name(w.distro.family))},
          {"FLAVOR", w.distro.id},
          {"FLAVOR_RELEASE", w.distro.release},
          {"VARIANT", o.variant},
          {"MODEL", o.model},
          {"ARCH", w.arch},
          {"KUBERNETES", k8s ? o.kubernetes : "none"},
          {"KUBERNETES_VERSION", k8s ? o.kubernetes_version : ""},
          {"BUILD_ID", w.build_id}};
}

// An image is a template: the machine's identity is made on its first boot.
void clear_identity(const Work& w) {
  put_file(w.root, "/etc/machine-id", "", 0444);
  std::error_code ec;
  auto dbus = w.root / "var/lib/dbus/machine-id";
  if (fs::exists(fs::symlink_status(dbus)) && !fs::is_symlink(dbus)) fs::remove(dbus, ec);
  remove_matching(w.root, "/etc/ssh/ssh_host_*");
}

// The bundle's files by name and content: a library update on the host is a new conversion.
json bundle_inputs(const std::vector<BundledFile>& bundle) {
  json files = json::object();
  for (const auto& f : bundle) files[f.path] = util::file_sha256(f.source);
  return files;
}

std::string compute_build_id(const Work& w) {
  const auto& o = w.options;
  json inputs = {{"base", w.base.manifest_digest().str()},
                 {"version", o.version},
                 {"variant", o.variant},
                 {"model", o.model},
                 {"arch", w.arch},
                 {"packages", o.packages},
                 {"toppings", toppings_inputs(o)},
                 {"recipe", util::read_file(o.data_dir / "recipes" /
                                            (std::string(family_name(w.distro.family)) + ".yaml"))},
                 {"agent", util::file_sha256(o.agent_binary)},
                 {"init", util::file_sha256(o.init_binary)},
                 {"sysimage", bundle_inputs(sysimage_bundle(o.sysimage_binary))},
                 {"luks", bundle_inputs(luks_bundle(o.luks_binary))},
                 {"framework", kFrameworkVersion}};
  if (o.variant == "standard")
    inputs["kubernetes"] = {o.kubernetes, o.kubernetes_version,
                            util::file_sha256(w.kubernetes_binary)};
  return util::sha256_hex(inputs.dump()).substr(0, 16);
}

oci::ResolvedImage commit_layer(const Work& w, const rootfs::TreeSnapshot& snapshot,
                                const std::map<std::string, std::string>& labels) {
  w.log("Writing the converted layer");
  rootfs::TreeLayerOptions layer_options;
  layer_options.source_date_epoch = w.options.source_date_epoch;
  layer_options.since = &snapshot;
  auto layer = rootfs::write_tree_layer(w.root, w.store, "the converted image", layer_options);

  std::string created = util::rfc3339(w.options.source_date_epoch.value_or(std::time(nullptr)));
  json config = w.base.config.raw;
  config["created"] = created;
  config["rootfs"]["diff_ids"].push_back(layer.diff_id.str());
  config["history"].push_back({{"created", created},
                               {"created_by", fmt::format("pok8s convert --version {} --variant {}",
                                                          w.options.version, w.options.variant)}});
  json& labels_json = config["config"]["Labels"];
  if (!labels_json.is_object()) labels_json = json::object();
  for (const auto& [k, v] : labels) labels_json[k] = v;
  std::string config_bytes = config.dump();

  return rootfs::image_with_layer(w.base.manifest.to_oci(), std::move(config_bytes), layer, w.store,
                                  "the converted " + w.base.source_name);
}

// Conversions are remembered by their inputs: <store>/converted/<key>.json names the image
// (its manifest, whose blobs are in the store) and what convert_image returned with it.
util::Path memo_path(const Work& w) {
  std::string key =
      w.build_id + "/" +
      (w.options.source_date_epoch ? std::to_string(*w.options.source_date_epoch) : "");
  return w.store.root() / "converted" / (util::sha256_hex(key) + ".json");
}

std::optional<ConvertResult> load_memo(const Work& w) {
  util::Path path = memo_path(w);
  if (!w.options.reuse_cached || !fs::exists(path)) return std::nullopt;
  try {
    json memo = json::parse(util::read_file(path, 1u << 20));
    ConvertResult r;
    r.image.source_name = "the converted " + w.base.source_name;
    r.image.manifest_doc.bytes = memo.at("manifest").get<std::string>();
    r.image.manifest_doc.media_type = memo.at("mediaType").get<std::string>();
    r.image.manifest =
        oci::Manifest::parse(r.image.manifest_doc.bytes, r.image.manifest_doc.media_type);
    for (const auto& layer : r.image.manifest.layers)
      if (!w.store.has(layer.digest)) return std::nullopt;
    if (!w.store.has(r.image.manifest.config.digest)) return std::nullopt;
    r.image.config_bytes = w.store.read(r.image.manifest.config.digest, 64u << 20);
    r.image.config = oci::ImageConfig::parse(r.image.config_bytes);
    r.distro = w.distro;
    r.flavor = w.distro.id;
    r.build_id = w.build_id;
    r.release_file = memo.at("release").get<std::string>();
    r.suggested_tag = memo.at("tag").get<std::string>();
    r.cached = true;
    return r;
  } catch (const std::exception&) {
    // A damaged memo (or a blob gone from the store) only costs a conversion.
    return std::nullopt;
  }
}

void save_memo(const Work& w, const ConvertResult& r) {
  json memo = {{"manifest", r.image.manifest_doc.bytes},
               {"mediaType", r.image.manifest_doc.media_type},
               {"release", r.release_file},
               {"tag", r.suggested_tag}};
  util::Path path = memo_path(w);
  util::make_dirs(path.parent_path());
  util::write_file_atomic(path, memo.dump());
}

std::string image_arch(const oci::ResolvedImage& base) {
  std::string a = base.config.platform.architecture;
  return a.empty() ? oci::Platform::host().architecture : a;
}

}  // namespace

std::string release_file_text(const std::vector<std::pair<std::string, std::string>>& values) {
  std::string out;
  for (const auto& [k, v] : values) {
    std::string quoted;
    for (char c : v) {
      if (c == '"' || c == '\\' || c == '$' || c == '`') quoted.push_back('\\');
      quoted.push_back(c);
    }
    out += fmt::format("{}=\"{}\"\n", k, quoted);
  }
  return out;
}

void validate_convert_options(const ConvertOptions& o) {
  if (o.version.empty()) bad_option("--version", "the OS release version is required");
  if (!is_plain_value(o.version))
    bad_option("--version",
               fmt::format("\"{}\" may only use letters, digits and . _ + -", o.version));
  if (o.variant != "core" && o.variant != "standard")
    bad_option("--variant", fmt::format("\"{}\" is not core or standard", o.variant));
  if (o.model != "generic")
    bad_option("--model", fmt::format("\"{}\" is not a known model (generic)", o.model));
  if (!o.arch.empty() && o.arch != "amd64" && o.arch != "arm64")
    bad_option("--arch", fmt::format("\"{}\" is not amd64 or arm64", o.arch));
  for (const auto& p : o.packages)
    if (p.empty() || p.starts_with("-") || p.find_first_of(" \t\n;&|$`") != std::string::npos)
      bad_option("--packages", fmt::format("\"{}\" is not a package name", p));
  if (!o.kubernetes_sha256.empty() &&
      !std::regex_match(o.kubernetes_sha256, std::regex("[0-9a-f]{64}")))
    bad_option("--k8s-sha256", "expected 64 lowercase hex digits");
  validate_toppings(o.toppings, o.variant == "standard" ? o.kubernetes : "");
  if (o.variant != "standard") {
    if (!o.kubernetes_binary.empty())
      bad_option("--k8s-binary", "only the standard variant has Kubernetes");
    return;
  }
  if (o.kubernetes != "k3s" && o.kubernetes != "k0s")
    bad_option("--k8s", fmt::format("\"{}\" is not k3s or k0s", o.kubernetes));
  if (o.kubernetes_version.empty())
    bad_option("--k8s-version", "the standard variant needs the Kubernetes version");
  if (!is_plain_value(o.kubernetes_version))
    bad_option("--k8s-version", fmt::format("\"{}\" may only use letters, digits and . _ + -",
                                            o.kubernetes_version));
  if (o.kubernetes_binary.empty())
    bad_option("--k8s-binary", "the standard variant needs the k3s or k0s binary (FILE or URL)");
  if (is_url(o.kubernetes_binary) && o.kubernetes_sha256.empty())
    bad_option("--k8s-sha256", "a binary from a URL needs its pinned sha256");
  if (!is_url(o.kubernetes_binary) && ::access(o.kubernetes_binary.c_str(), R_OK) != 0)
    bad_option("--k8s-binary", fmt::format("cannot read {}", o.kubernetes_binary));
}

bool is_converted(const oci::ResolvedImage& image) {
  return image.config.labels.contains("io.pok8s.version");
}

ConvertResult convert_image(const oci::ResolvedImage& base, oci::BlobStore& store,
                            ConvertOptions options) {
  validate_convert_options(options);
  if (is_converted(base))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to convert {}: it is already a pok8s image (version {})",
                            base.source_name, base.config.labels.at("io.pok8s.version")));
  if (options.data_dir.empty()) options.data_dir = util::data_dir();
  if (options.agent_binary.empty()) options.agent_binary = util::node_binary("pok8s-agent");
  if (options.init_binary.empty()) options.init_binary = util::node_binary("pok8s-init");
  if (options.sysimage_binary.empty())
    options.sysimage_binary = util::node_binary("pok8s-sysimage");
  if (options.luks_binary.empty()) options.luks_binary = util::node_binary("pok8s-luks");

  Work w{base, store, options, {}, {}, {}, {}, {}, {}};
  w.arch = options.arch.empty() ? image_arch(base) : options.arch;
  if (w.arch != image_arch(base))
    bad_option("--arch",
               fmt::format("{} is a {} image, not {}", base.source_name, image_arch(base), w.arch));
  w.distro = read_distro(base, store);
  w.recipe = load_recipe(w.distro.family, options.data_dir);
  w.log(fmt::format("{} is {} ({} family, recipe {})", base.source_name, w.distro.pretty,
                    family_name(w.distro.family), w.recipe.name));
  verify_kubernetes_binary(w);
  w.build_id = compute_build_id(w);
  if (auto cached = load_memo(w)) {
    w.log(fmt::format("Converted image: cached (build id {})", w.build_id));
    return *cached;
  }

  util::make_dirs(store.root() / "tmp");
  util::TempDir scratch = util::TempDir::scratch(store.root() / "tmp");
  w.root = scratch.path() / "rootfs";
  w.log("Unpacking the base image");
  rootfs::ApplyOptions apply;
  // Device nodes stay in the base layer; in a user namespace they cannot be made, and a node
  // missing from both the snapshot and the result is no change.
  apply.devices = !util::in_user_namespace();
  rootfs::unpack_image(base, store, w.root, apply);
  rootfs::TreeSnapshot snapshot = rootfs::snapshot_tree(w.root);

  install_packages(w);
  apply_recipe_files(w);
  if (!has_kernel(w.root))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to convert {}: the recipe {} installed no kernel "
                            "(no /boot/vmlinuz* or /lib/modules/*/vmlinuz)",
                            base.source_name, w.recipe.name));
  add_framework(w);
  add_kubernetes(w);
  add_toppings(w);
  clear_identity(w);
  auto values = release_values(w);
  std::string release = release_file_text(values);
  put_file(w.root, kReleasePath, release, 0644);

  ConvertResult result;
  result.distro = w.distro;
  result.flavor = w.distro.id;
  result.build_id = w.build_id;
  result.release_file = release;
  result.suggested_tag =
      fmt::format("{}:{}-{}-{}-{}-{}", w.distro.id, tag_safe(w.distro.release), options.variant,
                  w.arch, options.model, tag_safe(options.version));
  std::map<std::string, std::string> labels;
  for (const auto& [k, v] : values) {
    std::string key = k;
    std::transform(key.begin(), key.end(), key.begin(),
                   [](char c) { return c == '_' ? '-' : static_cast<char>(std::tolower(c)); });
    labels["io.pok8s." + key] = v;
  }
  labels["org.opencontainers.image.version"] = options.version;
  result.image = commit_layer(w, snapshot, labels);
  save_memo(w, result);
  return result;
}

}  // namespace pok8s::convert
