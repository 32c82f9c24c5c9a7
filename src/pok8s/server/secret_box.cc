// AES-256-GCM through OpenSSL's EVP interface, and the key file's life: created once, private to
// the service's user, checked every time it is read.
#include "pok8s/server/secret_box.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>

#include "pok8s/util/error.h"
#include "pok8s/util/hex.h"
#include "pok8s/util/sha256.h"

namespace pok8s::server {
namespace {

constexpr std::size_t kNonceBytes = 12;  // GCM's natural nonce: 96 bits, random each time
constexpr std::size_t kTagBytes = 16;
constexpr std::size_t kKeyIdHexDigits = 8;
// EVP takes int lengths; specs and files are far smaller.
constexpr std::size_t kMaxPlaintextBytes = INT_MAX / 2;

using Key = std::array<unsigned char, SecretBox::kKeyBytes>;

struct CipherContextFree {
  void operator()(EVP_CIPHER_CTX* ctx) const { EVP_CIPHER_CTX_free(ctx); }
};
using CipherContext = std::unique_ptr<EVP_CIPHER_CTX, CipherContextFree>;

const unsigned char* bytes_of(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}
unsigned char* bytes_of(std::string& s) {
  return reinterpret_cast<unsigned char*>(s.data());
}

// Standard base64 with padding. The sealed text is ours, so decoding is strict: any other
// character, a missing pad or stray bits are a format error, not something to skip.
constexpr char kBase64Alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(std::string_view raw) {
  std::string out;
  out.reserve((raw.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < raw.size(); i += 3) {
    std::size_t n = std::min<std::size_t>(3, raw.size() - i);
    std::uint32_t chunk = 0;
    for (std::size_t k = 0; k < 3; ++k)
      chunk = (chunk << 8) | (k < n ? static_cast<unsigned char>(raw[i + k]) : 0u);
    for (std::size_t k = 0; k < 4; ++k)
      out += k <= n ? kBase64Alphabet[(chunk >> (18 - 6 * k)) & 0x3f] : '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    std::string_view group = text.substr(i, 4);
    // Padding ends the last group only.
    std::size_t pad = 0;
    if (i + 4 == text.size()) pad = group[3] != '=' ? 0 : group[2] != '=' ? 1 : 2;
    std::uint32_t chunk = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      std::uint32_t value = 0;
      if (k < 4 - pad) {
        const char* at = group[k] == '\0' ? nullptr : std::strchr(kBase64Alphabet, group[k]);
        if (!at) return std::nullopt;
        value = static_cast<std::uint32_t>(at - kBase64Alphabet);
      }
      chunk = (chunk << 6) | value;
    }
    // The bits a pad leaves over must be zero, so each text has one decoding.
    if ((pad == 1 && (chunk & 0xff) != 0) || (pad == 2 && (chunk & 0xffff) != 0))
      return std::nullopt;
    for (std::size_t k = 0; k < 3 - pad; ++k)
      out += static_cast<char>((chunk >> (16 - 8 * k)) & 0xff);
  }
  return out;
}

std::string key_id_of(const Key& key) {
  util::Sha256 hash;
  hash.update("pok8s secret box key id\n");
  hash.update(std::string_view(reinterpret_cast<const char*>(key.data()), key.size()));
  return hash.hex_digest().substr(0, kKeyIdHexDigits);
}

// What the tag covers besides the ciphertext: the header (so the version and key id cannot be
// swapped) and the caller's context (so a sealed value cannot be moved to another row).
std::string associated_data(std::string_view header, std::string_view context) {
  std::string aad(header);
  aad += '\0';
  aad += context;
  return aad;
}

std::string what_of(std::string_view context) {
  return context.empty() ? std::string("sealed data") : fmt::format("sealed {}", context);
}

[[noreturn]] void throw_openssl(std::string_view what) {
  throw Error(ErrorKind::kInternal,
              fmt::format("Failed to {}: OpenSSL's AES-256-GCM failed", what));
}

// The key file must be ours alone: a key others can read protects nothing, and one others can
// write could be swapped for a key they know. A symlink is followed (mounted secrets are
// symlinks); what it points to is checked. O_NONBLOCK: a FIFO there must not hang us.
Key read_key_file(const util::Path& key_file) {
  util::UniqueFd fd(::open(key_file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd.valid()) {
    if (errno == ENOENT)
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to read the secret key {}: there is no such file (copy the "
                              "key file of pok8s serve there)",
                              key_file.string()));
    throw_errno("Failed to read the secret key " + key_file.string(), errno);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    throw_errno("Failed to read the secret key " + key_file.string(), errno);
  auto refuse = [&](const std::string& reason) {
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read the secret key {}: {}", key_file.string(), reason));
  };
  if (!S_ISREG(st.st_mode)) refuse("it is not a regular file");
  if (st.st_uid != ::geteuid())
    refuse(
        fmt::format("it belongs to uid {}, not to uid {} that runs pok8s", st.st_uid, ::geteuid()));
  if ((st.st_mode & 077) != 0)
    refuse(fmt::format("its mode is {:04o}; others may read or change it (chmod 600 it)",
                       st.st_mode & 07777));
  if (static_cast<std::uint64_t>(st.st_size) != SecretBox::kKeyBytes)
    refuse(fmt::format("it holds {} bytes, and a key is {} random bytes", st.st_size,
                       SecretBox::kKeyBytes));
  Key key{};
  std::size_t done = 0;
  while (done < key.size()) {
    ssize_t n = ::read(fd.get(), key.data() + done, key.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("Failed to read the secret key " + key_file.string(), errno);
    if (n == 0) refuse("it was shortened while being read");
    done += static_cast<std::size_t>(n);
  }
  return key;
}

// Writes a new random key under a temporary name, then link()s it into place: unlike rename(),
// link() does not replace a key another process created meanwhile (whose sealed data would be
// lost); that process's key is used instead. False when the key file already exists.
bool create_key_file(const util::Path& key_file) {
  Key key{};
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1)
    throw Error(ErrorKind::kInternal, fmt::format("Failed to create the secret key {}: OpenSSL's "
                                                  "RAND_bytes failed",
                                                  key_file.string()));
  util::Path dir = key_file.parent_path().empty() ? util::Path(".") : key_file.parent_path();
  util::Path tmp =
      dir / fmt::format(".{}.tmp-{}", key_file.filename().string(), util::random_hex(6));
  // 0600 from the start: a descriptor opened while the file was wider would keep reading it.
  util::UniqueFd fd(
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid()) throw_errno("Failed to create the secret key " + key_file.string(), errno);
  struct Unlink {
    const util::Path& path;
    ~Unlink() { ::unlink(path.c_str()); }
  } unlink_tmp{tmp};
  try {
    util::write_all(fd.get(),
                    std::string_view(reinterpret_cast<const char*>(key.data()), key.size()),
                    tmp.string());
  } catch (...) {
    OPENSSL_cleanse(key.data(), key.size());
    throw;
  }
  OPENSSL_cleanse(key.data(), key.size());
  if (::fsync(fd.get()) != 0)
    throw_errno("Failed to create the secret key " + key_file.string(), errno);
  if (::link(tmp.c_str(), key_file.c_str()) != 0) {
    if (errno == EEXIST) return false;
    throw_errno("Failed to create the secret key " + key_file.string(), errno);
  }
  // The new name must survive a crash as well as the contents.
  util::UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.valid()) ::fsync(dir_fd.get());
  return true;
}

}  // namespace

SecretBox::SecretBox(const Key& key, util::Path key_file)
    : key_(key), key_id_(key_id_of(key)), key_file_(std::move(key_file)) {}

SecretBox::~SecretBox() {
  OPENSSL_cleanse(key_.data(), key_.size());
}

SecretBox SecretBox::load(const util::Path& key_file) {
  Key key = read_key_file(key_file);
  SecretBox box(key, key_file);
  OPENSSL_cleanse(key.data(), key.size());
  return box;
}

SecretBox SecretBox::load_or_create(const util::Path& key_file) {
  struct stat st {};
  if (::lstat(key_file.c_str(), &st) != 0) {
    if (errno != ENOENT) throw_errno("Failed to read the secret key " + key_file.string(), errno);
    create_key_file(key_file);  // or another process just did: either way, load what is there
  }
  return load(key_file);
}

bool SecretBox::is_sealed(std::string_view text) {
  return text.starts_with(kPrefix);
}

std::optional<std::string> SecretBox::sealed_key_id(std::string_view sealed) {
  if (!is_sealed(sealed)) return std::nullopt;
  std::string_view rest = sealed.substr(kPrefix.size());
  if (rest.size() <= kKeyIdHexDigits || rest[kKeyIdHexDigits] != ':') return std::nullopt;
  std::string_view id = rest.substr(0, kKeyIdHexDigits);
  if (!util::hex_decode(id)) return std::nullopt;
  return std::string(id);
}

std::string SecretBox::seal(std::string_view plaintext, std::string_view context) const {
  std::string what = "seal " + what_of(context);
  if (plaintext.size() > kMaxPlaintextBytes)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to {}: {} bytes exceeds the limit of {}", what,
                            plaintext.size(), kMaxPlaintextBytes));
  std::string header = fmt::format("{}{}:", kPrefix, key_id_);
  std::string aad = associated_data(header, context);
  // nonce | ciphertext | tag, one buffer (GCM's ciphertext is as long as the plaintext).
  std::string raw(kNonceBytes + plaintext.size() + kTagBytes, '\0');
  unsigned char* nonce = bytes_of(raw);
  unsigned char* out = nonce + kNonceBytes;
  if (RAND_bytes(nonce, static_cast<int>(kNonceBytes)) != 1)
    throw Error(ErrorKind::kInternal,
                fmt::format("Failed to {}: OpenSSL's RAND_bytes failed", what));
  CipherContext ctx(EVP_CIPHER_CTX_new());
  int n = 0;
  int final_n = 0;
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key_.data(), nonce) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &n, bytes_of(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), out, &n, bytes_of(plaintext),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), out + n, &final_n) != 1 ||
      static_cast<std::size_t>(n + final_n) != plaintext.size() ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagBytes),
                          out + plaintext.size()) != 1)
    throw_openssl(what);
  return header + base64_encode(raw);
}

