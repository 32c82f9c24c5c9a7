// Where finished builds' artifacts live. The directory store keeps <root>/<build id>/<name>,
// committed by renaming a complete temporary directory into place; the registry store keeps
// each build as an OCI artifact in a registry. Either way a reader never sees half of a build.
#include "pok8s/server/artifact_store.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/image.h"
#include "pok8s/oci/manifest.h"
#include "pok8s/oci/reference.h"
#include "pok8s/oci/registry.h"
#include "pok8s/util/error.h"
#include "pok8s/util/parallel.h"
#include "pok8s/util/sha256.h"

namespace pok8s::server {
namespace fs = std::filesystem;
using nlohmann::json;
namespace {

class DirStore : public ArtifactStore {
 public:
  // The store is the service user's alone, like its data directory, whatever the umask.
  explicit DirStore(util::Path root) : root_(std::move(root)) {
    util::make_dirs(root_);
    fs::permissions(root_, fs::perms::owner_all, fs::perm_options::replace);
  }

  void put(std::string_view build_id, const util::Path& dir,
           const std::vector<StoredArtifact>& artifacts) override {
    util::TempDir staged(root_ / std::string(build_id));
    for (const auto& a : artifacts) {
      util::Path from = dir / a.name;
      util::Path to = staged.path() / a.name;
      std::error_code ec;
      fs::rename(from, to, ec);
      if (ec == std::errc::cross_device_link) fs::copy_file(from, to, ec);
      if (!ec)
        fs::permissions(to, fs::perms::owner_read | fs::perms::owner_write,
                        fs::perm_options::replace, ec);
      if (ec)
        throw Error(ErrorKind::kIo, fmt::format("Failed to store artifact {} of build {}: {}",
                                                a.name, build_id, ec.message()));
      if (fs::file_size(to) != a.size || util::file_sha256(to) != a.sha256)
        throw Error(ErrorKind::kSignature,
                    fmt::format("Failed to store artifact {} of build {}: it does not match the "
                                "size and sha256 the build reported",
                                a.name, build_id));
    }
    util::remove_tree(root_ / std::string(build_id));
    staged.commit();
  }

  std::optional<util::Path> locate(std::string_view build_id, const StoredArtifact& a) override {
    util::Path p = root_ / std::string(build_id) / a.name;
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode) ||
        static_cast<std::uint64_t>(st.st_size) != a.size)
      return std::nullopt;
    return p;
  }

  std::string describe() const override { return "dir:" + root_.string(); }

 private:
  util::Path root_;
};

// The registry store follows the OCI image spec's guidance for artifacts (image-spec 1.1,
// "Guidelines for Artifact Usage"): an image manifest with an artifactType, the empty config,
// and one layer per file named by its title annotation, tagged with the build's id. Registries
// that predate artifactType (distribution 2.8) store and serve it unchanged all the same.
constexpr std::string_view kBuildArtifactType = "application/vnd.pok8s.build.v1";
constexpr std::string_view kEmptyMediaType = "application/vnd.oci.empty.v1+json";
constexpr std::string_view kEmptyJson = "{}";
constexpr std::string_view kTitleAnnotation = "org.opencontainers.image.title";
constexpr std::string_view kBuildIdAnnotation = "io.pok8s.build.id";
// Concurrent blob uploads of one put.
constexpr int kPushJobs = 4;
constexpr std::size_t kMaxArtifactNameBytes = 255;

std::string media_type_for(std::string_view name) {
  if (name.ends_with(".iso")) return "application/x-iso9660-image";
  if (name.ends_with(".json")) return "application/json";
  return "application/octet-stream";
}

bool is_plain_file_name(std::string_view name) {
  return !name.empty() && name.size() <= kMaxArtifactNameBytes && name != "." && name != ".." &&
         name.find_first_of(std::string_view("/\0", 2)) == std::string_view::npos;
}

