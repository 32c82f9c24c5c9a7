// Keys and certificates by OpenSSL; the EFI signature list and the authenticated variable
// update around its PKCS#7 signature are hand-written (no library in Debian writes them; efitools
// and sbsigntool are programs), following the UEFI specification 2.10: EFI_SIGNATURE_LIST
// (32.4.1), EFI_VARIABLE_AUTHENTICATION_2 and its signed data (8.2.2), EFI_TIME (8.3).
#include "pok8s/boot/secure_boot_keys.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <fmt/format.h>

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <ctime>
#include <filesystem>
#include <functional>

#include "pok8s/boot/pkcs11_key.h"
#include "pok8s/util/endian.h"
#include "pok8s/util/error.h"

namespace pok8s::boot {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kEfiCertX509Guid = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072";
constexpr std::string_view kEfiGlobalVariableGuid = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
constexpr std::string_view kEfiImageSecurityDatabaseGuid = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
constexpr std::string_view kEfiCertTypePkcs7Guid = "4aafd29d-68df-49ee-8aa9-347d375665a7";
// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS
constexpr std::uint32_t kAuthVariableAttributes = 0x27;
constexpr std::uint16_t kWinCertRevision = 0x0200;
constexpr std::uint16_t kWinCertTypeEfiGuid = 0x0ef1;
constexpr int kRsaBits = 2048;

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioDeleter>;
struct Pkcs7Deleter {
  void operator()(PKCS7* p) const { PKCS7_free(p); }
};

// The OpenSSL error queue's last entry, or `fallback`.
std::string openssl_error(std::string_view fallback) {
  unsigned long e = ERR_get_error();
  std::string last;
  while (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    last = buf;
    e = ERR_get_error();
  }
  return last.empty() ? std::string(fallback) : last;
}

[[noreturn]] void fail_openssl(std::string_view what) {
  throw Error(ErrorKind::kInternal, fmt::format("Failed to {}: {}", what, openssl_error("")));
}

// An EFI_GUID in memory: the first three fields little-endian, the last eight bytes as written.
std::string guid_bytes(std::string_view text) {
  auto hex = [&](std::size_t at, std::size_t digits) {
    return std::stoull(std::string(text.substr(at, digits)), nullptr, 16);
  };
  std::string out;
  util::append_le(out, hex(0, 8), 4);
  util::append_le(out, hex(9, 4), 2);
  util::append_le(out, hex(14, 4), 2);
  for (std::size_t at : {19u, 21u, 24u, 26u, 28u, 30u, 32u, 34u})
    out.push_back(static_cast<char>(hex(at, 2)));
  return out;
}

std::string random_guid() {
  std::array<unsigned char, 16> b{};
  if (RAND_bytes(b.data(), static_cast<int>(b.size())) != 1) fail_openssl("make a GUID");
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  std::string s;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += fmt::format("{:02x}", b[i]);
  }
  return s;
}

// EFI_TIME of `t` (UTC): year, month, day, hour, minute, second; the rest zero, as
// authenticated variables require.
std::string efi_time(std::int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  struct tm tm {};
  if (gmtime_r(&tt, &tm) == nullptr)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to sign: time {} is out of range", t));
  std::string out;
  util::append_le(out, static_cast<std::uint64_t>(tm.tm_year + 1900), 2);
  for (int v : {tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec})
    out.push_back(static_cast<char>(v));
  out.append(9, '\0');  // Pad1, Nanosecond, TimeZone, Daylight, Pad2
  return out;
}

std::string der_of(X509* cert) {
  int n = i2d_X509(cert, nullptr);
  if (n <= 0) fail_openssl("encode a certificate");
  std::string der(static_cast<std::size_t>(n), '\0');
  auto* p = reinterpret_cast<unsigned char*>(der.data());
  i2d_X509(cert, &p);
  return der;
}

std::int64_t clock_now(std::int64_t now) {
  return now != 0 ? now : static_cast<std::int64_t>(std::time(nullptr));
}

PkeyPtr new_rsa_key() {
  PkeyPtr key(EVP_RSA_gen(kRsaBits));
  if (!key) fail_openssl("make an RSA key");
  return key;
}

void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr || X509_add_ext(cert, ext, -1) != 1)
    fail_openssl("add a certificate extension");
  X509_EXTENSION_free(ext);
}

