// pok8s keys: the PK → KEK → db chain and the PCR key, the EFI signature lists (read back by
// efitools' sig-list-to-certs) and the signed .auth updates (byte for byte what efitools'
// sign-efi-sig-list makes with the same key and time), and every refusal of a key directory a
// build must not sign with.
#include "pok8s/boot/secure_boot_keys.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fmt/format.h>

#include <ctime>
#include <filesystem>

#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

using namespace pok8s;
using namespace pok8s::boot;
namespace fs = std::filesystem;

namespace {

constexpr std::int64_t kNow = 1764000000;  // 2025-11-24 16:00:00 UTC

void run(const std::vector<std::string>& args) {
  auto r = util::run_process(args);
  ASSERT_EQ(r.status, 0) << fmt::format("{}", fmt::join(args, " ")) << "\n" << r.output;
}

util::Path generate(const util::Path& dir, KeyGenOptions o = {}) {
  if (o.now == 0) o.now = kNow;
  generate_secure_boot_keys(dir, o);
  return dir;
}

std::string error_of(const util::Path& dir, std::int64_t now = kNow + 86400) {
  try {
    load_secure_boot_keys(dir, now);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

unsigned mode_of(const util::Path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 0777;
}

TEST(SecureBootKeys, GeneratesAChainThatChecksWithPrivateFilesPrivate) {
  util::TempDir tmp = util::TempDir::scratch();
  util::Path dir = generate(tmp.path() / "keys");
  SecureBootKeys k = load_secure_boot_keys(dir, kNow + 60);
  EXPECT_NE(k.pcr_public.find("BEGIN PUBLIC KEY"), std::string::npos);
  EXPECT_EQ(mode_of(dir), 0700u);
  for (const char* f : {"PK.key", "KEK.key", "db.key", "tpm2-pcr-private.pem"})
    EXPECT_EQ(mode_of(dir / f), 0600u) << f;
  // OpenSSL's own chain check agrees: db verifies through KEK to PK.
  run({"openssl", "verify", "-attime", std::to_string(kNow + 60), "-CAfile",
       (dir / "PK.crt").string(), "-untrusted", (dir / "KEK.crt").string(),
       (dir / "db.crt").string()});
}

TEST(SecureBootKeys, SignatureListsHoldTheCertificatesAndTheAppendedOnes) {
  util::TempDir tmp = util::TempDir::scratch();
  util::Path vendor = generate(tmp.path() / "vendor");
  KeyGenOptions o;
  o.extra_db = {vendor / "db.crt", vendor / "KEK.crt"};
  o.extra_kek = {vendor / "KEK.crt"};
  util::Path dir = generate(tmp.path() / "keys", o);
  util::Path out = tmp.path() / "out";
  util::make_dirs(out);
  run({"sig-list-to-certs", (dir / "db.esl").string(), (out / "db").string()});
  run({"sig-list-to-certs", (dir / "KEK.esl").string(), (out / "kek").string()});
  auto der = [&](const util::Path& pem) {
    auto r = util::run_process({"openssl", "x509", "-in", pem.string(), "-outform", "DER", "-out",
                                (out / "tmp.der").string()});
    EXPECT_EQ(r.status, 0) << r.output;
    return util::read_file(out / "tmp.der");
  };
  EXPECT_EQ(util::read_file(out / "db-0.der"), der(dir / "db.crt"));
  EXPECT_EQ(util::read_file(out / "db-1.der"), der(vendor / "db.crt"));
  EXPECT_EQ(util::read_file(out / "db-2.der"), der(vendor / "KEK.crt"));
  EXPECT_FALSE(fs::exists(out / "db-3.der"));
  EXPECT_EQ(util::read_file(out / "kek-1.der"), der(vendor / "KEK.crt"));
  // Every list is owned by the set's GUID.
  std::string owner = util::read_file(dir / std::string(kOwnerGuidFile));
  EXPECT_EQ(owner.size(), 37u);
}

TEST(SecureBootKeys, SignedUpdatesAreWhatEfitoolsSignsWithTheSameKeyAndTime) {
  util::TempDir tmp = util::TempDir::scratch();
  util::Path dir = generate(tmp.path() / "keys");
  std::time_t t = kNow;
  struct tm tm {};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
  for (const auto& [variable, signer] :
       {std::pair{"PK", "PK"}, std::pair{"KEK", "PK"}, std::pair{"db", "KEK"}}) {
    util::Path ref = tmp.path() / fmt::format("{}.auth", variable);
    run({"sign-efi-sig-list", "-t", stamp, "-c", (dir / fmt::format("{}.crt", signer)).string(),
         "-k", (dir / fmt::format("{}.key", signer)).string(), variable,
         (dir / fmt::format("{}.esl", variable)).string(), ref.string()});
    EXPECT_EQ(util::read_file(dir / fmt::format("{}.auth", variable)), util::read_file(ref))
        << variable;
  }
}

TEST(SecureBootKeys, RefusesAnExistingDirectoryAndABadExtraCertificateBeforeMakingKeys) {
  util::TempDir tmp = util::TempDir::scratch();
  util::make_dirs(tmp.path() / "full");
  util::write_file_atomic(tmp.path() / "full/x", "x");
  EXPECT_THROW(generate(tmp.path() / "full"), Error);
  util::write_file_atomic(tmp.path() / "vendor.crt", "not a certificate");
  KeyGenOptions o;
  o.extra_db = {tmp.path() / "vendor.crt"};
  try {
    generate(tmp.path() / "keys", o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("Failed to read certificate " +
                                         (tmp.path() / "vendor.crt").string()),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(tmp.path() / "keys"));
}

TEST(SecureBootKeys, ExpiredOrNotYetValidCertificatesAreRefused) {
  util::TempDir tmp = util::TempDir::scratch();
  KeyGenOptions o;
  o.validity_days = 1;
  util::Path dir = generate(tmp.path() / "keys", o);
  EXPECT_EQ(error_of(dir, kNow + 2 * 86400),
            "Failed to use the keys in " + dir.string() + ": PK.crt: the certificate has expired");
  EXPECT_EQ(error_of(dir, kNow - 60), "Failed to use the keys in " + dir.string() +
                                          ": PK.crt: the certificate is not valid yet");
}

TEST(SecureBootKeys, AMismatchedKeyANonCaIssuerOrAForeignCertificateIsRefused) {
  util::TempDir tmp = util::TempDir::scratch();
  util::Path a = generate(tmp.path() / "a");
  util::Path b = generate(tmp.path() / "b");
  const std::string prefix = "Failed to use the keys in " + a.string() + ": ";

  fs::copy_file(a / "db.key", tmp.path() / "db.key.a");
  fs::copy_file(b / "db.key", a / "db.key", fs::copy_options::overwrite_existing);
  EXPECT_EQ(error_of(a), prefix + "db.key: not the private key of db.crt");
  fs::copy_file(tmp.path() / "db.key.a", a / "db.key", fs::copy_options::overwrite_existing);

  // b's db certificate (and key): issued by b's KEK, not a's.
  fs::copy_file(b / "db.crt", a / "db.crt", fs::copy_options::overwrite_existing);
  fs::copy_file(b / "db.key", a / "db.key", fs::copy_options::overwrite_existing);
  EXPECT_EQ(error_of(a), prefix + "db.crt: not issued by KEK.crt");

  // KEK re-issued by PK with the same key and name, but not as a CA: it cannot issue db.
  util::Path c = generate(tmp.path() / "c");
  util::write_file_atomic(tmp.path() / "ext", "basicConstraints=CA:FALSE\n");
  run({"openssl", "req", "-new", "-key", (c / "KEK.key").string(), "-subj", "/CN=pok8s KEK", "-out",
       (tmp.path() / "kek.csr").string()});
  run({"openssl", "x509", "-req", "-in", (tmp.path() / "kek.csr").string(), "-CA",
       (c / "PK.crt").string(), "-CAkey", (c / "PK.key").string(), "-set_serial", "7", "-days",
       "30", "-extfile", (tmp.path() / "ext").string(), "-out", (c / "KEK.crt").string()});
  std::int64_t now = static_cast<std::int64_t>(std::time(nullptr));
  EXPECT_EQ(error_of(c, now), "Failed to use the keys in " + c.string() +
                                  ": KEK.crt: not a CA certificate, so it cannot issue db.crt");
}

TEST(SecureBootKeys, APcrKeyWithoutItsPublicHalfOrWithAnotherIsRefused) {
  util::TempDir tmp = util::TempDir::scratch();
  util::Path a = generate(tmp.path() / "a");
  util::Path b = generate(tmp.path() / "b");
  fs::copy_file(b / "tpm2-pcr-public.pem", a / "tpm2-pcr-public.pem",
                fs::copy_options::overwrite_existing);
  EXPECT_EQ(error_of(a), "Failed to use the keys in " + a.string() +
                             ": tpm2-pcr-public.pem: not the public half of tpm2-pcr-private.pem");
  fs::remove(a / "tpm2-pcr-public.pem");
  try {
    load_secure_boot_keys(a, kNow + 60);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_EQ(std::string(e.what()),
              "Failed to use the keys in " + a.string() +
                  ": tpm2-pcr-public.pem: missing (make a key set with pok8s keys generate)");
  }
  fs::remove(b / "db.crt");
  EXPECT_EQ(error_of(b), "Failed to use the keys in " + b.string() +
                             ": db.crt: missing (make a key set with pok8s keys generate)");
}

}  // namespace
