// The content-addressed blob cache.
#include "pok8s/oci/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "pok8s/util/error.h"

namespace pok8s::oci {

BlobStore::BlobStore(util::Path root) : root_(std::move(root)) {
  util::make_dirs(root_ / "blobs" / "sha256");
  util::make_dirs(root_ / "blobs" / "sha512");
  util::make_dirs(root_ / "diffids" / "sha256");
}

util::Path BlobStore::path_for(const Digest& digest) const {
  // Digest's grammar admits only [a-z0-9] here, so this cannot leave the store.
  return root_ / "blobs" / digest.algorithm() / digest.hex();
}

bool BlobStore::has(const Digest& digest) const {
  struct stat st {};
  return ::stat(path_for(digest).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string BlobStore::read(const Digest& digest, std::uint64_t limit) const {
  std::string data = util::read_file(path_for(digest), limit);
  // Re-verify: the cache is ours, but the disk under it may not be.
  if (Digest::sha256_of(data) != digest && digest.algorithm() == "sha256")
    throw Error(ErrorKind::kSignature, fmt::format("Cached blob {} is corrupt; remove {} and retry",
                                                   digest.str(), path_for(digest).string()));
  return data;
}

BlobStore::Writer::Writer(const BlobStore& store, Digest expected,
                          std::optional<std::uint64_t> size)
    : expected_(std::move(expected)), size_(size), tmp_(store.path_for(expected_)) {}

void BlobStore::Writer::write(std::span<const std::byte> data) {
  written_ += data.size();
  if (size_ && written_ > *size_)
    throw Error(
        ErrorKind::kSignature,
        fmt::format("Failed to fetch blob {}: more than the {} bytes its descriptor declares",
                    expected_.short_str(), *size_));
  hash_.update(data);
  util::write_all(tmp_.fd(), data, tmp_.path().string());
}

util::Path BlobStore::Writer::commit(std::string_view what) {
  if (size_ && written_ != *size_)
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to verify {}: {} bytes received, its descriptor declares {}",
                            what, written_, *size_));
  if (expected_.algorithm() != "sha256")
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to verify {}: {} digests are not supported", what,
                            expected_.algorithm()));
  std::string actual = hash_.hex_digest();
  if (actual != expected_.hex())
    throw Error(ErrorKind::kSignature,
                fmt::format("Failed to verify {}: content hashes to sha256:{}, expected {}", what,
                            actual, expected_.str()));
  ::fchmod(tmp_.fd(), 0644);
  return tmp_.commit();
}

BlobStore::Writer BlobStore::begin(const Digest& expected,
                                   std::optional<std::uint64_t> size) const {
  return Writer(*this, expected, size);
}

util::Path BlobStore::put(const Digest& expected, std::string_view data, std::string_view what) {
  Writer w = begin(expected, data.size());
  w.write(data);
  return w.commit(what);
}

util::Path BlobStore::put_file(const Digest& expected, const util::Path& source,
                               std::string_view what) {
  if (has(expected)) return path_for(expected);
  util::UniqueFd in = util::open_file(source, O_RDONLY);
  Writer w = begin(expected);
  std::string buf(1 << 20, '\0');
  while (true) {
    ssize_t n = ::read(in.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("Failed to read " + source.string(), errno);
    if (n == 0) break;
    w.write(std::string_view(buf.data(), static_cast<std::size_t>(n)));
  }
  return w.commit(what);
}

std::optional<Digest> BlobStore::verified_diff_id(const Digest& blob) const {
  util::Path p = root_ / "diffids" / blob.algorithm() / blob.hex();
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return std::nullopt;
  try {
    return Digest::try_parse(util::read_file(p, 256));
  } catch (const Error&) {
    return std::nullopt;
  }
}

void BlobStore::record_diff_id(const Digest& blob, const Digest& diff_id) const {
  util::make_dirs(root_ / "diffids" / blob.algorithm());
  util::write_file_atomic(root_ / "diffids" / blob.algorithm() / blob.hex(), diff_id.str());
}

}  // namespace pok8s::oci
