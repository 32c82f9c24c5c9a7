// Boot status and marking a boot good: the boot state pok8s-init wrote, the boot assessment
// variables grub.cfg keeps in the GRUB environment block, and the release file.
#include "pok8s/node/boot_status.h"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>

#include "pok8s/image/disk_layout.h"
#include "pok8s/node/grubenv.h"
#include "pok8s/node/mounts.h"
#include "pok8s/util/error.h"

namespace pok8s::node {
namespace {

constexpr std::uint64_t kMaxBootStateBytes = 64 << 10;
constexpr std::uint64_t kMaxReleaseBytes = 64 << 10;

// The variables grub.cfg reads and writes.
constexpr std::string_view kEntryVar = "pok8s_entry";
constexpr std::string_view kTriesVar = "pok8s_tries";
constexpr std::string_view kMaxTriesVar = "pok8s_max_tries";
constexpr std::string_view kFallbackVar = "pok8s_fallback";

constexpr std::array kModes = {BootMode::kLive, BootMode::kActive, BootMode::kPassive,
                               BootMode::kRecovery};

// Calls `line_fn(number, line)` for each line of `text`, without its newline.
template <typename LineFn>
void for_each_line(std::string_view text, LineFn line_fn) {
  std::size_t number = 0;
  while (!text.empty()) {
    auto nl = text.find('\n');
    line_fn(++number, text.substr(0, nl));
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
  }
}

// The file's text, or nullopt when it does not exist.
std::optional<std::string> read_if_exists(const util::Path& file, std::uint64_t limit) {
  if (::access(file.c_str(), F_OK) != 0 && errno == ENOENT) return std::nullopt;
  return util::read_file(file, limit);
}

// A digit within [low, 9]: what grub.cfg can compare and decrement.
std::optional<int> digit(const std::optional<std::string>& value, int low) {
  if (!value || value->size() != 1) return std::nullopt;
  int d = (*value)[0] - '0';
  if (d < low || d > 9) return std::nullopt;
  return d;
}

std::optional<std::string> non_empty(std::optional<std::string> value) {
  if (value && value->empty()) return std::nullopt;
  return value;
}

// VERSION from a release file in os-release syntax: KEY=value, the value bare, in double
// quotes (with '\' escapes) or in single quotes; comments and other keys ignored.
std::string release_version(std::string_view text, std::string_view where) {
  std::string version;
  for_each_line(text, [&](std::size_t number, std::string_view line) {
    if (!line.starts_with("VERSION=")) return;
    std::string_view value = line.substr(8);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t' || value.back() == '\r'))
      value.remove_suffix(1);
    if (value.empty() || (value.front() != '"' && value.front() != '\'')) {
      version = value;
      return;
    }
    char quote = value.front();
    if (value.size() < 2 || value.back() != quote)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read {}: line {}: VERSION has no closing {}", where,
                              number, quote));
    value = value.substr(1, value.size() - 2);
    version.clear();
    for (std::size_t i = 0; i < value.size(); ++i) {
      if (quote == '"' && value[i] == '\\' && i + 1 < value.size()) ++i;
      version += value[i];
    }
  });
  return version;
}

std::string reason_for(const BootStatus& s, bool has_grubenv) {
  if (s.mode == "live") return "booted the live medium";
  if (s.mode == "active") return "booted the active image";
  // Without the block there is no telling whether GRUB fell back or someone chose.
  if (s.mode == "passive") {
    if (!has_grubenv) return "booted the passive image";
    if (s.fallback == "active") {
      int n = s.max_tries.value_or(kDefaultMaxTries);
      return fmt::format(
          "the active image did not finish booting after {} {}; booted the passive image", n,
          n == 1 ? "try" : "tries");
    }
    return "booted the passive image (chosen in the boot menu)";
  }
  if (!has_grubenv) return "booted recovery";
  if (s.fallback == "passive") return "active and passive did not finish booting; booted recovery";
  return "booted recovery (chosen in the boot menu)";
}

}  // namespace

