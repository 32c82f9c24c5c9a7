// Fetching over HTTP(S) with libcurl: a release binary (k3s, k0s) verified against a pinned
// sha256 before anyone uses it, or a file whose content is checked by its reader (config_url).
#pragma once

#include <cstdint>
#include <string>

#include "pok8s/util/file.h"

namespace pok8s::convert {

// Downloads `url` to `dest` (temp name, renamed when complete) and checks its sha256 against
// `sha256_hex`; throws kSignature on a mismatch (and leaves nothing), kNotFound on an HTTP 4xx,
// kIo on network errors.
void download_verified(const std::string& url, const std::string& sha256_hex,
                       const util::Path& dest, std::uint64_t limit = 1ull << 30);

// Downloads `url` to `dest` (temp name, renamed when complete), at most `limit` bytes; throws
// kInvalidInput past the limit, kNotFound on an HTTP 4xx, kIo on network and other HTTP errors.
// Returns its sha256 (hex).
std::string download_file(const std::string& url, const util::Path& dest, std::uint64_t limit);

}  // namespace pok8s::convert
