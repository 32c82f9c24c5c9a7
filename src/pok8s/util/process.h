// Running a host tool (mtools, grub-mkimage) and capturing what it prints: the one place pok8s
// spawns programs outside a sandbox.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pok8s::util {

struct ProcessResult {
  int status = 0;      // exit code, or 128 + signal
  std::string output;  // stdout and stderr interleaved, the first `output_limit` bytes
};

struct ProcessOptions {
  // The whole environment of the tool; the caller's when empty.
  std::optional<std::vector<std::string>> env;
  std::size_t output_limit = 64u << 10;
  // The file the tool reads as stdin (sfdisk takes its script there); /dev/null when empty.
  std::string stdin_file{};
};

// Runs `args` (args[0] looked up on PATH) with stdin from `stdin_file` or /dev/null. Throws kIo
// only when the tool cannot be started; its exit status is the caller's to judge.
ProcessResult run_process(const std::vector<std::string>& args, const ProcessOptions& options = {});

// `s` in single quotes for a POSIX shell or a parser with the same rule (GRUB's): nothing inside
// is expanded; a quote ends the quoting, is escaped, and the quoting starts again.
std::string single_quote(std::string_view s);

// The last non-empty line of a tool's output: where tools say what went wrong.
std::string last_line(std::string_view text);

}  // namespace pok8s::util