BootState parse_boot_state(std::string_view text, std::string_view where) {
  BootState state;
  bool has_mode = false;
  for_each_line(text, [&](std::size_t number, std::string_view line) {
    if (line.empty()) return;
    auto eq = line.find('=');
    if (eq == std::string_view::npos || eq == 0)
      throw Error(
          ErrorKind::kFormat,
          fmt::format("Failed to read {}: line {}: \"{}\" is not key=value", where, number, line));
    std::string_view key = line.substr(0, eq), value = line.substr(eq + 1);
    if (key == "mode") {
      auto it = std::find_if(kModes.begin(), kModes.end(),
                             [&](BootMode m) { return boot_mode_name(m) == value; });
      if (it == kModes.end())
        throw Error(
            ErrorKind::kFormat,
            fmt::format("Failed to read {}: line {}: unknown mode \"{}\"", where, number, value));
      state.mode = *it;
      has_mode = true;
    } else if (key == "media_label") {
      state.media_label = value;
    } else if (key == "media_device") {
      state.media_device = value;
    } else if (key == "image") {
      state.image = value;
    } else if (key == "oem_device") {
      state.oem_device = value;
    } else if (key == "persistent_device") {
      state.persistent_device = value;
    }
  });
  if (!has_mode)
    throw Error(ErrorKind::kFormat, fmt::format("Failed to read {}: no mode line", where));
  return state;
}

BootStatus read_boot_status(const util::Path& boot_state_file, const util::Path& grubenv,
                            const util::Path& release_file) {
  BootState state = parse_boot_state(util::read_file(boot_state_file, kMaxBootStateBytes),
                                     boot_state_file.string());
  BootStatus status;
  status.mode = boot_mode_name(state.mode);
  status.media_device = state.media_device;
  status.image = state.image;

  // A live boot did not come through the installed GRUB: its block says nothing about it.
  std::optional<GrubEnv> env;
  if (state.mode != BootMode::kLive) env = read_grubenv(grubenv);
  if (env) {
    status.entry = non_empty(env->get(kEntryVar));
    status.fallback = non_empty(env->get(kFallbackVar));
    status.tries = digit(env->get(kTriesVar), 0);
    status.max_tries = digit(env->get(kMaxTriesVar), 1);
  }
  status.reason = reason_for(status, env.has_value());
  if (auto text = read_if_exists(release_file, kMaxReleaseBytes))
    status.version = release_version(*text, release_file.string());
  return status;
}

std::optional<std::string> next_boot_entry(const BootStatus& status) {
  if (!status.entry) return std::nullopt;
  // grub.cfg moves on from an entry whose tries are used up: active → passive → recovery.
  if (status.tries == 0) {
    if (status.entry == "active") return "passive";
    if (status.entry == "passive") return "recovery";
  }
  return status.entry;
}

