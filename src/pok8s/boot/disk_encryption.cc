#include "pok8s/boot/disk_encryption.h"

#include <libcryptsetup.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <fmt/format.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <memory>

#include <nlohmann/json.hpp>

#include "pok8s/boot/pcr_policy.h"
#include "pok8s/boot/pe.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::boot {
namespace {

using nlohmann::json;

// LUKS2 has at most this many tokens (libcryptsetup's LUKS2_TOKENS_MAX).
constexpr int kMaxTokens = 32;

// libcryptsetup's last error line for this thread, to name in our own message.
thread_local std::string last_log;

void log_callback(int level, const char* msg, void*) {
  if (level != CRYPT_LOG_ERROR || !msg) return;
  last_log = msg;
  while (!last_log.empty() && (last_log.back() == '\n' || last_log.back() == ' '))
    last_log.pop_back();
}

// Sends libcryptsetup's messages to log_callback, starting with none.
void capture_log() {
  crypt_set_log_callback(nullptr, log_callback, nullptr);
  last_log.clear();
}

struct Device {
  crypt_device* cd = nullptr;
  ~Device() { crypt_free(cd); }
};

[[noreturn]] void fail(const util::Path& device, std::string_view step, int rc) {
  std::string why = last_log.empty() ? std::strerror(-rc) : last_log;
  throw Error(ErrorKind::kIo, fmt::format("Failed to {} on {}: {}", step, device.string(), why));
}

// The device, its LUKS2 header loaded; nullopt when it has none.
std::unique_ptr<Device> load(const util::Path& device, bool required) {
  capture_log();
  auto d = std::make_unique<Device>();
  int rc = crypt_init(&d->cd, device.c_str());
  if (rc < 0) fail(device, "open the device for LUKS2", rc);
  rc = crypt_load(d->cd, CRYPT_LUKS2, nullptr);
  if (rc < 0) {
    if (!required) return nullptr;
    fail(device, "read the LUKS2 header", rc);
  }
  return d;
}

std::string required_string(const json& j, const char* key, std::string_view where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string())
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read the {} token of {}: no string \"{}\"", kTpmTokenType,
                            where, key));
  return it->get<std::string>();
}

std::string required_base64(const json& j, const char* key, std::string_view where) {
  auto raw = base64_decode(required_string(j, key, where));
  if (!raw || raw->empty())
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read the {} token of {}: \"{}\" is not base64",
                            kTpmTokenType, where, key));
  return *raw;
}

}  // namespace

std::string tpm_token_json(const TpmToken& token) {
  json j = {{"type", kTpmTokenType},
            {"keyslots", json::array({std::to_string(kDiskKeyslot)})},
            {"tpm2-private", base64_encode(token.sealed.private_blob)},
            {"tpm2-public", base64_encode(token.sealed.public_blob)},
            {"tpm2-policy", base64_encode(token.sealed.policy)},
            {"tpm2-pcr7", token.pcr7},
            {"tpm2-pkfp", token.pkfp}};
  return j.dump();
}

TpmToken parse_tpm_token(std::string_view text, std::string_view where) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw Error(ErrorKind::kFormat, fmt::format("Failed to read the {} token of {}: not a JSON "
                                                "object",
                                                kTpmTokenType, where));
  if (required_string(j, "type", where) != kTpmTokenType)
    throw Error(ErrorKind::kFormat, fmt::format("Failed to read the {} token of {}: its type is "
                                                "not {}",
                                                kTpmTokenType, where, kTpmTokenType));
  TpmToken token;
  token.sealed.private_blob = required_base64(j, "tpm2-private", where);
  token.sealed.public_blob = required_base64(j, "tpm2-public", where);
  token.sealed.policy = required_base64(j, "tpm2-policy", where);
  auto pcr7 = j.find("tpm2-pcr7");
  if (pcr7 == j.end() || !pcr7->is_boolean())
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read the {} token of {}: no boolean \"tpm2-pcr7\"",
                            kTpmTokenType, where));
  token.pcr7 = pcr7->get<bool>();
  token.pkfp = required_string(j, "tpm2-pkfp", where);
  return token;
}

std::string random_bytes(std::size_t bytes) {
  std::string out(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(bytes)) != 1)
    throw Error(ErrorKind::kIo, "Failed to make a key: OpenSSL's random generator failed");
  return out;
}

std::string generate_recovery_key() {
  std::string hex = util::hex_encode(random_bytes(32));
  std::string out;
  for (std::size_t i = 0; i < hex.size(); i += 8) {
    if (i) out += '-';
    out += hex.substr(i, 8);
  }
  return out;
}

