// libFuzzer target: what registries and credential files hand us — WWW-Authenticate headers,
// token server replies, and auth.json / config.json documents.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pok8s/oci/credentials.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s::oci;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    for (const auto& c : parse_www_authenticate(text)) (void)c.param("realm");
  } catch (const pok8s::Error&) {
  }
  try {
    (void)parse_token_response(text);
  } catch (const pok8s::Error&) {
  }
  try {
    (void)credentials_from_auth_json(text, "127.0.0.1:5000", "team/app", "fuzz auth.json");
    (void)credentials_from_auth_json(text, "docker.io", "library/debian", "fuzz auth.json");
  } catch (const pok8s::Error&) {
  }
  return 0;
}
