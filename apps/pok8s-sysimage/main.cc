// pok8s-sysimage: the node's half of `pok8s-agent upgrade`. Reads a pok8s image from any source
// pok8s reads (docker://, oci:, oci-archive:, …), verifying every document and blob against
// its digest, and writes the three files of a system image — rootfs.img, vmlinuz, initrd —
// with the factory's own code, so an upgraded node boots exactly what a disk image would.
//
// It is dynamically linked (libcurl has no static build in Debian) and shipped in every
// converted image with its library closure and its own dynamic loader under
// /usr/lib/pok8s/sysimage, so it runs the same on glibc and musl distributions. The static
// pok8s-agent runs it and does the rest: space, verification, the A/B rotation. The agent's
// network stage runs its `fetch` for config_url, the same way.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "pok8s/build/artifacts.h"
#include "pok8s/build/uki_upgrade.h"
#include "pok8s/convert/convert.h"
#include "pok8s/convert/download.h"
#include "pok8s/image/disk_layout.h"
#include "pok8s/node/upgrade.h"
#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace {

using nlohmann::json;
using namespace pok8s;

// What `write` wrote: source, digest, version, kernel and the files with size and sha256.
constexpr const char* kInfoFile = "image.json";

struct Options {
  std::string source;
  std::string output;
  std::string cache;
  bool tls_verify = true;
  std::string authfile;
  std::string creds;
  int jobs = 4;
  std::string trust;  // uki-iso: the installed UKI the new ones must match
};

// A UKI system's new image: the rootfs with its verity tree and the signed UKIs, from a uki-iso.
int run_uki_iso(const Options& o) {
  std::string iso = o.source.substr(node::kUkiIsoScheme.size());
  std::optional<util::Path> trust;
  if (!o.trust.empty()) trust = o.trust;
  build::UkiImage image = build::write_uki_image(iso, o.output, trust, [](std::string_view line) {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  });
  json out = {{"source", o.source},
              {"kind", "uki"},
              {"rootHash", image.root_hash},
              {"kernel", image.kernel},
              {"files", json::array()}};
  if (!image.version.empty()) out["version"] = image.version;
  for (const auto& f : image.files)
    out["files"].push_back({{"name", f.name}, {"size", f.size}, {"sha256", f.sha256}});
  util::write_file_atomic(util::Path(o.output) / kInfoFile, out.dump(2) + "\n");
  return 0;
}

int run(const Options& o) {
  if (o.source.starts_with(node::kUkiIsoScheme)) return run_uki_iso(o);
  oci::TransportOptions t;
  t.tls_verify = o.tls_verify;
  if (!o.authfile.empty()) t.auth_file = o.authfile;
  t.credentials = o.creds;
  t.jobs = o.jobs;
  oci::BlobStore store(o.cache);
  auto source = oci::open_source(oci::ImageName::parse(o.source), t);
  std::fprintf(stderr, "Reading %s\n", o.source.c_str());
  oci::ResolvedImage image = oci::resolve_image(*source, store, std::nullopt);
  oci::fetch_layers(*source, image, store, t, [](const oci::ProgressEvent& e) {
    if (e.kind == oci::ProgressEvent::Kind::kBlobDone)
      std::fprintf(stderr, "Fetched %s\n", e.what.c_str());
  });
  if (!convert::is_converted(image))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read {}: it is not a pok8s image (convert it with pok8s "
                            "convert first)",
                            o.source));
  build::BuildOptions b;
  // The cache sits next to the output, on the same file system, so its files are handed over
  // without a copy.
  b.cache_dir = util::Path(o.output).parent_path() / ".sysimage-cache";
  // zstd level 3 for both, not the factory's 9 and 15: the factory compresses once for every
  // download and boot, a node for itself alone, often on a small CPU. On the Debian fixture this
  // halves the CPU time of the whole write (28.5 to 13.9 s on 2 cores; the rootfs 8 % larger).
  b.compression_level = 3;
  b.initramfs_level = 3;
  b.log = [](std::string_view line) {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
  };
  build::SystemFiles files;
  try {
    files = build::write_system_files(image, store, b, o.output);
  } catch (...) {
    util::remove_tree(b.cache_dir);
    throw;
  }
  util::remove_tree(b.cache_dir);
  json out = {{"source", o.source},
              {"digest", image.manifest_digest().str()},
              {"kernel", files.kernel_version},
              {"files", json::array()}};
  auto labels = image.config.labels;
  if (auto v = labels.find("io.pok8s.version"); v != labels.end()) out["version"] = v->second;
  for (const auto& f : files.files)
    out["files"].push_back({{"name", f.name}, {"size", f.size}, {"sha256", f.sha256}});
  util::write_file_atomic(util::Path(o.output) / kInfoFile, out.dump(2) + "\n");
  return 0;
}