oci::Descriptor empty_config() {
  oci::Descriptor d;
  d.media_type = std::string(kEmptyMediaType);
  d.digest = oci::Digest::sha256_of(kEmptyJson);
  d.size = static_cast<std::int64_t>(kEmptyJson.size());
  return d;
}

oci::TransportOptions transport_options(bool tls_verify) {
  oci::TransportOptions o;
  o.tls_verify = tls_verify;
  // The administrator chose this registry: the outbound policy for what users name does not
  // apply to it (it may well be on a private network).
  o.trusted = true;
  return o;
}

// The registry with no tag, so that messages name the repository rather than ":latest".
oci::RegistryReference repository_of(oci::RegistryReference ref) {
  ref.tag.clear();
  ref.digest.reset();
  return ref;
}

class RegistryStore : public ArtifactStore {
 public:
  RegistryStore(std::string spec, const oci::RegistryReference& ref, const util::Path& cache_dir,
                bool tls_verify)
      : spec_(std::move(spec)),
        cache_(cache_dir),
        // Separate clients, because a token is scoped by access: a server that only serves
        // builds may hold credentials that allow pulling and nothing else.
        push_(repository_of(ref), transport_options(tls_verify), oci::RegistryAccess::kPush),
        pull_(repository_of(ref), transport_options(tls_verify), oci::RegistryAccess::kPull) {}

