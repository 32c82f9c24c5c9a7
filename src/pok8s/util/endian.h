// Little-endian integers in byte strings, as on-disk formats (PE, EFI, MBR, GRUB's block lists)
// store them: read and written a byte at a time, independent of the host's order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pok8s::util {

// The `bytes`-byte little-endian integer at `at` of `b` (the caller checks the bounds).
inline std::uint64_t get_le(std::string_view b, std::size_t at, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
  return v;
}

// Overwrites `bytes` bytes of `b` at `at` with `v`, little-endian.
inline void put_le(std::string& b, std::size_t at, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) b[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

// Appends `v` to `b` as `bytes` little-endian bytes.
inline void append_le(std::string& b, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace pok8s::util
