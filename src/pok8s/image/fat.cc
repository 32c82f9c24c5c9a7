// FAT images through mtools (mformat, mmd, mcopy): the Debian-packaged tool that writes FAT
// into a plain file without mounting it. Reproducible because mtools takes every timestamp from
// SOURCE_DATE_EPOCH, the volume serial from -N, and everything else from the fixed geometry.
#include "pok8s/image/fat.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <set>

#include "pok8s/image/gpt.h"  // kMiB
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

namespace pok8s::image {

namespace {

// The largest image write_fat_image makes: FAT16 with 32 KiB clusters stays below 2 GiB, and an
// EFI system partition for a live ISO is a few MiB.
constexpr std::uint64_t kMaxFatImageBytes = 1ull << 30;
// FAT16 addresses at most 65524 clusters; stay clear of the FAT12/FAT16/FAT32 boundaries.
constexpr std::uint64_t kMaxClusters = 60000;
constexpr std::size_t kMaxLabelLength = 11;
// A file on FAT is at most 4 GiB - 1 (32-bit size field).
constexpr std::uint64_t kMaxFatFileBytes = 0xffffffffull;

// The components of a path inside the image; refuses anything that is not a plain name.
std::vector<std::string> split_fat_path(std::string_view path, const util::Path& out) {
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(start, end - start);
    bool bad = part.empty() || part == "." || part == ".." || part.size() > 255 ||
               part.find_first_of("\"*:<>?\\|") != std::string_view::npos ||
               std::any_of(part.begin(), part.end(),
                           [](char c) { return static_cast<unsigned char>(c) < 0x20; });
    if (bad)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to write FAT image {}: invalid path '{}'", out.string(),
                              std::string(path)));
    parts.emplace_back(part);
    start = end + 1;
  }
  return parts;
}

std::string join(const std::vector<std::string>& parts, std::size_t count) {
  std::string s;
  for (std::size_t i = 0; i < count; ++i) s += (i ? "/" : "") + parts[i];
  return s;
}

// FAT compares names without regard to case.
std::string fold_case(std::string s) {
  for (char& c : s)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return s;
}

std::uint64_t round_up(std::uint64_t n, std::uint64_t unit) {
  return (n + unit - 1) / unit * unit;
}

// The directory entries a name takes: its 8.3 entry plus VFAT long-name entries of 13
// characters each (Microsoft FAT specification, "FAT Long Directory Entries").
std::uint64_t dir_entry_bytes(const std::string& name) {
  return 32 * (1 + (name.size() + 12) / 13);
}

// What goes into the file system, checked, in a fixed order, and the space it takes.
struct FatPlan {
  std::map<std::string, const FatFile*> files;     // path -> file
  std::map<std::string, std::uint64_t> dir_bytes;  // directory -> bytes of entries
  std::uint64_t cluster = 0;                       // bytes
  std::uint64_t need = 0;                          // smallest image, whole MiB
};

