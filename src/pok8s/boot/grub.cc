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

#include "pok8s/image/disk_layout.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"

namespace pok8s::boot {

namespace {

constexpr std::string_view kGrubLibDir = "/usr/lib/grub";
constexpr std::size_t kMaxLabelLength = 32;
// Bumped whenever the way the images are made changes, so old cache entries are not reused.
constexpr std::string_view kCacheVersion = "pok8s-grub-3";  // 2: ext2, prefix; 3: BIOS disks

// What a live boot needs on either platform: find the medium on a CD or a partitioned USB stick,
// read the ISO and the ESP, run grub.cfg, load Linux, talk on the serial console.
constexpr std::string_view kCommonModules[] = {
    "all_video",      "cat",          "configfile", "echo",
    "ext2",           "fat",          "gzio",       "halt",
    "iso9660",        "linux",        "loadenv",    "ls",
    "minicmd",        "normal",       "part_gpt",   "part_msdos",
    "reboot",         "regexp",       "search",     "search_fs_file",
    "search_fs_uuid", "search_label", "serial",     "sleep",
    "terminal",       "test",         "true",       "xzio",
};

struct Platform {
  std::string_view name;    // directory under /usr/lib/grub
  std::string_view format;  // grub-mkimage -O
  std::string_view output;  // file name in the cache entry
  std::string_view extra_module;
};
constexpr Platform kEfi{"x86_64-efi", "x86_64-efi", "BOOTX64.EFI", "efi_gop"};
constexpr Platform kBios{"i386-pc", "i386-pc-eltorito", "eltorito.img", "biosdisk"};
constexpr Platform kBiosDisk{"i386-pc", "i386-pc", "core.img", "biosdisk"};
constexpr const Platform* kPlatforms[] = {&kEfi, &kBios, &kBiosDisk};
constexpr std::string_view kHybridMbr = "boot_hybrid.img";
constexpr std::string_view kBootImage = "boot.img";

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
  for (const Platform* p : kPlatforms) {
    util::Path dir = util::Path(kGrubLibDir) / p->name;
    key += fmt::format(
        "\n{} {} {} {}", p->format, util::sha256_hex(util::read_file(dir / "kernel.img")),
        util::sha256_hex(util::read_file(dir / "moddep.lst")), fmt::join(modules_for(*p), ","));
  }
  for (std::string_view file : {kHybridMbr, kBootImage})
    key += "\n" + util::sha256_hex(util::read_file(util::Path(kGrubLibDir) / kBios.name / file));
  return util::sha256_hex(key);
}

GrubImages images_in(const util::Path& dir) {
  return {dir / kEfi.output, dir / kBios.output, dir / kHybridMbr, dir / kBiosDisk.output,
          dir / kBootImage};
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

std::string grub_early_config(std::string_view volume_label, std::string_view prefix) {
  check_label(volume_label);
  if (!prefix.starts_with('/') || prefix.find_first_of(" '\"\n;$") != std::string_view::npos)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to make GRUB images: invalid prefix '{}'", prefix));
  // The rescue parser runs this before normal mode; normal mode then reads $prefix/grub.cfg.
  return fmt::format(
      "search --no-floppy --set=root --label {}\n"
      "set prefix=($root){}\n",
      volume_label, prefix);
}

GrubImages make_grub_images(const util::Path& cache_dir, std::string_view volume_label,
                            std::string_view prefix) {
  std::string early_config = grub_early_config(volume_label, prefix);
  for (const Platform* p : kPlatforms) {
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
  for (const Platform* p : kPlatforms) {
    std::vector<std::string> args = {"grub-mkimage",
                                     "-O",
                                     std::string(p->format),
                                     "-d",
                                     (util::Path(kGrubLibDir) / p->name).string(),
                                     "-p",
                                     std::string(prefix),
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
  for (std::string_view file : {kHybridMbr, kBootImage})
    util::write_file_atomic(tmp.path() / file,
                            util::read_file(util::Path(kGrubLibDir) / kBios.name / file, 512));
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
    cfg += fmt::format("\nmenuentry {} {{\n  linux {}", util::single_quote(e.title),
                       util::single_quote(e.kernel));
    for (const auto& word : split_cmdline(e.cmdline)) cfg += " " + util::single_quote(word);
    cfg += "\n";
    if (!e.initrd.empty()) cfg += fmt::format("  initrd {}\n", util::single_quote(e.initrd));
    cfg += "}\n";
  }
  return cfg;
}

std::string initial_grubenv_vars(int max_tries) {
  if (max_tries < 1 || max_tries > 9)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to set up boot assessment: {} boot tries (1 to 9)", max_tries));
  return fmt::format("pok8s_entry=active\npok8s_tries={0}\npok8s_max_tries={0}\npok8s_fallback=\n",
                     max_tries);
}

std::string disk_grub_config(const DiskMenuOptions& options) {
  // GRUB's script has no arithmetic: counting down is a chain of string comparisons.
  std::string count_down;
  for (int n = 9; n >= 1; --n)
    count_down +=
        fmt::format("    {}if [ \"$pok8s_tries\" = {} ]; then\n      set pok8s_tries={}\n",
                    n == 9 ? "" : "el", n, n - 1);
  std::string first_try;  // the next entry's count, this boot being its first try
  for (int n = 9; n >= 1; --n)
    first_try +=
        fmt::format("      {}if [ \"$pok8s_max_tries\" = {} ]; then\n        set pok8s_tries={}\n",
                    n == 9 ? "" : "el", n, n - 1);
  first_try +=
      fmt::format("      else\n        set pok8s_tries={}\n      fi\n", kDefaultBootTries - 1);

  std::string cfg = fmt::format(
      "# The installed system's menu, written by pok8s. Boot assessment (pok8s_* in COS_OEM's\n"
      "# grubenv): every boot takes one try of the entry it boots; pok8s-agent mark-booted gives\n"
      "# them back once the system is up; an entry out of tries hands over to the next one.\n"
      "serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n"
      "terminal_input serial console\n"
      "terminal_output serial console\n"
      "set timeout={}\n"
      "set pok8s_entry=active\n"
      "search --no-floppy --label {} --set=pok8s_oem\n"
      "if [ -n \"$pok8s_oem\" ]; then\n"
      "  set pok8s_env=\"($pok8s_oem)/{}\"\n"
      "  load_env -f \"$pok8s_env\"\n"
      "  if [ \"$pok8s_entry\" != passive ]; then\n"
      "    if [ \"$pok8s_entry\" != recovery ]; then set pok8s_entry=active; fi\n"
      "  fi\n"
      "  if [ \"$pok8s_entry\" != recovery ]; then\n"
      "{}"
      "    else\n"
      "      if [ \"$pok8s_entry\" = active ]; then\n"
      "        set pok8s_fallback=active\n"
      "        set pok8s_entry=passive\n"
      "      else\n"
      "        set pok8s_fallback=passive\n"
      "        set pok8s_entry=recovery\n"
      "      fi\n"
      "{}"
      "    fi\n"
      "    save_env -f \"$pok8s_env\" pok8s_entry pok8s_tries pok8s_fallback\n"
      "  fi\n"
      "fi\n"
      "set default=\"$pok8s_entry\"\n",
      options.timeout < 0 ? -1 : options.timeout, image::kOemLabel, image::kGrubEnvFile, count_down,
      first_try);

  struct Entry {
    std::string_view id;
    std::string_view label;
  };
  for (const Entry& e : {Entry{"active", image::kStateLabel}, Entry{"passive", image::kStateLabel},
                         Entry{"recovery", image::kRecoveryLabel}}) {
    std::string dir = fmt::format("/{}/{}", image::kImagesDir, e.id);
    std::string cmdline = fmt::format("{} pok8s.mode={} pok8s.media={} pok8s.image={}/{}",
                                      options.cmdline, e.id, e.label, dir, image::kRootfsFile);
    cfg += fmt::format("\nmenuentry {} --id {} {{\n  search --no-floppy --label {} --set=root\n",
                       util::single_quote(fmt::format("pok8s ({})", e.id)), e.id, e.label);
    cfg += fmt::format("  linux {}",
                       util::single_quote(fmt::format("{}/{}", dir, image::kKernelFile)));
    for (const auto& word : split_cmdline(cmdline)) cfg += " " + util::single_quote(word);
    cfg += fmt::format("\n  initrd {}\n}}\n",
                       util::single_quote(fmt::format("{}/{}", dir, image::kInitrdFile)));
  }
  return cfg;
}

}  // namespace pok8s::boot
