// Test helpers that read a squashfs image back with the real unsquashfs and describe it the
// way a FlatTree describes itself, so the two can be compared entry by entry.
#pragma once

#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "pok8s/rootfs/flat_tree.h"

namespace pok8s::test {

struct Shell {
  int status = -1;
  std::string out;
};

// Runs a shell command, capturing stdout (stderr goes to the test log).
Shell sh(const std::string& cmd);

// Quotes `s` for the shell.
std::string quote(const std::string& s);

// Every entry as "TYPE MTIME MODE UID GID [SIZE|TARGET|MAJOR MINOR]" (unsquashfs's pseudo
// file letters: D R S C B I); a hardlink is described by the inode it names.
struct TreeView {
  std::map<std::string, std::string> entries;   // path ("" = root) -> description
  std::set<std::set<std::string>> link_groups;  // paths sharing one inode, 2 or more
};

// The image as `unsquashfs -pf` lists it.
TreeView view_of_image(const std::filesystem::path& image);
// The tree as the image should hold it.
TreeView view_of_tree(const rootfs::FlatTree& tree);

// The first differences between two views, one a line, or "" when they agree.
std::string differences(const TreeView& expected, const TreeView& actual, std::size_t max = 20);

}  // namespace pok8s::test
