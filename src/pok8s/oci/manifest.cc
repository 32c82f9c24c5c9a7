// Strict parsing of image manifests, indexes and configs from untrusted JSON.
#include "pok8s/oci/manifest.h"

#include <fmt/format.h>
#include <sys/utsname.h>

#include <algorithm>

#include "pok8s/util/error.h"
#include "pok8s/util/json_depth.h"

namespace pok8s::oci {

using nlohmann::json;

namespace {

constexpr int kMaxJsonDepth = 64;

[[noreturn]] void bad(std::string_view where, std::string_view why) {
  throw Error(ErrorKind::kFormat, fmt::format("Invalid {}: {}", where, why));
}

// Parses JSON after checking its nesting depth, so hostile input cannot exhaust the stack.
json parse_json(std::string_view bytes, std::uint64_t limit, std::string_view where) {
  if (bytes.size() > limit)
    bad(where, fmt::format("{} bytes exceeds the limit of {}", bytes.size(), limit));
  if (util::json_nests_deeper_than(bytes, kMaxJsonDepth))
    bad(where, fmt::format("nested deeper than {}", kMaxJsonDepth));
  try {
    json j = json::parse(bytes.begin(), bytes.end());
    if (!j.is_object()) bad(where, "the document is not a JSON object");
    return j;
  } catch (const json::exception& e) {
    bad(where, fmt::format("malformed JSON ({})", e.what()));
  }
}

const json* member(const json& obj, std::string_view key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string get_string(const json& obj, std::string_view key, std::string_view where,
                       bool required) {
  const json* v = member(obj, key);
  if (!v) {
    if (required) bad(where, fmt::format("missing \"{}\"", key));
    return {};
  }
  if (!v->is_string()) bad(where, fmt::format("\"{}\" is not a string", key));
  return v->get<std::string>();
}

std::map<std::string, std::string> get_string_map(const json& obj, std::string_view key,
                                                  std::string_view where) {
  std::map<std::string, std::string> out;
  const json* v = member(obj, key);
  if (!v) return out;
  if (!v->is_object()) bad(where, fmt::format("\"{}\" is not an object", key));
  for (const auto& [k, val] : v->items()) {
    if (!val.is_string()) bad(where, fmt::format("\"{}.{}\" is not a string", key, k));
    out.emplace(k, val.get<std::string>());
  }
  return out;
}

std::vector<std::string> get_string_list(const json& obj, std::string_view key,
                                         std::string_view where) {
  std::vector<std::string> out;
  const json* v = member(obj, key);
  if (!v) return out;
  if (!v->is_array()) bad(where, fmt::format("\"{}\" is not an array", key));
  for (const auto& item : *v) {
    if (!item.is_string()) bad(where, fmt::format("\"{}\" holds a non-string", key));
    out.push_back(item.get<std::string>());
  }
  return out;
}

void check_schema_version(const json& j, std::string_view where) {
  const json* v = member(j, "schemaVersion");
  if (!v || !v->is_number_integer()) bad(where, "missing integer \"schemaVersion\"");
  if (v->get<std::int64_t>() != 2)
    throw Error(
        ErrorKind::kUnsupported,
        fmt::format("Unsupported {}: schemaVersion {} (only 2 is supported)", where, v->dump()));
}

bool is_layer_type(std::string_view mt) {
  return mt == media_type::kOciLayer || mt == media_type::kOciLayerGzip ||
         mt == media_type::kOciLayerZstd || mt == media_type::kOciLayerNondistGzip ||
         mt == "application/vnd.oci.image.layer.nondistributable.v1.tar" ||
         mt == media_type::kDockerLayerGzip || mt == media_type::kDockerLayerForeignGzip ||
         mt == media_type::kDockerLayerTar;
}

std::string map_to_oci(std::string_view mt) {
  if (mt == media_type::kDockerManifest) return std::string(media_type::kOciManifest);
  if (mt == media_type::kDockerManifestList) return std::string(media_type::kOciIndex);
  if (mt == media_type::kDockerConfig) return std::string(media_type::kOciConfig);
  if (mt == media_type::kDockerLayerGzip) return std::string(media_type::kOciLayerGzip);
  if (mt == media_type::kDockerLayerForeignGzip)
    return std::string(media_type::kOciLayerNondistGzip);
  if (mt == media_type::kDockerLayerTar) return std::string(media_type::kOciLayer);
  return std::string(mt);
}

}  // namespace

Platform Platform::parse(std::string_view text) {
  Platform p;
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    auto pos = text.find('/', start);
    parts.emplace_back(text.substr(start, pos == std::string_view::npos ? text.npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  bool ok = parts.size() >= 2 && parts.size() <= 3;
  for (const auto& part : parts)
    ok = ok && !part.empty() && part.size() < 32 &&
         std::all_of(part.begin(), part.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
         });
  if (!ok)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Invalid platform \"{}\": expected OS/ARCH[/VARIANT], e.g. linux/amd64",
                            std::string(text.substr(0, 64))));
  p.os = parts[0];
  p.architecture = parts[1];
  if (parts.size() == 3) p.variant = parts[2];
  return p;
}

Platform Platform::host() {
  utsname u{};
  ::uname(&u);
  std::string_view m = u.machine;
  Platform p{"linux", std::string(m), ""};
  if (m == "x86_64")
    p.architecture = "amd64";
  else if (m == "aarch64")
    p.architecture = "arm64";
  else if (m == "i686" || m == "i386")
    p.architecture = "386";
  return p;
}

std::string Platform::str() const {
  return variant.empty() ? os + "/" + architecture : os + "/" + architecture + "/" + variant;
}

bool Platform::matches(const Platform& c) const {
  if (os != c.os || architecture != c.architecture) return false;
  if (variant.empty()) return true;
  auto norm = [&](const std::string& v) {
    return architecture == "arm64" && v.empty() ? std::string("v8") : v;
  };
  return norm(variant) == norm(c.variant);
}

Descriptor Descriptor::from_json(const json& j, std::string_view where) {
  if (!j.is_object()) bad(where, "a descriptor is not an object");
  Descriptor d;
  d.media_type = get_string(j, "mediaType", where, true);
  d.digest = Digest::parse(get_string(j, "digest", where, true));
  const json* size = member(j, "size");
  if (!size || !size->is_number_integer()) bad(where, "a descriptor has no integer \"size\"");
  d.size = size->get<std::int64_t>();
  if (d.size < 0) bad(where, "a descriptor has a negative size");
  d.annotations = get_string_map(j, "annotations", where);
  d.urls = get_string_list(j, "urls", where);
  if (const json* p = member(j, "platform")) {
    if (!p->is_object()) bad(where, "\"platform\" is not an object");
    Platform plat;
    plat.os = get_string(*p, "os", where, true);
    plat.architecture = get_string(*p, "architecture", where, true);
    plat.variant = get_string(*p, "variant", where, false);
    d.platform = plat;
  }
  return d;
}

json Descriptor::to_json() const {
  json j = json::object();
  j["mediaType"] = media_type;
  j["digest"] = digest.str();
  j["size"] = size;
  if (!urls.empty()) j["urls"] = urls;
  if (!annotations.empty()) j["annotations"] = annotations;
  if (platform) {
    json p = {{"architecture", platform->architecture}, {"os", platform->os}};
    if (!platform->variant.empty()) p["variant"] = platform->variant;
    j["platform"] = p;
  }
  return j;
}

LayerCompression layer_compression(std::string_view mt) {
  if (mt == media_type::kOciLayer || mt == media_type::kDockerLayerTar ||
      mt == "application/vnd.oci.image.layer.nondistributable.v1.tar")
    return LayerCompression::kNone;
  if (mt == media_type::kOciLayerZstd) return LayerCompression::kZstd;
  if (is_layer_type(mt)) return LayerCompression::kGzip;
  throw Error(ErrorKind::kUnsupported, fmt::format("Unsupported layer media type \"{}\"", mt));
}

bool is_docker_media_type(std::string_view mt) {
  return mt.starts_with("application/vnd.docker.");
}

DocumentKind classify_document(std::string_view bytes, std::string_view content_type) {
  std::string_view ct = content_type.substr(0, content_type.find(';'));
  if (ct == media_type::kOciManifest || ct == media_type::kDockerManifest)
    return DocumentKind::kManifest;
  if (ct == media_type::kOciIndex || ct == media_type::kDockerManifestList)
    return DocumentKind::kIndex;
  json j = parse_json(bytes, kMaxManifestBytes, "manifest");
  std::string mt = get_string(j, "mediaType", "manifest", false);
  if (mt == media_type::kOciManifest || mt == media_type::kDockerManifest)
    return DocumentKind::kManifest;
  if (mt == media_type::kOciIndex || mt == media_type::kDockerManifestList)
    return DocumentKind::kIndex;
  if (!mt.empty()) bad("manifest", fmt::format("unknown mediaType \"{}\"", mt));
  if (member(j, "manifests")) return DocumentKind::kIndex;
  if (member(j, "config") || member(j, "layers")) return DocumentKind::kManifest;
  if (member(j, "fsLayers"))
    throw Error(ErrorKind::kUnsupported,
                "Unsupported manifest: Docker schema 1 is deprecated and not read");
  bad("manifest", "neither an image manifest nor an index");
}

Manifest Manifest::parse(std::string_view bytes, std::string_view content_type) {
  constexpr std::string_view kWhere = "image manifest";
  json j = parse_json(bytes, kMaxManifestBytes, kWhere);
  check_schema_version(j, kWhere);
  Manifest m;
  m.media_type = get_string(j, "mediaType", kWhere, false);
  std::string ct(content_type.substr(0, content_type.find(';')));
  if (m.media_type.empty()) m.media_type = ct.empty() ? std::string(media_type::kOciManifest) : ct;
  if (m.media_type != media_type::kOciManifest && m.media_type != media_type::kDockerManifest)
    bad(kWhere, fmt::format("mediaType \"{}\" is not an image manifest", m.media_type));
  if (!ct.empty() && ct != m.media_type &&
      (ct == media_type::kOciManifest || ct == media_type::kDockerManifest ||
       ct == media_type::kOciIndex || ct == media_type::kDockerManifestList))
    bad(kWhere, fmt::format("served as \"{}\" but declares \"{}\"", ct, m.media_type));
  if (member(j, "manifests")) bad(kWhere, "holds \"manifests\": an index posing as a manifest");
  const json* config = member(j, "config");
  if (!config) bad(kWhere, "missing \"config\"");
  m.config = Descriptor::from_json(*config, "image manifest config");
  bool docker = m.media_type == media_type::kDockerManifest;
  if (m.config.media_type == media_type::kOciManifest ||
      m.config.media_type == media_type::kOciIndex ||
      m.config.media_type == media_type::kDockerManifest || is_layer_type(m.config.media_type))
    bad(kWhere,
        fmt::format("config has mediaType \"{}\", which is not a config", m.config.media_type));
  if (docker && m.config.media_type != media_type::kDockerConfig)
    bad(kWhere, fmt::format("a Docker manifest whose config is \"{}\"", m.config.media_type));
  if (m.config.size > static_cast<std::int64_t>(kMaxConfigBytes))
    bad(kWhere,
        fmt::format("config size {} exceeds the limit of {}", m.config.size, kMaxConfigBytes));
  const json* layers = member(j, "layers");
  if (!layers || !layers->is_array()) bad(kWhere, "missing \"layers\" array");
  if (layers->size() > kMaxLayers)
    bad(kWhere, fmt::format("{} layers exceeds the limit of {}", layers->size(), kMaxLayers));
  for (std::size_t i = 0; i < layers->size(); ++i) {
    Descriptor d = Descriptor::from_json((*layers)[i], fmt::format("image manifest layer {}", i));
    if (!is_layer_type(d.media_type))
      bad(kWhere,
          fmt::format("layer {} has mediaType \"{}\", which is not a layer", i, d.media_type));
    m.layers.push_back(std::move(d));
  }
  m.annotations = get_string_map(j, "annotations", kWhere);
  return m;
}

std::string Manifest::to_json() const {
  json j = json::object();
  j["schemaVersion"] = 2;
  j["mediaType"] = media_type;
  j["config"] = config.to_json();
  json ls = json::array();
  for (const auto& l : layers) ls.push_back(l.to_json());
  j["layers"] = ls;
  if (!annotations.empty()) j["annotations"] = annotations;
  return j.dump();
}

Manifest Manifest::to_oci() const {
  Manifest m = *this;
  m.media_type = map_to_oci(media_type);
  m.config.media_type = map_to_oci(config.media_type);
  for (auto& l : m.layers) l.media_type = map_to_oci(l.media_type);
  return m;
}

Index Index::parse(std::string_view bytes, std::string_view content_type) {
  constexpr std::string_view kWhere = "image index";
  json j = parse_json(bytes, kMaxManifestBytes, kWhere);
  check_schema_version(j, kWhere);
  Index idx;
  idx.media_type = get_string(j, "mediaType", kWhere, false);
  std::string ct(content_type.substr(0, content_type.find(';')));
  if (idx.media_type.empty()) idx.media_type = ct.empty() ? std::string(media_type::kOciIndex) : ct;
  if (idx.media_type != media_type::kOciIndex && idx.media_type != media_type::kDockerManifestList)
    bad(kWhere, fmt::format("mediaType \"{}\" is not an index", idx.media_type));
  if (member(j, "config") || member(j, "layers"))
    bad(kWhere, "holds \"config\" or \"layers\": a manifest posing as an index");
  const json* ms = member(j, "manifests");
  if (!ms || !ms->is_array()) bad(kWhere, "missing \"manifests\" array");
  if (ms->size() > kMaxIndexEntries)
    bad(kWhere, fmt::format("{} entries exceeds the limit of {}", ms->size(), kMaxIndexEntries));
  for (std::size_t i = 0; i < ms->size(); ++i) {
    Descriptor d = Descriptor::from_json((*ms)[i], fmt::format("image index entry {}", i));
    if (is_layer_type(d.media_type) || d.media_type == media_type::kOciConfig ||
        d.media_type == media_type::kDockerConfig)
      bad(kWhere,
          fmt::format("entry {} has mediaType \"{}\", which is not a manifest", i, d.media_type));
    if (d.size > static_cast<std::int64_t>(kMaxManifestBytes))
      bad(kWhere, fmt::format("entry {} declares {} bytes, over the manifest limit", i, d.size));
    idx.manifests.push_back(std::move(d));
  }
  idx.annotations = get_string_map(j, "annotations", kWhere);
  return idx;
}

std::string Index::to_json() const {
  json j = json::object();
  j["schemaVersion"] = 2;
  j["mediaType"] = media_type;
  json ms = json::array();
  for (const auto& m : manifests) ms.push_back(m.to_json());
  j["manifests"] = ms;
  if (!annotations.empty()) j["annotations"] = annotations;
  return j.dump();
}

const Descriptor& Index::select(const Platform& wanted) const {
  for (const auto& d : manifests)
    if (d.platform && wanted.matches(*d.platform) &&
        (d.media_type == media_type::kOciManifest || d.media_type == media_type::kDockerManifest))
      return d;
  std::string have;
  for (const auto& d : manifests)
    if (d.platform) have += (have.empty() ? "" : ", ") + d.platform->str();
  throw Error(ErrorKind::kNotFound,
              fmt::format("No image for platform {} in the index (it has: {})", wanted.str(),
                          have.empty() ? "none" : have));
}

ImageConfig ImageConfig::parse(std::string_view bytes) {
  constexpr std::string_view kWhere = "image config";
  ImageConfig c;
  c.raw = parse_json(bytes, kMaxConfigBytes, kWhere);
  const json& j = c.raw;
  c.platform.os = get_string(j, "os", kWhere, true);
  c.platform.architecture = get_string(j, "architecture", kWhere, true);
  c.platform.variant = get_string(j, "variant", kWhere, false);
  c.created = get_string(j, "created", kWhere, false);
  const json* rootfs = member(j, "rootfs");
  if (!rootfs || !rootfs->is_object()) bad(kWhere, "missing \"rootfs\" object");
  if (get_string(*rootfs, "type", kWhere, true) != "layers")
    bad(kWhere, "rootfs.type is not \"layers\"");
  for (const auto& s : get_string_list(*rootfs, "diff_ids", kWhere))
    c.diff_ids.push_back(Digest::parse(s));
  if (c.diff_ids.size() > kMaxLayers) bad(kWhere, "too many diff_ids");
  if (const json* cfg = member(j, "config")) {
    if (!cfg->is_object()) bad(kWhere, "\"config\" is not an object");
    c.labels = get_string_map(*cfg, "Labels", kWhere);
    c.env = get_string_list(*cfg, "Env", kWhere);
    c.entrypoint = get_string_list(*cfg, "Entrypoint", kWhere);
    c.cmd = get_string_list(*cfg, "Cmd", kWhere);
    c.working_dir = get_string(*cfg, "WorkingDir", kWhere, false);
    c.user = get_string(*cfg, "User", kWhere, false);
  }
  return c;
}

}  // namespace pok8s::oci