std::string SecretBox::open(std::string_view sealed, std::string_view context) const {
  std::string what = "open " + what_of(context);
  auto malformed = [&](std::string_view reason) {
    return Error(ErrorKind::kFormat, fmt::format("Failed to {}: {}", what, reason));
  };
  if (!is_sealed(sealed)) throw malformed(fmt::format("it does not start with {}", kPrefix));
  std::optional<std::string> id = sealed_key_id(sealed);
  if (!id) throw malformed("it names no key id after the prefix");
  if (*id != key_id_)
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to {}: it was sealed with key {}, and the secret key {} is "
                            "key {}",
                            what, *id, key_file_.string(), key_id_));
  std::size_t header_size = kPrefix.size() + kKeyIdHexDigits + 1;
  std::optional<std::string> raw = base64_decode(sealed.substr(header_size));
  if (!raw) throw malformed("its body is not base64");
  if (raw->size() < kNonceBytes + kTagBytes)
    throw malformed(
        fmt::format("its body is {} bytes, shorter than a nonce and a tag", raw->size()));
  std::string aad = associated_data(sealed.substr(0, header_size), context);
  std::size_t text_size = raw->size() - kNonceBytes - kTagBytes;
  const unsigned char* nonce = bytes_of(*raw);
  const unsigned char* ciphertext = nonce + kNonceBytes;
  // EVP's tag setter takes a non-const pointer; it only reads.
  unsigned char* tag = bytes_of(*raw) + kNonceBytes + text_size;
  std::string plaintext(text_size, '\0');
  CipherContext ctx(EVP_CIPHER_CTX_new());
  int n = 0;
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key_.data(), nonce) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &n, bytes_of(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), bytes_of(plaintext), &n, ciphertext,
                        static_cast<int>(text_size)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagBytes), tag) != 1)
    throw_openssl(what);
  int final_n = 0;
  if (EVP_DecryptFinal_ex(ctx.get(), bytes_of(plaintext) + n, &final_n) != 1) {
    OPENSSL_cleanse(plaintext.data(), plaintext.size());
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to {}: its authentication tag does not match (it was altered, "
                            "or moved from another record)",
                            what));
  }
  return plaintext;
}

}  // namespace pok8s::server
