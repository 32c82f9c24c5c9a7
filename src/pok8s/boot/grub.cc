// GRUB images through grub-mkimage (the host's GRUB build, no GRUB code in pok8s), cached by the
// hash of everything that goes into them, and the live grub.cfg.
#include "pok8s/boot/grub.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "pok8s/util/error.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"

namespace pok8s::boot {

namespace {

constexpr std::string_view kGrubLibDir = "/usr/lib/grub";
constexpr std::size_t kMaxLabelLength = 32;
// Bumped whenever the way the images are made changes, so old cache entries are not reused.
constexpr std::string_view kCacheVersion = "pok8s-grub-1";

// What a live boot needs on either platform: find the medium on a CD or a partitioned USB stick,
// read the ISO and the ESP, run grub.cfg, load Linux, talk on the serial console.
constexpr std::string_view kCommonModules[] = {
    "all_video",    "cat",     "configfile", "echo",           "fat",
    "gzio",         "halt",    "iso9660",    "linux",          "loadenv",
    "ls",           "minicmd", "normal",     "part_gpt",       "part_msdos",
    "reboot",       "regexp",  "search",     "search_fs_file", "search_fs_uuid",
    "search_label", "serial",  "sleep",      "terminal",       "test",
    "true",         "xzio",
};

struct Platform {
  std::string_view name;    // directory under /usr/lib/grub
  std::string_view format;  // grub-mkimage -O
  std::string_view output;  // file name in the cache entry
  std::string_view extra_module;
};
constexpr Platform kEfi{"x86_64-efi", "x86_64-efi", "BOOTX64.EFI", "efi_gop"};
constexpr Platform kBios{"i386-pc", "i386-pc-eltorito", "eltorito.img", "biosdisk"};
constexpr std::string_view kHybridMbr = "boot_hybrid.img";

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

void check_label(std::string_view label) {
  if (label.empty() || label.size() > kMaxLabelLength ||
      !std::all_of(label.begin(), label.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               c == '_' || c == '-' || c == '.';
      }))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to make GRUB images: invalid volume label '{}'", label));
}

std::vector<std::string> modules_for(const Platform& platform) {
  std::vector<std::string> modules(std::begin(kCommonModules), std::end(kCommonModules));
  modules.emplace_back(platform.extra_module);
  std::sort(modules.begin(), modules.end());
  return modules;
}

// Everything an image depends on: GRUB's version and kernel, the module list and the config.
std::string cache_key(std::string_view version, std::string_view early_config) {
  std::string key = fmt::format("{}\n{}\n{}", kCacheVersion, version, early_config);
  for (const Platform* p : {&kEfi, &kBios}) {
    util::Path dir = util::Path(kGrubLibDir) / p->name;
    key += fmt::format(
        "\n{} {} {} {}", p->format, util::sha256_hex(util::read_file(dir / "kernel.img")),
        util::sha256_hex(util::read_file(dir / "moddep.lst")), fmt::join(modules_for(*p), ","));
  }
  key +=
      "\n" + util::sha256_hex(util::read_file(util::Path(kGrubLibDir) / kBios.name / kHybridMbr));
  return util::sha256_hex(key);
}

GrubImages images_in(const util::Path& dir) {
  return {dir / kEfi.output, dir / kBios.output, dir / kHybridMbr};
}

// Single-quoted for GRUB's shell: nothing inside is expanded; a quote ends, is escaped, and
// the quoting starts again.
std::string grub_quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

// Splits a kernel command line the way the kernel does (whitespace separates, double quotes
// group) but keeps the quotes, so that GRUB hands each parameter over unchanged.
std::vector<std::string> split_cmdline(std::string_view cmdline) {
  std::vector<std::string> words;
  std::string word;
  bool in_quotes = false;
  bool have_word = false;
  for (char c : cmdline) {
    if (!in_quotes && (c == ' ' || c == '\t' || c == '\n')) {
      if (have_word) words.push_back(std::move(word));
      word.clear();
      have_word = false;
      continue;
    }
    if (c == '"') in_quotes = !in_quotes;
    word += c;
    have_word = true;
  }
  if (have_word) words.push_back(std::move(word));
  return words;
}

}  // namespace

