// The TPM 2.0 client against a real (software) TPM: swtpm on 127.0.0.1. What the factory writes
// into a UKI's .pcrsig (boot/pcr_policy) is what a TPM computes when systemd-stub and the boot
// phases are measured into PCR 11, and the PolicyPCR digests signed there are what the TPM's own
// trial session gives.
#include "pok8s/boot/tpm2.h"

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cstring>
#include <map>
#include <memory>
#include <utility>

#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "integration/swtpm.h"
#include "pok8s/boot/disk_encryption.h"
#include "pok8s/boot/pcr_policy.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "pok8s/util/process.h"

using namespace pok8s;

namespace {

class Tpm2Test : public ::testing::Test {
 protected:
  void SetUp() override {
    if (util::run_process({"sh", "-c", "command -v swtpm"}).status != 0)
      GTEST_SKIP() << "no swtpm (scripts/install-deps.sh test installs it)";
    swtpm_ = std::make_unique<pok8s::testing::Swtpm>();
    ASSERT_TRUE(swtpm_->up());
  }
  std::unique_ptr<pok8s::testing::Swtpm> swtpm_;
};

TEST_F(Tpm2Test, PcrElevenAfterTheStubAndEachPhaseIsWhatThePcrsigSays) {
  // A UKI's measured sections, in the stub's order.
  std::map<std::string, std::string_view> sections = {
      {".linux", "kernel bytes"},
      {".osrel", "ID=pok8s\n"},
      {".cmdline", "console=ttyS0 pok8s.mode=active"},
      {".initrd", "initramfs bytes"},
      {".pcrpkey", "-----BEGIN PUBLIC KEY-----"}};
  auto expected = boot::expected_pcr11(sections);
  boot::Tpm2 tpm(swtpm_->tcti());
  EXPECT_EQ(tpm.read_sha256(11), std::string(32, '\0'));
  for (const char* name : {".linux", ".osrel", ".cmdline", ".initrd", ".pcrpkey"}) {
    tpm.extend_sha256(11, std::string_view(name, std::strlen(name) + 1));
    tpm.extend_sha256(11, sections.at(name));
  }
  std::size_t phase = 0;
  for (const char* step : {"enter-initrd", "leave-initrd", "sysinit", "ready"}) {
    tpm.extend_sha256(11, step);
    std::string pcr = tpm.read_sha256(11);
    ASSERT_LT(phase, expected.size());
    EXPECT_EQ(pcr, expected[phase].pcr11) << expected[phase].phase;
    // The policy digest the .pcrsig signs for this phase is the TPM's own.
    EXPECT_EQ(tpm.trial_policy_pcr(11, pcr), boot::pcr11_policy_digest(pcr))
        << expected[phase].phase;
    ++phase;
  }
}

using PKey = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

PKey rsa_key() {
  return PKey(EVP_RSA_gen(2048), EVP_PKEY_free);
}

// PCR 11 as systemd-stub leaves it for a UKI whose command line is `cmdline`, then enter-initrd;
// and the .pcrsig that UKI would carry, signed with `key`.
struct MeasuredUki {
  std::map<std::string, std::string_view> sections;
  std::string pcrsig;
};

MeasuredUki measure(boot::Tpm2& tpm, std::string_view cmdline, EVP_PKEY* key) {
  MeasuredUki m;
  m.sections = {{".linux", "kernel bytes"}, {".cmdline", cmdline}, {".initrd", "initramfs"}};
  m.pcrsig = boot::pcr_signature_json(boot::expected_pcr11(m.sections), key);
  for (const char* name : {".linux", ".cmdline", ".initrd"}) {
    tpm.extend_sha256(11, std::string_view(name, std::strlen(name) + 1));
    tpm.extend_sha256(11, m.sections.at(name));
  }
  tpm.extend_sha256(11, "enter-initrd");
  return m;
}

// A disk key sealed to the PCR key's signed policy and PCR 7: the UKI it was sealed under, and
// after a reboot another UKI signed with the same key, unseal it; a UKI whose .pcrsig is signed
// by another key, a PCR 11 no signed policy matches, and a changed PCR 7 do not.
TEST_F(Tpm2Test, ASealedKeyUnsealsUnderAnyUkiSignedWithThePcrKeyAndNothingElse) {
  PKey pcr_key = rsa_key(), other_key = rsa_key();
  ASSERT_TRUE(pcr_key && other_key);
  boot::Tpm2 tpm(swtpm_->tcti());
  std::string pcr7 = tpm.read_sha256(7);
  MeasuredUki v1 = measure(tpm, "pok8s.mode=active pok8s.verity=v1", pcr_key.get());
  std::string secret = "0123456789abcdef0123456789abcdef";
  boot::Tpm2::Sealed sealed = tpm.seal(secret, pcr_key.get(), pcr7);
  EXPECT_EQ(sealed.policy.size(), 32u);
  EXPECT_EQ(tpm.unseal(sealed, pcr_key.get(), v1.pcrsig, true), secret);

  auto refused = [&](const std::string& pcrsig, EVP_PKEY* key, const std::string& why) {
    try {
      tpm.unseal(sealed, key, pcrsig, true);
      ADD_FAILURE() << "unsealed: " << why;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kSignature) << e.what();
      EXPECT_NE(std::string(e.what()).find("the TPM at swtpm:"), std::string::npos) << e.what();
    }
  };
  // Every boot phase the .pcrsig signs unseals (leave-initrd too); a PCR 11 that none of them
  // has does not.
  tpm.extend_sha256(11, "leave-initrd");
  EXPECT_EQ(tpm.unseal(sealed, pcr_key.get(), v1.pcrsig, true), secret);
  tpm.extend_sha256(11, "something unsigned");
  refused(v1.pcrsig, pcr_key.get(), "a PCR 11 no signed policy has");

