#include "pok8s/boot/tpm2.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <nlohmann/json.hpp>

#include "pok8s/boot/pcr_policy.h"
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

// TPM2B_PUBLIC of an RSA public key, to load as an external key that verifies signatures.
TPM2B_PUBLIC rsa_public(EVP_PKEY* key) {
  BIGNUM* n = nullptr;
  BIGNUM* e = nullptr;
  if (EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA ||
      EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n) != 1 ||
      EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &e) != 1) {
    BN_free(n);
    BN_free(e);
    throw Error(ErrorKind::kInvalidInput, "Failed to use the PCR key with the TPM: not RSA");
  }
  TPM2B_PUBLIC pub{};
  pub.publicArea.type = TPM2_ALG_RSA;
  pub.publicArea.nameAlg = TPM2_ALG_SHA256;
  pub.publicArea.objectAttributes =
      TPMA_OBJECT_DECRYPT | TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_USERWITHAUTH;
  pub.publicArea.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
  pub.publicArea.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
  int bytes = BN_num_bytes(n);
  bool fits =
      bytes <= static_cast<int>(sizeof pub.publicArea.unique.rsa.buffer) && BN_num_bits(e) <= 32;
  if (fits) {
    pub.publicArea.parameters.rsaDetail.keyBits = static_cast<UINT16>(bytes * 8);
    BN_ULONG exponent = BN_get_word(e);
    // 0 is the TPM's name for the default exponent, 65537.
    pub.publicArea.parameters.rsaDetail.exponent =
        exponent == 65537 ? 0 : static_cast<UINT32>(exponent);
    pub.publicArea.unique.rsa.size = static_cast<UINT16>(bytes);
    BN_bn2bin(n, pub.publicArea.unique.rsa.buffer);
  }
  BN_free(n);
  BN_free(e);
  if (!fits)
    throw Error(ErrorKind::kInvalidInput,
                "Failed to use the PCR key with the TPM: its modulus or exponent is too large");
  return pub;
}

// The storage key the sealed object lives under: an ECC P-256 primary of the owner hierarchy
// from a fixed template, so the same TPM makes the same key again at every boot.
TPM2B_PUBLIC storage_template() {
  TPM2B_PUBLIC t{};
  t.publicArea.type = TPM2_ALG_ECC;
  t.publicArea.nameAlg = TPM2_ALG_SHA256;
  t.publicArea.objectAttributes = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT |
                                  TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                  TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                  TPMA_OBJECT_NODA;
  auto& ecc = t.publicArea.parameters.eccDetail;
  ecc.symmetric.algorithm = TPM2_ALG_AES;
  ecc.symmetric.keyBits.aes = 128;
  ecc.symmetric.mode.aes = TPM2_ALG_CFB;
  ecc.scheme.scheme = TPM2_ALG_NULL;
  ecc.curveID = TPM2_ECC_NIST_P256;
  ecc.kdf.scheme = TPM2_ALG_NULL;
  return t;
}

template <typename T>
struct EsysFree {
  void operator()(T* p) const { Esys_Free(p); }
};
template <typename T>
using EsysPtr = std::unique_ptr<T, EsysFree<T>>;

// An ESYS object handle flushed from the TPM when it goes.
struct Flushed {
  ESYS_CONTEXT* esys;
  ESYS_TR handle = ESYS_TR_NONE;
  ~Flushed() {
    if (handle != ESYS_TR_NONE) Esys_FlushContext(esys, handle);
  }
};

// The storage primary key (storage_template) of the owner hierarchy, into `primary`.
void create_storage_primary(ESYS_CONTEXT* esys, Flushed& primary, std::string_view what) {
  TPM2B_PUBLIC primary_template = storage_template();
  TPM2B_SENSITIVE_CREATE no_auth{};
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION no_pcrs{};
  check(Esys_CreatePrimary(esys, ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                           &no_auth, &primary_template, &outside, &no_pcrs, &primary.handle,
                           nullptr, nullptr, nullptr, nullptr),
        what);
}

// `pcr_key` loaded as an external public key into `key`; its TPM name.
EsysPtr<TPM2B_NAME> load_pcr_key(ESYS_CONTEXT* esys, EVP_PKEY* pcr_key, Flushed& key,
                                 std::string_view what) {
  TPM2B_PUBLIC key_public = rsa_public(pcr_key);
  check(Esys_LoadExternal(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, nullptr, &key_public,
                          ESYS_TR_RH_OWNER, &key.handle),
        what);
  TPM2B_NAME* name = nullptr;
  check(Esys_TR_GetName(esys, key.handle, &name), what);
  return EsysPtr<TPM2B_NAME>(name);
}

// An authorization session of `type` (TPM2_SE_TRIAL or TPM2_SE_POLICY) over SHA-256, unsalted
// and unbound, into `session`.
void start_session(ESYS_CONTEXT* esys, TPM2_SE type, Flushed& session, std::string_view what) {
  TPMT_SYM_DEF symmetric{};
  symmetric.algorithm = TPM2_ALG_NULL;
  check(Esys_StartAuthSession(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                              ESYS_TR_NONE, nullptr, type, &symmetric, TPM2_ALG_SHA256,
                              &session.handle),
        what);
}

