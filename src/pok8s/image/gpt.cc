// GPT with libfdisk on a regular file. libfdisk treats a file like a disk of 512-byte sectors;
// we give it explicit starts and sizes so its alignment heuristics never decide anything.
#include "pok8s/image/gpt.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <libfdisk/libfdisk.h>
#include <unistd.h>

#include <memory>
#include <set>

#include "pok8s/image/disk_layout.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::image {
namespace {

constexpr std::uint64_t kSector = 512;
constexpr std::size_t kMaxPartitionNameLength = 36;  // UTF-16 code units in a GPT entry's name

[[noreturn]] void refuse(const std::string& what) {
  throw Error(ErrorKind::kInvalidInput, "Failed to plan the partition table: " + what);
}

std::string mib(std::uint64_t bytes) {
  return fmt::format("{} MiB", bytes / kMiB);
}

struct ContextDeleter {
  void operator()(fdisk_context* c) const { fdisk_unref_context(c); }
};
struct PartitionDeleter {
  void operator()(fdisk_partition* p) const { fdisk_unref_partition(p); }
};
struct TypeDeleter {
  void operator()(fdisk_parttype* t) const { fdisk_unref_parttype(t); }
};

void check(int rc, const util::Path& file, std::string_view what) {
  if (rc < 0)
    throw Error(ErrorKind::kIo, fmt::format("Failed to write the partition table of {}: {}: {}",
                                            file.string(), what, std::strerror(-rc)));
}

}  // namespace

bool is_guid(std::string_view s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash != (s[i] == '-')) return false;
    if (!dash && !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

std::string derived_uuid(std::string_view seed, std::string_view name) {
  std::string hex = util::sha256_hex(std::string(seed) + "/" + std::string(name)).substr(0, 32);
  hex[12] = '8';  // version 8: custom
  static constexpr char kVariant[] = "89ab";
  hex[16] = kVariant[std::stoi(hex.substr(16, 1), nullptr, 16) & 3];
  return fmt::format("{}-{}-{}-{}-{}", hex.substr(0, 8), hex.substr(8, 4), hex.substr(12, 4),
                     hex.substr(16, 4), hex.substr(20, 12));
}

// Declared in disk_layout.h: the sizes come from pok8s_node's plan_partitions, the UUIDs from
// sha256, which only this library links.
GptLayout plan_disk(const DiskLayoutOptions& options) {
  if (options.seed.empty())
    throw Error(ErrorKind::kInvalidInput,
                "Failed to plan the disk: no seed for the partition UUIDs");
  GptLayout layout = plan_partitions(options);
  layout.disk_uuid = derived_uuid(options.seed, "disk");
  for (auto& p : layout.partitions) p.uuid = derived_uuid(options.seed, p.name);
  plan_gpt(layout);
  return layout;
}

std::vector<PartitionExtent> plan_gpt(const GptLayout& layout) {
  if (layout.disk_size % kMiB != 0 || layout.disk_size < 3 * kMiB)
    refuse(fmt::format("the disk size {} is not a whole number of MiB of at least 3 MiB",
                       layout.disk_size));
  if (!is_guid(layout.disk_uuid))
    refuse(fmt::format("the disk GUID {:?} is not a GUID", layout.disk_uuid));
  if (layout.partitions.empty()) refuse("no partitions");
  std::set<std::string> names;
  std::vector<PartitionExtent> out;
  // The first MiB holds the MBR and primary GPT, the last one the backup GPT.
  std::uint64_t offset = kMiB;
  const std::uint64_t end = layout.disk_size - kMiB;
  for (std::size_t i = 0; i < layout.partitions.size(); ++i) {
    const auto& p = layout.partitions[i];
    if (p.name.empty() || p.name.size() > kMaxPartitionNameLength)
      refuse(fmt::format("partition {}: the name {:?} must be 1-{} characters", i + 1, p.name,
                         kMaxPartitionNameLength));
    for (char c : p.name)
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e)
        refuse(fmt::format("partition {}: the name {:?} must be printable ASCII", i + 1, p.name));
    if (!names.insert(p.name).second) refuse(fmt::format("{} is named twice", p.name));
    if (!is_guid(p.type)) refuse(fmt::format("{}: the type {:?} is not a GUID", p.name, p.type));
    if (!is_guid(p.uuid)) refuse(fmt::format("{}: the UUID {:?} is not a GUID", p.name, p.uuid));
    if (p.size % kMiB != 0)
      refuse(fmt::format("{}: the size {} is not a whole number of MiB", p.name, p.size));
    bool last = i + 1 == layout.partitions.size();
    if (p.size == 0 && !last)
      refuse(fmt::format("{}: only the last partition may take the rest", p.name));
    std::uint64_t size = p.size == 0 ? (end > offset ? end - offset : 0) : p.size;
    if (size == 0 || offset + size > end)
      refuse(fmt::format("{} needs {} at {}, but the disk of {} ends its partitions at {}", p.name,
                         p.size == 0 ? std::string("at least 1 MiB") : mib(p.size), mib(offset),
                         mib(layout.disk_size), mib(end)));
    out.push_back({p.name, offset, size});
    offset += size;
  }
  return out;
}

std::vector<PartitionExtent> write_gpt(const util::Path& file, const GptLayout& layout) {
  auto extents = plan_gpt(layout);
  {
    util::UniqueFd fd = util::open_file(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (::ftruncate(fd.get(), static_cast<off_t>(layout.disk_size)) != 0)
      throw_errno("Failed to size " + file.string(), errno);
  }
  std::unique_ptr<fdisk_context, ContextDeleter> cxt(fdisk_new_context());
  if (!cxt) throw Error(ErrorKind::kInternal, "Failed to start libfdisk");
  check(fdisk_assign_device(cxt.get(), file.c_str(), 0), file, "open");
  check(fdisk_create_disklabel(cxt.get(), "gpt"), file, "create the GPT");
  check(fdisk_set_disklabel_id_from_string(cxt.get(), layout.disk_uuid.c_str()), file,
        "set the disk GUID");
  fdisk_label* label = fdisk_get_label(cxt.get(), "gpt");
  for (std::size_t i = 0; i < layout.partitions.size(); ++i) {
    const auto& p = layout.partitions[i];
    const auto& e = extents[i];
    std::unique_ptr<fdisk_partition, PartitionDeleter> pa(fdisk_new_partition());
    std::unique_ptr<fdisk_parttype, TypeDeleter> type(
        fdisk_label_get_parttype_from_string(label, p.type.c_str()));
    if (!type) type.reset(fdisk_new_unknown_parttype(0, p.type.c_str()));
    check(fdisk_partition_set_type(pa.get(), type.get()), file, p.name + ": type");
    check(fdisk_partition_set_partno(pa.get(), i), file, p.name + ": number");
    check(fdisk_partition_set_start(pa.get(), e.offset / kSector), file, p.name + ": start");
    check(fdisk_partition_set_size(pa.get(), e.size / kSector), file, p.name + ": size");
    check(fdisk_partition_set_name(pa.get(), p.name.c_str()), file, p.name + ": name");
    check(fdisk_partition_set_uuid(pa.get(), p.uuid.c_str()), file, p.name + ": UUID");
    if (p.legacy_bios_bootable)
      check(fdisk_partition_set_attrs(pa.get(), "LegacyBIOSBootable"), file,
            p.name + ": attributes");
    check(fdisk_add_partition(cxt.get(), pa.get(), nullptr), file, p.name);
  }
  check(fdisk_write_disklabel(cxt.get()), file, "write");
  check(fdisk_deassign_device(cxt.get(), 0), file, "close");
  return extents;
}

}  // namespace pok8s::image