  void put(std::string_view build_id, const util::Path& dir,
           const std::vector<StoredArtifact>& artifacts) override {
    if (!oci::is_valid_tag(build_id))
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to store build {:?} in {}: its id is not a valid tag",
                              build_id.substr(0, 140), spec_));
    if (artifacts.size() > oci::kMaxLayers)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to store build {} in {}: more than {} artifacts", build_id,
                              spec_, oci::kMaxLayers));
    // Every file is verified into the cache before anything is pushed, so a build whose files
    // do not match what it reported leaves no trace in the registry.
    std::set<std::string_view> names;
    std::vector<oci::Descriptor> layers;
    for (const auto& a : artifacts) {
      if (!names.insert(a.name).second)
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to store build {} in {}: artifact {:?} is listed twice",
                                build_id, spec_, a.name));
      layers.push_back(cache_artifact(build_id, dir, a));
    }
    oci::Descriptor config = empty_config();
    if (!cache_.has(config.digest)) cache_.put(config.digest, kEmptyJson, "the empty config");

    std::vector<const oci::Descriptor*> blobs;
    blobs.reserve(layers.size() + 1);
    for (const auto& l : layers) blobs.push_back(&l);
    blobs.push_back(&config);
    util::parallel_for(blobs.size(), kPushJobs, [&](std::size_t i) {
      std::string what =
          i < artifacts.size()
              ? fmt::format("artifact {} of build {} to {}", artifacts[i].name, build_id, spec_)
              : fmt::format("the config of build {} to {}", build_id, spec_);
      push_.push_blob(*blobs[i], cache_, what, nullptr);
    });

    json layer_list = json::array();
    for (const auto& l : layers) layer_list.push_back(l.to_json());
    json manifest = {
        {"schemaVersion", 2},
        {"mediaType", std::string(oci::media_type::kOciManifest)},
        {"artifactType", std::string(kBuildArtifactType)},
        {"config", config.to_json()},
        {"layers", std::move(layer_list)},
        {"annotations", {{std::string(kBuildIdAnnotation), std::string(build_id)}}},
    };
    oci::RawDocument doc{manifest.dump(), std::string(oci::media_type::kOciManifest)};
    // The tag is what makes a build visible, and a registry accepts a manifest only once it has
    // every blob the manifest names: pushed last, the tag moves from the previous build's
    // complete artifact to this one's in one step, and a failed put leaves only unreferenced
    // blobs behind.
    push_.put_manifest(doc, std::string(build_id));
  }

  std::optional<util::Path> locate(std::string_view build_id, const StoredArtifact& a) override {
    auto layer = stored_layer(build_id, a);
    if (!layer) return std::nullopt;
    fetch_into_cache(*layer,
                     fmt::format("artifact {} of build {} from {}", a.name, build_id, spec_));
    return cache_.path_for(layer->digest);
  }

  // The manifest alone answers: nothing is downloaded.
  bool contains(std::string_view build_id, const StoredArtifact& a) override {
    return stored_layer(build_id, a).has_value();
  }

  std::string describe() const override { return spec_; }

 private:
  // Streams dir/<name> into the cache, checking it against the size and sha256 the build
  // reported; returns its layer descriptor.
  oci::Descriptor cache_artifact(std::string_view build_id, const util::Path& dir,
                                 const StoredArtifact& a) {
    std::string what = fmt::format("artifact {} of build {}", a.name, build_id);
    if (!is_plain_file_name(a.name))
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to store artifact {:?} of build {}: not a plain file name",
                              a.name.substr(0, kMaxArtifactNameBytes), build_id));
    auto digest = oci::Digest::try_parse("sha256:" + a.sha256);
    if (!digest)
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to store {}: the build reported {:?}, not a sha256", what,
                              a.sha256.substr(0, 100)));
    util::Path file = dir / a.name;
    util::UniqueFd in = util::open_file(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st {};
    if (::fstat(in.get(), &st) != 0) throw_errno("Failed to stat " + file.string(), errno);
    if (!S_ISREG(st.st_mode) || static_cast<std::uint64_t>(st.st_size) != a.size)
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to store {}: it does not match the size and sha256 the "
                              "build reported",
                              what));
    // Read even when the cache has the digest already: what is checked is the build's file.
    oci::BlobStore::Writer writer = cache_.begin(*digest, a.size);
    std::string buf(1u << 20, '\0');
    while (true) {
      ssize_t n = ::read(in.get(), buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw_errno("Failed to read " + file.string(), errno);
      if (n == 0) break;
      writer.write(std::string_view(buf.data(), static_cast<std::size_t>(n)));
    }
    writer.commit(what);

    oci::Descriptor d;
    d.media_type = media_type_for(a.name);
    d.digest = *digest;
    d.size = static_cast<std::int64_t>(a.size);
    d.annotations[std::string(kTitleAnnotation)] = a.name;
    return d;
  }

  // The layer titled `name` in a build's manifest; nothing when the manifest is not a pok8s
  // build's or has no such layer. Throws kFormat when it is not a manifest at all.
  // The layer of the build's manifest that holds `a`, if its name, digest and size match.
  std::optional<oci::Descriptor> stored_layer(std::string_view build_id, const StoredArtifact& a) {
    auto digest = oci::Digest::try_parse("sha256:" + a.sha256);
    if (!oci::is_valid_tag(build_id) || !digest) return std::nullopt;
    auto head = pull_.head_manifest(std::string(build_id));
    if (!head) return std::nullopt;
    // By digest, so the bytes are checked against what the tag pointed at.
    oci::RawDocument doc = pull_.get_manifest(head->digest);
    auto layer = find_layer(doc, build_id, a.name);
    if (!layer || layer->digest != *digest || layer->size < 0 ||
        static_cast<std::uint64_t>(layer->size) != a.size)
      return std::nullopt;
    return layer;
  }

  std::optional<oci::Descriptor> find_layer(const oci::RawDocument& doc, std::string_view build_id,
                                            std::string_view name) {
    std::string where = fmt::format("the manifest of build {} in {}", build_id, spec_);
    json m = json::parse(doc.bytes, nullptr, false);
    if (m.is_discarded() || !m.is_object())
      throw Error(ErrorKind::kFormat, fmt::format("Failed to read {}: it is not JSON", where));
    auto string_at = [&](std::string_view key) -> std::string {
      auto it = m.find(key);
      return it != m.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    if (string_at("artifactType") != kBuildArtifactType) return std::nullopt;
    auto annotations = m.find("annotations");
    if (annotations == m.end() || !annotations->is_object() ||
        annotations->value(kBuildIdAnnotation, std::string()) != build_id)
      return std::nullopt;
    auto layers = m.find("layers");
    if (layers == m.end() || !layers->is_array() || layers->size() > oci::kMaxLayers)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read {}: \"layers\" is not a list of at most {}", where,
                              oci::kMaxLayers));
    for (const auto& l : *layers) {
      oci::Descriptor d = oci::Descriptor::from_json(l, where);
      auto title = d.annotations.find(std::string(kTitleAnnotation));
      if (title != d.annotations.end() && title->second == name) return d;
    }
    return std::nullopt;
  }

  // One download per blob at a time: a second caller waits for the first and then finds the
  // blob cached, rather than fetching the same gigabytes beside it. If the first fails, the
  // next caller tries for itself.
  void fetch_into_cache(const oci::Descriptor& blob, const std::string& what) {
    std::shared_ptr<std::mutex> blob_mutex;
    {
      std::lock_guard lock(fetching_mutex_);
      auto& slot = fetching_[blob.digest.str()];
      if (!slot) slot = std::make_shared<std::mutex>();
      blob_mutex = slot;
    }
    struct Release {
      RegistryStore& store;
      const std::string& key;
      std::shared_ptr<std::mutex>& held;
      ~Release() {
        std::lock_guard lock(store.fetching_mutex_);
        // Only the map and this caller hold it: nobody else is waiting.
        if (auto it = store.fetching_.find(key);
            it != store.fetching_.end() && it->second == held && held.use_count() == 2)
          store.fetching_.erase(it);
      }
    };
    std::string key = blob.digest.str();
    Release release{*this, key, blob_mutex};
    std::lock_guard lock(*blob_mutex);
    if (!cache_.has(blob.digest)) pull_.fetch_blob(blob, cache_, what, nullptr);
  }

  std::string spec_;
  oci::BlobStore cache_;
  oci::RegistryClient push_;
  oci::RegistryClient pull_;
  std::mutex fetching_mutex_;
  std::map<std::string, std::shared_ptr<std::mutex>> fetching_;
};