  // After a reboot into an upgraded UKI signed with the same key: unsealed.
  swtpm_->reboot();
  {
    boot::Tpm2 booted(swtpm_->tcti());
    MeasuredUki v2 = measure(booted, "pok8s.mode=active pok8s.verity=v2", pcr_key.get());
    EXPECT_EQ(booted.unseal(sealed, pcr_key.get(), v2.pcrsig, true), secret);
  }
  // A UKI signed by another key set: its signature does not verify with the PCR key, and with
  // its own key the TPM's policy is not the one the key was sealed to.
  swtpm_->reboot();
  {
    boot::Tpm2 booted(swtpm_->tcti());
    MeasuredUki foreign = measure(booted, "pok8s.mode=active pok8s.verity=v1", other_key.get());
    for (auto [key, why] :
         {std::pair<EVP_PKEY*, std::string>{pcr_key.get(), "refused the PCR policy's signature"},
          {other_key.get(), "the TPM refused the policy"}}) {
      try {
        booted.unseal(sealed, key, foreign.pcrsig, true);
        ADD_FAILURE() << "a foreign-signed UKI unsealed the key";
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kSignature) << e.what();
        EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
      }
    }
  }
  // The same UKI, but PCR 7 (Secure Boot's state and keys) changed.
  swtpm_->reboot();
  {
    boot::Tpm2 booted(swtpm_->tcti());
    booted.extend_sha256(7, "another db");
    MeasuredUki v2 = measure(booted, "pok8s.mode=active pok8s.verity=v2", pcr_key.get());
    for (bool with_pcr7 : {true, false}) {
      try {
        booted.unseal(sealed, pcr_key.get(), v2.pcrsig, with_pcr7);
        ADD_FAILURE() << "unsealed with PCR 7 changed";
      } catch (const Error& e) {
        // Without PCR 7 in the session the policy is not the sealed one either.
        EXPECT_NE(std::string(e.what()).find("the TPM refused the policy"), std::string::npos)
            << e.what();
      }
    }
  }
}

// What systemd-stub measures for a UKI with `cmdline` (not the enter-initrd phase: unlock does
// that), and the .pcrsig the build gives it: the enter-initrd policy alone, signed with `key`.
std::string stub_measure(boot::Tpm2& tpm, std::string_view cmdline, EVP_PKEY* key) {
  std::map<std::string, std::string_view> sections = {
      {".linux", "kernel bytes"}, {".cmdline", cmdline}, {".initrd", "initramfs"}};
  for (const char* name : {".linux", ".cmdline", ".initrd"}) {
    tpm.extend_sha256(11, std::string_view(name, std::strlen(name) + 1));
    tpm.extend_sha256(11, sections.at(name));
  }
  auto phases = boot::expected_pcr11(sections);
  phases.resize(1);
  return boot::pcr_signature_json(phases, key);
}