nlohmann::json boot_status_json(const BootStatus& status) {
  auto or_null = [](const auto& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
  return {{"mode", status.mode},
          {"media_device", status.media_device},
          {"image", status.image},
          {"entry", or_null(status.entry)},
          {"fallback", or_null(status.fallback)},
          {"tries", or_null(status.tries)},
          {"max_tries", or_null(status.max_tries)},
          {"next_entry", or_null(next_boot_entry(status))},
          {"reason", status.reason},
          {"version", status.version}};
}

bool mark_booted(const util::Path& boot_state_file, const util::Path& grubenv) {
  BootState state = parse_boot_state(util::read_file(boot_state_file, kMaxBootStateBytes),
                                     boot_state_file.string());
  if (state.mode == BootMode::kLive) return false;
  if (::access(grubenv.c_str(), F_OK) != 0 && errno == ENOENT) return false;
  update_grubenv_in_place(grubenv, [](GrubEnv& env) {
    int max_tries = digit(env.get(kMaxTriesVar), 1).value_or(kDefaultMaxTries);
    env.set(kTriesVar, std::to_string(max_tries));
  });
  return true;
}

bool arm_new_active(const util::Path& grubenv) {
  if (::access(grubenv.c_str(), F_OK) != 0 && errno == ENOENT) return false;
  update_grubenv_in_place(grubenv, [](GrubEnv& env) {
    int max_tries = digit(env.get(kMaxTriesVar), 1).value_or(kDefaultMaxTries);
    env.set(kEntryVar, "active");
    env.set(kTriesVar, std::to_string(max_tries));
    env.set(kFallbackVar, "");
  });
  return true;
}

std::optional<std::string> without_boot_counter(std::string_view file_name) {
  auto dot = file_name.rfind('.');
  std::string_view stem = file_name.substr(0, dot);
  auto plus = stem.rfind('+');
  if (plus == std::string_view::npos || plus == 0) return std::nullopt;
  // +LEFT or +LEFT-DONE, decimal digits each.
  std::string_view counter = stem.substr(plus + 1);
  auto dash = counter.find('-');
  auto digits = [](std::string_view d) {
    return !d.empty() &&
           std::all_of(d.begin(), d.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (!digits(counter.substr(0, dash))) return std::nullopt;
  if (dash != std::string_view::npos && !digits(counter.substr(dash + 1))) return std::nullopt;
  std::string out(stem.substr(0, plus));
  if (dot != std::string_view::npos) out += file_name.substr(dot);
  if (out == "." || out == "..") return std::nullopt;  // ".+1." is no entry
  return out;
}

std::string parse_boot_count_path(std::string_view raw, std::string_view where) {
  auto bad = [&](std::string_view why) {
    return Error(ErrorKind::kFormat, fmt::format("Failed to read {}: {}", where, why));
  };
  if (raw.size() < 4 || raw.size() % 2 != 0) throw bad("not an EFI variable holding UTF-16 text");
  std::string path;
  for (std::size_t i = 4; i + 1 < raw.size(); i += 2) {
    unsigned c = static_cast<unsigned char>(raw[i]) | static_cast<unsigned char>(raw[i + 1]) << 8;
    if (c == 0) break;
    // Entry file names are ASCII; anything else, or a way out of the ESP, is refused.
    if (c < 0x20 || c > 0x7e || c == '/') throw bad("a character that is not in a file path");
    path += c == '\\' ? '/' : static_cast<char>(c);
  }
  while (path.starts_with('/')) path.erase(0, 1);
  if (path.empty() || path.find("..") != std::string::npos ||
      !without_boot_counter(util::Path(path).filename().string()))
    throw bad(fmt::format("\"{}\" is not the path of a boot-counted entry", path));
  return path;
}

std::optional<std::string> loader_boot_count_path(const util::Path& efivars) {
  util::Path var = efivars / fmt::format("LoaderBootCountPath-{}", kLoaderVarsGuid);
  if (::access(var.c_str(), F_OK) != 0 && errno == ENOENT) return std::nullopt;
  // efivarfs: 4 bytes of attributes, then the value.
  return parse_boot_count_path(util::read_file(var, 4096), var.string());
}

std::string bless_boot_entry(const util::Path& esp, std::string_view counted) {
  util::Path from = esp / counted;
  auto good = without_boot_counter(from.filename().string());
  if (!good)
    throw Error(
        ErrorKind::kInvalidInput,
        fmt::format("Failed to mark {} as good: its name has no boot counter", from.string()));
  util::Path to = from.parent_path() / *good;
  if (::rename(from.c_str(), to.c_str()) != 0)
    throw_errno(fmt::format("Failed to mark the boot entry {} as good: rename to {}", from.string(),
                            to.filename().string()),
                errno);
  util::UniqueFd dir(::open(to.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir.valid() || ::fsync(dir.get()) != 0)
    throw_errno("Failed to flush " + to.parent_path().string(), errno);
  std::string rel = to.string().substr(esp.string().size());
  while (rel.starts_with('/')) rel.erase(0, 1);
  return rel;
}

std::optional<std::string> mark_entry_booted(const util::Path& boot_state_file,
                                             const util::Path& efivars,
                                             const util::Path& work_dir) {
  BootState state = parse_boot_state(util::read_file(boot_state_file, kMaxBootStateBytes),
                                     boot_state_file.string());
  if (state.mode == BootMode::kLive) return std::nullopt;
  std::optional<std::string> counted = loader_boot_count_path(efivars);
  if (!counted) return std::nullopt;
  auto esp = find_by_label(image::kGrubLabel, block_devices());
  if (!esp)
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to mark {} as good: no partition is labelled {}", *counted,
                            image::kGrubLabel));
  WorkDir work(work_dir, "esp");
  Mounted mounted(esp->device, "vfat", work.path() / "esp");
  std::string blessed = bless_boot_entry(mounted.path(), *counted);
  mounted.unmount();
  return blessed;
}

}  // namespace pok8s::node
