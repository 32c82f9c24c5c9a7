// Hand-written around OpenSSL's PKCS#7: the Authenticode content (SpcIndirectDataContent) and
// the attribute certificate table follow Microsoft's "Windows Authenticode Portable Executable
// Signature Format" and the PE/COFF specification; no Debian library signs PE images (sbsign
// and pesign are programs).
#include "pok8s/boot/authenticode.h"

#include <openssl/asn1.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "pok8s/util/endian.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::boot {
namespace {

constexpr const char* kSpcIndirectDataOid = "1.3.6.1.4.1.311.2.1.4";
constexpr std::uint16_t kWinCertRevision = 0x0200;
constexpr std::uint16_t kWinCertTypePkcsSignedData = 0x0002;

struct Pkcs7Deleter {
  void operator()(PKCS7* p) const { PKCS7_free(p); }
};
using Pkcs7Ptr = std::unique_ptr<PKCS7, Pkcs7Deleter>;

[[noreturn]] void fail_openssl(std::string_view what) {
  unsigned long e = ERR_get_error();
  char buf[256] = "unknown error";
  if (e != 0) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  throw Error(ErrorKind::kInternal, fmt::format("Failed to sign {}: {}", what, buf));
}

// DER: a tag and its content with the definite length.
std::string der(unsigned char tag, std::string_view content) {
  std::string out(1, static_cast<char>(tag));
  std::size_t n = content.size();
  if (n < 0x80) {
    out.push_back(static_cast<char>(n));
  } else {
    std::string len;
    for (; n != 0; n >>= 8) len.insert(len.begin(), static_cast<char>(n & 0xff));
    out.push_back(static_cast<char>(0x80 | len.size()));
    out += len;
  }
  out += content;
  return out;
}

std::string oid_der(const char* dotted) {
  ASN1_OBJECT* obj = OBJ_txt2obj(dotted, 1);
  int n = i2d_ASN1_OBJECT(obj, nullptr);
  std::string out(static_cast<std::size_t>(n), '\0');
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  i2d_ASN1_OBJECT(obj, &p);
  ASN1_OBJECT_free(obj);
  return out;
}

// SpcIndirectDataContent ::= SEQUENCE {
//   data SEQUENCE { type SPC_PE_IMAGE_DATAOBJ, value SpcPeImageData ::= SEQUENCE {
//     flags BIT STRING {}, file [0] SpcLink: [2] SpcString: [0] BMPString "<<<Obsolete>>>" } },
//   messageDigest DigestInfo ::= SEQUENCE { SEQUENCE { sha256, NULL }, OCTET STRING } }
std::string indirect_data_content(std::string_view digest) {
  std::string obsolete;
  for (char c : std::string_view("<<<Obsolete>>>")) obsolete += std::string{'\0', c};
  std::string link = der(0xa0, der(0xa2, der(0x80, obsolete)));
  std::string pe_image_data = der(0x30, std::string("\x03\x01\x00", 3) + link);
  std::string data = der(0x30, oid_der("1.3.6.1.4.1.311.2.1.15") + pe_image_data);
  std::string algorithm = der(0x30, oid_der("2.16.840.1.101.3.4.2.1") + std::string("\x05\x00", 2));
  std::string digest_info = der(0x30, algorithm + der(0x04, digest));
  return der(0x30, data + digest_info);
}

// The length of a DER element's tag and length octets.
std::size_t der_header_size(std::string_view element) {
  auto first = static_cast<unsigned char>(element[1]);
  return first < 0x80 ? 2 : 2 + (first & 0x7f);
}

std::string pkcs7_signature(const std::string& idc, X509* cert, EVP_PKEY* key,
                            std::optional<std::int64_t> signing_time, std::string_view what) {
  Pkcs7Ptr p7(PKCS7_new());
  if (!p7 || PKCS7_set_type(p7.get(), NID_pkcs7_signed) != 1) fail_openssl(what);
  PKCS7_SIGNER_INFO* si = PKCS7_add_signature(p7.get(), cert, key, EVP_sha256());
  if (si == nullptr || PKCS7_add_certificate(p7.get(), cert) != 1) fail_openssl(what);
  ASN1_OBJECT* type = OBJ_txt2obj(kSpcIndirectDataOid, 1);
  if (PKCS7_add_signed_attribute(si, NID_pkcs9_contentType, V_ASN1_OBJECT, type) != 1)
    fail_openssl(what);
  // Without one, OpenSSL adds the clock's time, and the same input signs differently each time.
  if (signing_time) {
    ASN1_TIME* t = ASN1_TIME_set(nullptr, static_cast<time_t>(*signing_time));
    if (t == nullptr || PKCS7_add0_attrib_signing_time(si, t) != 1) fail_openssl(what);
  }
  if (PKCS7_content_new(p7.get(), NID_pkcs7_data) != 1) fail_openssl(what);
  // PKCS#7 digests the content's value without its tag and length: the messageDigest
  // attribute Authenticode verifiers compare.
  BIO* bio = PKCS7_dataInit(p7.get(), nullptr);
  if (bio == nullptr) fail_openssl(what);
  const std::size_t skip = der_header_size(idc);
  int written = BIO_write(bio, idc.data() + skip, static_cast<int>(idc.size() - skip));
  bool ok = written == static_cast<int>(idc.size() - skip) && PKCS7_dataFinal(p7.get(), bio) == 1;
  BIO_free_all(bio);
  if (!ok) fail_openssl(what);

  // The content itself is the SpcIndirectDataContent, typed as such.
  Pkcs7Ptr inner(PKCS7_new());
  ASN1_STRING* seq = ASN1_STRING_new();
  ASN1_TYPE* value = ASN1_TYPE_new();
  if (!inner || seq == nullptr || value == nullptr ||
      ASN1_STRING_set(seq, idc.data(), static_cast<int>(idc.size())) != 1)
    fail_openssl(what);
  ASN1_TYPE_set(value, V_ASN1_SEQUENCE, seq);
  inner->type = OBJ_txt2obj(kSpcIndirectDataOid, 1);
  inner->d.other = value;
  if (PKCS7_set_content(p7.get(), inner.release()) != 1) fail_openssl(what);

  int n = i2d_PKCS7(p7.get(), nullptr);
  if (n <= 0) fail_openssl(what);
  std::string out(static_cast<std::size_t>(n), '\0');
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  i2d_PKCS7(p7.get(), &p);
  return out;
}

}  // namespace

