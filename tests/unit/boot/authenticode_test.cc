// Authenticode: systemd-boot (Debian's systemd-boot-efi) signed with a db key from pok8s keys is
// what sbverify accepts with that certificate, and refuses with another or after a flipped byte;
// PE images that are not what they claim are refused with the part that is wrong.
#include "pok8s/boot/authenticode.h"

#include <gtest/gtest.h>

#include "pok8s/boot/secure_boot_keys.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

using namespace pok8s;
using namespace pok8s::boot;

namespace {

constexpr const char* kSystemdBoot = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

util::ProcessResult sbverify(const util::Path& cert, const util::Path& image) {
  return util::run_process({"sbverify", "--cert", cert.string(), image.string()});
}

class Authenticode : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new util::TempDir(util::TempDir::scratch());
    KeyGenOptions o;
    generate_secure_boot_keys(dir_->path() / "a", o);
    generate_secure_boot_keys(dir_->path() / "b", o);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static util::Path signed_systemd_boot(const std::string& name) {
    SecureBootKeys k = load_secure_boot_keys(dir_->path() / "a");
    util::Path out = dir_->path() / name;
    sign_pe_file(kSystemdBoot, out, k.db_cert.get(), k.db_key.get());
    return out;
  }
  static inline util::TempDir* dir_ = nullptr;
};

TEST_F(Authenticode, SbverifyAcceptsTheSignatureWithTheDbCertificateOnly) {
  util::Path image = signed_systemd_boot("a.efi");
  auto ok = sbverify(dir_->path() / "a/db.crt", image);
  EXPECT_EQ(ok.status, 0) << ok.output;
  EXPECT_NE(ok.output.find("Signature verification OK"), std::string::npos) << ok.output;
  auto other = sbverify(dir_->path() / "b/db.crt", image);
  EXPECT_NE(other.status, 0) << other.output;
  // The unsigned original is refused too.
  EXPECT_NE(sbverify(dir_->path() / "a/db.crt", kSystemdBoot).status, 0);
}

TEST_F(Authenticode, AFlippedByteInACodeSectionFailsVerification) {
  util::Path image = signed_systemd_boot("flipped.efi");
  std::string bytes = util::read_file(image, kMaxPeImageBytes);
  PeImage pe = parse_pe(bytes, "x");
  ASSERT_FALSE(pe.sections.empty());
  bytes[pe.sections[0].raw_offset + 100] ^= 0x01;
  util::write_file_atomic(image, bytes);
  EXPECT_NE(sbverify(dir_->path() / "a/db.crt", image).status, 0);
}

TEST_F(Authenticode, ResigningReplacesTheSignatureAndTheDigestIgnoresIt) {
  util::Path once = signed_systemd_boot("once.efi");
  SecureBootKeys b = load_secure_boot_keys(dir_->path() / "b");
  util::Path twice = dir_->path() / "twice.efi";
  sign_pe_file(once, twice, b.db_cert.get(), b.db_key.get());
  EXPECT_EQ(sbverify(dir_->path() / "b/db.crt", twice).status, 0);
  EXPECT_NE(sbverify(dir_->path() / "a/db.crt", twice).status, 0);
  std::string s1 = util::read_file(once, kMaxPeImageBytes);
  std::string s2 = util::read_file(twice, kMaxPeImageBytes);
  EXPECT_EQ(authenticode_digest(s1, parse_pe(s1, "once")),
            authenticode_digest(s2, parse_pe(s2, "twice")));
  PeImage pe = parse_pe(s2, "twice");
  EXPECT_EQ(pe.cert_table_offset % 8, 0u);
  EXPECT_EQ(pe.cert_table_offset + pe.cert_table_size, s2.size());
}

