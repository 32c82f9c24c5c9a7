// Reading a squashfs image back through `unsquashfs -pf` (its pseudo file: every entry with
// type, exact mtime, mode, owner and device numbers, hardlinks named by their first path).
#include "unit/image/squashfs_check.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <sstream>

namespace pok8s::test {

Shell sh(const std::string& cmd) {
  Shell r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 65536> buf{};
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  return r;
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

namespace {

std::string describe(char type, const rootfs::TarEntry& m, const std::string& extra) {
  std::string d = fmt::format("{} {} {:o} {} {}", type, m.mtime_sec, m.mode & 07777, m.uid, m.gid);
  return extra.empty() ? d : d + " " + extra;
}

}  // namespace

TreeView view_of_image(const std::filesystem::path& image) {
  TreeView v;
  // The pseudo file's data section (after the first "#" line) is not needed.
  Shell r = sh("unsquashfs -q -n -pf /dev/stdout " + quote(image.string()) +
               " 2>/dev/null | sed -n '/^#/q;p'");
  if (r.status != 0) {
    v.entries["<unsquashfs failed>"] = r.out;
    return v;
  }
  std::map<std::string, std::string> hardlinks;  // path -> path of the inode's first name
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string path, type;
    fields >> path >> type;
    if (path == "/") path.clear();
    if (type == "L") {
      std::string target;
      fields >> target;
      hardlinks[path] = target;
      continue;
    }
    std::string mtime, mode, uid, gid;
    fields >> mtime >> mode >> uid >> gid;
    std::string d = fmt::format("{} {} {} {} {}", type, mtime, mode, uid, gid);
    std::string extra;
    if (type == "R") {
      fields >> extra;  // the size; the offset into the data section follows
    } else if (type == "C" || type == "B") {
      std::uint64_t major = 0, minor = 0;
      fields >> major >> minor;
      // unsquashfs 4.5 lists the 32-bit device number as (n >> 8, n & 0xff), also for
      // mksquashfs's images; decode it as the kernel does (new_decode_dev) when that shows.
      if (major > 0xfff) {
        std::uint64_t n = (major << 8) | minor;
        major = (n >> 8) & 0xfff;
        minor = (n & 0xff) | ((n >> 12) & 0xfff00);
      }
      extra = fmt::format("{} {}", major, minor);
    } else if (type == "S") {
      std::getline(fields >> std::ws, extra);
    }
    v.entries[path] = extra.empty() ? d : d + " " + extra;
  }
  std::map<std::string, std::set<std::string>> groups;
  for (const auto& [path, target] : hardlinks) {
    auto it = v.entries.find(target);
    v.entries[path] = it == v.entries.end() ? "L to a missing " + target : it->second;
    groups[target].insert(target);
    groups[target].insert(path);
  }
  for (auto& [first, paths] : groups) v.link_groups.insert(paths);
  return v;
}

TreeView view_of_tree(const rootfs::FlatTree& tree) {
  TreeView v;
  std::map<std::string, std::set<std::string>> groups;
  for (const auto& [path, e] : tree.entries()) {
    const rootfs::FlatEntry& inode =
        e.meta.type == rootfs::EntryType::kHardlink ? tree.entries().at(e.meta.link_target) : e;
    const rootfs::TarEntry& m = inode.meta;
    std::string d;
    switch (m.type) {
      case rootfs::EntryType::kFile:
        d = describe('R', m, std::to_string(m.size));
        break;
      case rootfs::EntryType::kDirectory:
        d = describe('D', m, "");
        break;
      case rootfs::EntryType::kSymlink:
        d = describe('S', m, m.link_target);
        break;
      case rootfs::EntryType::kCharDevice:
        d = describe('C', m, fmt::format("{} {}", m.dev_major, m.dev_minor));
        break;
      case rootfs::EntryType::kBlockDevice:
        d = describe('B', m, fmt::format("{} {}", m.dev_major, m.dev_minor));
        break;
      case rootfs::EntryType::kFifo:
        d = describe('I', m, "");
        break;
      case rootfs::EntryType::kHardlink:
        d = "a hardlink to a hardlink";
        break;
    }
    v.entries[path] = d;
    if (e.meta.type == rootfs::EntryType::kHardlink) {
      groups[inode.path].insert(inode.path);
      groups[inode.path].insert(path);
    }
  }
  for (auto& [primary, paths] : groups) v.link_groups.insert(paths);
  return v;
}

std::string differences(const TreeView& expected, const TreeView& actual, std::size_t max) {
  std::string out;
  std::size_t n = 0;
  auto add = [&](const std::string& s) {
    if (n++ < max) out += s + "\n";
  };
  for (const auto& [path, d] : expected.entries) {
    auto it = actual.entries.find(path);
    if (it == actual.entries.end())
      add(fmt::format("missing \"{}\" ({})", path, d));
    else if (it->second != d)
      add(fmt::format("\"{}\": expected {}, image has {}", path, d, it->second));
  }
  for (const auto& [path, d] : actual.entries)
    if (!expected.entries.contains(path)) add(fmt::format("unexpected \"{}\" ({})", path, d));
  for (const auto& g : expected.link_groups)
    if (!actual.link_groups.contains(g))
      add(fmt::format("hardlink group {{{}}} not in the image", fmt::join(g, ", ")));
  for (const auto& g : actual.link_groups)
    if (!expected.link_groups.contains(g))
      add(fmt::format("unexpected hardlink group {{{}}}", fmt::join(g, ", ")));
  if (n > max) out += fmt::format("... and {} more\n", n - max);
  return out;
}

}  // namespace pok8s::test
