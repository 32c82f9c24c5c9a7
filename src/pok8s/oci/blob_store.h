// The content-addressed blob cache: blobs/<algorithm>/<hex>, each visible only once it is
// complete and its digest verified.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "pok8s/oci/digest.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

namespace pok8s::oci {

class BlobStore {
 public:
  // Creates `root` (and root/blobs/sha256, root/tmp) if missing.
  explicit BlobStore(util::Path root);

  const util::Path& root() const { return root_; }
  util::Path path_for(const Digest& digest) const;
  bool has(const Digest& digest) const;
  // Reads a whole blob (a manifest or config), refusing more than `limit` bytes.
  std::string read(const Digest& digest, std::uint64_t limit) const;

  // Streams one blob in. commit() checks size (when known) and digest, then renames it into
  // place; a writer destroyed without commit() leaves nothing behind. Thread-safe across
  // writers: two writers of the same blob both succeed and the second rename is harmless.
  class Writer {
   public:
    Writer(Writer&&) noexcept = default;
    void write(std::span<const std::byte> data);
    void write(std::string_view data) { write(std::as_bytes(std::span(data.data(), data.size()))); }
    std::uint64_t bytes_written() const { return written_; }
    // `what` names the blob for the error message ("layer 2 of docker://…").
    util::Path commit(std::string_view what);

   private:
    friend class BlobStore;
    Writer(const BlobStore& store, Digest expected, std::optional<std::uint64_t> size);
    Digest expected_;
    std::optional<std::uint64_t> size_;
    util::TempFile tmp_;
    util::Sha256 hash_;
    std::uint64_t written_ = 0;
  };

  Writer begin(const Digest& expected, std::optional<std::uint64_t> size = std::nullopt) const;
  util::Path put(const Digest& expected, std::string_view data, std::string_view what);
  // Copies a local file in, verifying it (a hardlink would let later edits of the source
  // change the cache, so the bytes are copied).
  util::Path put_file(const Digest& expected, const util::Path& source, std::string_view what);

  // A store of the diffID (uncompressed digest) once verified for a compressed blob, so it
  // is computed once per blob, not once per use.
  std::optional<Digest> verified_diff_id(const Digest& blob) const;
  void record_diff_id(const Digest& blob, const Digest& diff_id) const;

 private:
  util::Path root_;
};

}  // namespace pok8s::oci
