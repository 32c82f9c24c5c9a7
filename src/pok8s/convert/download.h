// Fetching a release binary (k3s, k0s) over HTTP(S) with libcurl, verified against a pinned
// sha256 before anyone uses it.
#pragma once

#include <cstdint>
#include <string>

#include "pok8s/util/file.h"

namespace pok8s::convert {

// Downloads `url` to `dest` (temp name, renamed when complete) and checks its sha256 against
// `sha256_hex`; throws kSignature on a mismatch (and leaves nothing), kIo on network errors.
void download_verified(const std::string& url, const std::string& sha256_hex,
                       const util::Path& dest, std::uint64_t limit = 1ull << 30);

}  // namespace pok8s::convert
