// PKCS#11 keys: a key set whose db.key names a key in a SoftHSM token signs systemd-boot through
// OpenSSL's pkcs11 engine, and sbverify accepts it with db.crt; a URI naming no key, or another
// token's key, is refused naming the key file.
#include "pok8s/boot/pkcs11_key.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "pok8s/boot/authenticode.h"
#include "pok8s/boot/secure_boot_keys.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

using namespace pok8s;
using namespace pok8s::boot;
namespace fs = std::filesystem;

namespace {

constexpr const char* kSoftHsm = "/usr/lib/softhsm/libsofthsm2.so";
constexpr const char* kSystemdBootEfi = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

void run_ok(const std::vector<std::string>& argv) {
  auto r = util::run_process(argv);
  ASSERT_EQ(r.status, 0) << argv[0] << ": " << r.output;
}

// A SoftHSM token "pok8s" (user PIN 1234) holding `key_file` as object `label`; SOFTHSM2_CONF
// points at a configuration of its own, so no system token is touched.
class Pkcs11Key : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new util::TempDir(util::TempDir::scratch());
    util::Path d = dir_->path();
    util::make_dirs(d / "tokens");
    util::write_file_atomic(d / "softhsm2.conf",
                            "directories.tokendir = " + (d / "tokens").string() +
                                "\nobjectstore.backend = file\nlog.level = ERROR\n");
    ::setenv("SOFTHSM2_CONF", (d / "softhsm2.conf").c_str(), 1);
    KeyGenOptions o;
    generate_secure_boot_keys(d / "keys", o);
    generate_secure_boot_keys(d / "other", o);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static void import_key(const util::Path& key_file, const std::string& label) {
    util::Path p8 = dir_->path() / (label + ".p8");
    run_ok(
        {"openssl", "pkcs8", "-topk8", "-nocrypt", "-in", key_file.string(), "-out", p8.string()});
    run_ok({"softhsm2-util", "--import", p8.string(), "--token", "pok8s", "--label", label, "--id",
            label == "db" ? "01" : "02", "--pin", "1234"});
  }
  static std::string uri(const std::string& object) {
    return "pkcs11:token=pok8s;object=" + object +
           ";type=private?module-path=" + std::string(kSoftHsm) + "&pin-value=1234\n";
  }
  static inline util::TempDir* dir_ = nullptr;
};

TEST_F(Pkcs11Key, ADbKeyInATokenSignsWhatSbverifyAccepts) {
  util::Path d = dir_->path();
  run_ok({"softhsm2-util", "--init-token", "--free", "--label", "pok8s", "--pin", "1234",
          "--so-pin", "5678"});
  import_key(d / "keys/db.key", "db");
  import_key(d / "other/db.key", "other-db");

  // The key set keeps its certificates; db.key now only names the token's key.
  fs::copy(d / "keys", d / "hsm", fs::copy_options::recursive);
  util::write_file_atomic(d / "hsm/db.key", uri("db"), 0600);
  ASSERT_TRUE(is_pkcs11_uri(util::read_file(d / "hsm/db.key")));
  SecureBootKeys k = load_secure_boot_keys(d / "hsm");
  sign_pe_file(kSystemdBootEfi, d / "signed.efi", k.db_cert.get(), k.db_key.get());
  auto ok = util::run_process(
      {"sbverify", "--cert", (d / "keys/db.crt").string(), (d / "signed.efi").string()});
  EXPECT_EQ(ok.status, 0) << ok.output;

  // Another key of the token is not db.crt's: the chain check refuses it.
  util::write_file_atomic(d / "hsm/db.key", uri("other-db"), 0600);
  try {
    load_secure_boot_keys(d / "hsm");
    FAIL() << "a foreign token key was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "Failed to use the keys in " + (d / "hsm").string() +
                                         ": db.key: not the private key of db.crt");
  }
  // A key the token does not have.
  util::write_file_atomic(d / "hsm/db.key", uri("nope"), 0600);
  try {
    load_secure_boot_keys(d / "hsm");
    FAIL() << "a missing token key was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_EQ(std::string(e.what()).rfind("Failed to load the PKCS#11 key of " +
                                              (d / "hsm/db.key").string() +
                                              ": the token has no such private key",
                                          0),
              0u)
        << e.what();
  }
}

TEST(Pkcs11Uri, OnlyAOneLinePkcs11UriIsOne) {
  EXPECT_TRUE(is_pkcs11_uri("pkcs11:token=a;object=b\n"));
  EXPECT_FALSE(is_pkcs11_uri("-----BEGIN PRIVATE KEY-----\npkcs11:x\n"));
  EXPECT_FALSE(is_pkcs11_uri("pkcs11:a\npkcs11:b\n"));
  EXPECT_FALSE(is_pkcs11_uri(""));
}

}  // namespace
