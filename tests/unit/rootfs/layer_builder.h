// A test helper that writes tar layers with libarchive: any entry type, raw hostile paths,
// xattrs, compression, and lying headers patched in by hand.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include <optional>

#include "pok8s/oci/digest.h"
#include "pok8s/rootfs/apply.h"
#include "pok8s/util/file.h"

namespace pok8s::test {

enum class Compression { kNone, kGzip, kZstd };

class LayerBuilder {
 public:
  enum class Kind { kFile, kDir, kSymlink, kHardlink, kCharDevice, kBlockDevice, kFifo };
  struct Entry {
    Kind kind = Kind::kFile;
    std::string path;  // written verbatim: "../x" and "/abs" stay as they are
    std::string data;  // file contents
    std::string target;
    unsigned mode = 0644;
    std::uint32_t uid = 0;
    std::uint32_t gid = 0;
    std::int64_t mtime = 1'600'000'000;
    std::uint32_t dev_major = 0;
    std::uint32_t dev_minor = 0;
    std::vector<std::pair<std::string, std::string>> xattrs;
  };

  LayerBuilder& file(std::string path, std::string data, unsigned mode = 0644);
  LayerBuilder& dir(std::string path, unsigned mode = 0755);
  LayerBuilder& symlink(std::string path, std::string target);
  LayerBuilder& hardlink(std::string path, std::string target);
  LayerBuilder& device(std::string path, bool block, std::uint32_t major, std::uint32_t minor);
  LayerBuilder& fifo(std::string path, unsigned mode = 0644);
  // `.wh.NAME` next to `path`'s name ("a/b" -> "a/.wh.b").
  LayerBuilder& whiteout(const std::string& path);
  // `DIR/.wh..wh..opq`.
  LayerBuilder& opaque(const std::string& dir);

  // Modifiers of the entry added last.
  LayerBuilder& owner(std::uint32_t uid, std::uint32_t gid);
  LayerBuilder& mtime(std::int64_t sec);
  LayerBuilder& xattr(std::string name, std::string value);

  // The uncompressed tar (pax format).
  std::string tar() const;

 private:
  std::vector<Entry> entries_;
};

// `tar` compressed in-process with libarchive.
std::string compress(const std::string& tar, Compression compression);

// The tar with the ustar header of `name` claiming `size` bytes (checksum recomputed), so the
// header lies about the data that follows.
std::string patch_size(std::string tar, const std::string& name, std::uint64_t size);

struct WrittenLayer {
  std::filesystem::path path;
  oci::Digest blob_digest;
  oci::Digest diff_id;
};

// Writes the (optionally compressed) layer to `dir/name`.
WrittenLayer write_layer(const std::filesystem::path& dir, const std::string& name,
                         const std::string& tar, Compression compression = Compression::kNone);

// A scratch area with a root to unpack into and, next to it, a canary file a hostile layer
// must never reach.
class RootfsTest : public ::testing::Test {
 protected:
  RootfsTest();
  void TearDown() override;

  // Writes `layer` as a blob and applies it to root().
  rootfs::ApplyStats apply(const LayerBuilder& layer, Compression compression = Compression::kNone,
                           const rootfs::ApplyOptions& options = {});
  rootfs::ApplyStats apply_tar(const std::string& tar, Compression compression = Compression::kNone,
                               const rootfs::ApplyOptions& options = {},
                               std::optional<oci::Digest> diff_id = std::nullopt);

  const std::filesystem::path& root() const { return root_; }
  const std::filesystem::path& scratch() const { return scratch_.path(); }
  int root_fd() const { return root_fd_.get(); }
  std::string read(const std::filesystem::path& rel) const;
  // True while the canary outside the root holds what it was created with.
  bool canary_intact() const;
  std::filesystem::path canary() const { return scratch() / "canary"; }

 private:
  util::TempDir scratch_;
  std::filesystem::path root_;
  util::UniqueFd root_fd_;
  int layers_ = 0;
};

bool is_root();

}  // namespace pok8s::test