std::optional<std::string> normalize_recovery_key(std::string_view typed) {
  std::string digits;
  for (char c : typed) {
    if (c == '-' || c == ' ') continue;
    if (!std::isxdigit(static_cast<unsigned char>(c))) return std::nullopt;
    digits += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  if (digits.size() != 64) return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < digits.size(); i += 8) {
    if (i) out += '-';
    out += digits.substr(i, 8);
  }
  return out;
}

void luks_format(const util::Path& device, const LuksFormatOptions& options) {
  capture_log();
  Device d;
  int rc = crypt_init(&d.cd, device.c_str());
  if (rc < 0) fail(device, "open the device for LUKS2", rc);
  // The disk key and the recovery key are 256 random bits: a slow KDF adds nothing to them and
  // would cost every boot time (what systemd-cryptenroll does for its TPM and recovery keys).
  crypt_pbkdf_type fast{};
  fast.type = CRYPT_KDF_PBKDF2;
  fast.hash = "sha512";
  fast.iterations = 1000;
  fast.flags = CRYPT_PBKDF_NO_BENCHMARK;
  crypt_pbkdf_type slow{};
  slow.type = CRYPT_KDF_ARGON2ID;
  slow.hash = "sha256";
  slow.time_ms = static_cast<std::uint32_t>(options.passphrase_kdf_ms);
  slow.max_memory_kb = 256 * 1024;
  slow.parallel_threads = 2;
  crypt_params_luks2 params{};
  params.pbkdf = &fast;
  params.label = options.label.c_str();
  rc = crypt_format(d.cd, CRYPT_LUKS2, "aes", "xts-plain64", nullptr, nullptr, 64, &params);
  if (rc < 0) fail(device, "format LUKS2", rc);
  auto add = [&](int slot, std::string_view key, bool passphrase) {
    rc = crypt_set_pbkdf_type(d.cd, passphrase ? &slow : &fast);
    if (rc < 0) fail(device, "set the key derivation", rc);
    rc = crypt_keyslot_add_by_volume_key(d.cd, slot, nullptr, 0, key.data(), key.size());
    if (rc < 0) fail(device, fmt::format("add LUKS2 keyslot {}", slot), rc);
  };
  add(kDiskKeyslot, options.key, options.key_is_passphrase);
  add(kRecoveryKeyslot, options.recovery_key, false);
  if (options.token) {
    int token = crypt_token_json_set(d.cd, CRYPT_ANY_TOKEN, options.token->c_str());
    if (token < 0) fail(device, "store the TPM token", token);
  }
}

std::optional<std::string> luks_label(const util::Path& device) {
  auto d = load(device, false);
  if (!d) return std::nullopt;
  const char* label = crypt_get_label(d->cd);
  return std::string(label ? label : "");
}

std::optional<std::string> luks_token(const util::Path& device, std::string_view type) {
  auto d = load(device, true);
  for (int token = 0; token < kMaxTokens; ++token) {
    const char* token_type = nullptr;
    crypt_token_info info = crypt_token_status(d->cd, token, &token_type);
    if (info == CRYPT_TOKEN_INACTIVE || info == CRYPT_TOKEN_INVALID || !token_type ||
        type != token_type)
      continue;
    const char* text = nullptr;
    if (crypt_token_json_get(d->cd, token, &text) < 0 || !text) continue;
    return std::string(text);
  }
  return std::nullopt;
}

bool luks_open(const util::Path& device, const std::string& name, std::string_view key) {
  auto d = load(device, true);
  int rc = crypt_activate_by_passphrase(d->cd, name.empty() ? nullptr : name.c_str(),
                                        CRYPT_ANY_SLOT, key.data(), key.size(), 0);
  if (rc >= 0) return true;
  if (rc == -EPERM || rc == -ENOENT) return false;
  fail(device, name.empty() ? "check a LUKS2 key" : "open LUKS2 as /dev/mapper/" + name, rc);
}

void luks_close(const std::string& name) {
  capture_log();
  Device d;
  if (crypt_init_by_name(&d.cd, name.c_str()) < 0) return;
  int rc = crypt_deactivate(d.cd, name.c_str());
  if (rc < 0) fail(util::Path("/dev/mapper/" + name), "close", rc);
}

std::optional<std::string> uki_section(std::string_view uki, std::string_view name,
                                       std::string_view what) {
  PeImage pe = parse_pe(uki, what);
  for (const auto& section : pe.sections) {
    if (section.name != name) continue;
    // parse_pe checked that the raw data lies inside the file.
    std::size_t size = std::min(section.raw_size, section.virtual_size);
    return std::string(uki.substr(section.raw_offset, size));
  }
  return std::nullopt;
}

