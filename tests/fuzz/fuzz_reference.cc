// libFuzzer target: image names and digests typed by users or found in untrusted documents.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pok8s/oci/reference.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s::oci;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    ImageName n = ImageName::parse(text);
    // A name we print must parse back to the same name.
    if (ImageName::parse(n.str()).str() != n.str()) __builtin_trap();
  } catch (const pok8s::Error&) {
  }
  try {
    RegistryReference r = RegistryReference::parse(text);
    if (RegistryReference::parse(r.str()).str() != r.str()) __builtin_trap();
    // Repository and reference go into URLs: they must never hold a path escape.
    if (r.repository.find("..") != std::string::npos ||
        r.reference().find('/') != std::string::npos)
      __builtin_trap();
  } catch (const pok8s::Error&) {
  }
  try {
    (void)Digest::parse(text);
  } catch (const pok8s::Error&) {
  }
  return 0;
}
