// A TPM 2.0 through tpm2-tss (ESAPI over tss2's TCTI loader): what measured boot and disk keys
// sealed to signed PCR 11 policies need of it.
#pragma once

#include <openssl/evp.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace pok8s::boot {

class Tpm2 {
 public:
  // `tcti` as tss2's TCTI loader takes it: "device:/dev/tpmrm0", "swtpm:host=127.0.0.1,port=N".
  // Throws Error(kIo) naming it when it cannot be opened.
  explicit Tpm2(const std::string& tcti);
  Tpm2(const Tpm2&) = delete;
  Tpm2& operator=(const Tpm2&) = delete;
  ~Tpm2();

  // Extends PCR `pcr`'s SHA-256 bank with the SHA-256 of `data`: how systemd-stub measures a
  // UKI section and systemd-pcrphase a boot phase ("enter-initrd") into PCR 11.
  void extend_sha256(int pcr, std::string_view data);

  // The value of PCR `pcr` in the SHA-256 bank (32 raw bytes).
  std::string read_sha256(int pcr);

  // The policy digest a trial session computes for TPM2_PolicyPCR over PCR `pcr` of the SHA-256
  // bank holding `value` (raw): what a key sealed to that value is bound to.
  std::string trial_policy_pcr(int pcr, std::string_view value);

  // A secret sealed in the TPM: its TPM2B_PRIVATE and TPM2B_PUBLIC, marshalled, to be stored
  // (in a LUKS2 token) and loaded under the same TPM's storage key to unseal.
  struct Sealed {
    std::string private_blob;
    std::string public_blob;
    std::string policy;  // the object's policy digest
  };

  // Seals `secret` (1 to 128 bytes) so that only a policy session that satisfies
  // TPM2_PolicyAuthorize with `pcr_key` (an RSA public key: the UKIs' .pcrpkey) — a PCR 11
  // policy signed with its private half — and, with `pcr7`, TPM2_PolicyPCR over PCR 7 holding
  // that value, unseals it. Any UKI signed with the same PCR key unlocks it; nothing else.
  Sealed seal(std::string_view secret, EVP_PKEY* pcr_key, std::optional<std::string> pcr7);

  // Unseals `sealed` with the signed policy of `pcrsig` (a .pcrsig JSON) that matches PCR 11 as
  // it is now, checked by the TPM against `pcr_key`. Throws Error(kSignature) when no signed
  // policy matches the current PCR 11 or the TPM refuses the signature or the policy (another
  // key, another PCR 7), naming the TPM.
  std::string unseal(const Sealed& sealed, EVP_PKEY* pcr_key, std::string_view pcrsig, bool pcr7);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pok8s::boot