std::string authenticode_digest(std::string_view b, const PeImage& pe) {
  const std::size_t end = pe.cert_table_size != 0 ? pe.cert_table_offset : b.size();
  util::Sha256 sha;
  auto hash = [&](std::size_t from, std::size_t to) {
    if (to > from) sha.update(b.substr(from, to - from));
  };
  hash(0, pe.checksum_field());
  hash(pe.checksum_field() + 4, pe.cert_dir_field());
  hash(pe.cert_dir_field() + 8, end);
  return sha.digest();
}

std::string sign_pe(std::string_view bytes, X509* cert, EVP_PKEY* key, std::string_view what,
                    std::optional<std::int64_t> signing_time) {
  PeImage pe = parse_pe(bytes, what);
  if (pe.number_of_rva_and_sizes <= 4)
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to sign {}: it has no certificate table directory", what));
  // Verifiers hash the headers, then the sections in file order, then what follows; firmware
  // and sbverify disagree on data between sections, so an image with such a gap is refused.
  std::vector<PeSection> sections;
  for (const auto& s : pe.sections)
    if (s.raw_size != 0) sections.push_back(s);
  std::sort(sections.begin(), sections.end(),
            [](const PeSection& a, const PeSection& b) { return a.raw_offset < b.raw_offset; });
  std::uint64_t covered = pe.size_of_headers;
  for (const auto& s : sections) {
    if (s.raw_offset != covered)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to sign {}: section {} starts at {:#x}, not where the one "
                              "before it ends ({:#x})",
                              what, s.name, s.raw_offset, covered));
    covered += s.raw_size;
  }
  // Unsigned, padded to 8 bytes: the attribute certificate table starts aligned.
  std::string image(bytes.substr(0, pe.cert_table_size != 0 ? pe.cert_table_offset : bytes.size()));
  image.resize((image.size() + 7) / 8 * 8, '\0');
  util::put_le(image, pe.cert_dir_field(), 0, 8);
  pe.cert_table_offset = 0;
  pe.cert_table_size = 0;

  std::string signature = pkcs7_signature(indirect_data_content(authenticode_digest(image, pe)),
                                          cert, key, signing_time, what);
  // WIN_CERTIFICATE: dwLength, wRevision, wCertificateType, then the PKCS#7 ContentInfo.
  std::string table(8, '\0');
  util::put_le(table, 0, 8 + signature.size(), 4);
  util::put_le(table, 4, kWinCertRevision, 2);
  util::put_le(table, 6, kWinCertTypePkcsSignedData, 2);
  table += signature;
  table.resize((table.size() + 7) / 8 * 8, '\0');
  util::put_le(image, pe.cert_dir_field(), image.size(), 4);
  util::put_le(image, pe.cert_dir_field() + 4, table.size(), 4);
  return image + table;
}

