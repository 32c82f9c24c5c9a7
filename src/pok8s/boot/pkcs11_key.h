// Private keys that stay in a PKCS#11 token (an HSM, a smart card, SoftHSM): a key file of a key
// set may hold an RFC 7512 URI instead of a PEM key, and pok8s signs through OpenSSL's pkcs11
// engine (Debian's libengine-pkcs11-openssl, libp11) without the key ever leaving the token.
#pragma once

#include <openssl/evp.h>

#include <string_view>

namespace pok8s::boot {

// Whether a key file's text is a PKCS#11 URI ("pkcs11:…", one line).
bool is_pkcs11_uri(std::string_view text);

// The private key the URI names, e.g.
//   pkcs11:token=pok8s;object=db;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234
// `module-path` picks the token's PKCS#11 module (default: p11-kit's proxy); the PIN comes from
// `pin-value` or, kept out of files, the environment variable POK8S_PKCS11_PIN. Throws
// Error(kNotFound) when the engine is not installed, Error(kInvalidInput) when the token has no
// such key; `what` names the key file in the message.
EVP_PKEY* load_pkcs11_private_key(std::string_view uri, std::string_view what);

}  // namespace pok8s::boot
