// LUKS2 volumes through libcryptsetup, on image files: a LUKS2 header and keyslots need no
// device mapper (opening one does; the boot tests do that). The TPM half is integration_tpm2's.
#include "pok8s/boot/disk_encryption.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

using namespace pok8s;
using namespace pok8s::boot;

namespace {

util::Path blank_file(const util::TempDir& dir, const std::string& name) {
  util::Path p = dir.path() / name;
  util::write_file_atomic(p, std::string(20u << 20, '\0'));
  return p;
}

TEST(DiskEncryption, TheTpmTokenRoundTripsAndItsFieldsAreChecked) {
  TpmToken t;
  t.sealed = {"private\x01\x02", "public\x00\x03", std::string(32, 'p')};
  t.pcr7 = true;
  t.pkfp = "ab12";
  std::string text = tpm_token_json(t);
  auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["type"], "pok8s-tpm2");
  EXPECT_EQ(j["keyslots"], nlohmann::json::array({"0"}));
  TpmToken back = parse_tpm_token(text, "/dev/vda3");
  EXPECT_EQ(back.sealed.private_blob, t.sealed.private_blob);
  EXPECT_EQ(back.sealed.public_blob, t.sealed.public_blob);
  EXPECT_EQ(back.sealed.policy, t.sealed.policy);
  EXPECT_TRUE(back.pcr7);
  EXPECT_EQ(back.pkfp, "ab12");

