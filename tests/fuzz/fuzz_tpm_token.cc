// libFuzzer target: the pok8s-tpm2 token read from a LUKS2 header at boot, which anyone with the
// disk can write. It parses into a token whose blobs are non-empty, and re-encodes to a token that
// parses to the same, or is refused as a format error naming the volume.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "pok8s/boot/disk_encryption.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s::boot;
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  TpmToken token;
  try {
    token = parse_tpm_token(bytes, "/dev/fuzz");
  } catch (const pok8s::Error& e) {
    if (e.kind() != pok8s::ErrorKind::kFormat) __builtin_trap();
    if (std::string_view(e.what()).find("/dev/fuzz") == std::string_view::npos) __builtin_trap();
    return 0;
  }
  if (token.sealed.private_blob.empty() || token.sealed.public_blob.empty() ||
      token.sealed.policy.empty())
    __builtin_trap();
  TpmToken again = parse_tpm_token(tpm_token_json(token), "/dev/fuzz");
  if (again.sealed.private_blob != token.sealed.private_blob ||
      again.sealed.public_blob != token.sealed.public_blob ||
      again.sealed.policy != token.sealed.policy || again.pcr7 != token.pcr7 ||
      again.pkfp != token.pkfp)
    __builtin_trap();
  return 0;
}