void sign_pe_file(const util::Path& in, const util::Path& out, X509* cert, EVP_PKEY* key,
                  std::optional<std::int64_t> signing_time) {
  std::string signed_image =
      sign_pe(util::read_file(in, kMaxPeImageBytes), cert, key, in.string(), signing_time);
  util::write_file_atomic(out, signed_image);
}

std::optional<std::string> pe_signer_certificate(std::string_view bytes, std::string_view what) {
  PeImage pe = parse_pe(bytes, what);
  if (pe.cert_table_size == 0) return std::nullopt;
  auto bad = [&](std::string_view why) {
    return Error(ErrorKind::kFormat,
                 fmt::format("Failed to read the signature of {}: {}", what, why));
  };
  // WIN_CERTIFICATE: dwLength, wRevision, wCertificateType, then the PKCS#7 SignedData.
  std::string_view table = bytes.substr(pe.cert_table_offset, pe.cert_table_size);
  if (table.size() < 8) throw bad("the certificate table is shorter than its header");
  std::uint32_t length = 0;
  std::memcpy(&length, table.data(), 4);
  std::uint16_t type = 0;
  std::memcpy(&type, table.data() + 6, 2);
  if (length < 8 || length > table.size() || type != kWinCertTypePkcsSignedData)
    throw bad("the certificate table holds no PKCS#7 signature");
  const auto* p = reinterpret_cast<const unsigned char*>(table.data() + 8);
  Pkcs7Ptr p7(d2i_PKCS7(nullptr, &p, static_cast<long>(length - 8)));
  if (!p7 || PKCS7_type_is_signed(p7.get()) == 0) {
    ERR_clear_error();
    throw bad("its PKCS#7 does not parse");
  }
  STACK_OF(X509)* signers = PKCS7_get0_signers(p7.get(), nullptr, 0);
  if (signers == nullptr || sk_X509_num(signers) < 1) {
    sk_X509_free(signers);
    ERR_clear_error();
    throw bad("its PKCS#7 does not carry the signer's certificate");
  }
  X509* cert = sk_X509_value(signers, 0);
  int n = i2d_X509(cert, nullptr);
  std::string out(static_cast<std::size_t>(std::max(n, 0)), '\0');
  auto* q = reinterpret_cast<unsigned char*>(out.data());
  if (n > 0) i2d_X509(cert, &q);
  sk_X509_free(signers);
  if (n <= 0) throw bad("its signer's certificate does not encode");
  return out;
}

}  // namespace pok8s::boot
