// LUKS2 volumes for COS_OEM and COS_PERSISTENT (security.encryption), through libcryptsetup:
// formatting them at install, the TPM-sealed key kept in a LUKS2 token, and opening them in the
// initramfs. Keyslot 0 takes the disk key (random and sealed to the TPM, or the user's
// passphrase), keyslot 1 the recovery key printed once at install.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/boot/secure_boot_keys.h"
#include "pok8s/boot/tpm2.h"
#include "pok8s/util/file.h"

namespace pok8s::boot {

// The LUKS2 token type that holds a key sealed by Tpm2::seal.
inline constexpr std::string_view kTpmTokenType = "pok8s-tpm2";
inline constexpr int kDiskKeyslot = 0;
inline constexpr int kRecoveryKeyslot = 1;
// The random disk key sealed to the TPM, in bytes.
inline constexpr std::size_t kDiskKeyBytes = 32;

// What the token stores: the sealed object, whether its policy includes PCR 7, and the SHA-256
// (hex) of the PCR key's PKCS#1 DER it was sealed to (the .pcrsig's "pkfp"), to say which key
// a refusal was about.
struct TpmToken {
  Tpm2::Sealed sealed;
  bool pcr7 = false;
  std::string pkfp;
};

// {"type":"pok8s-tpm2","keyslots":["0"],"tpm2-private":b64,"tpm2-public":b64,
//  "tpm2-policy":hex,"tpm2-pcr7":bool,"tpm2-pkfp":hex}
std::string tpm_token_json(const TpmToken& token);

// The token back from a LUKS2 header, which is untrusted: throws Error(kFormat) naming `where`
// and the key that is missing or malformed.
TpmToken parse_tpm_token(std::string_view json, std::string_view where);

// A fresh recovery key: 32 random bytes as 64 lower-case hex digits in eight groups of eight,
// joined by '-'. Typing it with or without the dashes works (normalize_recovery_key).
std::string generate_recovery_key();

// `typed` without spaces and dashes, lower-cased, when it has the shape of a recovery key;
// otherwise nullopt (it is then tried as a passphrase).
std::optional<std::string> normalize_recovery_key(std::string_view typed);

// `bytes` random bytes from OpenSSL's CSPRNG.
std::string random_bytes(std::size_t bytes);

struct LuksFormatOptions {
  std::string label;                 // the LUKS2 label: COS_OEM, COS_PERSISTENT
  std::string key;                   // keyslot 0
  bool key_is_passphrase = false;    // argon2id for a passphrase; minimal PBKDF2 for random keys
  std::string recovery_key;          // keyslot 1 (normalized)
  std::optional<std::string> token;  // a JSON token for keyslot 0 (tpm_token_json)
  int passphrase_kdf_ms = 2000;      // argon2id's time for the passphrase keyslot
};

// Makes `device` a LUKS2 volume (aes-xts-plain64, 512-bit key) with the options' label,
// keyslots and token. Throws Error(kIo) naming the device and the step.
void luks_format(const util::Path& device, const LuksFormatOptions& options);

// The LUKS2 label of `device`, or nullopt when it is not a LUKS2 volume.
std::optional<std::string> luks_label(const util::Path& device);

// The JSON of the first token of `type` on `device`, or nullopt.
std::optional<std::string> luks_token(const util::Path& device, std::string_view type);

// Opens `device` as /dev/mapper/`name` with `key` (any keyslot); with an empty `name`, only
// checks that a keyslot takes it. Returns false when none does; throws Error(kIo) for anything
// else, naming the device.
bool luks_open(const util::Path& device, const std::string& name, std::string_view key);

// The contents of section `name` (".pcrpkey") of the PE image `uki`, or nullopt.
std::optional<std::string> uki_section(std::string_view uki, std::string_view name,
                                       std::string_view what);

// A PEM public key (a .pcrpkey); throws Error(kInvalidInput) naming `what`.
PkeyPtr read_public_key_pem(std::string_view pem, std::string_view what);

// Closes /dev/mapper/`name`; nothing when it is not open.
void luks_close(const std::string& name);

// ---- install and boot ----------------------------------------------------------------------

enum class EncryptionMode { kTpm, kPassphrase };

struct EncryptRequest {
  EncryptionMode mode = EncryptionMode::kTpm;
  std::vector<std::pair<util::Path, std::string>> volumes;  // device, label
  std::string tcti = "device:/dev/tpmrm0";                  // kTpm
  EVP_PKEY* pcr_key = nullptr;  // kTpm: the UKIs' .pcrpkey, which must sign their policies
  bool pcr7 = true;             // kTpm: bind to PCR 7 (the Secure Boot state and keys) too
  std::string passphrase;       // kPassphrase
  int passphrase_kdf_ms = 2000;
  bool open = false;  // open each volume as /dev/mapper/<label> afterwards
};

// Formats every volume as LUKS2 with one disk key (in kTpm mode random and sealed once, the same
// token on each) and one recovery key, which it returns: the caller shows it once and keeps it
// nowhere. Throws Error naming the volume, before touching any when the TPM cannot seal.
std::string encrypt_volumes(const EncryptRequest& request);

struct UnlockRequest {
  std::vector<std::pair<util::Path, std::string>> volumes;  // device, /dev/mapper name
  std::string tcti = "device:/dev/tpmrm0";
  std::string pcrsig;           // the booted UKI's .pcrsig, "" when it has none
  EVP_PKEY* pcr_key = nullptr;  // the booted UKI's .pcrpkey, or null
  bool measure = true;          // measure enter-initrd into PCR 11 before, leave-initrd after
  bool check_only = false;      // only check that a key opens each volume (luks-open --check)
  // Asks for a passphrase or recovery key with `prompt`; nullopt when nobody can answer.
  std::function<std::optional<std::string>(const std::string& prompt)> ask;
  std::function<void(const std::string& line)> say;
  int tries = 3;
};

// Opens every volume: with the key the TPM unseals when a volume has a pok8s-tpm2 token and the
// booted UKI's signed policy satisfies it, else with what `ask` returns (a passphrase or a
// recovery key), `tries` times. Says why the TPM did not unlock. Throws Error(kSignature)
// naming the volumes still locked.
void unlock_volumes(const UnlockRequest& request);

}  // namespace pok8s::boot
