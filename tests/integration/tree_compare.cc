// Tree comparison for interoperability tests.
#include "tree_compare.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <map>

#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

namespace pok8s::test {

namespace {

struct Node {
  mode_t mode = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string content;  // sha256 of a file, target of a symlink, rdev of a device
};

std::map<std::string, Node> walk(const std::filesystem::path& root) {
  std::map<std::string, Node> out;
  for (auto it = std::filesystem::recursive_directory_iterator(
           root, std::filesystem::directory_options::none);
       it != std::filesystem::recursive_directory_iterator(); ++it) {
    const auto& p = it->path();
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) continue;
    Node n{st.st_mode, st.st_uid, st.st_gid, {}};
    if (S_ISREG(st.st_mode)) {
      util::Sha256 h;
      util::UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
      char buf[1 << 16];
      ssize_t r;
      while (fd.valid() && (r = ::read(fd.get(), buf, sizeof buf)) > 0)
        h.update(std::string_view(buf, static_cast<std::size_t>(r)));
      n.content = h.hex_digest();
    } else if (S_ISLNK(st.st_mode)) {
      n.content = std::filesystem::read_symlink(p).string();
    } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      n.content = std::to_string(st.st_rdev);
    }
    out[p.lexically_relative(root).string()] = n;
  }
  return out;
}

}  // namespace

std::string compare_trees(const std::filesystem::path& expected,
                          const std::filesystem::path& actual) {
  auto a = walk(expected), b = walk(actual);
  std::string diff;
  int shown = 0;
  auto note = [&](const std::string& s) {
    if (shown++ < 20) diff += s + "\n";
  };
  for (const auto& [path, n] : a) {
    auto it = b.find(path);
    if (it == b.end()) {
      note("missing: " + path);
      continue;
    }
    const Node& m = it->second;
    if (n.mode != m.mode) note(fmt::format("mode of {}: {:o} vs {:o}", path, n.mode, m.mode));
    if (n.uid != m.uid || n.gid != m.gid)
      note(fmt::format("owner of {}: {}:{} vs {}:{}", path, n.uid, n.gid, m.uid, m.gid));
    if (n.content != m.content) note(fmt::format("content of {} differs", path));
  }
  for (const auto& [path, n] : b)
    if (!a.count(path)) note("unexpected: " + path);
  if (shown > 20) diff += fmt::format("… and {} more\n", shown - 20);
  return diff;
}

}  // namespace pok8s::test
