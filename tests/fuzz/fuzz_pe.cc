// libFuzzer target: PE images, as the systemd stub taken from an image (untrusted) reaches the
// UKI builder and the signer. Parsing refuses with kFormat or returns offsets inside the input;
// the Authenticode digest of what parsed never reads outside it. The signer of the attribute
// certificate table (a uki-iso's UKIs, read by the node's upgrade) is found or refused with
// kFormat.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pok8s/boot/authenticode.h"
#include "pok8s/boot/pe.h"
#include "pok8s/util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace pok8s::boot;
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  PeImage pe;
  try {
    pe = parse_pe(bytes, "fuzz");
  } catch (const pok8s::Error& e) {
    if (e.kind() != pok8s::ErrorKind::kFormat) __builtin_trap();
    return 0;
  }
  for (const auto& s : pe.sections)
    if (s.raw_size != 0 && std::uint64_t{s.raw_offset} + s.raw_size > size) __builtin_trap();
  if (pe.cert_dir_field() + 8 > size || pe.checksum_field() + 4 > size) __builtin_trap();
  if (pe.cert_table_size != 0 && std::uint64_t{pe.cert_table_offset} + pe.cert_table_size != size)
    __builtin_trap();
  if (authenticode_digest(bytes, pe).size() != 32) __builtin_trap();
  try {
    auto signer = pe_signer_certificate(bytes, "fuzz");
    if (signer && signer->empty()) __builtin_trap();
  } catch (const pok8s::Error& e) {
    if (e.kind() != pok8s::ErrorKind::kFormat) __builtin_trap();
  }
  return 0;
}
