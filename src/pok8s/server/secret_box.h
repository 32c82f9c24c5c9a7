// Secrets at rest: build specs and files (passwords, join tokens, WireGuard keys) are sealed with
// AES-256-GCM under a server key kept in a file outside the database, so a database dump or a
// shared PostgreSQL server does not give them away.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "pok8s/util/file.h"

namespace pok8s::server {

class SecretBox {
 public:
  static constexpr std::size_t kKeyBytes = 32;
  // What every sealed text starts with; text without it was stored before sealing existed.
  static constexpr std::string_view kPrefix = "pok8s-sealed:v1:";

  // The key in `key_file`, or a new random key written there (mode 0600, created under a
  // temporary name and linked into place, so a concurrent creator's key wins and is loaded).
  // Refuses a key file that is not a regular file of kKeyBytes, owned by us, with no group or
  // other permissions (kInvalidInput naming the file).
  static SecretBox load_or_create(const util::Path& key_file);
  // The key in `key_file`, which must exist (kNotFound otherwise), with the same checks.
  static SecretBox load(const util::Path& key_file);

  SecretBox(const SecretBox&) = default;
  SecretBox& operator=(const SecretBox&) = default;
  SecretBox(SecretBox&&) noexcept = default;
  SecretBox& operator=(SecretBox&&) noexcept = default;
  ~SecretBox();

  // "pok8s-sealed:v1:KEYID:" + base64(nonce | ciphertext | tag), safe for a TEXT column. A new
  // random 96-bit nonce every time. `context` (e.g. "builds/ID/spec") is authenticated, not
  // stored: the sealed text opens only under the same context, so it cannot be moved to
  // another row or column.
  std::string seal(std::string_view plaintext, std::string_view context = {}) const;
  // The plaintext of a sealed text. kFormat when it is not one (naming `context`), kSignature
  // when it was sealed with another key or altered.
  std::string open(std::string_view sealed, std::string_view context = {}) const;

  // Whether `text` has the sealed prefix.
  static bool is_sealed(std::string_view text);
  // The key id a sealed text names (see key_id()), or nullopt when it is not sealed text.
  static std::optional<std::string> sealed_key_id(std::string_view sealed);

  // 8 hex digits that tell keys apart in messages (a hash of the key; reveals nothing of it).
  const std::string& key_id() const { return key_id_; }
  const util::Path& key_file() const { return key_file_; }

 private:
  SecretBox(const std::array<unsigned char, kKeyBytes>& key, util::Path key_file);

  std::array<unsigned char, kKeyBytes> key_{};
  std::string key_id_;
  util::Path key_file_;
};

}  // namespace pok8s::server
