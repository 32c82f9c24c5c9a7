// Hand-written device-mapper ioctls (linux/dm-ioctl.h, the kernel's dm-verity documentation):
// pok8s-init is static and Debian ships neither libdevmapper nor libcryptsetup as static
// archives. Three calls: create the device, load the verity table, resume it. The root check
// uses OpenSSL's low-level SHA-256 (deprecated in 3.0, not removed), as netboot.cc does.
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include "pok8s/node/dm_verity.h"

#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <openssl/sha.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "pok8s/util/hex.h"

namespace pok8s::node {
namespace {

constexpr std::size_t kBufferSize = 16 * 1024;

struct DmBuffer {
  std::vector<std::uint64_t> words = std::vector<std::uint64_t>(kBufferSize / 8);  // aligned
  dm_ioctl* io() { return reinterpret_cast<dm_ioctl*>(words.data()); }
  char* bytes() { return reinterpret_cast<char*>(words.data()); }
  void reset(const std::string& name) {
    std::fill(words.begin(), words.end(), 0);
    io()->version[0] = DM_VERSION_MAJOR;
    io()->data_size = kBufferSize;
    io()->data_start = sizeof(dm_ioctl);
    std::snprintf(io()->name, sizeof io()->name, "%s", name.c_str());
  }
};

}  // namespace

bool verity_root_matches(const util::Path& image, const VerityParams& params) {
  util::UniqueFd fd(::open(image.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return false;
  std::string block(4096, '\0');
  if (::pread(fd.get(), block.data(), block.size(), static_cast<off_t>(params.hash_offset)) !=
      static_cast<ssize_t>(block.size()))
    return false;
  // OpenSSL's low-level SHA-256 (static libcrypto, as netboot.cc): the salt, then the block.
  std::string salt = util::hex_decode(params.salt).value_or("");
  SHA256_CTX sha;
  SHA256_Init(&sha);
  SHA256_Update(&sha, salt.data(), salt.size());
  SHA256_Update(&sha, block.data(), block.size());
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256_Final(digest, &sha);
  return util::hex_encode(std::string_view(reinterpret_cast<const char*>(digest), sizeof digest)) ==
         params.root_hash;
}

std::string verity_table(const std::string& device_number, const VerityParams& p) {
  // version 1, data and hash device, data and hash block sizes, data blocks, the first hash
  // block (in hash blocks from the device's start), the hash, root digest and salt.
  return fmt::format("1 {0} {0} 4096 4096 {1} {2} sha256 {3} {4}", device_number, p.data_blocks,
                     p.hash_offset / 4096, p.root_hash, p.salt);
}

std::string open_verity(const std::string& device, const VerityParams& p, const std::string& name) {
  struct stat st {};
  if (::stat(device.c_str(), &st) != 0 || !S_ISBLK(st.st_mode))
    throw_errno("Failed to set up dm-verity: " + device + " is not a block device", errno);
  const std::string number = fmt::format("{}:{}", major(st.st_rdev), minor(st.st_rdev));
  util::UniqueFd control(::open("/dev/mapper/control", O_RDWR | O_CLOEXEC));
  if (!control.valid())
    throw_errno("Failed to set up dm-verity: no /dev/mapper/control (dm_mod not loaded?)", errno);

  DmBuffer b;
  b.reset(name);
  if (::ioctl(control.get(), DM_DEV_CREATE, b.io()) != 0)
    throw_errno(fmt::format("Failed to set up dm-verity: creating {}", name), errno);
  auto remove = [&] {
    b.reset(name);
    ::ioctl(control.get(), DM_DEV_REMOVE, b.io());
  };

  b.reset(name);
  b.io()->target_count = 1;
  b.io()->flags = DM_READONLY_FLAG;
  auto* target = reinterpret_cast<dm_target_spec*>(b.bytes() + sizeof(dm_ioctl));
  target->sector_start = 0;
  target->length = p.data_blocks * 8;  // 512-byte sectors
  std::snprintf(target->target_type, sizeof target->target_type, "verity");
  std::string table = verity_table(number, p);
  char* params = b.bytes() + sizeof(dm_ioctl) + sizeof(dm_target_spec);
  if (sizeof(dm_ioctl) + sizeof(dm_target_spec) + table.size() + 1 > kBufferSize) {
    remove();
    throw Error(ErrorKind::kInvalidInput, "Failed to set up dm-verity: the table is too long");
  }
  std::memcpy(params, table.c_str(), table.size() + 1);
  if (::ioctl(control.get(), DM_TABLE_LOAD, b.io()) != 0) {
    int e = errno;
    remove();
    throw_errno(fmt::format("Failed to set up dm-verity over {}: the kernel refused the table "
                            "\"{}\"",
                            device, table),
                e);
  }

  b.reset(name);  // flags 0: resume, which makes the loaded table live
  if (::ioctl(control.get(), DM_DEV_SUSPEND, b.io()) != 0) {
    int e = errno;
    remove();
    throw_errno(fmt::format("Failed to set up dm-verity: resuming {}", name), e);
  }
  return fmt::format("/dev/dm-{}", minor(b.io()->dev));
}

}  // namespace pok8s::node