std::unique_ptr<ArtifactStore> open_registry_store(const std::string& spec,
                                                   const util::Path& data_dir, bool tls_verify) {
  constexpr std::string_view kForm = "give docker://HOST[:PORT]/REPOSITORY";
  std::string_view rest = std::string_view(spec).substr(std::string_view("docker://").size());
  auto slash = rest.find('/');
  if (slash == std::string_view::npos)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to open artifact store {:?}: no repository; {}", spec, kForm));
  // Each build is its own tag, so the spec names a repository and nothing in it.
  if (rest.find('@') != std::string_view::npos ||
      rest.substr(rest.rfind('/')).find(':') != std::string_view::npos)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to open artifact store {:?}: a tag or digest is not allowed, "
                            "builds are tagged with their ids; {}",
                            spec, kForm));
  oci::ImageName name = oci::ImageName::parse(spec);
  return std::make_unique<RegistryStore>(spec, name.docker, data_dir / "artifact-cache",
                                         tls_verify);
}

}  // namespace

std::unique_ptr<ArtifactStore> open_artifact_store(const std::string& spec,
                                                   const util::Path& data_dir, bool tls_verify) {
  if (spec.empty()) return std::make_unique<DirStore>(data_dir / "artifacts");
  if (spec.starts_with("docker://")) return open_registry_store(spec, data_dir, tls_verify);
  std::string path = spec.starts_with("dir:") ? spec.substr(4) : spec;
  if (path.empty() || path.front() != '/')
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to open artifact store {:?}: give dir:/ABSOLUTE/PATH or "
                            "docker://HOST[:PORT]/REPOSITORY",
                            spec));
  return std::make_unique<DirStore>(util::Path(path));
}

}  // namespace pok8s::server
