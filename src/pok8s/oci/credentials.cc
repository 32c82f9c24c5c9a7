// Registry credentials from the files skopeo, podman and docker share, and the parsing of
// authentication challenges and token replies. Secrets never appear in error messages.
#include "pok8s/oci/credentials.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "pok8s/util/ascii.h"
#include "pok8s/util/error.h"

namespace pok8s::oci {

namespace {

constexpr std::string_view kBase64Alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    auto n = (std::uint32_t(std::uint8_t(in[i])) << 16) |
             (std::uint32_t(std::uint8_t(in[i + 1])) << 8) | std::uint8_t(in[i + 2]);
    out += kBase64Alphabet[(n >> 18) & 63];
    out += kBase64Alphabet[(n >> 12) & 63];
    out += kBase64Alphabet[(n >> 6) & 63];
    out += kBase64Alphabet[n & 63];
  }
  if (std::size_t rest = in.size() - i; rest > 0) {
    std::uint32_t n = std::uint32_t(std::uint8_t(in[i])) << 16;
    if (rest == 2) n |= std::uint32_t(std::uint8_t(in[i + 1])) << 8;
    out += kBase64Alphabet[(n >> 18) & 63];
    out += kBase64Alphabet[(n >> 12) & 63];
    out += rest == 2 ? kBase64Alphabet[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// Standard base64 with optional padding; nothing on malformed input.
std::optional<std::string> base64_decode(std::string_view in) {
  while (!in.empty() && in.back() == '=') in.remove_suffix(1);
  if (in.size() % 4 == 1) return std::nullopt;
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    auto pos = kBase64Alphabet.find(c);
    if (pos == std::string_view::npos) return std::nullopt;
    acc = (acc << 6) | static_cast<std::uint32_t>(pos);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

// Docker Hub answers under several names; auth files use any of them.
std::string canonical_host(std::string_view host) {
  std::string h = util::ascii_lower(host);
  if (h == "index.docker.io" || h == "registry-1.docker.io" || h == "registry.hub.docker.com")
    return "docker.io";
  return h;
}

// Splits an auths key into host and optional repository namespace. "https://host/v1/" style
// keys (Docker's legacy form) name only a host.
std::pair<std::string, std::string> split_auth_key(std::string_view key) {
  bool had_scheme = false;
  for (std::string_view scheme : {"https://", "http://"}) {
    if (key.substr(0, scheme.size()) == scheme) {
      key.remove_prefix(scheme.size());
      had_scheme = true;
    }
  }
  auto slash = key.find('/');
  std::string host = canonical_host(key.substr(0, slash));
  if (slash == std::string_view::npos || had_scheme) return {host, {}};
  std::string_view path = key.substr(slash + 1);
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  if (path == "v1" || path == "v2") path = {};
  return {host, std::string(path)};
}

bool is_tchar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// Readable bytes of a header for an error message (challenges carry no secrets).
std::string shown(std::string_view s) {
  std::string out(s.substr(0, 120));
  for (char& c : out)
    if (c < 0x20 || c >= 0x7f) c = '?';
  return out;
}

}  // namespace

Credentials Credentials::parse(std::string_view text) {
  auto colon = text.find(':');
  if (colon == std::string_view::npos || colon == 0)
    throw Error(ErrorKind::kInvalidInput,
                "Failed to parse credentials: expected \"USERNAME:PASSWORD\"");
  return Credentials{std::string(text.substr(0, colon)), std::string(text.substr(colon + 1))};
}

std::string Credentials::basic_authorization() const {
  return "Basic " + base64_encode(username + ":" + password);
}

std::optional<Credentials> credentials_from_auth_json(std::string_view json_text,
                                                      std::string_view registry,
                                                      std::string_view repository,
                                                      std::string_view where) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::parse_error& e) {
    // Only the position: the parser's own message quotes the text it choked on.
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read credentials from {}: not valid JSON (at byte {})",
                            where, e.byte));
  } catch (const nlohmann::json::exception&) {
    // Out-of-range numbers and the like: valid JSON syntax, but not a document we read.
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read credentials from {}: not valid JSON", where));
  }
  if (!doc.is_object())
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read credentials from {}: not a JSON object", where));
  auto auths = doc.find("auths");
  if (auths == doc.end() || auths->is_null()) return std::nullopt;
  if (!auths->is_object())
    throw Error(
        ErrorKind::kFormat,
        fmt::format("Failed to read credentials from {}: \"auths\" is not an object", where));

  std::string host = canonical_host(registry);
  const nlohmann::json* best = nullptr;
  std::string best_key;
  std::size_t best_len = 0;
  for (const auto& [key, entry] : auths->items()) {
    auto [key_host, key_path] = split_auth_key(key);
    if (key_host != host) continue;
    if (!key_path.empty()) {
      // A namespace key applies to that repository and the ones below it.
      bool below = repository == key_path || (repository.size() > key_path.size() &&
                                              repository.substr(0, key_path.size()) == key_path &&
                                              repository[key_path.size()] == '/');
      if (!below) continue;
    }
    if (best == nullptr || key_path.size() + 1 > best_len) {
      best = &entry;
      best_key = key;
      best_len = key_path.size() + 1;
    }
  }
  if (best == nullptr) return std::nullopt;
  if (!best->is_object())
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read credentials from {}: the entry for \"{}\" is not an "
                            "object",
                            where, shown(best_key)));
  auto string_field = [&](const char* name) -> std::string {
    auto it = best->find(name);
    if (it == best->end() || it->is_null()) return {};
    if (!it->is_string())
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read credentials from {}: \"{}\" of \"{}\" is not a "
                              "string",
                              where, name, shown(best_key)));
    return it->get<std::string>();
  };
  if (std::string auth = string_field("auth"); !auth.empty()) {
    auto decoded = base64_decode(auth);
    if (!decoded)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read credentials from {}: \"auth\" of \"{}\" is not "
                              "base64",
                              where, shown(best_key)));
    auto colon = decoded->find(':');
    if (colon == std::string::npos || colon == 0)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read credentials from {}: \"auth\" of \"{}\" does not "
                              "decode to \"user:password\"",
                              where, shown(best_key)));
    return Credentials{decoded->substr(0, colon), decoded->substr(colon + 1)};
  }
  std::string user = string_field("username");
  std::string password = string_field("password");
  if (user.empty()) return std::nullopt;
  return Credentials{user, password};
}

