// GRUB environment blocks, written by hand after the format GRUB's manual describes ("The GRUB
// environment block") and what grub-core/lib/envblk.c accepts: GRUB ships no library for it,
// and the agent must stay a small static binary.
#include "pok8s/node/grubenv.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>

#include "pok8s/util/error.h"

namespace pok8s::node {
namespace {

// The physical line (1-based) that `pos` is on, as an editor would show it.
std::size_t line_of(std::string_view bytes, std::size_t pos) {
  return 1 + static_cast<std::size_t>(std::count(bytes.begin(), bytes.begin() + pos, '\n'));
}

[[noreturn]] void refuse(std::string_view where, std::size_t line, std::string_view what) {
  throw Error(
      ErrorKind::kFormat,
      fmt::format("Failed to read the GRUB environment block {}: line {}: {}", where, line, what));
}

// Where the line starting at `pos` ends: the first newline not escaped by a backslash, as
// envblk.c's find_next_line scans; npos when the block ends first.
std::size_t end_of_line(std::string_view bytes, std::size_t pos) {
  for (; pos < bytes.size(); ++pos) {
    if (bytes[pos] == '\\')
      ++pos;
    else if (bytes[pos] == '\n')
      return pos;
  }
  return std::string_view::npos;
}

std::string unescape(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (value[i] == '\\' && i + 1 < value.size()) ++i;
    out += value[i];
  }
  return out;
}

// Reads the whole block from `fd`, at most one byte more than a block so a larger file is
// recognised as one.
std::string read_block(int fd, const util::Path& file) {
  std::string bytes(kGrubEnvSize + 1, '\0');
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::pread(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("Failed to read " + file.string(), errno);
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  bytes.resize(done);
  return bytes;
}

}  // namespace

std::optional<std::string> GrubEnv::get(std::string_view name) const {
  for (auto it = vars.rbegin(); it != vars.rend(); ++it)
    if (it->first == name) return it->second;
  return std::nullopt;
}

void GrubEnv::set(std::string_view name, std::string_view value) {
  auto first =
      std::find_if(vars.begin(), vars.end(), [&](const auto& v) { return v.first == name; });
  if (first == vars.end()) {
    vars.emplace_back(name, value);
    return;
  }
  first->second = value;
  vars.erase(std::remove_if(first + 1, vars.end(), [&](const auto& v) { return v.first == name; }),
             vars.end());
}

void GrubEnv::erase(std::string_view name) {
  std::erase_if(vars, [&](const auto& v) { return v.first == name; });
}

GrubEnv parse_grubenv(std::string_view bytes, std::string_view where) {
  if (bytes.size() != kGrubEnvSize)
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read the GRUB environment block {}: it has {} bytes, "
                            "not {}",
                            where, bytes.size(), kGrubEnvSize));
  if (auto nul = bytes.find('\0'); nul != std::string_view::npos)
    refuse(where, line_of(bytes, nul), "a NUL byte");
  if (!bytes.starts_with(kGrubEnvHeader))
    refuse(where, 1, "it does not start with \"# GRUB Environment Block\"");

  GrubEnv env;
  std::size_t pos = kGrubEnvHeader.size();
  std::size_t line = 2;
  while (pos < bytes.size()) {
    std::size_t eol = end_of_line(bytes, pos);
    if (bytes[pos] == '#') {
      // A comment line, or, when no newline follows, the padding up to the end.
      if (eol == std::string_view::npos) {
        auto stray = bytes.find_first_not_of('#', pos);
        if (stray != std::string_view::npos)
          refuse(where, line_of(bytes, stray),
                 fmt::format("byte 0x{:02x} in the '#' padding",
                             static_cast<unsigned char>(bytes[stray])));
        break;
      }
    } else {
      std::string_view rest = bytes.substr(pos);
      std::size_t eq = rest.find_first_of("=\n");
      if (eq == std::string_view::npos || rest[eq] != '=')
        refuse(where, line, "no '=' in the line");
      if (eq == 0) refuse(where, line, "a variable without a name");
      if (eol == std::string_view::npos)
        refuse(where, line, "the value runs to the end of the block without a newline");
      env.vars.emplace_back(std::string(rest.substr(0, eq)),
                            unescape(bytes.substr(pos + eq + 1, eol - pos - eq - 1)));
    }
    // Escaped newlines in a value are lines too.
    line +=
        static_cast<std::size_t>(std::count(bytes.begin() + pos, bytes.begin() + eol + 1, '\n'));
    pos = eol + 1;
  }
  return env;
}

std::string render_grubenv(const GrubEnv& env) {
  std::string out(kGrubEnvHeader);
  for (const auto& [name, value] : env.vars) {
    if (name.empty() || name.front() == '#' ||
        name.find_first_of(std::string_view("=\n\0", 3)) != std::string::npos)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to write the GRUB environment block: \"{}\" is not a "
                              "variable name (empty, starts with '#', or has '=', a newline "
                              "or a NUL)",
                              name));
    if (value.find('\0') != std::string::npos)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to write the GRUB environment block: the value of {} "
                              "has a NUL byte",
                              name));
    out += name;
    out += '=';
    for (char c : value) {
      // What grub_envblk_set escapes; GRUB's reader takes any escaped byte as itself.
      if (c == '\\' || c == '\n') out += '\\';
      out += c;
    }
    out += '\n';
  }
  if (out.size() > kGrubEnvSize)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to write the GRUB environment block: its variables take {} "
                            "bytes, more than the {} of a block",
                            out.size(), kGrubEnvSize));
  out.resize(kGrubEnvSize, '#');
  return out;
}

std::optional<GrubEnv> read_grubenv(const util::Path& file) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) return std::nullopt;
  if (fd < 0) throw_errno("Failed to open " + file.string(), errno);
  util::UniqueFd owned(fd);
  return parse_grubenv(read_block(owned.get(), file), file.string());
}

void update_grubenv_in_place(const util::Path& file, const std::function<void(GrubEnv&)>& change) {
  // One descriptor for reading and writing, so the block written is the one read. No O_TRUNC:
  // the file keeps the blocks GRUB found at install time.
  util::UniqueFd fd = util::open_file(file, O_RDWR);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw_errno("Failed to stat " + file.string(), errno);
  if (!S_ISREG(st.st_mode))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to update {}: not a regular file", file.string()));
  std::string old_bytes = read_block(fd.get(), file);
  GrubEnv env = parse_grubenv(old_bytes, file.string());
  change(env);
  std::string bytes = render_grubenv(env);
  if (bytes == old_bytes) return;
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n =
        ::pwrite(fd.get(), bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("Failed to write " + file.string(), errno);
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) throw_errno("Failed to flush " + file.string(), errno);
}

void write_new_grubenv(const util::Path& file, const GrubEnv& env) {
  util::write_file_atomic(file, render_grubenv(env));
}

}  // namespace pok8s::node
