// The docker-archive: transport, the `docker save` / `docker load` format: manifest.json
// naming a config and layer tars inside one tar, read as a synthesized Docker v2s2 manifest.
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "pok8s/oci/image.h"
#include "pok8s/oci/layout.h"
#include "pok8s/util/archive_filters.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::oci {

namespace {

using nlohmann::json;

constexpr int kMaxManifestJsonDepth = 8;
constexpr int kMaxLinkHops = 8;
constexpr std::uint64_t kMaxLayerBytes = 64ull << 30;

// One entry of the archive as seen in pass one: regular file or link to another member.
struct Member {
  std::int64_t size = 0;
  bool regular = false;
  std::string link;  // normalised member name a symlink or hardlink points at
};

// Lexically resolves a symlink target against the member's directory; nullopt if it climbs
// out of the archive.
std::optional<std::string> resolve_link(const std::string& member, const std::string& target) {
  std::string base = target.starts_with('/') ? "" : member.substr(0, member.rfind('/') + 1);
  std::vector<std::string> parts;
  std::string joined = base + target;
  for (std::size_t s = 0;;) {
    std::size_t p = joined.find('/', s);
    std::string part = joined.substr(s, p == std::string::npos ? std::string::npos : p - s);
    if (part == "..") {
      if (parts.empty()) return std::nullopt;
      parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    if (p == std::string::npos) break;
    s = p + 1;
  }
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : "/") + p;
  if (out.empty()) return std::nullopt;
  return out;
}

// The familiar form docker writes into RepoTags: "debian:12", "ghcr.io/x/y:1".
std::string familiar(const RegistryReference& ref) {
  std::string repo = ref.repository;
  if (ref.registry == "docker.io") {
    if (repo.starts_with("library/")) repo = repo.substr(8);
  } else {
    repo = ref.registry + "/" + repo;
  }
  return repo;
}

LayerCompression sniff(std::span<const unsigned char> head) {
  if (head.size() >= 2 && head[0] == 0x1f && head[1] == 0x8b) return LayerCompression::kGzip;
  if (head.size() >= 4 && head[0] == 0x28 && head[1] == 0xb5 && head[2] == 0x2f && head[3] == 0xfd)
    return LayerCompression::kZstd;
  return LayerCompression::kNone;
}

// The Docker v2s2 manifest pok8s reads a docker-archive as. Serialised with sorted keys, so
// the same archive always gives the same manifest digest.
Manifest synthesize_manifest(const Descriptor& config, const std::vector<Descriptor>& layers) {
  Manifest m;
  m.media_type = std::string(media_type::kDockerManifest);
  m.config = config;
  m.config.media_type = std::string(media_type::kDockerConfig);
  m.layers = layers;
  return m;
}

json parse_manifest_json(const std::string& bytes, const std::string& display) {
  auto bad = [&](std::string_view why) {
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read manifest.json of {}: {}", display, why));
  };
  json j;
  try {
    j = json::parse(bytes, [](int depth, json::parse_event_t, json&) {
      if (depth > kMaxManifestJsonDepth) throw Error(ErrorKind::kFormat, "nested too deeply");
      return true;
    });
  } catch (const json::exception& e) {
    bad(e.what());
  } catch (const Error& e) {
    bad(e.what());
  }
  if (!j.is_array()) bad("not a JSON array");
  if (j.empty()) bad("it lists no image");
  if (j.size() > kMaxIndexEntries) bad(fmt::format("more than {} images", kMaxIndexEntries));
  for (const auto& img : j) {
    if (!img.is_object()) bad("an entry is not an object");
    if (!img.contains("Config") || !img["Config"].is_string())
      bad("an entry has no \"Config\" string");
    if (!img.contains("Layers") || !img["Layers"].is_array())
      bad("an entry has no \"Layers\" array");
    if (img["Layers"].size() > kMaxLayers)
      bad(fmt::format("an entry has more than {} layers", kMaxLayers));
    for (const auto& l : img["Layers"])
      if (!l.is_string()) bad("\"Layers\" holds a non-string");
    if (img.contains("RepoTags") && !img["RepoTags"].is_null()) {
      if (!img["RepoTags"].is_array()) bad("\"RepoTags\" is not an array");
      for (const auto& t : img["RepoTags"])
        if (!t.is_string()) bad("\"RepoTags\" holds a non-string");
    }
  }
  return j;
}

std::vector<std::string> repo_tags(const json& img) {
  std::vector<std::string> out;
  if (img.contains("RepoTags") && img["RepoTags"].is_array())
    for (const auto& t : img["RepoTags"]) out.push_back(t.get<std::string>());
  return out;
}

class DockerArchiveSource final : public ImageSource {
 public:
  explicit DockerArchiveSource(const ImageName& name) : path_(name.path), display_(name.str()) {
    scan_members();
    const json& img = choose(name);
    hash_members(img);
  }