// A certificate for `key` named `common_name`, issued by `issuer` (itself when null).
X509Ptr new_certificate(const std::string& common_name, EVP_PKEY* key, X509* issuer,
                        EVP_PKEY* issuer_key, bool ca, std::int64_t now, int days) {
  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), 2) != 1) fail_openssl("make a certificate");
  std::array<unsigned char, 16> serial{};
  if (RAND_bytes(serial.data(), static_cast<int>(serial.size())) != 1)
    fail_openssl("make a serial number");
  serial[0] &= 0x7f;  // positive
  BIGNUM* bn = BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr);
  if (bn == nullptr || BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get())) == nullptr)
    fail_openssl("set a serial number");
  BN_free(bn);
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name.c_str()), -1,
                                 -1, 0) != 1)
    fail_openssl("name a certificate");
  X509* signer = issuer != nullptr ? issuer : cert.get();
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(signer)) != 1 ||
      ASN1_TIME_set(X509_getm_notBefore(cert.get()), static_cast<time_t>(now)) == nullptr ||
      ASN1_TIME_adj(X509_getm_notAfter(cert.get()), static_cast<time_t>(now), days, 0) == nullptr ||
      X509_set_pubkey(cert.get(), key) != 1)
    fail_openssl("fill in a certificate");
  add_extension(cert.get(), signer, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
  add_extension(cert.get(), signer, NID_key_usage,
                ca ? "critical,keyCertSign,cRLSign,digitalSignature" : "critical,digitalSignature");
  if (!ca) add_extension(cert.get(), signer, NID_ext_key_usage, "codeSigning");
  add_extension(cert.get(), signer, NID_subject_key_identifier, "hash");
  if (issuer != nullptr)
    add_extension(cert.get(), signer, NID_authority_key_identifier, "keyid:always");
  if (X509_sign(cert.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()) <= 0)
    fail_openssl("sign a certificate");
  return cert;
}

std::string pem_of(const std::function<int(BIO*)>& write, std::string_view what) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || write(bio.get()) != 1) fail_openssl(fmt::format("write {}", what));
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

std::string cert_pem(X509* cert) {
  return pem_of([&](BIO* b) { return PEM_write_bio_X509(b, cert); }, "a certificate");
}
std::string key_pem(EVP_PKEY* key) {
  return pem_of(
      [&](BIO* b) {
        return PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
      },
      "a private key");
}
std::string public_pem(EVP_PKEY* key) {
  return pem_of([&](BIO* b) { return PEM_write_bio_PUBKEY(b, key); }, "a public key");
}

std::string_view vendor_guid_of(std::string_view variable) {
  return variable == "db" ? kEfiImageSecurityDatabaseGuid : kEfiGlobalVariableGuid;
}

std::string utf16le(std::string_view ascii) {
  std::string out;
  for (char c : ascii) {
    out.push_back(c);
    out.push_back('\0');
  }
  return out;
}

}  // namespace

X509Ptr read_certificate(const util::Path& file) {
  std::string bytes = util::read_file(file, kMaxCertificateBytes);
  BioPtr bio(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    ERR_clear_error();
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    cert.reset(d2i_X509(nullptr, &p, static_cast<long>(bytes.size())));
  }
  if (!cert)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read certificate {}: not an X.509 certificate in PEM or "
                            "DER ({})",
                            file.string(), openssl_error("no certificate found")));
  return cert;
}

std::string efi_signature_list(X509* cert, std::string_view owner_guid) {
  std::string der = der_of(cert);
  constexpr std::size_t kListHeader = 16 + 4 + 4 + 4;
  const std::size_t signature_size = 16 + der.size();  // SignatureOwner + SignatureData
  std::string out = guid_bytes(kEfiCertX509Guid);
  util::append_le(out, kListHeader + signature_size, 4);  // SignatureListSize
  util::append_le(out, 0, 4);                             // SignatureHeaderSize
  util::append_le(out, signature_size, 4);                // SignatureSize
  out += guid_bytes(owner_guid);
  out += der;
  return out;
}

std::string efi_signed_update_payload(std::string_view variable, std::string_view esl,
                                      std::int64_t time) {
  std::string payload = utf16le(variable);
  payload += guid_bytes(vendor_guid_of(variable));
  util::append_le(payload, kAuthVariableAttributes, 4);
  payload += efi_time(time);
  payload += esl;
  return payload;
}

