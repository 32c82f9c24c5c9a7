// Reference grammar after the distribution spec and Docker's normalisation rules.
#include "pok8s/oci/reference.h"

#include <fmt/format.h>

#include <vector>

#include "pok8s/util/error.h"

namespace pok8s::oci {

namespace {

constexpr std::size_t kMaxReferenceLength = 4096;

[[noreturn]] void refuse(std::string_view text, std::string_view why) {
  std::string shown(text.substr(0, 200));
  for (char& c : shown)
    if (c < 0x20 || c >= 0x7f) c = '?';
  throw Error(ErrorKind::kInvalidInput,
              fmt::format("Invalid image reference \"{}\": {}", shown, why));
}

bool is_lower_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// path-component := [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
bool is_path_component(std::string_view s) {
  std::size_t i = 0;
  auto run = [&] {
    std::size_t start = i;
    while (i < s.size() && is_lower_alnum(s[i])) ++i;
    return i > start;
  };
  if (!run()) return false;
  while (i < s.size()) {
    if (s[i] == '.') {
      ++i;
    } else if (s[i] == '_') {
      ++i;
      if (i < s.size() && s[i] == '_') ++i;
    } else if (s[i] == '-') {
      while (i < s.size() && s[i] == '-') ++i;
    } else {
      return false;
    }
    if (!run()) return false;
  }
  return true;
}

// domain := host[:port]; host components are alphanumerics with inner hyphens.
bool is_domain(std::string_view s) {
  auto colon = s.rfind(':');
  std::string_view host = s, port;
  if (colon != std::string_view::npos) {
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
    if (port.empty() || port.size() > 5) return false;
    for (char c : port)
      if (c < '0' || c > '9') return false;
  }
  if (host.empty()) return false;
  std::size_t start = 0;
  while (start <= host.size()) {
    auto dot = host.find('.', start);
    std::string_view part =
        host.substr(start, dot == std::string_view::npos ? host.npos : dot - start);
    if (part.empty() || part.front() == '-' || part.back() == '-') return false;
    for (char c : part)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-')) return false;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return true;
}

}  // namespace

bool is_valid_tag(std::string_view tag) {
  if (tag.empty() || tag.size() > 128) return false;
  for (std::size_t i = 0; i < tag.size(); ++i) {
    char c = tag[i];
    bool word = std::isalnum(static_cast<unsigned char>(c)) || c == '_';
    if (!(word || (i > 0 && (c == '.' || c == '-')))) return false;
  }
  return true;
}

RegistryReference RegistryReference::parse(std::string_view text) {
  if (text.empty()) refuse(text, "it is empty");
  if (text.size() > kMaxReferenceLength) refuse(text, "it is longer than 4096 characters");
  RegistryReference ref;
  std::string_view rest = text;
  if (auto at = rest.find('@'); at != std::string_view::npos) {
    auto d = Digest::try_parse(rest.substr(at + 1));
    if (!d) refuse(text, "the part after '@' is not a valid digest");
    ref.digest = *d;
    rest = rest.substr(0, at);
  }
  // A tag follows the last ':' that comes after the last '/'.
  auto slash = rest.rfind('/');
  auto colon = rest.rfind(':');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) {
    std::string_view tag = rest.substr(colon + 1);
    if (!is_valid_tag(tag)) refuse(text, "the tag is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}");
    ref.tag = tag;
    rest = rest.substr(0, colon);
  }
  std::vector<std::string_view> parts;
  for (std::size_t start = 0;;) {
    auto pos = rest.find('/', start);
    parts.push_back(rest.substr(start, pos == std::string_view::npos ? rest.npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  std::string_view first = parts.front();
  bool has_domain = parts.size() > 1 &&
                    (first.find('.') != std::string_view::npos ||
                     first.find(':') != std::string_view::npos || first == "localhost" ||
                     first.find_first_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ") != std::string_view::npos);
  if (has_domain) {
    if (!is_domain(first)) refuse(text, fmt::format("\"{}\" is not a valid registry host", first));
    ref.registry = first;
    parts.erase(parts.begin());
  } else {
    ref.registry = "docker.io";
  }
  if (ref.registry == "index.docker.io") ref.registry = "docker.io";
  for (auto p : parts) {
    if (!is_path_component(p))
      refuse(text, fmt::format("\"{}\" is not a valid repository name component (lowercase "
                               "letters, digits and separators . _ __ -)",
                               p));
    if (!ref.repository.empty()) ref.repository += '/';
    ref.repository += p;
  }
  if (ref.registry == "docker.io" && parts.size() == 1)
    ref.repository = "library/" + ref.repository;
  if (ref.repository.size() > 255)
    refuse(text, "the repository name is longer than 255 characters");
  if (ref.tag.empty() && !ref.digest) ref.tag = "latest";
  return ref;
}

std::string RegistryReference::reference() const {
  return digest ? digest->str() : tag;
}

std::string RegistryReference::str() const {
  std::string out = registry + "/" + repository;
  if (!tag.empty()) out += ":" + tag;
  if (digest) out += "@" + digest->str();
  return out;
}

std::string RegistryReference::api_host() const {
  return registry == "docker.io" ? "registry-1.docker.io" : registry;
}

std::string_view transport_name(Transport t) {
  switch (t) {
    case Transport::kDocker:
      return "docker";
    case Transport::kOci:
      return "oci";
    case Transport::kOciArchive:
      return "oci-archive";
    case Transport::kDockerArchive:
      return "docker-archive";
    case Transport::kDir:
      return "dir";
  }
  return "?";
}

ImageName ImageName::parse(std::string_view text) {
  constexpr std::string_view kForms =
      "expected docker://REGISTRY/REPO[:TAG|@DIGEST], oci:DIR[:TAG], oci-archive:FILE[:TAG], "
      "docker-archive:FILE[:NAME:TAG] or dir:PATH";
  if (text.size() > kMaxReferenceLength) refuse(text, "it is longer than 4096 characters");
  auto colon = text.find(':');
  if (colon == std::string_view::npos) refuse(text, fmt::format("no transport given; {}", kForms));
  std::string_view transport = text.substr(0, colon);
  std::string_view rest = text.substr(colon + 1);
  ImageName name;
  if (transport == "docker") {
    if (rest.substr(0, 2) != "//") refuse(text, "docker references start with docker://");
    name.transport = Transport::kDocker;
    name.docker = RegistryReference::parse(rest.substr(2));
    return name;
  }
  if (rest.empty()) refuse(text, "the path is empty");
  if (transport == "oci" || transport == "oci-archive") {
    name.transport = transport == "oci" ? Transport::kOci : Transport::kOciArchive;
    // The tag follows the last ':' when what follows it is a valid tag (paths rarely hold ':').
    auto last = rest.rfind(':');
    if (last != std::string_view::npos && is_valid_tag(rest.substr(last + 1))) {
      name.tag = rest.substr(last + 1);
      rest = rest.substr(0, last);
    } else if (last != std::string_view::npos && last + 1 < rest.size() &&
               rest.find('/', last) == std::string_view::npos) {
      refuse(text, "the tag is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}");
    }
    if (rest.empty()) refuse(text, "the path is empty");
    name.path = std::string(rest);
    return name;
  }
  if (transport == "docker-archive") {
    name.transport = Transport::kDockerArchive;
    auto sep = rest.find(':');
    if (sep != std::string_view::npos) {
      name.docker = RegistryReference::parse(rest.substr(sep + 1));
      rest = rest.substr(0, sep);
    }
    if (rest.empty()) refuse(text, "the path is empty");
    name.path = std::string(rest);
    return name;
  }
  if (transport == "dir") {
    name.transport = Transport::kDir;
    name.path = std::string(rest);
    return name;
  }
  refuse(text, fmt::format("unknown transport \"{}\"; {}", transport, kForms));
}

std::string ImageName::str() const {
  switch (transport) {
    case Transport::kDocker:
      return "docker://" + docker.str();
    case Transport::kOci:
    case Transport::kOciArchive:
      return fmt::format("{}:{}{}{}", transport_name(transport), path.string(),
                         tag.empty() ? "" : ":", tag);
    case Transport::kDockerArchive:
      return "docker-archive:" + path.string() +
             (docker.repository.empty() ? "" : ":" + docker.str());
    case Transport::kDir:
      return "dir:" + path.string();
  }
  return {};
}

}  // namespace pok8s::oci
