// Authenticode signatures of EFI applications (systemd-boot, UKIs), made with OpenSSL: the
// image's SHA-256 Authenticode digest in a PKCS#7 SignedData (SpcIndirectDataContent), appended
// as the attribute certificate table. What `sbverify --cert db.crt` and the firmware's Secure
// Boot accept.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "pok8s/boot/pe.h"
#include "pok8s/util/file.h"

namespace pok8s::boot {

// The SHA-256 Authenticode digest (raw bytes) of `bytes`: everything up to the attribute
// certificate table but the checksum and the certificate table's directory entry (Windows
// Authenticode PE Signature Format, "Calculating the PE Image Hash"; sections laid out in file
// order without gaps, as EFI toolchains and pok8s write them, hash the same either way).
std::string authenticode_digest(std::string_view bytes, const PeImage& pe);

// `bytes` signed by `cert`/`key`: an existing signature is replaced, the file padded to 8 bytes
// and the new attribute certificate table appended. The signature's signingTime is
// `signing_time` (seconds since the epoch), so a build signs reproducibly, or the clock's.
// Throws Error(kFormat) for a PE image it cannot read (naming `what`).
std::string sign_pe(std::string_view bytes, X509* cert, EVP_PKEY* key, std::string_view what,
                    std::optional<std::int64_t> signing_time = std::nullopt);

// sign_pe of the file `in` into `out` (complete or not at all).
void sign_pe_file(const util::Path& in, const util::Path& out, X509* cert, EVP_PKEY* key,
                  std::optional<std::int64_t> signing_time = std::nullopt);

// The DER certificate that signed `bytes` (the signer named in the PKCS#7 of its attribute
// certificate table), or nullopt for an unsigned image. Not a signature check, which is the
// firmware's: used to refuse, before anything is installed, a UKI signed with another key set
// than the installed ones. Throws Error(kFormat) naming `what` for a table it cannot read.
std::optional<std::string> pe_signer_certificate(std::string_view bytes, std::string_view what);

}  // namespace pok8s::boot