std::string efi_signed_update(std::string_view variable, std::string_view esl, X509* signer_cert,
                              EVP_PKEY* signer_key, std::int64_t time) {
  std::string payload = efi_signed_update_payload(variable, esl, time);
  BioPtr in(BIO_new_mem_buf(payload.data(), static_cast<int>(payload.size())));
  std::unique_ptr<PKCS7, Pkcs7Deleter> p7(
      PKCS7_sign(signer_cert, signer_key, nullptr, in.get(),
                 PKCS7_BINARY | PKCS7_DETACHED | PKCS7_NOATTR | PKCS7_NOSMIMECAP));
  if (!p7) fail_openssl(fmt::format("sign the {} update", variable));
  // The specification asks for the SignedData itself, without PKCS#7's ContentInfo around it
  // (edk2 takes both; other firmware may not).
  int n = i2d_PKCS7_SIGNED(p7->d.sign, nullptr);
  if (n <= 0) fail_openssl(fmt::format("encode the {} signature", variable));
  std::string der(static_cast<std::size_t>(n), '\0');
  auto* p = reinterpret_cast<unsigned char*>(der.data());
  i2d_PKCS7_SIGNED(p7->d.sign, &p);

  std::string out = efi_time(time);
  util::append_le(out, 4 + 2 + 2 + 16 + der.size(),
                  4);  // WIN_CERTIFICATE.dwLength, CertData included
  util::append_le(out, kWinCertRevision, 2);
  util::append_le(out, kWinCertTypeEfiGuid, 2);
  out += guid_bytes(kEfiCertTypePkcs7Guid);
  out += der;
  out += esl;
  return out;
}

void generate_secure_boot_keys(const util::Path& dir, const KeyGenOptions& o) {
  std::error_code ec;
  if (fs::exists(dir, ec) && !(fs::is_directory(dir, ec) && fs::is_empty(dir, ec)))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to generate keys in {}: it exists and is not an empty "
                            "directory",
                            dir.string()));
  if (o.name.empty() || o.name.size() > 48 ||
      o.name.find_first_of("\n\r\t/\\,=+<>#;\"") != std::string::npos)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to generate keys in {}: --name must be 1 to 48 characters "
                            "without separators",
                            dir.string()));
  if (o.validity_days < 1 || o.validity_days > 36500)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to generate keys in {}: validity of {} days (1 to 36500)",
                            dir.string(), o.validity_days));
  // Extra certificates are read first: a bad one is refused before any key exists.
  std::vector<X509Ptr> extra_kek, extra_db;
  for (const auto& f : o.extra_kek) extra_kek.push_back(read_certificate(f));
  for (const auto& f : o.extra_db) extra_db.push_back(read_certificate(f));

  const std::int64_t now = clock_now(o.now);
  const std::string owner = random_guid();
  PkeyPtr pk_key = new_rsa_key(), kek_key = new_rsa_key(), db_key = new_rsa_key();
  PkeyPtr pcr_key = new_rsa_key();
  X509Ptr pk =
      new_certificate(o.name + " PK", pk_key.get(), nullptr, nullptr, true, now, o.validity_days);
  X509Ptr kek = new_certificate(o.name + " KEK", kek_key.get(), pk.get(), pk_key.get(), true, now,
                                o.validity_days);
  X509Ptr db = new_certificate(o.name + " db", db_key.get(), kek.get(), kek_key.get(), false, now,
                               o.validity_days);

  std::string pk_esl = efi_signature_list(pk.get(), owner);
  std::string kek_esl = efi_signature_list(kek.get(), owner);
  for (const auto& c : extra_kek) kek_esl += efi_signature_list(c.get(), owner);
  std::string db_esl = efi_signature_list(db.get(), owner);
  for (const auto& c : extra_db) db_esl += efi_signature_list(c.get(), owner);

  util::make_dirs(dir.parent_path().empty() ? util::Path(".") : dir.parent_path());
  util::TempDir tmp(dir);
  const util::Path& t = tmp.path();
  struct Entry {
    std::string_view name;
    X509* cert;
    EVP_PKEY* key;
    const std::string& esl;
    X509* signer;
    EVP_PKEY* signer_key;
  };
  for (const Entry& e : {Entry{"PK", pk.get(), pk_key.get(), pk_esl, pk.get(), pk_key.get()},
                         Entry{"KEK", kek.get(), kek_key.get(), kek_esl, pk.get(), pk_key.get()},
                         Entry{"db", db.get(), db_key.get(), db_esl, kek.get(), kek_key.get()}}) {
    std::string n(e.name);
    util::write_file_atomic(t / (n + ".crt"), cert_pem(e.cert));
    util::write_file_atomic(t / (n + ".key"), key_pem(e.key), 0600);
    util::write_file_atomic(t / (n + ".esl"), e.esl);
    util::write_file_atomic(t / (n + ".auth"),
                            efi_signed_update(e.name, e.esl, e.signer, e.signer_key, now));
  }
  util::write_file_atomic(t / std::string(kPcrPrivateKey), key_pem(pcr_key.get()), 0600);
  util::write_file_atomic(t / std::string(kPcrPublicKey), public_pem(pcr_key.get()));
  util::write_file_atomic(t / std::string(kOwnerGuidFile), owner + "\n");
  if (::chmod(t.c_str(), 0700) != 0)
    throw_errno("Failed to generate keys in " + dir.string(), errno);
  tmp.commit();
}