  std::string name() const override { return display_; }
  RawDocument top_document() override {
    return {manifest_bytes_, std::string(media_type::kDockerManifest)};
  }
  RawDocument document(const Descriptor& d) override {
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to read manifest {} of {}: a docker-archive holds no index",
                            d.digest.str(), display_));
  }

  void fetch_blob(const Descriptor& d, BlobStore& store, const ProgressFn& progress) override {
    auto it = blob_members_.find(d.digest);
    if (it == blob_members_.end())
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to find blob {} in {}", d.digest.str(), display_));
    std::string what =
        fmt::format("blob {} ({}) of {}", d.digest.short_str(), it->second, display_);
    auto total = static_cast<std::uint64_t>(d.size);
    if (progress) progress({ProgressEvent::Kind::kBlobStart, what, 0, total});
    layout::TarReader reader(path_, display_);
    while (archive_entry* e = reader.next()) {
      auto n =
          layout::normalize_member_name(archive_entry_pathname(e) ? archive_entry_pathname(e) : "");
      if (!n || *n != it->second || archive_entry_filetype(e) != AE_IFREG ||
          archive_entry_hardlink(e))
        continue;
      BlobStore::Writer writer = store.begin(d.digest, total);
      std::byte buf[64 << 10];
      while (std::size_t got = reader.read(buf)) writer.write(std::span<const std::byte>(buf, got));
      writer.commit(what);
      if (progress) progress({ProgressEvent::Kind::kBlobDone, what, total, total});
      return;
    }
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to read {}: the member vanished from the archive", what));
  }

 private:
  // Pass one: every member's header, and manifest.json.
  void scan_members() {
    layout::TarReader reader(path_, display_);
    std::optional<std::string> manifest;
    while (archive_entry* e = reader.next()) {
      auto name =
          layout::normalize_member_name(archive_entry_pathname(e) ? archive_entry_pathname(e) : "");
      if (!name) continue;  // never referenced: references are normalised the same way
      Member m;
      m.size = archive_entry_size(e);
      if (const char* hard = archive_entry_hardlink(e)) {
        if (auto t = layout::normalize_member_name(hard)) m.link = *t;
      } else if (archive_entry_filetype(e) == AE_IFLNK) {
        if (auto t = resolve_link(*name, archive_entry_symlink(e) ? archive_entry_symlink(e) : ""))
          m.link = *t;
      } else {
        m.regular = archive_entry_filetype(e) == AE_IFREG;
      }
      if (*name == "manifest.json" && m.regular)
        manifest = reader.read_all(kMaxManifestBytes, "manifest.json");
      members_[*name] = m;
    }
    if (!manifest)
      throw Error(
          ErrorKind::kFormat,
          fmt::format("Failed to read {}: it has no manifest.json (is it a docker save archive?)",
                      display_));
    manifest_json_ = parse_manifest_json(*manifest, display_);
  }

  const json& choose(const ImageName& name) {
    std::vector<std::string> all;
    for (const auto& img : manifest_json_) {
      auto tags = repo_tags(img);
      all.push_back(tags.empty() ? img["Config"].get<std::string>()
                                 : fmt::format("{}", fmt::join(tags, " ")));
    }
    if (name.docker.repository.empty()) {
      if (manifest_json_.size() != 1)
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to choose an image in {}: it holds {} images ({}); name "
                                "one as docker-archive:FILE:NAME:TAG",
                                display_, manifest_json_.size(), fmt::join(all, ", ")));
      return manifest_json_[0];
    }
    std::string wanted = name.docker.str();
    for (const auto& img : manifest_json_)
      for (const auto& t : repo_tags(img)) {
        try {
          if (RegistryReference::parse(t).str() == wanted) return img;
        } catch (const Error&) {
          // A tag pok8s cannot parse is not the one asked for.
        }
      }
    throw Error(ErrorKind::kNotFound, fmt::format("Failed to find {} in {}: it holds {}", wanted,
                                                  display_, fmt::join(all, ", ")));
  }

  // Follows links to the regular member that holds the data of `ref`.
  std::string resolve(const std::string& ref) const {
    auto name = layout::normalize_member_name(ref);
    if (!name)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read {}: manifest.json names \"{}\", outside the archive",
                              display_, ref.substr(0, 200)));
    std::string cur = *name;
    for (int hop = 0; hop <= kMaxLinkHops; ++hop) {
      auto it = members_.find(cur);
      if (it == members_.end())
        throw Error(
            ErrorKind::kNotFound,
            fmt::format("Failed to read {}: \"{}\" named in manifest.json is not in the archive",
                        display_, ref));
      if (it->second.regular) return cur;
      if (it->second.link.empty())
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to read {}: \"{}\" is not a regular file", display_, ref));
      cur = it->second.link;
    }
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read {}: \"{}\" is a chain of more than {} links", display_,
                            ref, kMaxLinkHops));
  }

  // Pass two: the config's bytes and every layer's digest, size and compression.
  void hash_members(const json& img) {
    std::string config_member = resolve(img["Config"].get<std::string>());
    std::vector<std::string> layer_members;
    for (const auto& l : img["Layers"]) layer_members.push_back(resolve(l.get<std::string>()));
    std::set<std::string> wanted(layer_members.begin(), layer_members.end());
    wanted.insert(config_member);

    struct Hashed {
      Digest digest = Digest::sha256_of("");
      std::int64_t size = 0;
      LayerCompression compression = LayerCompression::kNone;
    };
    std::map<std::string, Hashed> hashed;
    std::string config_bytes;
    layout::TarReader reader(path_, display_);
    while (archive_entry* e = reader.next()) {
      auto n =
          layout::normalize_member_name(archive_entry_pathname(e) ? archive_entry_pathname(e) : "");
      if (!n || !wanted.count(*n) || hashed.count(*n) || archive_entry_filetype(e) != AE_IFREG ||
          archive_entry_hardlink(e))
        continue;
      Hashed h;
      if (*n == config_member) {
        config_bytes = reader.read_all(kMaxConfigBytes, *n);
        h.digest = Digest::sha256_of(config_bytes);
        h.size = static_cast<std::int64_t>(config_bytes.size());
      } else {
        util::Sha256 hash;
        std::byte buf[64 << 10];
        std::uint64_t total = 0;
        bool first = true;
        while (std::size_t got = reader.read(buf)) {
          if (first)
            h.compression = sniff(std::span(reinterpret_cast<const unsigned char*>(buf), got));
          first = false;
          hash.update(std::span<const std::byte>(buf, got));
          total += got;
          if (total > kMaxLayerBytes)
            throw Error(ErrorKind::kInvalidInput,
                        fmt::format("Failed to read {} in {}: larger than {} bytes", *n, display_,
                                    kMaxLayerBytes));
        }
        h.digest = Digest::sha256(hash.hex_digest());
        h.size = static_cast<std::int64_t>(total);
      }
      hashed[*n] = h;
    }
    for (const auto& w : wanted)
      if (!hashed.count(w))
        throw Error(ErrorKind::kFormat,
                    fmt::format("Failed to read {}: member \"{}\" has no data", display_, w));

    ImageConfig config;
    try {
      config = ImageConfig::parse(config_bytes);
    } catch (const Error& e) {
      throw Error(e.kind(), fmt::format("{} (in {} of {})", e.what(), config_member, display_));
    }
    if (config.diff_ids.size() != layer_members.size())
      throw Error(
          ErrorKind::kFormat,
          fmt::format("Failed to read {}: manifest.json lists {} layers, the config {} diff_ids",
                      display_, layer_members.size(), config.diff_ids.size()));
    Descriptor cfg;
    cfg.digest = hashed[config_member].digest;
    cfg.size = hashed[config_member].size;
    blob_members_[cfg.digest] = config_member;
    std::vector<Descriptor> layers;
    for (std::size_t i = 0; i < layer_members.size(); ++i) {
      const Hashed& h = hashed[layer_members[i]];
      Descriptor d;
      d.digest = h.digest;
      d.size = h.size;
      switch (h.compression) {
        case LayerCompression::kNone:
          d.media_type = std::string(media_type::kDockerLayerTar);
          // An uncompressed layer's digest is its diffID: check it here, where it is free.
          if (h.digest != config.diff_ids[i])
            throw Error(
                ErrorKind::kSignature,
                fmt::format(
                    "Failed to verify layer {} ({}) of {}: it hashes to {}, the config says {}",
                    i + 1, layer_members[i], display_, h.digest.str(), config.diff_ids[i].str()));
          break;
        case LayerCompression::kGzip:
          d.media_type = std::string(media_type::kDockerLayerGzip);
          break;
        case LayerCompression::kZstd:
          d.media_type = std::string(media_type::kOciLayerZstd);
          break;
      }
      blob_members_[d.digest] = layer_members[i];
      layers.push_back(std::move(d));
    }
    manifest_bytes_ = synthesize_manifest(cfg, layers).to_json();
  }

  util::Path path_;
  std::string display_;
  std::map<std::string, Member> members_;
  json manifest_json_;
  std::map<Digest, std::string> blob_members_;
  std::string manifest_bytes_;
};

