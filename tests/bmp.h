// Test images for --splash: a BMP (BITMAPFILEHEADER, BITMAPINFOHEADER, 24-bit rows padded to 4
// bytes) of `w` x `h` pixels of one grey.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace pok8s::testing {

inline std::string bmp(std::uint32_t w, std::uint32_t h) {
  std::uint32_t row = (w * 3 + 3) / 4 * 4, size = 54 + row * h;
  std::string out = "BM";
  for (auto [v, n] : {std::pair{size, 4},
                      {0u, 4},
                      {54u, 4},
                      {40u, 4},
                      {w, 4},
                      {h, 4},
                      {1u, 2},
                      {24u, 2},
                      {0u, 4},
                      {0u, 4},
                      {0u, 4},
                      {0u, 4},
                      {0u, 4},
                      {0u, 4}})
    for (int i = 0; i < n; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  out += std::string(row * h, '\x7f');
  return out;
}

}  // namespace pok8s::testing
