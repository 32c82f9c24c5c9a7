// libFuzzer target: manifest, index and config JSON from an untrusted registry or layout.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pok8s/oci/manifest.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s::oci;
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  // The first byte picks the content type a transport would have claimed.
  static constexpr std::string_view kTypes[] = {"", media_type::kOciManifest, media_type::kOciIndex,
                                                media_type::kDockerManifest,
                                                media_type::kDockerManifestList};
  std::string_view type = size ? kTypes[data[0] % 5] : "";
  try {
    if (classify_document(bytes, type) == DocumentKind::kManifest) {
      Manifest m = Manifest::parse(bytes, type);
      // What we write we must read back.
      (void)Manifest::parse(m.to_json());
      (void)Manifest::parse(m.to_oci().to_json());
    } else {
      Index idx = Index::parse(bytes, type);
      (void)Index::parse(idx.to_json());
      try {
        (void)idx.select(Platform::host());
      } catch (const pok8s::Error&) {
      }
    }
  } catch (const pok8s::Error&) {
  }
  try {
    (void)ImageConfig::parse(bytes);
  } catch (const pok8s::Error&) {
  }
  return 0;
}