// Decompresses a layer blob in-process (gzip, zstd or none, detected from the bytes) into
// `fd`; returns the digest and size of the uncompressed tar.
std::pair<Digest, std::int64_t> decompress_layer(const util::Path& blob, int fd,
                                                 const std::string& what) {
  struct Free {
    void operator()(archive* a) const { archive_read_free(a); }
  };
  std::unique_ptr<archive, Free> a(archive_read_new());
  util::support_in_process_filters(a.get());
  archive_read_support_format_raw(a.get());
  util::UniqueFd in = util::open_file(blob, O_RDONLY);
  archive_entry* e = nullptr;
  if (archive_read_open_fd(a.get(), in.get(), 64 << 10) != ARCHIVE_OK ||
      archive_read_next_header(a.get(), &e) != ARCHIVE_OK)
    throw Error(ErrorKind::kFormat, fmt::format("Failed to decompress {}: {}", what,
                                                util::archive_error_text(a.get())));
  util::Sha256 hash;
  std::vector<char> buf(1 << 20);
  std::uint64_t total = 0;
  while (true) {
    la_ssize_t n = archive_read_data(a.get(), buf.data(), buf.size());
    if (n < 0)
      throw Error(ErrorKind::kFormat, fmt::format("Failed to decompress {}: {}", what,
                                                  util::archive_error_text(a.get())));
    if (n == 0) break;
    total += static_cast<std::uint64_t>(n);
    if (total > kMaxLayerBytes)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to decompress {}: more than {} bytes", what, kMaxLayerBytes));
    auto chunk = std::as_bytes(std::span(buf.data(), static_cast<std::size_t>(n)));
    hash.update(chunk);
    util::write_all(fd, chunk, what);
  }
  return {Digest::sha256(hash.hex_digest()), static_cast<std::int64_t>(total)};
}

