// GRUB's environment block (grubenv): the 1024-byte file GRUB's load_env and save_env read and
// write, where an installed system keeps its boot assessment (pok8s_entry, pok8s_tries, …).
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::node {

// The size of every block grub-editenv creates and the only one pok8s reads or writes.
inline constexpr std::size_t kGrubEnvSize = 1024;
inline constexpr std::string_view kGrubEnvHeader = "# GRUB Environment Block\n";

// The variables of a block, in file order. Comment lines ("# WARNING: …" that grub-editenv
// writes) are not kept: GRUB ignores them.
struct GrubEnv {
  std::vector<std::pair<std::string, std::string>> vars;

  // The value GRUB's load_env ends up with: the last one when a name appears twice.
  std::optional<std::string> get(std::string_view name) const;
  // Replaces the value where the name first appears (dropping later duplicates), else appends.
  void set(std::string_view name, std::string_view value);
  // Removes every variable called `name`.
  void erase(std::string_view name);

  bool operator==(const GrubEnv&) const = default;
};

// Parses a block read from `where` (named in errors). The file is untrusted: throws
// Error(kFormat) naming `where` and the line for a size other than kGrubEnvSize, a missing
// header, a NUL byte, a line without '=', an empty name, a value without its newline, and
// padding with a byte other than '#'.
GrubEnv parse_grubenv(std::string_view bytes, std::string_view where);

// The block GRUB reads: header, "name=value" lines with '\' and newline escaped by a '\',
// '#' padding to exactly kGrubEnvSize bytes. Throws Error(kInvalidInput) for a name that is
// empty, starts with '#' or holds '=', a newline or a NUL, a value with a NUL, or variables
// that do not fit.
std::string render_grubenv(const GrubEnv& env);

// Reads and parses `file`; nullopt when it does not exist.
std::optional<GrubEnv> read_grubenv(const util::Path& file);

// Applies `change` to the block in `file` and writes the result over the file's first
// kGrubEnvSize bytes, then fsyncs. The file keeps its inode and its blocks: GRUB's save_env
// writes into the blocks it finds, so the file must never be replaced by a rename. Writes
// nothing when the block does not change.
void update_grubenv_in_place(const util::Path& file, const std::function<void(GrubEnv&)>& change);

// Creates (or replaces) `file` with the rendered block, through a temporary and a rename.
void write_new_grubenv(const util::Path& file, const GrubEnv& env);

}  // namespace pok8s::node