std::vector<util::Path> default_auth_files() {
  std::vector<util::Path> files;
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
  };
  if (auto f = env("REGISTRY_AUTH_FILE"); !f.empty()) files.emplace_back(f);
  if (auto d = env("XDG_RUNTIME_DIR"); !d.empty())
    files.push_back(util::Path(d) / "containers" / "auth.json");
  std::string home = env("HOME");
  if (!home.empty()) files.push_back(util::Path(home) / ".config" / "containers" / "auth.json");
  if (auto d = env("DOCKER_CONFIG"); !d.empty()) files.push_back(util::Path(d) / "config.json");
  if (!home.empty()) files.push_back(util::Path(home) / ".docker" / "config.json");
  return files;
}

std::optional<Credentials> find_credentials(std::string_view registry, std::string_view repository,
                                            const TransportOptions& options) {
  if (!options.credentials.empty()) return Credentials::parse(options.credentials);
  if (options.auth_file) {
    const util::Path& f = *options.auth_file;
    return credentials_from_auth_json(util::read_file(f, kMaxAuthFileBytes), registry, repository,
                                      f.string());
  }
  for (const util::Path& f : default_auth_files()) {
    struct stat st {};
    if (::stat(f.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    auto found = credentials_from_auth_json(util::read_file(f, kMaxAuthFileBytes), registry,
                                            repository, f.string());
    if (found) return found;
  }
  return std::nullopt;
}

std::vector<AuthChallenge> parse_www_authenticate(std::string_view header) {
  if (header.size() > kMaxChallengeBytes)
    throw Error(ErrorKind::kFormat, "Failed to parse WWW-Authenticate: header too long");
  auto fail = [&](std::string_view why) -> Error {
    return Error(ErrorKind::kFormat,
                 fmt::format("Failed to parse WWW-Authenticate \"{}\": {}", shown(header), why));
  };
  std::vector<AuthChallenge> out;
  std::size_t i = 0;
  const std::size_t n = header.size();
  auto skip_ws = [&] {
    while (i < n && (header[i] == ' ' || header[i] == '\t')) ++i;
  };
  auto read_token = [&] {
    std::size_t start = i;
    while (i < n && is_tchar(header[i])) ++i;
    return header.substr(start, i - start);
  };
  while (true) {
    while (i < n && (header[i] == ' ' || header[i] == '\t' || header[i] == ',')) ++i;
    if (i >= n) break;
    std::string_view scheme = read_token();
    if (scheme.empty()) throw fail("expected an authentication scheme");
    AuthChallenge challenge{util::ascii_lower(scheme), {}};
    // Parameters follow until a token that is not followed by '=' starts the next challenge.
    while (true) {
      while (i < n && (header[i] == ',' || header[i] == ' ' || header[i] == '\t')) ++i;
      if (i >= n) break;
      std::size_t name_start = i;
      std::string_view name = read_token();
      if (name.empty()) throw fail("expected a parameter name");
      skip_ws();
      if (i >= n || header[i] != '=') {
        i = name_start;
        break;
      }
      ++i;  // '='
      skip_ws();
      if (i >= n || header[i] == '=' || header[i] == ',') {
        // A token68 ("Basic YWxh==") or an empty value: neither carries anything we use.
        while (i < n && header[i] == '=') ++i;
        continue;
      }
      std::string value;
      if (i < n && header[i] == '"') {
        ++i;
        bool closed = false;
        while (i < n) {
          char c = header[i++];
          if (c == '\\' && i < n) {
            value += header[i++];
          } else if (c == '"') {
            closed = true;
            break;
          } else {
            value += c;
          }
        }
        if (!closed) throw fail("unterminated quoted string");
      } else {
        value = std::string(read_token());
      }
      challenge.params[util::ascii_lower(name)] = value;
    }
    out.push_back(std::move(challenge));
  }
  if (out.empty()) throw fail("no challenge");
  return out;
}

BearerToken parse_token_response(std::string_view json_text) {
  if (json_text.size() > kMaxTokenReplyBytes)
    throw Error(ErrorKind::kFormat, "Failed to read the token server's reply: too large");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception&) {
    throw Error(ErrorKind::kFormat, "Failed to read the token server's reply: not valid JSON");
  }
  if (!doc.is_object())
    throw Error(ErrorKind::kFormat, "Failed to read the token server's reply: not a JSON object");
  BearerToken out;
  for (const char* field : {"token", "access_token"}) {
    auto it = doc.find(field);
    if (it != doc.end() && it->is_string() && !it->get<std::string>().empty()) {
      out.token = it->get<std::string>();
      break;
    }
  }
  if (out.token.empty())
    throw Error(ErrorKind::kFormat,
                "Failed to read the token server's reply: it has neither \"token\" nor "
                "\"access_token\"");
  // Tokens travel in a header: refuse bytes that would break or split it.
  for (char c : out.token)
    if (c <= 0x20 || c >= 0x7f)
      throw Error(ErrorKind::kFormat,
                  "Failed to read the token server's reply: the token has invalid characters");
  if (auto it = doc.find("expires_in"); it != doc.end() && it->is_number_integer()) {
    auto v = it->get<std::int64_t>();
    if (v > 0) out.expires_in = static_cast<int>(std::min<std::int64_t>(v, 24 * 3600));
  }
  return out;
}

}  // namespace pok8s::oci
