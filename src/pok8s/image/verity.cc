#include "pok8s/image/verity.h"

#include <libcryptsetup.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "pok8s/util/error.h"
#include "pok8s/util/hex.h"
#include "pok8s/util/sha256.h"

namespace pok8s::image {
namespace {

struct CryptDeleter {
  void operator()(crypt_device* cd) const { crypt_free(cd); }
};

std::string salt_bytes(std::string_view hex, const util::Path& image) {
  std::string out = util::hex_decode(hex).value_or("");
  if (out.empty() || out.size() > 64)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to use the verity tree of {}: the salt must be 1 to 64 bytes "
                            "of lowercase hex",
                            image.string()));
  return out;
}

// The parameters of pok8s's trees (format 1, SHA-256, 4 KiB blocks, the tree after the data in
// the same file, no superblock) for `image`; `salt` must outlive them.
crypt_params_verity verity_params(const util::Path& image, const std::string& salt,
                                  const VerityTree& tree, std::uint32_t flags) {
  crypt_params_verity params{};
  params.hash_name = "sha256";
  params.data_device = image.c_str();
  params.salt = salt.data();
  params.salt_size = static_cast<std::uint32_t>(salt.size());
  params.hash_type = 1;  // the kernel's current format
  params.data_block_size = kVerityBlockSize;
  params.hash_block_size = kVerityBlockSize;
  params.data_size = tree.data_blocks;
  params.hash_area_offset = tree.hash_offset;
  params.flags = CRYPT_VERITY_NO_HEADER | flags;
  return params;
}

}  // namespace

VerityTree append_verity_tree(const util::Path& image, std::string_view salt_hex) {
  std::string salt = salt_bytes(salt_hex, image);
  struct stat st {};
  if (::stat(image.c_str(), &st) != 0) throw_errno("Failed to read " + image.string(), errno);
  if (st.st_size == 0)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to make the verity tree of {}: it is empty", image.string()));
  VerityTree tree;
  tree.data_blocks =
      (static_cast<std::uint64_t>(st.st_size) + kVerityBlockSize - 1) / kVerityBlockSize;
  tree.hash_offset = tree.data_blocks * kVerityBlockSize;
  if (::truncate(image.c_str(), static_cast<off_t>(tree.hash_offset)) != 0)
    throw_errno("Failed to pad " + image.string(), errno);

  crypt_device* raw = nullptr;
  // The same file holds the data and, after it, the tree.
  int r = crypt_init_data_device(&raw, image.c_str(), image.c_str());
  std::unique_ptr<crypt_device, CryptDeleter> cd(raw);
  auto fail = [&](const char* step, int code) {
    throw Error(ErrorKind::kIo, fmt::format("Failed to make the verity tree of {}: {}: {}",
                                            image.string(), step, std::strerror(-code)));
  };
  if (r < 0) fail("crypt_init", r);
  crypt_params_verity params = verity_params(image, salt, tree, CRYPT_VERITY_CREATE_HASH);
  if ((r = crypt_format(cd.get(), CRYPT_VERITY, nullptr, nullptr, nullptr, nullptr, 0, &params)) <
      0)
    fail("crypt_format", r);
  std::vector<char> root(static_cast<std::size_t>(crypt_get_volume_key_size(cd.get())));
  std::size_t root_size = root.size();
  if ((r = crypt_volume_key_get(cd.get(), CRYPT_ANY_SLOT, root.data(), &root_size, nullptr, 0)) < 0)
    fail("reading the root hash", r);
  tree.root_hash = util::hex_encode(std::string_view(root.data(), root_size));
  tree.salt = std::string(salt_hex);
  if (::stat(image.c_str(), &st) != 0) throw_errno("Failed to read " + image.string(), errno);
  tree.hash_size = static_cast<std::uint64_t>(st.st_size) - tree.hash_offset;
  return tree;
}

void verify_verity_tree(const util::Path& image, const VerityTree& tree) {
  std::string salt = salt_bytes(tree.salt, image);
  std::string root = util::hex_decode(tree.root_hash).value_or("");
  if (root.size() != 32)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to verify {}: the root hash {:?} is not 64 hex digits",
                            image.string(), tree.root_hash));
  struct stat st {};
  if (::stat(image.c_str(), &st) != 0) throw_errno("Failed to verify " + image.string(), errno);
  if (static_cast<std::uint64_t>(st.st_size) < tree.hash_offset + kVerityBlockSize ||
      tree.hash_offset < tree.data_blocks * kVerityBlockSize)
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to verify {}: it is {} bytes, too short for {} data blocks "
                            "and a tree at {}",
                            image.string(), st.st_size, tree.data_blocks, tree.hash_offset));
  crypt_device* raw = nullptr;
  int r = crypt_init_data_device(&raw, image.c_str(), image.c_str());
  std::unique_ptr<crypt_device, CryptDeleter> cd(raw);
  if (r < 0)
    throw Error(ErrorKind::kIo,
                fmt::format("Failed to verify {}: {}", image.string(), std::strerror(-r)));
  // Its messages ("Verification failed at position …") would go to stderr; the error says it.
  crypt_set_log_callback(
      cd.get(), [](int, const char*, void*) {}, nullptr);
  // Checked in userspace when activated (a parameter flag, not an activation one).
  crypt_params_verity params = verity_params(image, salt, tree, CRYPT_VERITY_CHECK_HASH);
  if ((r = crypt_format(cd.get(), CRYPT_VERITY, nullptr, nullptr, nullptr, nullptr, 0, &params)) <
      0)
    throw Error(ErrorKind::kIo, fmt::format("Failed to verify {}: its verity parameters: {}",
                                            image.string(), std::strerror(-r)));
  // No name: libcryptsetup checks the data against the tree and the root hash in userspace and
  // activates nothing (veritysetup verify does the same).
  r = crypt_activate_by_volume_key(cd.get(), nullptr, root.data(), root.size(), 0);
  if (r == -EPERM)
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to verify {}: its blocks do not match the root hash {}",
                            image.string(), tree.root_hash));
  if (r < 0)
    throw Error(ErrorKind::kIo,
                fmt::format("Failed to verify {}: {}", image.string(), std::strerror(-r)));
}

std::string verity_cmdline(const VerityTree& t) {
  return fmt::format("pok8s.verity={},{},{},{}", t.root_hash, t.salt, t.data_blocks, t.hash_offset);
}

}  // namespace pok8s::image