// The upgrade compares the signer of a new UKI with the installed one's.
TEST_F(Authenticode, TheSignerCertificateIsTheDbCertificateThatSigned) {
  auto der_of = [](const util::Path& pem) {
    SecureBootKeys k = load_secure_boot_keys(pem);
    int n = i2d_X509(k.db_cert.get(), nullptr);
    std::string out(static_cast<std::size_t>(n), '\0');
    auto* p = reinterpret_cast<unsigned char*>(out.data());
    i2d_X509(k.db_cert.get(), &p);
    return out;
  };
  util::Path once = signed_systemd_boot("signer.efi");
  std::string bytes = util::read_file(once, kMaxPeImageBytes);
  EXPECT_EQ(pe_signer_certificate(bytes, "signer.efi"), der_of(dir_->path() / "a"));
  EXPECT_NE(pe_signer_certificate(bytes, "signer.efi"), der_of(dir_->path() / "b"));
  std::string original = util::read_file(kSystemdBoot, kMaxPeImageBytes);
  EXPECT_EQ(pe_signer_certificate(original, "unsigned"), std::nullopt);
  // A table that is not PKCS#7.
  PeImage pe = parse_pe(bytes, "x");
  for (std::size_t i = pe.cert_table_offset + 8; i < bytes.size(); ++i) bytes[i] = 'x';
  EXPECT_THROW(pe_signer_certificate(bytes, "garbled"), Error);
}

TEST_F(Authenticode, AGivenSigningTimeSignsTheSameBytesEveryTime) {
  SecureBootKeys k = load_secure_boot_keys(dir_->path() / "a");
  std::string image = util::read_file(kSystemdBoot, kMaxPeImageBytes);
  std::string one = sign_pe(image, k.db_cert.get(), k.db_key.get(), "x", 1700000000);
  std::string two = sign_pe(image, k.db_cert.get(), k.db_key.get(), "x", 1700000000);
  EXPECT_EQ(one, two);
  EXPECT_NE(one, sign_pe(image, k.db_cert.get(), k.db_key.get(), "x", 1700000001));
  // The time is in the signature: openssl's parse shows it among the signed attributes.
  PeImage pe = parse_pe(one, "x");
  util::Path p7 = dir_->path() / "sig.p7";
  util::write_file_atomic(p7, one.substr(pe.cert_table_offset + 8, pe.cert_table_size - 8));
  auto shown = util::run_process({"openssl", "asn1parse", "-inform", "DER", "-in", p7.string()});
  EXPECT_NE(shown.output.find(":231114221320Z"), std::string::npos) << shown.output;
}

std::string format_error(std::string_view bytes) {
  try {
    parse_pe(bytes, "test.efi");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    return e.what();
  }
  return "";
}

TEST_F(Authenticode, PeImagesThatAreNotWhatTheyClaimAreRefused) {
  std::string good = util::read_file(kSystemdBoot, kMaxPeImageBytes);
  EXPECT_EQ(format_error("MZ"),
            "Failed to read PE image test.efi: the DOS header ends past the end of the file");
  EXPECT_EQ(format_error(std::string(64, 'x')),
            "Failed to read PE image test.efi: no MZ signature");
  EXPECT_EQ(format_error(good.substr(0, 300)).rfind("Failed to read PE image test.efi: the ", 0),
            0u);
  std::string bad_table = good;
  PeImage pe = parse_pe(good, "good");
  // A certificate table that claims the last 16 bytes but one: not at the end.
  std::uint32_t at = pe.cert_dir_field();
  std::uint32_t offset = static_cast<std::uint32_t>(good.size() - 17);
  for (int i = 0; i < 4; ++i) bad_table[at + i] = static_cast<char>(offset >> (8 * i));
  bad_table[at + 4] = 16;
  EXPECT_EQ(format_error(bad_table),
            "Failed to read PE image test.efi: the attribute certificate table is not at the end "
            "of the file");
}

}  // namespace

namespace {

// The fuzzer's seed, a PE32+ header written field by field: it parses, so fuzzing starts past
// the signatures.
TEST(PeImage, TheFuzzSeedParsesWithItsOneSection) {
  std::string seed = util::read_file(
      util::Path(POK8S_TEST_SOURCE_DIR) / "tests/fuzz/corpus/pe/minimal.efi", kMaxPeImageBytes);
  PeImage pe = parse_pe(seed, "minimal.efi");
  EXPECT_EQ(pe.machine, 0x8664);
  ASSERT_EQ(pe.sections.size(), 1u);
  EXPECT_EQ(pe.sections[0].name, ".text");
  EXPECT_EQ(pe.sections[0].raw_offset, 0x200u);
  EXPECT_EQ(pe.cert_table_size, 0u);
  EXPECT_EQ(authenticode_digest(seed, pe).size(), 32u);
}

}  // namespace