std::string grub_early_config(std::string_view volume_label) {
  check_label(volume_label);
  // The rescue parser runs this before normal mode; normal mode then reads $prefix/grub.cfg.
  return fmt::format(
      "search --no-floppy --set=root --label {}\n"
      "set prefix=($root)/boot/grub\n",
      volume_label);
}

GrubImages make_grub_images(const util::Path& cache_dir, std::string_view volume_label) {
  std::string early_config = grub_early_config(volume_label);
  for (const Platform* p : {&kEfi, &kBios}) {
    util::Path kernel = util::Path(kGrubLibDir) / p->name / "kernel.img";
    if (!std::filesystem::exists(kernel))
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to make GRUB images: no GRUB for {} ({} is missing)", p->name,
                              kernel.string()));
  }
  util::ProcessResult version = util::run_process({"grub-mkimage", "--version"});
  if (version.status != 0)
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to make GRUB images: grub-mkimage --version exited with {}",
                            version.status));

  util::Path dir = cache_dir / "grub" / cache_key(trimmed(version.output), early_config);
  GrubImages images = images_in(dir);
  if (std::filesystem::exists(images.efi_binary)) return images;

  util::make_dirs(dir.parent_path());
  util::TempDir tmp(dir);
  util::Path config = tmp.path() / "early.cfg";
  util::write_file_atomic(config, early_config);
  for (const Platform* p : {&kEfi, &kBios}) {
    std::vector<std::string> args = {"grub-mkimage",
                                     "-O",
                                     std::string(p->format),
                                     "-d",
                                     (util::Path(kGrubLibDir) / p->name).string(),
                                     "-p",
                                     "/boot/grub",
                                     "-c",
                                     config.string(),
                                     "-o",
                                     (tmp.path() / p->output).string()};
    for (auto& m : modules_for(*p)) args.push_back(std::move(m));
    util::ProcessResult r = util::run_process(args);
    if (r.status != 0)
      throw Error(ErrorKind::kIo, fmt::format("Failed to make GRUB image {}: grub-mkimage exited "
                                              "with {}: {}",
                                              p->format, r.status, trimmed(r.output)));
  }
  util::write_file_atomic(tmp.path() / kHybridMbr,
                          util::read_file(util::Path(kGrubLibDir) / kBios.name / kHybridMbr, 512));
  try {
    tmp.commit();
  } catch (const Error&) {
    // Another build made the same entry meanwhile: it is as good as ours.
    if (!std::filesystem::exists(images.efi_binary)) throw;
  }
  return images;
}

std::string live_grub_config(const std::vector<LiveMenuEntry>& entries, int seconds) {
  if (entries.empty())
    throw Error(ErrorKind::kInvalidInput, "Failed to write GRUB config: no menu entries");
  std::string cfg =
      "# The live medium's menu, written by pok8s.\n"
      "serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n"
      "terminal_input serial console\n"
      "terminal_output serial console\n"
      "set default=0\n";
  cfg += fmt::format("set timeout={}\n", seconds < 0 ? -1 : seconds);
  for (const auto& e : entries) {
    if (e.title.empty() || e.kernel.empty())
      throw Error(ErrorKind::kInvalidInput,
                  "Failed to write GRUB config: a menu entry needs a title and a kernel");
    cfg += fmt::format("\nmenuentry {} {{\n  linux {}", grub_quote(e.title), grub_quote(e.kernel));
    for (const auto& word : split_cmdline(e.cmdline)) cfg += " " + grub_quote(word);
    cfg += "\n";
    if (!e.initrd.empty()) cfg += fmt::format("  initrd {}\n", grub_quote(e.initrd));
    cfg += "}\n";
  }
  return cfg;
}

}  // namespace pok8s::boot