FatPlan plan_fat(const std::vector<FatFile>& files, std::string_view label, std::int64_t timestamp,
                 const util::Path& out) {
  auto fail = [&](ErrorKind kind, const std::string& reason) {
    throw Error(kind, fmt::format("Failed to write FAT image {}: {}", out.string(), reason));
  };
  if (label.size() > kMaxLabelLength || !std::all_of(label.begin(), label.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
      }))
    fail(ErrorKind::kInvalidInput,
         fmt::format("invalid volume label '{}' (at most 11 of A-Z 0-9 _ -)", label));
  if (timestamp < 315532800)  // FAT dates start in 1980
    fail(ErrorKind::kInvalidInput, fmt::format("timestamp {} is before 1980", timestamp));

  // Each file and directory once, in a fixed order, so the image does not depend on the order
  // of `files`; the sizes for the estimate below.
  std::map<std::string, const FatFile*> by_path;            // path -> file
  std::map<std::string, std::uint64_t> dir_bytes{{"", 0}};  // directory -> bytes of entries
  std::set<std::string> folded;
  std::uint64_t data_bytes = 0;
  std::vector<std::pair<std::string, std::uint64_t>> sizes;
  for (const auto& f : files) {
    auto parts = split_fat_path(f.path, out);
    std::string path = join(parts, parts.size());
    if (!folded.insert(fold_case(path)).second)
      fail(ErrorKind::kInvalidInput, fmt::format("'{}' is given twice", path));
    for (std::size_t i = 1; i < parts.size(); ++i) {
      std::string dir = join(parts, i);
      if (by_path.count(dir))
        fail(ErrorKind::kInvalidInput, fmt::format("'{}' is both a file and a directory", dir));
      if (dir_bytes.emplace(dir, 64).second)  // "." and ".."
        dir_bytes[join(parts, i - 1)] += dir_entry_bytes(parts[i - 1]);
    }
    if (dir_bytes.count(path))
      fail(ErrorKind::kInvalidInput, fmt::format("'{}' is both a file and a directory", path));
    struct stat st {};
    if (::stat(f.source.c_str(), &st) != 0)
      throw_errno(fmt::format("Failed to write FAT image {}: cannot read {}", out.string(),
                              f.source.string()),
                  errno);
    if (!S_ISREG(st.st_mode))
      fail(ErrorKind::kInvalidInput, fmt::format("{} is not a regular file", f.source.string()));
    auto size = static_cast<std::uint64_t>(st.st_size);
    if (size > kMaxFatFileBytes)
      fail(ErrorKind::kInvalidInput,
           fmt::format("{} has {} bytes, more than FAT can hold in one file", f.source.string(),
                       size));
    dir_bytes[join(parts, parts.size() - 1)] += dir_entry_bytes(parts.back());
    by_path.emplace(path, &f);
    sizes.emplace_back(path, size);
    data_bytes += size;
  }
  if (data_bytes > kMaxFatImageBytes)
    fail(ErrorKind::kInvalidInput,
         fmt::format("{} bytes of files exceed the limit of {}", data_bytes, kMaxFatImageBytes));

  // Size the image: pick the smallest cluster (>= 2 KiB) that keeps the cluster count well
  // inside FAT16, count every file and directory in whole clusters, add both FATs, the fixed
  // root directory and some slack, and round up to whole MiB (64 heads x 32 sectors).
  std::uint64_t cluster = 2048;
  std::uint64_t need = 0;
  for (;;) {
    need = 0;
    for (const auto& [path, size] : sizes)
      need += round_up(std::max<std::uint64_t>(size, 1), cluster);
    for (const auto& [dir, bytes] : dir_bytes)
      if (!dir.empty()) need += round_up(bytes, cluster);
    if (need / cluster < kMaxClusters || cluster >= 32768) break;
    cluster *= 2;
  }
  std::uint64_t clusters = need / cluster + 2;
  std::uint64_t total = need + need / 16 + 2 * clusters * 2 + dir_bytes[""] + 64 * 1024;
  total = round_up(total, kMiB);
  if (dir_bytes[""] > 512 * 32)
    fail(ErrorKind::kInvalidInput, "too many entries in the root directory (512 at most)");
  return {std::move(by_path), std::move(dir_bytes), cluster, total};
}

