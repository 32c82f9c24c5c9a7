#include "pok8s/boot/tpm2.h"

#include <tss2/tss2_esys.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::boot {
namespace {

void check(TSS2_RC rc, std::string_view what) {
  if (rc != TSS2_RC_SUCCESS)
    throw Error(ErrorKind::kIo, fmt::format("Failed to {}: {}", what, Tss2_RC_Decode(rc)));
}

TPML_PCR_SELECTION sha256_selection(int pcr) {
  if (pcr < 0 || pcr > 23)
    throw Error(ErrorKind::kInvalidInput, fmt::format("Failed to select PCR {}: not 0 to 23", pcr));
  TPML_PCR_SELECTION sel{};
  sel.count = 1;
  sel.pcrSelections[0].hash = TPM2_ALG_SHA256;
  sel.pcrSelections[0].sizeofSelect = 3;
  sel.pcrSelections[0].pcrSelect[pcr / 8] = static_cast<BYTE>(1u << (pcr % 8));
  return sel;
}

template <typename T>
struct EsysFree {
  void operator()(T* p) const { Esys_Free(p); }
};
template <typename T>
using EsysPtr = std::unique_ptr<T, EsysFree<T>>;

}  // namespace

struct Tpm2::Impl {
  std::string name;
  TSS2_TCTI_CONTEXT* tcti = nullptr;
  ESYS_CONTEXT* esys = nullptr;
  ~Impl() {
    if (esys) Esys_Finalize(&esys);
    if (tcti) Tss2_TctiLdr_Finalize(&tcti);
  }
};

Tpm2::Tpm2(const std::string& tcti) : impl_(std::make_unique<Impl>()) {
  impl_->name = tcti;
  // tss2 logs its own lines to stderr; our errors say what failed in one line. A TSS2_LOG the
  // user set still wins.
  ::setenv("TSS2_LOG", "all+none", 0);
  check(Tss2_TctiLdr_Initialize(tcti.c_str(), &impl_->tcti),
        fmt::format("open the TPM at {}", tcti));
  check(Esys_Initialize(&impl_->esys, impl_->tcti, nullptr),
        fmt::format("start a session with the TPM at {}", tcti));
}

Tpm2::~Tpm2() = default;

void Tpm2::extend_sha256(int pcr, std::string_view data) {
  sha256_selection(pcr);  // checks the index
  TPML_DIGEST_VALUES digests{};
  digests.count = 1;
  digests.digests[0].hashAlg = TPM2_ALG_SHA256;
  std::string digest = util::sha256_raw(data);
  std::memcpy(digests.digests[0].digest.sha256, digest.data(), digest.size());
  check(Esys_PCR_Extend(impl_->esys, ESYS_TR_PCR0 + static_cast<ESYS_TR>(pcr), ESYS_TR_PASSWORD,
                        ESYS_TR_NONE, ESYS_TR_NONE, &digests),
        fmt::format("extend PCR {} of the TPM at {}", pcr, impl_->name));
}

std::string Tpm2::read_sha256(int pcr) {
  TPML_PCR_SELECTION sel = sha256_selection(pcr);
  UINT32 update_counter = 0;
  TPML_PCR_SELECTION* out_sel = nullptr;
  TPML_DIGEST* values = nullptr;
  check(Esys_PCR_Read(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &sel, &update_counter,
                      &out_sel, &values),
        fmt::format("read PCR {} of the TPM at {}", pcr, impl_->name));
  EsysPtr<TPML_PCR_SELECTION> free_sel(out_sel);
  EsysPtr<TPML_DIGEST> free_values(values);
  if (values->count != 1)
    throw Error(ErrorKind::kIo, fmt::format("Failed to read PCR {} of the TPM at {}: its SHA-256 "
                                            "bank is not active",
                                            pcr, impl_->name));
  return std::string(reinterpret_cast<const char*>(values->digests[0].buffer),
                     values->digests[0].size);
}

std::string Tpm2::trial_policy_pcr(int pcr, std::string_view value) {
  TPML_PCR_SELECTION sel = sha256_selection(pcr);
  TPMT_SYM_DEF symmetric{};
  symmetric.algorithm = TPM2_ALG_NULL;
  ESYS_TR session = ESYS_TR_NONE;
  std::string what = fmt::format("compute a PCR {} policy with the TPM at {}", pcr, impl_->name);
  check(Esys_StartAuthSession(impl_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                              ESYS_TR_NONE, nullptr, TPM2_SE_TRIAL, &symmetric, TPM2_ALG_SHA256,
                              &session),
        what);
  struct Flush {
    ESYS_CONTEXT* esys;
    ESYS_TR session;
    ~Flush() { Esys_FlushContext(esys, session); }
  } flush{impl_->esys, session};
  TPM2B_DIGEST pcr_digest{};
  std::string digest = util::sha256_raw(value);  // of the selected PCRs' values, concatenated
  pcr_digest.size = static_cast<UINT16>(digest.size());
  std::memcpy(pcr_digest.buffer, digest.data(), digest.size());
  check(Esys_PolicyPCR(impl_->esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pcr_digest,
                       &sel),
        what);
  TPM2B_DIGEST* policy = nullptr;
  check(
      Esys_PolicyGetDigest(impl_->esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &policy),
      what);
  EsysPtr<TPM2B_DIGEST> free_policy(policy);
  return std::string(reinterpret_cast<const char*>(policy->buffer), policy->size);
}

}  // namespace pok8s::boot