PkeyPtr read_public_key_pem(std::string_view pem, std::string_view what) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  PkeyPtr key(bio ? PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!key)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read the PCR public key {}: not a PEM public key", what));
  return key;
}

std::string encrypt_volumes(const EncryptRequest& request) {
  std::string recovery = generate_recovery_key();
  LuksFormatOptions options;
  options.recovery_key = recovery;
  options.passphrase_kdf_ms = request.passphrase_kdf_ms;
  if (request.mode == EncryptionMode::kPassphrase) {
    if (request.passphrase.empty())
      throw Error(ErrorKind::kInvalidInput, "Failed to encrypt the disk: the passphrase is empty");
    options.key = request.passphrase;
    options.key_is_passphrase = true;
  } else {
    if (!request.pcr_key)
      throw Error(ErrorKind::kInvalidInput,
                  "Failed to encrypt the disk: no PCR public key to seal the disk key to");
    options.key = random_bytes(kDiskKeyBytes);
    Tpm2 tpm(request.tcti);
    std::optional<std::string> pcr7;
    if (request.pcr7) pcr7 = tpm.read_sha256(7);
    TpmToken token;
    token.sealed = tpm.seal(options.key, request.pcr_key, pcr7);
    token.pcr7 = request.pcr7;
    token.pkfp = pcr_key_fingerprint(request.pcr_key);
    options.token = tpm_token_json(token);
  }
  for (const auto& [device, label] : request.volumes) {
    options.label = label;
    luks_format(device, options);
  }
  if (request.open)
    for (const auto& [device, label] : request.volumes)
      if (!luks_open(device, label, recovery))
        throw Error(ErrorKind::kInternal,
                    fmt::format("Failed to open {}: its recovery keyslot refuses the recovery key",
                                device.string()));
  return recovery;
}

void unlock_volumes(const UnlockRequest& request) {
  auto say = [&](const std::string& line) {
    if (request.say) request.say(line);
  };
  std::vector<std::pair<util::Path, std::string>> locked = request.volumes;
  auto try_key = [&](std::string_view key) {
    std::vector<std::pair<util::Path, std::string>> still;
    for (const auto& volume : locked)
      if (!luks_open(volume.first, request.check_only ? "" : volume.second, key))
        still.push_back(volume);
    bool any = still.size() < locked.size();
    locked = std::move(still);
    return any;
  };
  auto names = [&] {
    std::string out;
    for (const auto& [device, name] : locked)
      out += fmt::format("{}{} ({})", out.empty() ? "" : ", ", device.string(), name);
    return out;
  };

  std::optional<TpmToken> token;
  std::string token_device;
  for (const auto& [device, name] : locked) {
    if (auto text = luks_token(device, kTpmTokenType)) {
      token = parse_tpm_token(*text, device.string());
      token_device = device.string();
      break;
    }
  }
  if (token) {
    try {
      if (request.pcrsig.empty() || !request.pcr_key)
        throw Error(ErrorKind::kNotFound,
                    "the booted kernel carries no signed PCR policy (.pcrsig and .pcrpkey)");
      Tpm2 tpm(request.tcti);
      if (request.measure) tpm.extend_sha256(11, "enter-initrd");
      std::string key;
      try {
        key = tpm.unseal(token->sealed, request.pcr_key, request.pcrsig, token->pcr7);
      } catch (...) {
        if (request.measure) tpm.extend_sha256(11, "leave-initrd");
        throw;
      }
      // Leaving the phase the disk key is sealed to: nothing booted later unseals it.
      if (request.measure) tpm.extend_sha256(11, "leave-initrd");
      if (!try_key(key))
        throw Error(ErrorKind::kSignature, "the key the TPM unsealed opens no volume");
      if (!locked.empty()) say(fmt::format("the TPM's key does not open {}", names()));
    } catch (const Error& e) {
      say(fmt::format("The TPM did not unlock {}: {}", token_device, e.what()));
    }
  }
  for (int attempt = 0; !locked.empty() && attempt < request.tries; ++attempt) {
    std::optional<std::string> typed;
    if (request.ask)
      typed = request.ask(fmt::format("Passphrase or recovery key for {}: ", names()));
    if (!typed) break;
    std::string key = normalize_recovery_key(*typed).value_or(*typed);
    if (key.empty() || !try_key(key)) say("That key opens none of them");
  }
  if (!locked.empty())
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to unlock {}: no key opened it", names()));
}

}  // namespace pok8s::boot
