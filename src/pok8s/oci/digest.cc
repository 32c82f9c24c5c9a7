// Digest parsing: the grammar of the OCI image spec, restricted to registered algorithms.
#include "pok8s/oci/digest.h"

#include <fmt/format.h>

#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::oci {

namespace {
bool is_lower_hex(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}
// Bounds what goes into an error message from untrusted input.
std::string quoted_prefix(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 80)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return "\"" + out + (text.size() > 80 ? "…\"" : "\"");
}
}  // namespace

std::optional<Digest> Digest::try_parse(std::string_view text) {
  auto colon = text.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view algo = text.substr(0, colon);
  std::string_view hex = text.substr(colon + 1);
  std::size_t want = algo == "sha256" ? 64 : algo == "sha512" ? 128 : 0;
  if (want == 0 || hex.size() != want || !is_lower_hex(hex)) return std::nullopt;
  return Digest(std::string(algo), std::string(hex));
}

Digest Digest::parse(std::string_view text) {
  if (auto d = try_parse(text)) return *d;
  throw Error(ErrorKind::kInvalidInput,
              fmt::format("Invalid digest {}: expected sha256:<64 lowercase hex> or sha512:<128>",
                          quoted_prefix(text)));
}

Digest Digest::sha256_of(std::string_view data) {
  return Digest("sha256", util::sha256_hex(data));
}

Digest Digest::sha256(std::string_view hex) {
  return parse(fmt::format("sha256:{}", hex));
}

}  // namespace pok8s::oci
