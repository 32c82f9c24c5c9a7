// Hand-written after the TPM 2.0 Library specification (PolicyPCR, TPML_PCR_SELECTION) and
// systemd's documented .pcrsig format: no Debian library computes them without a TPM (systemd-
// measure 252 asks the TPM for a trial session). Checked against systemd-measure in the tests.
#include "pok8s/boot/pcr_policy.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <memory>

#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::boot {
namespace {

constexpr std::uint32_t kTpmCcPolicyPcr = 0x0000017f;
constexpr std::uint16_t kTpmAlgSha256 = 0x000b;
constexpr const char* kMeasuredSections[] = {".linux",  ".osrel", ".cmdline", ".initrd",
                                             ".splash", ".dtb",   ".pcrpkey"};

void extend(std::string& pcr, std::string_view data) {
  pcr = util::sha256_raw(pcr + util::sha256_raw(data));
}

void put_be(std::string& out, std::uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

std::string base64_encode(std::string_view raw) {
  std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(raw.data()),
                          static_cast<int>(raw.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out(text.size() / 4 * 3 + 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0) return std::nullopt;
  std::size_t size = static_cast<std::size_t>(n);
  // EVP_DecodeBlock counts the padding as zero bytes.
  for (std::size_t i = text.size(); i > 0 && size > 0 && text[i - 1] == '='; --i) --size;
  out.resize(size);
  return out;
}

std::vector<PcrPhaseValue> expected_pcr11(const std::map<std::string, std::string_view>& sections) {
  std::string pcr(32, '\0');
  for (const char* name : kMeasuredSections) {
    auto it = sections.find(name);
    if (it == sections.end()) continue;
    extend(pcr, std::string_view(name, std::char_traits<char>::length(name) + 1));
    extend(pcr, it->second);
  }
  std::vector<PcrPhaseValue> out;
  for (std::string_view path : kPcrPhases) {
    std::string value = pcr;
    for (std::size_t start = 0; start <= path.size();) {
      std::size_t colon = path.find(':', start);
      if (colon == std::string_view::npos) colon = path.size();
      extend(value, path.substr(start, colon - start));
      start = colon + 1;
    }
    out.push_back({std::string(path), value});
  }
  return out;
}

std::string pcr11_policy_digest(std::string_view pcr11) {
  // TPML_PCR_SELECTION: one TPMS_PCR_SELECTION of the SHA-256 bank, three select bytes, PCR 11.
  std::string selection;
  put_be(selection, 1, 4);
  put_be(selection, kTpmAlgSha256, 2);
  selection += std::string("\x03\x00\x08\x00", 4);
  std::string input(32, '\0');  // the empty policy
  put_be(input, kTpmCcPolicyPcr, 4);
  input += selection;
  input += util::sha256_raw(pcr11);  // the digest of the selected PCRs' values, concatenated
  return util::sha256_raw(input);
}

std::string pcr_key_fingerprint(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int n = i2d_PublicKey(key, &der);
  if (n <= 0) throw Error(ErrorKind::kInvalidInput, "Failed to read the PCR key: no public key");
  std::string fingerprint =
      util::hex_encode(util::sha256_raw(std::string_view(reinterpret_cast<char*>(der), n)));
  OPENSSL_free(der);
  return fingerprint;
}

std::string pcr_signature_json(const std::vector<PcrPhaseValue>& values, EVP_PKEY* key) {
  if (EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA)
    throw Error(ErrorKind::kInvalidInput, "Failed to sign PCR policies: the PCR key is not RSA");
  std::string fingerprint = pcr_key_fingerprint(key);

  nlohmann::json entries = nlohmann::json::array();
  for (const auto& v : values) {
    std::string policy = pcr11_policy_digest(v.pcr11);
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    std::size_t size = 0;
    if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) != 1 ||
        EVP_DigestSign(ctx.get(), nullptr, &size,
                       reinterpret_cast<const unsigned char*>(policy.data()), policy.size()) != 1)
      throw Error(ErrorKind::kInternal, "Failed to sign PCR policies");
    std::string sig(size, '\0');
    if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &size,
                       reinterpret_cast<const unsigned char*>(policy.data()), policy.size()) != 1)
      throw Error(ErrorKind::kInternal, "Failed to sign PCR policies");
    sig.resize(size);
    entries.push_back({{"pcrs", {11}},
                       {"pkfp", fingerprint},
                       {"pol", util::hex_encode(policy)},
                       {"sig", base64_encode(sig)}});
  }
  return nlohmann::json{{"sha256", entries}}.dump();
}

}  // namespace pok8s::boot
