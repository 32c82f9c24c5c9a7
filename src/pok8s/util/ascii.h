// ASCII case folding for protocol tokens (HTTP header names, URL schemes and hosts, auth
// schemes), which are case-insensitive in ASCII only: no locale is consulted.
#pragma once

#include <string>
#include <string_view>

namespace pok8s::util {

inline std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

}  // namespace pok8s::util
