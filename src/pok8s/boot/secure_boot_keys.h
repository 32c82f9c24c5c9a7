// Secure Boot keys for pok8s builds: the PK → KEK → db certificate chain (RSA-2048, SHA-256),
// the EFI signature lists and signed .auth updates a firmware in setup mode enrolls, and the
// key that signs TPM PCR 11 policies. Made and checked with OpenSSL.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::boot {

struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using X509Ptr = std::unique_ptr<X509, X509Deleter>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

// The files of a key directory. For each of PK, KEK and db: NAME.crt (PEM), NAME.key (PEM,
// 0600), NAME.esl (the EFI signature list the variable holds) and NAME.auth (the signed update
// that sets it: PK and KEK signed by PK, db by KEK).
inline constexpr std::string_view kKeyNames[] = {"PK", "KEK", "db"};
inline constexpr std::string_view kPcrPrivateKey = "tpm2-pcr-private.pem";
inline constexpr std::string_view kPcrPublicKey = "tpm2-pcr-public.pem";
inline constexpr std::string_view kOwnerGuidFile = "owner.guid";  // the lists' SignatureOwner
inline constexpr int kDefaultKeyValidityDays = 3650;
inline constexpr std::size_t kMaxCertificateBytes = 64u << 10;

struct KeyGenOptions {
  std::string name = "pok8s";  // in each certificate's common name: "pok8s db"
  // Certificates (PEM or DER) appended to KEK's and db's lists, each as a list of its own, so
  // that enrolling keeps a vendor's keys (option ROMs, other loaders) trusted.
  std::vector<util::Path> extra_kek;
  std::vector<util::Path> extra_db;
  std::int64_t now = 0;  // certificates start then and the .auth files carry it; 0: the clock
  int validity_days = kDefaultKeyValidityDays;
};

// Writes a new key set into `dir`, which must not exist or be empty; the directory appears
// complete or not at all. Throws Error(kInvalidInput) naming an extra certificate that does not
// parse, before any key is made.
void generate_secure_boot_keys(const util::Path& dir, const KeyGenOptions& options);

struct SecureBootKeys {
  util::Path dir;
  X509Ptr pk_cert, kek_cert, db_cert;
  PkeyPtr pk_key, kek_key, db_key;
  PkeyPtr pcr_key;         // private
  std::string pcr_public;  // PEM, as it goes into a UKI's .pcrpkey
};

// The key set in `dir`, checked before anything is signed with it: every file present, the
// certificates valid at `now` (0: the clock), PK self-signed, KEK issued by PK and db by KEK,
// each issuer a CA, each private key its certificate's, and the PCR key's public half the one
// of its private half. Throws Error(kInvalidInput) "Failed to use the keys in DIR: FILE: ..."
// (kNotFound for a missing file).
SecureBootKeys load_secure_boot_keys(const util::Path& dir, std::int64_t now = 0);

// Reads a certificate file, PEM or DER; throws Error(kInvalidInput) naming it.
X509Ptr read_certificate(const util::Path& file);

// EFI structures (UEFI specification 2.10, sections 32.4.1 and 8.2.2), exposed for tests.
// An EFI_SIGNATURE_LIST of one X.509 certificate (EFI_CERT_X509_GUID) owned by `owner_guid`.
std::string efi_signature_list(X509* cert, std::string_view owner_guid);
// The EFI_VARIABLE_AUTHENTICATION_2 update that sets `variable` ("PK", "KEK" or "db") to
// `esl`: EFI_TIME, a WIN_CERTIFICATE_UEFI_GUID with a PKCS#7 SignedData by `signer` over
// name, vendor GUID, attributes, time and `esl`, then `esl`.
std::string efi_signed_update(std::string_view variable, std::string_view esl, X509* signer_cert,
                              EVP_PKEY* signer_key, std::int64_t time);
// What efi_signed_update signs, for a verifier.
std::string efi_signed_update_payload(std::string_view variable, std::string_view esl,
                                      std::int64_t time);

}  // namespace pok8s::boot
