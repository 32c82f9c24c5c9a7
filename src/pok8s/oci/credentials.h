// Registry credentials (containers auth.json and Docker config.json) and the parts of HTTP
// authentication a registry client needs: WWW-Authenticate challenges and bearer token replies.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/oci/image.h"
#include "pok8s/util/file.h"

namespace pok8s::oci {

// Limit on an auth file we read: real ones are a few kilobytes.
inline constexpr std::uint64_t kMaxAuthFileBytes = 1u << 20;
// Limit on a WWW-Authenticate header and a token server's reply.
inline constexpr std::size_t kMaxChallengeBytes = 16u << 10;
inline constexpr std::size_t kMaxTokenReplyBytes = 1u << 20;

struct Credentials {
  std::string username;
  std::string password;

  // Parses "user:password" (the password may contain ':'); throws kInvalidInput.
  static Credentials parse(std::string_view user_colon_password);
  // The value of an Authorization header for HTTP Basic.
  std::string basic_authorization() const;
};

// Looks `registry` ("127.0.0.1:5000", "docker.io") up in the `auths` map of an auth.json or
// Docker config.json. Keys may be "host", "host/namespace/repo" (the longest prefix of
// `repository` wins), "https://host" or "https://host/v1/". An entry holds either base64
// "user:password" in `auth` or `username` + `password`. Returns nothing when no entry
// matches or the entry carries no usable secret (a credential helper's placeholder).
// `where` names the file for error messages; malformed JSON throws kFormat.
std::optional<Credentials> credentials_from_auth_json(std::string_view json_text,
                                                      std::string_view registry,
                                                      std::string_view repository,
                                                      std::string_view where);

// The files searched when no auth file is given, in order: $REGISTRY_AUTH_FILE,
// ${XDG_RUNTIME_DIR}/containers/auth.json, ~/.config/containers/auth.json,
// $DOCKER_CONFIG/config.json, ~/.docker/config.json.
std::vector<util::Path> default_auth_files();

// The credentials for `registry`: options.credentials, else options.auth_file (which must
// exist), else the first of default_auth_files() with an entry for it.
std::optional<Credentials> find_credentials(std::string_view registry, std::string_view repository,
                                            const TransportOptions& options);

// One challenge of a WWW-Authenticate header (RFC 7235): the scheme in lowercase and its
// parameters, names in lowercase, quoted values unescaped.
struct AuthChallenge {
  std::string scheme;
  std::map<std::string, std::string> params;

  std::string param(const std::string& name) const {
    auto it = params.find(name);
    return it == params.end() ? std::string() : it->second;
  }
};

// Parses every challenge in a header value; throws kFormat on a malformed header.
std::vector<AuthChallenge> parse_www_authenticate(std::string_view header);

// What a token server answered (distribution's token authentication spec).
struct BearerToken {
  std::string token;
  int expires_in = 60;  // seconds; the spec's default when absent
};

// Parses a token server's JSON reply, accepting `token` or `access_token`; throws kFormat.
BearerToken parse_token_response(std::string_view json_text);

}  // namespace pok8s::oci