  auto refused = [](const std::string& json, const std::string& why) {
    try {
      parse_tpm_token(json, "/dev/vda3");
      ADD_FAILURE() << "accepted " << json;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kFormat);
      EXPECT_NE(std::string(e.what()).find("/dev/vda3"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  };
  refused("[1]", "not a JSON object");
  refused("{", "not a JSON object");
  refused(R"({"type":"systemd-tpm2"})", "its type is not pok8s-tpm2");
  j.erase("tpm2-public");
  refused(j.dump(), "no string \"tpm2-public\"");
  j["tpm2-public"] = "not base64!";
  refused(j.dump(), "\"tpm2-public\" is not base64");
  j["tpm2-public"] = "cHVi";
  j["tpm2-pcr7"] = "yes";
  refused(j.dump(), "no boolean \"tpm2-pcr7\"");
}

TEST(DiskEncryption, RecoveryKeysAreRandomAndTypedWithOrWithoutDashes) {
  std::string a = generate_recovery_key(), b = generate_recovery_key();
  EXPECT_NE(a, b);
  ASSERT_EQ(a.size(), 71u);  // 64 hex digits and 7 dashes
  for (std::size_t i = 8; i < a.size(); i += 9) EXPECT_EQ(a[i], '-');
  EXPECT_EQ(normalize_recovery_key(a), a);
  std::string typed;
  for (char c : a)
    if (c != '-') typed += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(normalize_recovery_key(typed), a);
  EXPECT_FALSE(normalize_recovery_key("correct horse battery staple"));
  EXPECT_FALSE(normalize_recovery_key(a.substr(0, 70)));
  EXPECT_FALSE(normalize_recovery_key(a + "0"));
}

TEST(DiskEncryption, AFormattedVolumeOpensWithItsKeyOrTheRecoveryKeyOnly) {
  auto dir = util::TempDir::scratch();
  util::Path dev = blank_file(dir, "persistent.img");
  EXPECT_EQ(luks_label(dev), std::nullopt);
  LuksFormatOptions o;
  o.label = "COS_PERSISTENT";
  o.key = random_bytes(kDiskKeyBytes);
  o.recovery_key = generate_recovery_key();
  TpmToken t;
  t.sealed = {"priv", "pub", std::string(32, 'p')};
  t.pkfp = "00";
  o.token = tpm_token_json(t);
  luks_format(dev, o);
  EXPECT_EQ(luks_label(dev), "COS_PERSISTENT");
  auto token = luks_token(dev, kTpmTokenType);
  ASSERT_TRUE(token);
  EXPECT_EQ(parse_tpm_token(*token, dev.string()).sealed.public_blob, "pub");
  EXPECT_FALSE(luks_token(dev, "systemd-tpm2"));
  EXPECT_TRUE(luks_open(dev, "", o.key));
  EXPECT_TRUE(luks_open(dev, "", o.recovery_key));
  EXPECT_FALSE(luks_open(dev, "", "wrong"));
  EXPECT_FALSE(luks_open(dev, "", generate_recovery_key()));
  // cryptsetup itself reads what libcryptsetup wrote.
  auto dump = util::run_process({"cryptsetup", "luksDump", dev.string()});
  if (dump.status == 0) {
    EXPECT_NE(dump.output.find("\tCOS_PERSISTENT\n"), std::string::npos) << dump.output;
    EXPECT_NE(dump.output.find("pok8s-tpm2"), std::string::npos) << dump.output;
  }
}

TEST(DiskEncryption, PassphraseModeFormatsEveryVolumeWithOnePassphraseAndOneRecoveryKey) {
  auto dir = util::TempDir::scratch();
  util::Path oem = blank_file(dir, "oem.img"), persistent = blank_file(dir, "persistent.img");
  EncryptRequest r;
  r.mode = EncryptionMode::kPassphrase;
  r.passphrase = "correct horse battery staple";
  r.passphrase_kdf_ms = 50;
  r.volumes = {{oem, "COS_OEM"}, {persistent, "COS_PERSISTENT"}};
  std::string recovery = encrypt_volumes(r);
  EXPECT_TRUE(normalize_recovery_key(recovery));
  EXPECT_EQ(luks_label(oem), "COS_OEM");
  EXPECT_EQ(luks_label(persistent), "COS_PERSISTENT");
  for (const auto& dev : {oem, persistent}) {
    EXPECT_FALSE(luks_token(dev, kTpmTokenType));
    EXPECT_TRUE(luks_open(dev, "", r.passphrase));
    EXPECT_TRUE(luks_open(dev, "", recovery));
  }

  // At boot, without a TPM token: asked, the recovery key typed without dashes opens both.
  std::vector<std::string> prompts, said;
  std::vector<std::string> answers = {"wrong passphrase", recovery};
  UnlockRequest u;
  u.volumes = {{oem, ""}, {persistent, ""}};
  u.check_only = true;
  u.ask = [&](const std::string& prompt) -> std::optional<std::string> {
    prompts.push_back(prompt);
    if (prompts.size() > answers.size()) return std::nullopt;
    std::string a = answers[prompts.size() - 1];
    std::erase(a, '-');
    return a;
  };
  u.say = [&](const std::string& line) { said.push_back(line); };
  unlock_volumes(u);
  ASSERT_EQ(prompts.size(), 2u);
  EXPECT_NE(prompts[0].find(oem.string()), std::string::npos) << prompts[0];
  EXPECT_NE(prompts[0].find(persistent.string()), std::string::npos) << prompts[0];
  ASSERT_EQ(said.size(), 1u);
  EXPECT_EQ(said[0], "That key opens none of them");

  // Nobody answers: the volumes stay locked and are named.
  prompts.clear();
  answers = {};
  try {
    unlock_volumes(u);
    ADD_FAILURE() << "unlocked without a key";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kSignature);
    EXPECT_NE(std::string(e.what()).find("Failed to unlock " + oem.string()), std::string::npos)
        << e.what();
  }
}

TEST(DiskEncryption, RefusalsNameTheDevice) {
  auto dir = util::TempDir::scratch();
  util::Path plain = blank_file(dir, "plain.img");
  try {
    luks_token(plain, kTpmTokenType);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Failed to read the LUKS2 header on " + plain.string()),
              std::string::npos)
        << e.what();
  }
  EncryptRequest r;
  r.mode = EncryptionMode::kPassphrase;
  r.volumes = {{plain, "COS_OEM"}};
  EXPECT_THROW(encrypt_volumes(r), Error);  // an empty passphrase
  r.mode = EncryptionMode::kTpm;
  EXPECT_THROW(encrypt_volumes(r), Error);     // no PCR key
  EXPECT_EQ(luks_label(plain), std::nullopt);  // nothing was written
  EXPECT_THROW(read_public_key_pem("-----BEGIN PUBLIC KEY-----\nxx\n", "the UKI"), Error);
}

}  // namespace