// Formats `size` bytes at `offset` of `image` (named `out` in messages) and copies the plan's
// files in. `offset` is also the hidden sectors count of a partition.
void fill_fat(const FatPlan& plan, std::string_view label, std::int64_t timestamp,
              const util::Path& image_file, std::uint64_t offset, std::uint64_t total,
              const util::Path& out) {
  auto fail = [&](ErrorKind kind, const std::string& reason) {
    throw Error(kind, fmt::format("Failed to write FAT image {}: {}", out.string(), reason));
  };
  const auto& by_path = plan.files;
  const auto& dir_bytes = plan.dir_bytes;
  std::uint64_t cluster = plan.cluster;

  const char* path_env = std::getenv("PATH");
  std::vector<std::string> env = {
      fmt::format("PATH={}", path_env ? path_env : "/usr/bin:/bin"),
      fmt::format("SOURCE_DATE_EPOCH={}", timestamp),
      "TZ=UTC",
      "LC_ALL=C",
      "MTOOLSRC=/dev/null",  // no user configuration may change the result
      "MTOOLS_SKIP_CHECK=1",
  };
  // mtools reads "FILE@@OFFSET" as a file system starting OFFSET bytes into FILE.
  std::string image = image_file.string();
  if (offset != 0) image += fmt::format("@@{}", offset);
  auto run = [&](std::vector<std::string> args, const std::string& what) {
    util::ProcessResult r = util::run_process(args, {.env = env});
    if (r.status != 0)
      fail(ErrorKind::kIo, fmt::format("{}: {} exited with {}: {}", what, args[0], r.status,
                                       util::last_line(r.output)));
  };

  std::vector<std::string> format = {"mformat",
                                     "-i",
                                     image,
                                     "-T",
                                     std::to_string(total / 512),
                                     "-h",
                                     "64",
                                     "-s",
                                     "32",
                                     "-c",
                                     std::to_string(cluster / 512),
                                     "-H",
                                     std::to_string(offset / 512),
                                     "-N",
                                     fmt::format("{:08x}", static_cast<std::uint32_t>(timestamp))};
  if (!label.empty()) {
    format.emplace_back("-v");
    format.emplace_back(label);
  }
  format.emplace_back("::");
  run(format, "formatting");

  std::vector<std::string> mkdir = {"mmd", "-i", image};
  for (const auto& [dir, bytes] : dir_bytes)
    if (!dir.empty()) mkdir.push_back("::/" + dir);  // sorted: parents come first
  if (mkdir.size() > 3) run(mkdir, "creating directories");

  for (const auto& [path, file] : by_path)
    // An absolute source cannot be mistaken for an option.
    run({"mcopy", "-i", image, std::filesystem::absolute(file->source).string(), "::/" + path},
        "copying " + path);
}

}  // namespace

void write_fat_image(const std::vector<FatFile>& files, std::string_view label,
                     std::int64_t timestamp, const util::Path& out) {
  FatPlan plan = plan_fat(files, label, timestamp, out);
  util::TempFile tmp(out);
  if (::ftruncate(tmp.fd(), static_cast<off_t>(plan.need)) != 0)
    throw_errno("Failed to write FAT image " + out.string(), errno);
  fill_fat(plan, label, timestamp, tmp.path(), 0, plan.need, out);
  tmp.commit();
}

void write_fat_partition(const std::vector<FatFile>& files, std::string_view label,
                         std::int64_t timestamp, const util::Path& image, std::uint64_t offset,
                         std::uint64_t size) {
  util::Path where = fmt::format("{} (partition {} at {})", image.string(), label, offset);
  FatPlan plan = plan_fat(files, label, timestamp, where);
  if (offset % 512 != 0 || size % kMiB != 0)
    throw Error(
        ErrorKind::kInvalidInput,
        fmt::format("Failed to write FAT image {}: the partition is not aligned", where.string()));
  if (plan.need > size)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to write FAT image {}: the files need {} MiB, the partition "
                            "has {} MiB",
                            where.string(), plan.need / kMiB, size / kMiB));
  // Clusters large enough to stay inside FAT16 over the whole partition.
  while (size / plan.cluster >= kMaxClusters && plan.cluster < 32768) plan.cluster *= 2;
  if (size / plan.cluster >= kMaxClusters)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to write FAT image {}: {} MiB is more than FAT16 holds",
                            where.string(), size / kMiB));
  fill_fat(plan, label, timestamp, image, offset, size, where);
}

}  // namespace pok8s::image
