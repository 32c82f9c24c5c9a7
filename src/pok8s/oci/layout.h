// Internals shared by the file transports (oci:, oci-archive:, docker-archive:): reading tar
// archives as untrusted input and writing them deterministically, both through libarchive.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/oci/blob_store.h"
#include "pok8s/oci/digest.h"
#include "pok8s/util/file.h"

struct archive;
struct archive_entry;

namespace pok8s::oci::layout {

// Limits on archives read from untrusted sources.
inline constexpr std::size_t kMaxArchiveEntries = 100'000;
inline constexpr std::uint64_t kMaxArchiveBytes = 256ull << 30;

// Reads a tar file (any compression libarchive detects) entry by entry.
class TarReader {
 public:
  // `what` names the archive in errors ("oci-archive:/tmp/x.tar").
  TarReader(const util::Path& path, std::string what);
  ~TarReader();
  TarReader(const TarReader&) = delete;
  TarReader& operator=(const TarReader&) = delete;

  // The next entry or nullptr at the end; refuses more than kMaxArchiveEntries.
  archive_entry* next();
  // Reads the current entry's data; 0 at its end.
  std::size_t read(std::span<std::byte> buffer);
  // Reads the whole current entry, refusing more than `limit` bytes.
  std::string read_all(std::uint64_t limit, std::string_view entry);

  const std::string& what() const { return what_; }

 private:
  util::UniqueFd fd_;
  archive* archive_ = nullptr;
  std::string what_;
  std::size_t entries_ = 0;
};

// A member name made canonical: no leading "/" or "./", no trailing "/", no "." components.
// nullopt for a name with a ".." component or an empty one (the archive root).
std::optional<std::string> normalize_member_name(std::string_view name);

// A member of a tar that pok8s writes.
struct TarMember {
  std::string name;  // "blobs/sha256/<hex>"; directories end without "/"
  bool directory = false;
  std::string bytes;             // the data, unless `file` is set
  util::Path file;               // the data comes from this file
  std::optional<Digest> verify;  // hash `file` while copying and refuse a mismatch
};

// Writes `members` sorted by name as a pax tar to `fd`: uid/gid 0, modes 0644/0755, mtime
// $SOURCE_DATE_EPOCH or 0, so the same image always gives the same bytes.
void write_tar(int fd, std::vector<TarMember> members, std::string_view what);

// Copies a blob from `store` to `fd`, re-verifying its digest: a cache corrupted on disk must
// not be published. Returns the bytes copied.
std::uint64_t copy_blob(const BlobStore& store, const Digest& digest, int fd,
                        std::string_view what);

// Copies an open file into a BlobStore writer (the writer verifies size and digest).
void copy_fd_to_store(int fd, BlobStore::Writer& writer, std::string_view what);

}  // namespace pok8s::oci::layout
