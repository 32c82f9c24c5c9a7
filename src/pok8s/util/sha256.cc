// SHA-256 on OpenSSL's EVP interface.
#include "pok8s/util/sha256.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "pok8s/util/error.h"

namespace pok8s::util {

struct Sha256::State {
  EVP_MD_CTX* ctx = nullptr;
  ~State() { EVP_MD_CTX_free(ctx); }
};

Sha256::Sha256() : state_(std::make_unique<State>()) {
  state_->ctx = EVP_MD_CTX_new();
  if (!state_->ctx || EVP_DigestInit_ex(state_->ctx, EVP_sha256(), nullptr) != 1)
    throw Error("Failed to initialise SHA-256");
}

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(std::span<const std::byte> data) {
  if (EVP_DigestUpdate(state_->ctx, data.data(), data.size()) != 1)
    throw Error("Failed to update SHA-256");
}

std::string Sha256::digest() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  if (EVP_DigestFinal_ex(state_->ctx, md, &len) != 1) throw Error("Failed to finish SHA-256");
  return std::string(reinterpret_cast<const char*>(md), len);
}

std::string sha256_hex(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.hex_digest();
}

std::string sha256_raw(std::string_view data) {
  Sha256 h;
  h.update(data);
  return h.digest();
}

std::string file_sha256(const Path& path) {
  UniqueFd fd = open_file(path, O_RDONLY);
  Sha256 hash;
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("Failed to read " + path.string(), errno);
    if (n == 0) break;
    hash.update(std::as_bytes(std::span(buf.data(), static_cast<std::size_t>(n))));
  }
  return hash.hex_digest();
}

}  // namespace pok8s::util
