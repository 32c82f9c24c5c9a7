// A TPM 2.0 through tpm2-tss (ESAPI over tss2's TCTI loader): what measured boot and disk keys
// sealed to signed PCR 11 policies need of it.
#pragma once

#include <memory>
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

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pok8s::boot
