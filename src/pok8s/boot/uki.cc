// Hand-written PE section appending after the PE/COFF specification and the UKI specification
// (uapi-group.org): no Debian library edits PE images, and objcopy cannot place sections at
// aligned virtual addresses past the stub's on its own. The stub's code is untouched; only its
// headers change (section count, section table, size of image, checksum).
#include "pok8s/boot/uki.h"

#include <fmt/format.h>

#include <algorithm>

#include "pok8s/boot/pe.h"
#include "pok8s/util/endian.h"
#include "pok8s/util/error.h"

namespace pok8s::boot {
namespace {

// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
constexpr std::uint32_t kDataSectionFlags = 0x40000040;
constexpr const char* kUkiSectionNames[] = {".osrel",   ".cmdline", ".uname",  ".sbat", ".splash",
                                            ".pcrpkey", ".pcrsig",  ".initrd", ".linux"};

std::uint64_t align_up(std::uint64_t v, std::uint64_t a) {
  return (v + a - 1) / a * a;
}

}  // namespace

std::string assemble_uki(const UkiInputs& in) {
  const std::string what = in.stub.string();
  std::string stub = util::read_file(in.stub, kMaxStubBytes);
  PeImage pe = parse_pe(stub, what);
  auto fail = [&](const std::string& why) {
    return Error(ErrorKind::kFormat, fmt::format("Failed to make a UKI from {}: {}", what, why));
  };
  if (pe.machine != 0x8664) throw fail("not an x86-64 EFI stub");
  const PeSection* magic = nullptr;
  bool has_sbat = false;
  for (const auto& s : pe.sections) {
    if (s.name == ".sdmagic") magic = &s;
    if (s.name == ".sbat") has_sbat = true;
  }
  std::string_view magic_text =
      magic == nullptr ? std::string_view()
                       : std::string_view(stub).substr(
                             magic->raw_offset, std::min(magic->raw_size, magic->virtual_size));
  if (magic_text.find("LoaderInfo: systemd-stub") == std::string_view::npos)
    throw fail("not a systemd stub (no .sdmagic saying systemd-stub)");
  for (const auto& s : pe.sections)
    for (const char* n : kUkiSectionNames)
      if (s.name == n && s.name != ".sbat")
        throw fail(fmt::format("it already has a {} section (a UKI, not a stub?)", s.name));
  // What follows the last section (a COFF symbol table, debug data, its own signature) goes:
  // sections must follow each other without gaps for every Authenticode verifier to hash the image
  // alike.
  std::uint64_t sections_end = pe.size_of_headers;
  for (const auto& s : pe.sections)
    if (s.raw_size != 0)
      sections_end =
          std::max<std::uint64_t>(sections_end, std::uint64_t{s.raw_offset} + s.raw_size);
  if (pe.cert_table_size == 0 || pe.cert_table_offset >= sections_end) {
    stub.resize(std::min<std::uint64_t>(stub.size(), sections_end));
    util::put_le(stub, pe.cert_dir_field(), 0, 8);
    pe.cert_table_size = 0;
    util::put_le(stub, pe.pe_offset + 4 + 8, 0, 8);  // PointerToSymbolTable, NumberOfSymbols
  }
  if (pe.cert_table_size != 0) throw fail("its signature table is not after its sections");

  std::vector<std::pair<std::string, std::string>> added;
  auto add = [&](const char* name, std::string data) {
    if (!data.empty()) added.emplace_back(name, std::move(data));
  };
  auto part = [&](const util::Path& p) { return util::read_file(p, kMaxUkiPartBytes); };
  add(".osrel", in.os_release);
  add(".cmdline", in.cmdline);
  add(".uname", in.uname);
  if (!has_sbat) add(".sbat", in.sbat);
  if (in.splash) add(".splash", part(*in.splash));
  add(".pcrpkey", in.pcrpkey);
  add(".pcrsig", in.pcrsig);
  add(".initrd", part(in.initrd));
  add(".linux", part(in.kernel));

  // Room for the new section headers, growing the headers by whole file-alignment units (the
  // stub's sections move down in the file; their virtual addresses stay).
  const std::uint64_t table_end = pe.section_table_offset + std::uint64_t{kSectionHeaderSize} *
                                                                (pe.sections.size() + added.size());
  if (table_end > pe.size_of_headers) {
    const std::uint64_t grow = align_up(table_end - pe.size_of_headers, pe.file_alignment);
    std::uint32_t first_va = UINT32_MAX;
    for (const auto& s : pe.sections) first_va = std::min(first_va, s.virtual_address);
    if (align_up(pe.size_of_headers + grow, pe.section_alignment) > first_va)
      throw fail("no room for the UKI's section headers before the stub's first section");
    stub.insert(pe.size_of_headers, grow, '\0');
    for (std::size_t i = 0; i < pe.sections.size(); ++i) {
      const std::size_t at = pe.section_table_offset + kSectionHeaderSize * i;
      if (pe.sections[i].raw_size != 0) {
        pe.sections[i].raw_offset += static_cast<std::uint32_t>(grow);
        util::put_le(stub, at + 20, pe.sections[i].raw_offset, 4);
      }
    }
    pe.size_of_headers += static_cast<std::uint32_t>(grow);
    util::put_le(stub, pe.optional_offset + 60, pe.size_of_headers, 4);
  }

  std::uint64_t next_va = 0;
  for (const auto& s : pe.sections)
    next_va = std::max<std::uint64_t>(
        next_va, std::uint64_t{s.virtual_address} + std::max(s.virtual_size, s.raw_size));
  std::string out = std::move(stub);
  std::size_t index = pe.sections.size();
  for (auto& [name, data] : added) {
    out.resize(align_up(out.size(), pe.file_alignment), '\0');
    next_va = align_up(next_va, pe.section_alignment);
    const std::uint64_t raw_size = align_up(data.size(), pe.file_alignment);
    if (out.size() + raw_size > UINT32_MAX || next_va + data.size() > UINT32_MAX)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to make a UKI from {}: larger than 4 GiB", what));
    const std::size_t at = pe.section_table_offset + kSectionHeaderSize * index++;
    std::string header(kSectionHeaderSize, '\0');
    header.replace(0, name.size(), name);
    util::put_le(header, 8, data.size(), 4);  // VirtualSize
    util::put_le(header, 12, next_va, 4);     // VirtualAddress
    util::put_le(header, 16, raw_size, 4);    // SizeOfRawData
    util::put_le(header, 20, out.size(), 4);  // PointerToRawData
    util::put_le(header, 36, kDataSectionFlags, 4);
    out.replace(at, kSectionHeaderSize, header);
    out += data;
    out.resize(out.size() + (raw_size - data.size()), '\0');
    next_va += data.size();
  }
  util::put_le(out, pe.pe_offset + 4 + 2, index, 2);  // NumberOfSections
  util::put_le(out, pe.optional_offset + 56, align_up(next_va, pe.section_alignment),
               4);  // SizeOfImage
  util::put_le(out, pe.checksum_field(), 0, 4);
  parse_pe(out, what + " (as a UKI)");  // what was written reads back
  return out;
}

std::vector<UkiSection> uki_sections(std::string_view uki) {
  PeImage pe = parse_pe(uki, "the UKI");
  std::vector<UkiSection> out;
  for (const auto& s : pe.sections) out.push_back({s.name, s.virtual_size});
  return out;
}

}  // namespace pok8s::boot