TPM2B_DIGEST to_digest(std::string_view bytes) {
  TPM2B_DIGEST d{};
  d.size = static_cast<UINT16>(std::min(bytes.size(), sizeof d.buffer));
  std::memcpy(d.buffer, bytes.data(), d.size);
  return d;
}

// TPM2_PolicyPCR over PCR `pcr` of the SHA-256 bank: holding `value`, or with nullopt as it is.
void policy_pcr(ESYS_CONTEXT* esys, ESYS_TR session, int pcr, std::optional<std::string_view> value,
                std::string_view what) {
  TPML_PCR_SELECTION sel = sha256_selection(pcr);
  // The digest of the selected PCRs' values, concatenated; empty: the TPM reads them.
  TPM2B_DIGEST digest = value ? to_digest(util::sha256_raw(*value)) : TPM2B_DIGEST{};
  check(Esys_PolicyPCR(esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &digest, &sel),
        what);
}

// The session's policy digest so far.
std::string policy_digest(ESYS_CONTEXT* esys, ESYS_TR session, std::string_view what) {
  TPM2B_DIGEST* policy = nullptr;
  check(Esys_PolicyGetDigest(esys, session, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &policy),
        what);
  EsysPtr<TPM2B_DIGEST> free_policy(policy);
  return std::string(reinterpret_cast<const char*>(policy->buffer), policy->size);
}
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
  std::string what = fmt::format("compute a PCR {} policy with the TPM at {}", pcr, impl_->name);
  Flushed trial{impl_->esys};
  start_session(impl_->esys, TPM2_SE_TRIAL, trial, what);
  policy_pcr(impl_->esys, trial.handle, pcr, value, what);
  return policy_digest(impl_->esys, trial.handle, what);
}

Tpm2::Sealed Tpm2::seal(std::string_view secret, EVP_PKEY* pcr_key,
                        std::optional<std::string> pcr7) {
  ESYS_CONTEXT* esys = impl_->esys;
  std::string what = fmt::format("seal a key with the TPM at {}", impl_->name);
  if (secret.empty() || secret.size() > sizeof(TPM2B_SENSITIVE_DATA::buffer))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to seal a key: {} bytes (1 to {})", secret.size(),
                            sizeof(TPM2B_SENSITIVE_DATA::buffer)));
  Flushed key{esys};
  EsysPtr<TPM2B_NAME> key_name = load_pcr_key(esys, pcr_key, key, what);

  // The policy, from a trial session: PolicyAuthorize by the PCR key (a trial session does not
  // check the ticket), then PolicyPCR over PCR 7.
  Flushed trial{esys};
  start_session(esys, TPM2_SE_TRIAL, trial, what);
  TPM2B_DIGEST approved{};
  TPM2B_NONCE policy_ref{};
  TPMT_TK_VERIFIED no_ticket{};
  no_ticket.tag = TPM2_ST_VERIFIED;
  no_ticket.hierarchy = TPM2_RH_NULL;
  check(Esys_PolicyAuthorize(esys, trial.handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                             &approved, &policy_ref, key_name.get(), &no_ticket),
        what);
  if (pcr7) policy_pcr(esys, trial.handle, 7, *pcr7, what);
  std::string policy = policy_digest(esys, trial.handle, what);

  Flushed primary{esys};
  create_storage_primary(esys, primary, what);
  // A keyed-hash object holding the secret, usable only through its policy (no userWithAuth).
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION no_pcrs{};
  TPM2B_SENSITIVE_CREATE sensitive{};
  sensitive.sensitive.data.size = static_cast<UINT16>(secret.size());
  std::memcpy(sensitive.sensitive.data.buffer, secret.data(), secret.size());
  TPM2B_PUBLIC object{};
  object.publicArea.type = TPM2_ALG_KEYEDHASH;
  object.publicArea.nameAlg = TPM2_ALG_SHA256;
  object.publicArea.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT;
  object.publicArea.authPolicy = to_digest(policy);
  object.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;
  TPM2B_PRIVATE* out_private = nullptr;
  TPM2B_PUBLIC* out_public = nullptr;
  check(Esys_Create(esys, primary.handle, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
                    &object, &outside, &no_pcrs, &out_private, &out_public, nullptr, nullptr,
                    nullptr),
        what);
  EsysPtr<TPM2B_PRIVATE> free_private(out_private);
  EsysPtr<TPM2B_PUBLIC> free_public(out_public);
  Sealed out;
  out.policy = policy;
  std::uint8_t buf[sizeof(TPM2B_PRIVATE) + sizeof(TPM2B_PUBLIC)];
  std::size_t used = 0;
  check(Tss2_MU_TPM2B_PRIVATE_Marshal(out_private, buf, sizeof buf, &used), what);
  out.private_blob.assign(reinterpret_cast<const char*>(buf), used);
  used = 0;
  check(Tss2_MU_TPM2B_PUBLIC_Marshal(out_public, buf, sizeof buf, &used), what);
  out.public_blob.assign(reinterpret_cast<const char*>(buf), used);
  return out;
}

