// Secure Boot key sets the service keeps for builds to sign with: uploaded by an admin, checked
// with OpenSSL, stored with private keys readable by the service alone, and shown to users as
// certificates only — no route ever returns a private key.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::server {

class KeySetStore {
 public:
  explicit KeySetStore(util::Path root);

  // Stores key set `name` from `files` (name -> PEM text): certificates (*.crt, *.pem, *.cer)
  // and private keys (*.key), each key with the certificate of the same stem that it matches.
  // kInvalidInput naming the file on anything else; ApiError 409 when the name exists.
  nlohmann::json create(std::string_view name, const std::map<std::string, std::string>& files);
  // {name, createdAt, certificates: [{file, subject, issuer, notAfter, sha256, hasPrivateKey}]}
  std::optional<nlohmann::json> describe(std::string_view name) const;
  std::vector<nlohmann::json> list() const;
  bool remove(std::string_view name);
  // name -> directory, for builds that name "keysets/NAME".
  std::map<std::string, util::Path> directories() const;

 private:
  util::Path root_;
};

// A key set name: [a-z0-9][a-z0-9_.-]{0,63}.
bool is_keyset_name(std::string_view name);

}  // namespace pok8s::server
