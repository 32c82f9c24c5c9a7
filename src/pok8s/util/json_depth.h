// A pre-check for JSON from untrusted input: nlohmann-json parses recursively, so text nested
// deeper than a limit is refused before it reaches the parser.
#pragma once

#include <cstddef>
#include <string_view>

namespace pok8s::util {

// Whether arrays and objects in `text` nest deeper than `limit` (brackets inside strings, with
// their escapes, do not count). Text that is not JSON at all is left to the parser.
inline bool json_nests_deeper_than(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

}  // namespace pok8s::util
