// Lowercase hex, as digests, salts and root hashes are written on command lines and in files.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace pok8s::util {

// `raw` as lowercase hex, two digits a byte.
std::string hex_encode(std::string_view raw);

// The bytes that `hex` spells, two lowercase digits a byte; nothing for an odd length or any
// other character (so a value can be compared with what hex_encode wrote).
std::optional<std::string> hex_decode(std::string_view hex);

}  // namespace pok8s::util
