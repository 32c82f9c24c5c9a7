// Reading PE32+ images (EFI applications: systemd-boot, the systemd stub, UKIs) far enough to
// sign them and to add sections: headers, section table, the attribute certificate table.
// Hand-written after the Microsoft PE/COFF specification (rev. 12.0): no Debian library parses
// PE for writing. Every offset and size is checked against the file; the input is untrusted.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace pok8s::boot {

inline constexpr std::size_t kMaxPeImageBytes = std::size_t{1} << 30;
// Bytes of one entry of a PE section table (IMAGE_SECTION_HEADER).
inline constexpr std::uint32_t kSectionHeaderSize = 40;

struct PeSection {
  std::string name;  // up to 8 characters
  std::uint32_t virtual_size = 0;
  std::uint32_t virtual_address = 0;
  std::uint32_t raw_size = 0;
  std::uint32_t raw_offset = 0;
  std::uint32_t characteristics = 0;
};

struct PeImage {
  std::uint32_t pe_offset = 0;        // "PE\0\0"
  std::uint32_t optional_offset = 0;  // the optional header
  std::uint16_t machine = 0;
  std::uint32_t section_alignment = 0;
  std::uint32_t file_alignment = 0;
  std::uint32_t size_of_image = 0;
  std::uint32_t size_of_headers = 0;
  std::uint32_t section_table_offset = 0;
  std::uint32_t number_of_rva_and_sizes = 0;
  std::uint32_t cert_table_offset = 0;  // the attribute certificate table (a file offset), or 0
  std::uint32_t cert_table_size = 0;
  std::vector<PeSection> sections;

  // File offsets of the fields Authenticode leaves out of the hash.
  std::uint32_t checksum_field() const { return optional_offset + 64; }
  std::uint32_t cert_dir_field() const { return optional_offset + 112 + 4 * 8; }
};

// Parses `bytes` as a PE32+ image; throws Error(kFormat) "Failed to read PE image WHAT: ..."
// naming the first thing that is wrong (not PE32+, a header or section outside the file, an
// attribute certificate table that is not at the end).
PeImage parse_pe(std::string_view bytes, std::string_view what);

}  // namespace pok8s::boot
