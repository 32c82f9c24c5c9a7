// GUID partition tables written into disk image files with libfdisk: no root, no loop device,
// no partition device nodes. The same layout gives the same bytes (UUIDs are derived, not
// random), so disk images are reproducible.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::image {

inline constexpr std::uint64_t kMiB = 1u << 20;

// Partition type GUIDs (UEFI specification, and the Discoverable Partitions Specification).
inline constexpr const char* kEspType = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
inline constexpr const char* kBiosBootType = "21686148-6449-6E6F-744E-656564454649";
inline constexpr const char* kLinuxDataType = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

struct GptPartition {
  std::string name;        // the GPT partition name (COS_STATE); at most 36 ASCII characters
  std::string type;        // a type GUID
  std::string uuid;        // the partition's unique GUID
  std::uint64_t size = 0;  // bytes, a multiple of 1 MiB; 0 for the last: the rest of the disk
  bool legacy_bios_bootable = false;  // attribute bit 2
};

struct GptLayout {
  std::string disk_uuid;
  std::uint64_t disk_size = 0;           // bytes, a multiple of 1 MiB
  std::vector<GptPartition> partitions;  // in order, from 1 MiB on, each 1 MiB aligned
};

// Where a partition landed, in bytes from the start of the disk.
struct PartitionExtent {
  std::string name;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
};

// The extents `layout` gives, after checking it: sizes aligned, names valid and unique, UUIDs
// well-formed, every partition fits (the backup GPT takes the disk's last MiB). Throws
// kInvalidInput naming the partition and the sizes, before anything is written.
std::vector<PartitionExtent> plan_gpt(const GptLayout& layout);

// Writes a protective MBR and the primary and backup GPT for `layout` into `file` (created, or
// truncated, to disk_size bytes; sparse). Partition contents are not touched.
std::vector<PartitionExtent> write_gpt(const util::Path& file, const GptLayout& layout);

// Whether `s` is a GUID in its text form (8-4-4-4-12 hex digits), as GPT and ext4 take it.
bool is_guid(std::string_view s);

// A GUID derived from `seed` and `name` (sha256, with the RFC 9562 version 8 and variant bits):
// stable for the same inputs, different for different names.
std::string derived_uuid(std::string_view seed, std::string_view name);

}  // namespace pok8s::image