// Reads every file image.json lists back and compares size and sha256: run by the agent after
// it flushed the files and dropped them from the page cache, so this reads the disk.
int verify(const std::string& dir) {
  util::Path info_file = util::Path(dir) / kInfoFile;
  json info;
  try {
    info = json::parse(util::read_file(info_file, 1u << 20));
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read {}: {}", info_file.string(), e.what()));
  }
  // A system image is rootfs.img, vmlinuz and initrd; a UKI system's, rootfs.img and its UKIs.
  const bool uki = info.value("kind", "") == "uki";
  const std::size_t count = uki ? 4 : 3;
  if (!info.contains("files") || !info["files"].is_array() || info["files"].size() != count)
    throw Error(ErrorKind::kFormat, fmt::format("Failed to read {}: it does not list the {} files",
                                                info_file.string(), count));
  for (const auto& f : info["files"]) {
    std::string name = f.value("name", "");
    bool known = name == image::kRootfsFile ||
                 (uki ? !node::installed_uki_mode(name).empty()
                      : name == image::kKernelFile || name == image::kInitrdFile);
    if (!known)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read {}: unknown file {:?}", info_file.string(), name));
    util::Path file = util::Path(dir) / name;
    std::string sha = util::file_sha256(file);
    if (sha != f.value("sha256", ""))
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to verify {}: it reads back as sha256 {}, {} was written",
                              file.string(), sha, f.value("sha256", "")));
  }
  std::fprintf(stderr, "Verified %s\n", dir.c_str());
  return 0;
}

// Downloads one file over HTTP(S) (pok8s-agent's config_url): complete at `output` or not there.
int fetch(const std::string& url, const std::string& output, std::uint64_t limit) {
  convert::download_file(url, output, limit);
  std::fprintf(stderr, "Fetched %s\n", url.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "pok8s-sysimage: write a system image (rootfs.img, vmlinuz, initrd) from a pok8s "
      "image, and verify one; run by pok8s-agent upgrade. Also fetches config_url for "
      "pok8s-agent"};
  app.set_version_flag("--version", std::string("pok8s-sysimage ") + POK8S_VERSION);
  app.require_subcommand(1);
  Options o;
  auto* write = app.add_subcommand("write", "Read an image and write its system image");
  write
      ->add_option("SOURCE", o.source,
                   "The image: docker://…, oci:DIR[:TAG], oci-archive:FILE; uki-iso:FILE (or a "
                   "drive) for a system that boots signed UKIs")
      ->required();
  write->add_option("--trust", o.trust,
                    "uki-iso: an installed UKI; the new UKIs must have its signer and PCR key");
  write->add_option("-o,--output", o.output, "Directory that receives the files")->required();
  write->add_option("--cache", o.cache, "Blob cache directory")->required();
  write
      ->add_option("--tls-verify", o.tls_verify,
                   "Require HTTPS with a verified certificate (false allows plain HTTP)")
      ->default_val(true);
  write->add_option("--authfile", o.authfile, "Credentials file (auth.json or config.json)");
  write->add_option("--creds", o.creds, "Registry credentials USER:PASSWORD");
  write->add_option("--jobs", o.jobs, "Blobs transferred at once")->default_val(4);
  std::string verify_dir;
  auto* check = app.add_subcommand(
      "verify", "Read a written system image back against its " + std::string(kInfoFile));
  check->add_option("DIR", verify_dir, "The directory `write` wrote")->required();
  std::string url;
  std::string fetch_output;
  std::uint64_t fetch_limit = 1u << 20;
  auto* get = app.add_subcommand("fetch", "Download one file over HTTP(S) (config_url)");
  get->add_option("URL", url, "http:// or https://")->required();
  get->add_option("-o,--output", fetch_output, "The file to write (complete, or not at all)")
      ->required();
  get->add_option("--max-bytes", fetch_limit, "Refuse a larger download")->default_val(1u << 20);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (get->parsed()) return fetch(url, fetch_output, fetch_limit);
    return write->parsed() ? run(o) : verify(verify_dir);
  } catch (const Error& e) {
    std::fprintf(stderr, "pok8s-sysimage: %s\n", e.what());
    return exit_code(e.kind());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pok8s-sysimage: internal error: %s\n", e.what());
    return exit_code(ErrorKind::kInternal);
  }
}