// install.encryption: tpm on two volumes (image files: opening needs a device mapper, the boot
// test does that). After a reboot, the UKI's signed policy unseals the key once, in the initrd
// phase; then PCR 11 has left it and nothing unseals it again. A UKI signed by another PCR key
// does not unlock: the recovery key, typed, does.
TEST_F(Tpm2Test, EncryptedVolumesUnlockOnlyInTheInitrdOfAUkiSignedWithThePcrKey) {
  PKey pcr_key = rsa_key(), other_key = rsa_key();
  ASSERT_TRUE(pcr_key && other_key);
  auto dir = util::TempDir::scratch();
  util::Path oem = dir.path() / "oem.img", persistent = dir.path() / "persistent.img";
  for (const auto& f : {oem, persistent}) util::write_file_atomic(f, std::string(20u << 20, '\0'));
  boot::EncryptRequest r;
  r.tcti = swtpm_->tcti();
  r.pcr_key = pcr_key.get();
  r.volumes = {{oem, "COS_OEM"}, {persistent, "COS_PERSISTENT"}};
  std::string recovery = boot::encrypt_volumes(r);
  for (const auto& f : {oem, persistent}) {
    auto token = boot::luks_token(f, boot::kTpmTokenType);
    ASSERT_TRUE(token) << f;
    auto parsed = boot::parse_tpm_token(*token, f.string());
    EXPECT_TRUE(parsed.pcr7);
    EXPECT_EQ(parsed.pkfp, boot::pcr_key_fingerprint(pcr_key.get()));
  }

  std::vector<std::string> said;
  int asked = 0;
  std::optional<std::string> answer;
  boot::UnlockRequest u;
  u.volumes = {{oem, "COS_OEM"}, {persistent, "COS_PERSISTENT"}};
  u.check_only = true;
  u.ask = [&](const std::string&) {
    ++asked;
    return answer;
  };
  u.say = [&](const std::string& line) { said.push_back(line); };

  // swtpm serves one client at a time: the stub's measurements are done before unlocking. A
  // reboot may move it to other ports.
  swtpm_->reboot();
  u.tcti = swtpm_->tcti();
  {
    {
      boot::Tpm2 booted(swtpm_->tcti());
      u.pcrsig = stub_measure(booted, "pok8s.mode=active pok8s.verity=v2", pcr_key.get());
    }
    u.pcr_key = pcr_key.get();
    try {
      boot::unlock_volumes(u);
    } catch (const Error& e) {
      FAIL() << e.what() << "\n" << (said.empty() ? "" : said.front());
    }
    EXPECT_EQ(asked, 0);
    EXPECT_TRUE(said.empty()) << said.front();
    // PCR 11 now says leave-initrd: the same UKI's policy no longer holds.
    u.measure = false;
    EXPECT_THROW(boot::unlock_volumes(u), Error);
    ASSERT_FALSE(said.empty());
    EXPECT_NE(said[0].find("The TPM did not unlock " + oem.string()), std::string::npos) << said[0];
    EXPECT_NE(said[0].find("no signed policy"), std::string::npos) << said[0];
    EXPECT_EQ(asked, 1);  // asked once: nobody answers
  }
  swtpm_->reboot();
  u.tcti = swtpm_->tcti();
  {
    {
      boot::Tpm2 booted(swtpm_->tcti());
      u.pcrsig = stub_measure(booted, "pok8s.mode=active pok8s.verity=v2", other_key.get());
    }
    u.pcr_key = other_key.get();
    u.measure = true;
    said.clear();
    asked = 0;
    answer = recovery;
    boot::unlock_volumes(u);
    EXPECT_EQ(asked, 1);
    ASSERT_EQ(said.size(), 1u);
    EXPECT_NE(said[0].find("the TPM refused the policy"), std::string::npos) << said[0];
  }
}

TEST_F(Tpm2Test, ABadPcrOrAnAbsentTpmIsNamed) {
  boot::Tpm2 tpm(swtpm_->tcti());
  EXPECT_THROW(tpm.extend_sha256(24, "x"), Error);
  try {
    boot::Tpm2 none(pok8s::testing::absent_tpm_tcti());
    none.read_sha256(11);
    FAIL() << "an absent TPM answered";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the TPM at swtpm:host=127.0.0.1"), std::string::npos)
        << e.what();
  }
}

}  // namespace
