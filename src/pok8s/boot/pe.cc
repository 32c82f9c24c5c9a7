#include "pok8s/boot/pe.h"

#include <fmt/format.h>

#include "pok8s/util/endian.h"
#include "pok8s/util/error.h"

namespace pok8s::boot {
namespace {

constexpr std::uint16_t kPe32PlusMagic = 0x20b;
constexpr std::uint32_t kCoffHeaderSize = 20;
constexpr std::uint32_t kDataDirectoriesOffset = 112;  // in a PE32+ optional header
constexpr std::uint32_t kCertificateDirectory = 4;
constexpr std::uint16_t kMaxSections = 96;  // the specification's limit

}  // namespace

PeImage parse_pe(std::string_view b, std::string_view what) {
  auto fail = [&](const std::string& why) -> Error {
    return Error(ErrorKind::kFormat, fmt::format("Failed to read PE image {}: {}", what, why));
  };
  auto need = [&](std::uint64_t offset, std::uint64_t size, const char* part) {
    if (offset > b.size() || size > b.size() - offset)
      throw fail(fmt::format("the {} ends past the end of the file", part));
  };
  if (b.size() > kMaxPeImageBytes) throw fail("larger than 1 GiB");
  need(0, 64, "DOS header");
  if (b.substr(0, 2) != "MZ") throw fail("no MZ signature");
  PeImage pe;
  pe.pe_offset = static_cast<std::uint32_t>(util::get_le(b, 0x3c, 4));
  need(pe.pe_offset, 4 + kCoffHeaderSize, "COFF header");
  if (b.substr(pe.pe_offset, 4) != std::string_view("PE\0\0", 4)) throw fail("no PE signature");
  const std::uint32_t coff = pe.pe_offset + 4;
  pe.machine = static_cast<std::uint16_t>(util::get_le(b, coff, 2));
  const auto sections = static_cast<std::uint16_t>(util::get_le(b, coff + 2, 2));
  const auto optional_size = static_cast<std::uint16_t>(util::get_le(b, coff + 16, 2));
  if (sections > kMaxSections) throw fail(fmt::format("{} sections", sections));
  pe.optional_offset = coff + kCoffHeaderSize;
  need(pe.optional_offset, optional_size, "optional header");
  if (optional_size < kDataDirectoriesOffset ||
      util::get_le(b, pe.optional_offset, 2) != kPe32PlusMagic)
    throw fail("not a PE32+ image");
  pe.section_alignment = static_cast<std::uint32_t>(util::get_le(b, pe.optional_offset + 32, 4));
  pe.file_alignment = static_cast<std::uint32_t>(util::get_le(b, pe.optional_offset + 36, 4));
  pe.size_of_image = static_cast<std::uint32_t>(util::get_le(b, pe.optional_offset + 56, 4));
  pe.size_of_headers = static_cast<std::uint32_t>(util::get_le(b, pe.optional_offset + 60, 4));
  pe.number_of_rva_and_sizes =
      static_cast<std::uint32_t>(util::get_le(b, pe.optional_offset + 108, 4));
  if (pe.file_alignment == 0 || (pe.file_alignment & (pe.file_alignment - 1)) != 0 ||
      pe.section_alignment < pe.file_alignment)
    throw fail("bad file or section alignment");
  if (pe.number_of_rva_and_sizes > 16 ||
      kDataDirectoriesOffset + 8ull * pe.number_of_rva_and_sizes > optional_size)
    throw fail("bad number of data directories");
  need(0, pe.size_of_headers, "headers");
  pe.section_table_offset = pe.optional_offset + optional_size;
  need(pe.section_table_offset, std::uint64_t{kSectionHeaderSize} * sections, "section table");
  if (pe.section_table_offset + kSectionHeaderSize * sections > pe.size_of_headers)
    throw fail("the section table is not within the headers");

  for (std::uint16_t i = 0; i < sections; ++i) {
    const std::size_t at = pe.section_table_offset + std::size_t{kSectionHeaderSize} * i;
    PeSection s;
    std::string_view name = b.substr(at, 8);
    s.name = std::string(name.substr(0, name.find('\0')));
    s.virtual_size = static_cast<std::uint32_t>(util::get_le(b, at + 8, 4));
    s.virtual_address = static_cast<std::uint32_t>(util::get_le(b, at + 12, 4));
    s.raw_size = static_cast<std::uint32_t>(util::get_le(b, at + 16, 4));
    s.raw_offset = static_cast<std::uint32_t>(util::get_le(b, at + 20, 4));
    s.characteristics = static_cast<std::uint32_t>(util::get_le(b, at + 36, 4));
    if (s.raw_size != 0) need(s.raw_offset, s.raw_size, ("section " + s.name).c_str());
    pe.sections.push_back(std::move(s));
  }

  if (pe.number_of_rva_and_sizes > kCertificateDirectory) {
    pe.cert_table_offset = static_cast<std::uint32_t>(util::get_le(b, pe.cert_dir_field(), 4));
    pe.cert_table_size = static_cast<std::uint32_t>(util::get_le(b, pe.cert_dir_field() + 4, 4));
    if (pe.cert_table_size != 0) {
      need(pe.cert_table_offset, pe.cert_table_size, "attribute certificate table");
      // Signing appends to it and hashes everything before it: it must be the file's end.
      if (std::uint64_t{pe.cert_table_offset} + pe.cert_table_size != b.size())
        throw fail("the attribute certificate table is not at the end of the file");
    } else {
      pe.cert_table_offset = 0;
    }
  }
  return pe;
}

}  // namespace pok8s::boot