class DockerArchiveDestination final : public ImageDestination {
 public:
  explicit DockerArchiveDestination(ImageName name) : name_(std::move(name)) {}
  std::string name() const override { return name_.str(); }

  Digest write(const ResolvedImage& image, const BlobStore& store, const TransportOptions&,
               const ProgressFn& progress) override {
    const Manifest& m = image.manifest;
    if (image.config.diff_ids.size() != m.layers.size())
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to write {}: the image has {} layers and {} diff_ids", name(),
                              m.layers.size(), image.config.diff_ids.size()));
    for (std::size_t i = 0; i < m.layers.size(); ++i)
      if (!store.has(m.layers[i].digest))
        throw Error(ErrorKind::kNotFound,
                    fmt::format("Failed to write {}: {} is not in the blob cache", name(),
                                image.layer_name(i)));
    if (!store.has(m.config.digest))
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to write {}: the config is not in the blob cache", name()));

    util::Path parent = name_.path.parent_path();
    util::TempDir scratch = util::TempDir::scratch(parent.empty() ? util::Path(".") : parent);
    std::vector<layout::TarMember> members;
    std::vector<Descriptor> written;  // the layers as the archive holds them: uncompressed
    json layer_names = json::array();
    std::map<Digest, std::int64_t> done;  // diffID → uncompressed size, each layer written once
    for (std::size_t i = 0; i < m.layers.size(); ++i) {
      const Descriptor& l = m.layers[i];
      const Digest& diff_id = image.config.diff_ids[i];
      std::string what = image.layer_name(i);
      if (progress)
        progress({ProgressEvent::Kind::kBlobStart, what, 0, static_cast<std::uint64_t>(l.size)});
      std::string member = diff_id.hex() + "/layer.tar";
      Descriptor d;
      d.media_type = std::string(media_type::kDockerLayerTar);
      d.digest = diff_id;
      if (auto it = done.find(diff_id); it != done.end()) {
        d.size = it->second;
      } else if (layer_compression(l.media_type) == LayerCompression::kNone) {
        if (l.digest != diff_id)
          throw Error(ErrorKind::kSignature,
                      fmt::format("Failed to write {}: {} is uncompressed but its digest is not "
                                  "its diffID {}",
                                  name(), what, diff_id.str()));
        d.size = l.size;
        members.push_back({member, false, {}, store.path_for(l.digest), l.digest});
      } else {
        util::Path tmp = scratch.path() / diff_id.hex();
        util::UniqueFd fd = util::open_file(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        auto [actual, size] = decompress_layer(store.path_for(l.digest), fd.get(), what);
        if (actual != diff_id)
          throw Error(ErrorKind::kSignature,
                      fmt::format("Failed to verify {}: it decompresses to {}, the config says {}",
                                  what, actual.str(), diff_id.str()));
        d.size = size;
        members.push_back({member, false, {}, tmp, {}});
      }
      if (done.emplace(diff_id, d.size).second)
        members.push_back({diff_id.hex(), true, {}, {}, {}});
      layer_names.push_back(member);
      written.push_back(d);
      if (progress)
        progress({ProgressEvent::Kind::kBlobDone, what, static_cast<std::uint64_t>(l.size),
                  static_cast<std::uint64_t>(l.size)});
    }
    std::string config_member = m.config.digest.hex() + ".json";
    members.push_back({config_member, false, {}, store.path_for(m.config.digest), m.config.digest});

    json entry = {{"Config", config_member}, {"RepoTags", nullptr}, {"Layers", layer_names}};
    const RegistryReference& ref = name_.docker;
    bool named = !ref.repository.empty() && !ref.tag.empty();
    if (named) {
      entry["RepoTags"] = json::array({familiar(ref) + ":" + ref.tag});
      // The pre-manifest.json format, which old `docker load` still reads: repo → tag → top layer.
      json repos = {{familiar(ref),
                     {{ref.tag, written.empty() ? std::string() : written.back().digest.hex()}}}};
      members.push_back({"repositories", false, repos.dump(), {}, {}});
    }
    members.push_back({"manifest.json", false, json::array({entry}).dump(), {}, {}});

    util::TempFile out(name_.path);
    layout::write_tar(out.fd(), std::move(members), name());
    ::fchmod(out.fd(), 0644);
    out.commit();

    Descriptor cfg;
    cfg.digest = m.config.digest;
    cfg.size = m.config.size;
    return Digest::sha256_of(synthesize_manifest(cfg, written).to_json());
  }

 private:
  ImageName name_;
};

}  // namespace

std::unique_ptr<ImageSource> open_docker_archive_source(const ImageName& name,
                                                        const TransportOptions&) {
  return std::make_unique<DockerArchiveSource>(name);
}

std::unique_ptr<ImageDestination> open_docker_archive_destination(const ImageName& name,
                                                                  const TransportOptions&) {
  return std::make_unique<DockerArchiveDestination>(name);
}

}  // namespace pok8s::oci
