// Content digests ("sha256:<hex>"), validated before they are ever used in a path or URL.
#pragma once

#include <compare>
#include <optional>
#include <string>
#include <string_view>

namespace pok8s::oci {

class Digest {
 public:
  // Parses "algorithm:hex". Accepts sha256 (64 hex) and sha512 (128 hex), lowercase only,
  // per the OCI image spec's registered algorithms; throws kInvalidInput otherwise.
  static Digest parse(std::string_view text);
  static std::optional<Digest> try_parse(std::string_view text);
  static Digest sha256_of(std::string_view data);
  // Wraps a sha256 hex string that must already be valid.
  static Digest sha256(std::string_view hex);

  const std::string& algorithm() const { return algorithm_; }
  const std::string& hex() const { return hex_; }
  std::string str() const { return algorithm_ + ":" + hex_; }
  // A short form for messages: "sha256:0123456789ab".
  std::string short_str() const { return algorithm_ + ":" + hex_.substr(0, 12); }

  auto operator<=>(const Digest&) const = default;

 private:
  Digest(std::string algorithm, std::string hex)
      : algorithm_(std::move(algorithm)), hex_(std::move(hex)) {}
  std::string algorithm_;
  std::string hex_;
};

}  // namespace pok8s::oci