SecureBootKeys load_secure_boot_keys(const util::Path& dir, std::int64_t now_in) {
  const std::int64_t now = clock_now(now_in);
  auto refuse = [&](std::string_view file, const std::string& why) -> Error {
    return Error(ErrorKind::kInvalidInput,
                 fmt::format("Failed to use the keys in {}: {}: {}", dir.string(), file, why));
  };
  auto require = [&](const std::string& file) {
    util::Path p = dir / file;
    if (::access(p.c_str(), R_OK) != 0)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to use the keys in {}: {}: missing (make a key set with "
                              "pok8s keys generate)",
                              dir.string(), file));
    return p;
  };
  auto cert = [&](const std::string& file) {
    util::Path p = require(file);
    try {
      return read_certificate(p);
    } catch (const Error&) {
      throw refuse(file, "not an X.509 certificate");
    }
  };
  auto private_key = [&](const std::string& file) {
    std::string pem = util::read_file(require(file), kMaxCertificateBytes);
    // A key kept in a token: the file names it.
    if (is_pkcs11_uri(pem)) return PkeyPtr(load_pkcs11_private_key(pem, (dir / file).string()));
    BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    if (!key) throw refuse(file, "not a PEM private key (" + openssl_error("unreadable") + ")");
    return key;
  };

  SecureBootKeys k;
  k.dir = dir;
  k.pk_cert = cert("PK.crt");
  k.kek_cert = cert("KEK.crt");
  k.db_cert = cert("db.crt");
  k.pk_key = private_key("PK.key");
  k.kek_key = private_key("KEK.key");
  k.db_key = private_key("db.key");
  for (std::string_view n : kKeyNames)
    for (const char* ext : {".esl", ".auth"}) require(std::string(n) + ext);

  time_t at = static_cast<time_t>(now);
  struct Link {
    const char* file;
    X509* cert;
    EVP_PKEY* key;
    const char* key_file;
    X509* issuer;
    const char* issuer_file;
  };
  for (const Link& l :
       {Link{"PK.crt", k.pk_cert.get(), k.pk_key.get(), "PK.key", k.pk_cert.get(), "PK.crt"},
        Link{"KEK.crt", k.kek_cert.get(), k.kek_key.get(), "KEK.key", k.pk_cert.get(), "PK.crt"},
        Link{"db.crt", k.db_cert.get(), k.db_key.get(), "db.key", k.kek_cert.get(), "KEK.crt"}}) {
    if (X509_cmp_time(X509_get0_notAfter(l.cert), &at) <= 0)
      throw refuse(l.file, "the certificate has expired");
    if (X509_cmp_time(X509_get0_notBefore(l.cert), &at) > 0)
      throw refuse(l.file, "the certificate is not valid yet");
    if (X509_check_private_key(l.cert, l.key) != 1) {
      ERR_clear_error();
      throw refuse(l.key_file, fmt::format("not the private key of {}", l.file));
    }
    if (X509_check_ca(l.issuer) < 1)
      throw refuse(l.issuer_file,
                   fmt::format("not a CA certificate, so it cannot issue {}", l.file));
    EVP_PKEY* issuer_key = X509_get0_pubkey(l.issuer);
    if (X509_check_issued(l.issuer, l.cert) != X509_V_OK || issuer_key == nullptr ||
        X509_verify(l.cert, issuer_key) != 1) {
      ERR_clear_error();
      throw refuse(l.file, fmt::format("not issued by {}", l.issuer_file));
    }
  }

  k.pcr_key = private_key(std::string(kPcrPrivateKey));
  k.pcr_public = util::read_file(require(std::string(kPcrPublicKey)), kMaxCertificateBytes);
  BioPtr bio(BIO_new_mem_buf(k.pcr_public.data(), static_cast<int>(k.pcr_public.size())));
  PkeyPtr pub(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!pub) {
    ERR_clear_error();
    throw refuse(kPcrPublicKey, "not a PEM public key");
  }
  if (EVP_PKEY_eq(pub.get(), k.pcr_key.get()) != 1)
    throw refuse(kPcrPublicKey, fmt::format("not the public half of {}", kPcrPrivateKey));
  return k;
}

}  // namespace pok8s::boot
