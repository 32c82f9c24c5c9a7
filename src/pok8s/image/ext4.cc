// mke2fs does the writing; we pin everything it would otherwise take from the clock or the
// random pool (UUID, hash seed, times), so that disk images are reproducible.
#include "pok8s/image/ext4.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "pok8s/image/gpt.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

extern char** environ;

namespace pok8s::image {
namespace {

constexpr std::uint64_t kBlock = 4096;
constexpr std::uint64_t kMinSize = 8u << 20;
constexpr std::size_t kMaxLabel = 16;

[[noreturn]] void refuse(const Ext4Options& o, const std::string& why) {
  throw Error(ErrorKind::kInvalidInput, fmt::format("Failed to make ext4 {}: {}", o.label, why));
}

// mke2fs -d copies each inode's times from the tree, and the tree's change times (and access
// times, which reading it for the copy moves) are the clock's, not ours: debugfs sets both to
// the timestamp, in the file system inside the image ("FILE?offset=N", e2fsprogs' own syntax).
void pin_inode_times(const util::Path& image, const util::Path& root, const Ext4Options& o,
                     const std::vector<std::string>& env) {
  std::vector<std::string> paths = {"/"};
  for (const auto& e : std::filesystem::recursive_directory_iterator(root))
    paths.push_back("/" + std::filesystem::relative(e.path(), root).string());
  std::sort(paths.begin(), paths.end());
  std::string commands;
  for (const auto& p : paths) {
    if (p.find_first_of("\"\n\\") != std::string::npos)
      refuse(o, fmt::format("cannot pin the times of {:?}: its name has a quote, backslash or "
                            "line break",
                            p));
    for (const char* field : {"ctime", "atime"})
      commands += fmt::format("set_inode_field \"{}\" {} @{}\n", p, field, *o.timestamp);
  }
  util::TempFile script(image.parent_path() / (image.filename().string() + ".debugfs"));
  util::write_all(script.fd(), commands, script.path().string());
  auto r = util::run_process({"debugfs", "-w", "-f", script.path().string(),
                              fmt::format("{}?offset={}", image.string(), o.offset)},
                             {.env = env});
  // debugfs reports a failed command on its output but still exits 0.
  if (r.status != 0 || r.output.find("set_inode_field:") != std::string::npos)
    throw Error(ErrorKind::kIo, fmt::format("Failed to make ext4 {} in {}: debugfs: {}", o.label,
                                            image.string(), util::last_line(r.output)));
}

}  // namespace

void write_ext4(const util::Path& image, const util::Path& root, const Ext4Options& o) {
  if (o.label.empty() || o.label.size() > kMaxLabel)
    refuse(o, fmt::format("the label must be 1-{} characters", kMaxLabel));
  for (char c : o.label)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-')
      refuse(o, "the label may only hold letters, digits, '_' and '-'");
  if (!is_guid(o.uuid)) refuse(o, fmt::format("{:?} is not a UUID", o.uuid));
  if (o.offset % kBlock != 0 || o.size % kBlock != 0 || o.size < kMinSize)
    refuse(o, fmt::format("the extent at {} of {} bytes is not 4 KiB aligned or under 8 MiB",
                          o.offset, o.size));
  struct stat st {};
  if (::stat(image.c_str(), &st) != 0)
    throw_errno("Failed to make ext4 " + o.label + ": " + image.string(), errno);
  if (static_cast<std::uint64_t>(st.st_size) < o.offset + o.size)
    refuse(o, fmt::format("{} is {} bytes, the file system would end at {}", image.string(),
                          st.st_size, o.offset + o.size));

  std::vector<std::string> args = {
      "mke2fs", "-q", "-F", "-t", "ext4", "-b", std::to_string(kBlock), "-L", o.label, "-U", o.uuid,
      // GRUB 2.06 cannot read file systems with this feature, which newer mke2fs turn on.
      "-O", "^metadata_csum_seed",
      // The hash seed defaults to random; the root is owned by root whoever runs us; inode
      // tables and the journal are written now, not lazily by the kernel at first mount.
      "-E",
      fmt::format("offset={},hash_seed={},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
                  o.offset, o.uuid)};
  if (!root.empty()) args.insert(args.end(), {"-d", root.string()});
  args.insert(args.end(), {image.string(), std::to_string(o.size / 1024) + "k"});

  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string_view v(*e);
    if (!v.starts_with("E2FSPROGS_FAKE_TIME=")) env.emplace_back(v);
  }
  if (o.timestamp) env.push_back(fmt::format("E2FSPROGS_FAKE_TIME={}", *o.timestamp));
  auto r = util::run_process(args, {.env = env});
  if (r.status != 0)
    throw Error(ErrorKind::kIo, fmt::format("Failed to make ext4 {} in {}: mke2fs: {}", o.label,
                                            image.string(), util::last_line(r.output)));
  if (o.timestamp && !root.empty()) pin_inode_times(image, root, o, env);
}

}  // namespace pok8s::image