std::string Tpm2::unseal(const Sealed& sealed, EVP_PKEY* pcr_key, std::string_view pcrsig,
                         bool pcr7) {
  ESYS_CONTEXT* esys = impl_->esys;
  std::string what = fmt::format("unseal the disk key with the TPM at {}", impl_->name);
  TPM2B_PRIVATE private_part{};
  TPM2B_PUBLIC public_part{};
  std::size_t offset = 0;
  if (Tss2_MU_TPM2B_PRIVATE_Unmarshal(
          reinterpret_cast<const std::uint8_t*>(sealed.private_blob.data()),
          sealed.private_blob.size(), &offset, &private_part) != TSS2_RC_SUCCESS ||
      (offset = 0, Tss2_MU_TPM2B_PUBLIC_Unmarshal(
                       reinterpret_cast<const std::uint8_t*>(sealed.public_blob.data()),
                       sealed.public_blob.size(), &offset, &public_part) != TSS2_RC_SUCCESS))
    throw Error(ErrorKind::kFormat, fmt::format("Failed to {}: the sealed key is malformed", what));

  Flushed primary{esys};
  create_storage_primary(esys, primary, what);
  Flushed object{esys};
  check(Esys_Load(esys, primary.handle, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &private_part,
                  &public_part, &object.handle),
        what);

  // PCR 11 as it is now, as a PolicyPCR digest; the signed policy for it from the .pcrsig.
  Flushed session{esys};
  start_session(esys, TPM2_SE_POLICY, session, what);
  policy_pcr(esys, session.handle, 11, std::nullopt, what);
  std::string pcr_policy = policy_digest(esys, session.handle, what);
  std::string policy_hex = util::hex_encode(pcr_policy);
  nlohmann::json sig_json = nlohmann::json::parse(pcrsig, nullptr, false);
  std::string signature;
  if (sig_json.is_object() && sig_json.contains("sha256") && sig_json["sha256"].is_array())
    for (const auto& entry : sig_json["sha256"])
      if (entry.is_object() && entry.value("pol", std::string()) == policy_hex)
        signature = base64_decode(entry.value("sig", std::string())).value_or("");
  if (signature.empty())
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to {}: no signed policy matches PCR 11 as it is (policy {})",
                            what, policy_hex));

  // The TPM checks the signature over the policy (aHash: the policy and an empty policyRef),
  // and PolicyAuthorize replaces the session's digest with the one the object was sealed to.
  Flushed key{esys};
  EsysPtr<TPM2B_NAME> key_name = load_pcr_key(esys, pcr_key, key, what);
  TPM2B_DIGEST a_hash = to_digest(util::sha256_raw(pcr_policy));
  TPMT_SIGNATURE sig{};
  sig.sigAlg = TPM2_ALG_RSASSA;
  sig.signature.rsassa.hash = TPM2_ALG_SHA256;
  if (signature.size() > sizeof sig.signature.rsassa.sig.buffer)
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to {}: the signature is too large", what));
  sig.signature.rsassa.sig.size = static_cast<UINT16>(signature.size());
  std::memcpy(sig.signature.rsassa.sig.buffer, signature.data(), signature.size());
  TPMT_TK_VERIFIED* ticket = nullptr;
  TSS2_RC rc = Esys_VerifySignature(esys, key.handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                    &a_hash, &sig, &ticket);
  if (rc != TSS2_RC_SUCCESS)
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to {}: the TPM refused the PCR policy's signature ({})", what,
                            Tss2_RC_Decode(rc)));
  EsysPtr<TPMT_TK_VERIFIED> free_ticket(ticket);
  TPM2B_NONCE policy_ref{};
  TPM2B_DIGEST approved = to_digest(pcr_policy);
  check(Esys_PolicyAuthorize(esys, session.handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                             &approved, &policy_ref, key_name.get(), ticket),
        what);
  if (pcr7) policy_pcr(esys, session.handle, 7, std::nullopt, what);
  TPM2B_SENSITIVE_DATA* data = nullptr;
  rc = Esys_Unseal(esys, object.handle, session.handle, ESYS_TR_NONE, ESYS_TR_NONE, &data);
  if (rc != TSS2_RC_SUCCESS)
    throw Error(ErrorKind::kSignature, fmt::format("Failed to {}: the TPM refused the policy ({})",
                                                   what, Tss2_RC_Decode(rc)));
  EsysPtr<TPM2B_SENSITIVE_DATA> free_data(data);
  return std::string(reinterpret_cast<const char*>(data->buffer), data->size);
}

}  // namespace pok8s::boot
