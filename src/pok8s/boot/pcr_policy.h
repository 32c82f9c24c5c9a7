// Signed PCR 11 policies for a UKI's .pcrsig: the values PCR 11 takes when the systemd stub has
// measured the UKI's sections and each boot phase has been measured, the TPM2 PolicyPCR digest
// of each, signed with the PCR policy key. A disk key sealed against the key's signed policy
// unlocks under any UKI signed with it, and under nothing else.
#pragma once

#include <openssl/evp.h>

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pok8s::boot {

// The phases systemd-pcrphase measures, as systemd-measure signs them by default.
inline constexpr std::string_view kPcrPhases[] = {"enter-initrd", "enter-initrd:leave-initrd",
                                                  "enter-initrd:leave-initrd:sysinit",
                                                  "enter-initrd:leave-initrd:sysinit:ready"};

struct PcrPhaseValue {
  std::string phase;  // "enter-initrd:leave-initrd"
  std::string pcr11;  // SHA-256 bank value, raw bytes
};

// PCR 11 for each of kPcrPhases, from the UKI's sections (name -> contents; .linux, .osrel,
// .cmdline, .initrd, .splash, .dtb, .pcrpkey are measured in that order, the name with its NUL
// and then the contents; others are not), as systemd-stub 252 and systemd-pcrphase extend it.
std::vector<PcrPhaseValue> expected_pcr11(const std::map<std::string, std::string_view>& sections);

// TPM2_PolicyPCR's digest for PCR 11 of the SHA-256 bank holding `pcr11` (raw), from an empty
// policy (TPM 2.0 Library, Part 3, 23.7).
std::string pcr11_policy_digest(std::string_view pcr11);

// The .pcrsig JSON: {"sha256":[{"pcrs":[11],"pkfp":…,"pol":…,"sig":…},…]}, one entry per phase,
// each policy digest signed (RSASSA-PKCS1-v1_5, SHA-256) with `key`; pkfp is the SHA-256 of the
// public key's PKCS#1 DER. Throws Error(kInvalidInput) for a key that is not RSA.
std::string pcr_signature_json(const std::vector<PcrPhaseValue>& values, EVP_PKEY* key);

// The SHA-256 (hex) of `key`'s public half as PKCS#1 DER: the "pkfp" of .pcrsig entries.
std::string pcr_key_fingerprint(EVP_PKEY* key);

// Base64 (RFC 4648, with padding) through OpenSSL, for the JSON of .pcrsig and LUKS2 tokens.
std::string base64_encode(std::string_view raw);
// nullopt when `text` is not padded base64.
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace pok8s::boot
