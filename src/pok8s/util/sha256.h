// Streaming SHA-256 through OpenSSL, the hash behind every digest pok8s checks.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "pok8s/util/file.h"
#include "pok8s/util/hex.h"

namespace pok8s::util {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(std::span<const std::byte> data);
  void update(std::string_view data) { update(std::as_bytes(std::span(data.data(), data.size()))); }
  // The digest, 32 raw bytes; the object cannot be updated afterwards.
  std::string digest();
  // The lowercase hex digest; the object cannot be updated afterwards.
  std::string hex_digest() { return hex_encode(digest()); }

 private:
  struct State;
  std::unique_ptr<State> state_;
};

std::string sha256_hex(std::string_view data);
std::string sha256_raw(std::string_view data);  // 32 bytes

// The sha256 of a file's contents, as lowercase hex.
std::string file_sha256(const Path& path);

}  // namespace pok8s::util
