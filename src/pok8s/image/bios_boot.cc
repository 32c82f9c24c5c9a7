// Hand-written: GRUB has no library for this and grub-bios-setup insists on resolving the
// directory it reads from to a device of the running system, which a disk image file is not
// (and the node's image may not ship GRUB's tools at all). The offsets follow GRUB's boot.S and
// diskboot.S (include/grub/i386/pc/boot.h): boot.img reads the sector whose LBA it holds at
// 0x5c; that sector, diskboot.img, reads the rest of core.img by the block list in its last
// 12 bytes (start LBA, sector count, load segment).
#include "pok8s/image/bios_boot.h"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "pok8s/util/endian.h"
#include "pok8s/util/error.h"

namespace pok8s::image {
namespace {

using util::get_le;
using util::put_le;

constexpr std::size_t kBootCodeSize = 440;        // the MBR's code, before the disk signature
constexpr std::size_t kKernelSector = 0x5c;       // le64: LBA of core.img's first sector
constexpr std::size_t kDriveCheck = 0x66;         // a 2-byte jump over the boot drive fix-up
constexpr std::size_t kBlockListStart = 0x1f4;    // le64 in core.img's first sector
constexpr std::size_t kBlockListLength = 0x1fc;   // le16: sectors after the first
constexpr std::size_t kBlockListSegment = 0x1fe;  // le16: where they load, 0x820
constexpr std::uint16_t kCoreLoadSegment = 0x820;
constexpr std::size_t kMbrPartitionType = 0x1c2;  // the first MBR entry's type byte
constexpr unsigned char kProtectiveType = 0xee;

bool has_boot_signature(std::string_view sector) {
  return sector.size() == kBiosSector && static_cast<unsigned char>(sector[510]) == 0x55 &&
         static_cast<unsigned char>(sector[511]) == 0xaa;
}

void pwrite_all(int fd, std::string_view data, std::uint64_t offset, const util::Path& disk) {
  while (!data.empty()) {
    ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw_errno("Failed to write GRUB's BIOS boot code to " + disk.string(), errno);
    data.remove_prefix(static_cast<std::size_t>(n));
    offset += static_cast<std::uint64_t>(n);
  }
}

}  // namespace

void write_bios_boot(const util::Path& disk, std::uint64_t partition_offset,
                     std::uint64_t partition_size, std::string_view boot_img,
                     std::string_view core_img) {
  auto refuse = [&](const std::string& why) {
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to write GRUB's BIOS boot code to {}: {}", disk.string(), why));
  };
  if (!has_boot_signature(boot_img)) refuse("boot.img is not a 512-byte boot sector");
  if (core_img.size() < kBiosSector || core_img.size() > kMaxCoreImage)
    refuse(fmt::format("core.img of {} bytes is not a GRUB i386-pc core image", core_img.size()));
  const std::uint64_t sectors_after_first = get_le(core_img, kBlockListLength, 2);
  if (get_le(core_img, kBlockListSegment, 2) != kCoreLoadSegment ||
      (sectors_after_first + 1) * kBiosSector < core_img.size())
    refuse("core.img has no diskboot block list covering it (not made with -O i386-pc?)");
  if (partition_offset % kBiosSector != 0 || partition_offset == 0)
    refuse(
        fmt::format("the BIOS boot partition's offset {} is not a sector > 0", partition_offset));
  if ((sectors_after_first + 1) * kBiosSector > partition_size)
    refuse(fmt::format("core.img of {} bytes does not fit the BIOS boot partition of {} bytes",
                       core_img.size(), partition_size));

  util::UniqueFd fd = util::open_file(disk, O_RDWR | O_CLOEXEC);
  std::string mbr(kBiosSector, '\0');
  if (::pread(fd.get(), mbr.data(), mbr.size(), 0) != static_cast<ssize_t>(mbr.size()))
    refuse("it has no first sector");
  if (!has_boot_signature(mbr) ||
      static_cast<unsigned char>(mbr[kMbrPartitionType]) != kProtectiveType)
    refuse("its first sector is not a GPT protective MBR");

  const std::uint64_t core_lba = partition_offset / kBiosSector;
  std::string core(core_img);
  put_le(core, kBlockListStart, core_lba + 1, 8);
  pwrite_all(fd.get(), core, partition_offset, disk);
  if (::fdatasync(fd.get()) != 0) throw_errno("Failed to sync " + disk.string(), errno);

  // boot.img's code, then the disk signature and partition table the disk already has.
  std::memcpy(mbr.data(), boot_img.data(), kBootCodeSize);
  put_le(mbr, kKernelSector, core_lba, 8);
  // A hard disk: take the drive the BIOS says it booted from, but fix up BIOSes that pass a
  // floppy's number (GRUB's setup does the same for every non-floppy).
  mbr[kDriveCheck] = mbr[kDriveCheck + 1] = static_cast<char>(0x90);
  pwrite_all(fd.get(), mbr, 0, disk);
  if (::fdatasync(fd.get()) != 0) throw_errno("Failed to sync " + disk.string(), errno);
}

}  // namespace pok8s::image
