#include "pok8s/build/uki_upgrade.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <filesystem>
#include <map>
#include <memory>

#include "pok8s/boot/authenticode.h"
#include "pok8s/boot/disk_encryption.h"
#include "pok8s/image/disk_layout.h"
#include "pok8s/image/verity.h"
#include "pok8s/node/kernel_cmdline.h"
#include "pok8s/node/upgrade.h"
#include "pok8s/util/archive_filters.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::build {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kIsoRootfs = "rootfs.squashfs";
constexpr std::string_view kIsoUkiDir = "install/EFI/Linux/";
constexpr std::uint64_t kMaxRootfsBytes = 64ull << 30;
constexpr std::uint64_t kMaxUkiBytes = 1ull << 30;
constexpr std::uint64_t kMaxIsoEntries = 10000;

struct ArchiveDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};

// One entry's data into `out` (complete or not there); its size and sha256.
UkiImageFile copy_entry(archive* a, const util::Path& out, std::string name, std::uint64_t limit,
                        const std::string& where) {
  util::Path tmp = out.string() + ".partial";
  UkiImageFile f{std::move(name), 0, {}};
  try {
    util::UniqueFd fd = util::open_file(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    util::Sha256 sha;
    std::vector<char> buf(1 << 20);
    for (;;) {
      la_ssize_t n = archive_read_data(a, buf.data(), buf.size());
      if (n < 0)
        throw Error(ErrorKind::kFormat,
                    fmt::format("Failed to read {}: {}", where, util::archive_error_text(a)));
      if (n == 0) break;
      f.size += static_cast<std::uint64_t>(n);
      if (f.size > limit)
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to read {}: larger than {} MiB", where, limit >> 20));
      std::string_view chunk(buf.data(), static_cast<std::size_t>(n));
      sha.update(chunk);
      util::write_all(fd.get(), chunk, tmp.string());
    }
    if (::fsync(fd.get()) != 0) throw_errno("Failed to write " + tmp.string(), errno);
    f.sha256 = sha.hex_digest();
    if (::rename(tmp.c_str(), out.c_str()) != 0)
      throw_errno("Failed to rename " + tmp.string(), errno);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  return f;
}

std::string os_release_value(std::string_view osrel, std::string_view key) {
  std::string prefix = std::string(key) + "=";
  for (std::size_t at = 0; at < osrel.size();) {
    std::size_t end = osrel.find('\n', at);
    if (end == std::string_view::npos) end = osrel.size();
    std::string_view line = osrel.substr(at, end - at);
    if (line.starts_with(prefix)) {
      std::string_view v = line.substr(prefix.size());
      if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
      return std::string(v);
    }
    at = end + 1;
  }
  return {};
}

}  // namespace

UkiImage write_uki_image(const util::Path& iso, const util::Path& output,
                         const std::optional<util::Path>& installed_uki,
                         const std::function<void(std::string_view)>& log) {
  auto say = [&](const std::string& line) {
    if (log) log(line);
  };
  const std::string iso_name = iso.string();
  std::unique_ptr<archive, ArchiveDeleter> a(archive_read_new());
  if (!a) throw Error(ErrorKind::kInternal, "Failed to allocate a libarchive reader");
  archive_read_support_format_iso9660(a.get());
  if (archive_read_open_filename(a.get(), iso.c_str(), 64 << 10) != ARCHIVE_OK)
    throw Error(ErrorKind::kFormat, fmt::format("Failed to read the uki-iso {}: {}", iso_name,
                                                util::archive_error_text(a.get())));
  util::make_dirs(output);

  UkiImage out;
  std::map<std::string, UkiImageFile> ukis;  // by mode
  std::optional<UkiImageFile> rootfs;
  say(fmt::format("Reading the uki-iso {}", iso_name));
  for (std::uint64_t entries = 0;; ++entries) {
    archive_entry* e = nullptr;
    int r = archive_read_next_header(a.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN)
      throw Error(ErrorKind::kFormat, fmt::format("Failed to read the uki-iso {}: {}", iso_name,
                                                  util::archive_error_text(a.get())));
    if (entries > kMaxIsoEntries)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to read the uki-iso {}: more than {} entries", iso_name,
                              kMaxIsoEntries));
    const char* raw = archive_entry_pathname(e);
    std::string_view path = raw ? raw : "";
    while (path.starts_with("./") || path.starts_with("/"))
      path.remove_prefix(path[0] == '.' ? 2 : 1);
    std::string where = fmt::format("{} in the uki-iso {}", path, iso_name);
    std::string name, mode;
    std::uint64_t limit = kMaxUkiBytes;
    if (path == kIsoRootfs) {
      name = image::kRootfsFile;
      limit = kMaxRootfsBytes;
    } else if (path.starts_with(kIsoUkiDir) &&
               path.find('/', kIsoUkiDir.size()) == std::string_view::npos) {
      name = path.substr(kIsoUkiDir.size());
      mode = node::installed_uki_mode(name);
      if (mode.empty()) continue;  // not one of the installed images' UKIs
    } else {
      continue;
    }
    if (archive_entry_filetype(e) != AE_IFREG)
      throw Error(ErrorKind::kFormat, fmt::format("Failed to read {}: not a file", where));
    if ((mode.empty() && rootfs) || (!mode.empty() && ukis.count(mode)))
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read {}: a second {}", where,
                              mode.empty() ? "rootfs image" : "UKI of the " + mode + " image"));
    if (mode.empty()) say(fmt::format("Writing {} from {}", name, path));
    UkiImageFile f = copy_entry(a.get(), output / name, name, limit, where);
    if (mode.empty())
      rootfs = std::move(f);
    else
      ukis[mode] = std::move(f);
  }
  if (!rootfs)
    throw Error(ErrorKind::kFormat,
                fmt::format("Failed to read the uki-iso {}: it has no {} (is it a uki-iso made "
                            "by pok8s build --artifact uki-iso?)",
                            iso_name, kIsoRootfs));
  out.files.push_back(*rootfs);

  // The UKIs' signed command lines: each boots its own image, all through the same root hash.
  std::optional<node::VerityParams> verity;
  std::optional<std::string> signer, pcrpkey;
  if (installed_uki) {
    std::string bytes = util::read_file(*installed_uki, kMaxUkiBytes);
    signer = boot::pe_signer_certificate(bytes, installed_uki->string());
    pcrpkey = boot::uki_section(bytes, ".pcrpkey", installed_uki->string());
    if (!signer)
      throw Error(ErrorKind::kSignature,
                  fmt::format("Failed to compare the uki-iso {} with the installed UKI {}: that "
                              "one is not signed",
                              iso_name, installed_uki->string()));
  }
  for (const char* mode : {"active", "passive", "recovery"}) {
    auto it = ukis.find(mode);
    if (it == ukis.end())
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read the uki-iso {}: it has no UKI of the installed {} "
                              "image in {}",
                              iso_name, mode, kIsoUkiDir));
    const UkiImageFile& f = it->second;
    std::string where = fmt::format("{}{} in the uki-iso {}", kIsoUkiDir, f.name, iso_name);
    std::string bytes = util::read_file(output / f.name, kMaxUkiBytes);
    auto cmdline = boot::uki_section(bytes, ".cmdline", where);
    if (!cmdline)
      throw Error(ErrorKind::kFormat, fmt::format("Failed to read {}: it has no .cmdline", where));
    node::BootOptions boot;
    try {
      boot = node::parse_boot_options(*cmdline);
    } catch (const Error& e) {
      throw Error(ErrorKind::kFormat, fmt::format("Failed to read {}: {}", where, e.what()));
    }
    std::string image_path = fmt::format("/{}/{}/{}", image::kImagesDir, mode, image::kRootfsFile);
    if (node::boot_mode_name(boot.mode) != mode || boot.image_path != image_path)
      throw Error(
          ErrorKind::kFormat,
          fmt::format("Failed to read {}: its command line boots {} {}, not the {} image "
                      "{}",
                      where, node::boot_mode_name(boot.mode), boot.image_path, mode, image_path));
    if (!boot.verity)
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read {}: its command line has no pok8s.verity", where));
    if (verity &&
        (boot.verity->root_hash != verity->root_hash || boot.verity->salt != verity->salt ||
         boot.verity->data_blocks != verity->data_blocks ||
         boot.verity->hash_offset != verity->hash_offset))
      throw Error(ErrorKind::kFormat,
                  fmt::format("Failed to read {}: its root hash {} is not the other UKIs' {}",
                              where, boot.verity->root_hash, verity->root_hash));
    verity = boot.verity;
    if (signer) {
      if (boot::pe_signer_certificate(bytes, where) != signer)
        throw Error(ErrorKind::kSignature,
                    fmt::format("Failed to upgrade from {}: it is signed by another certificate "
                                "than the installed {} (the firmware would refuse it; build it "
                                "with the installed system's keys)",
                                where, installed_uki->filename().string()));
      if (boot::uki_section(bytes, ".pcrpkey", where) != pcrpkey)
        throw Error(ErrorKind::kSignature,
                    fmt::format("Failed to upgrade from {}: its PCR public key (.pcrpkey) is not "
                                "the installed {}'s (the TPM would not unseal the disk key for "
                                "it; build it with the installed system's keys)",
                                where, installed_uki->filename().string()));
    }
    if (std::string_view(mode) == "active") {
      out.version =
          os_release_value(boot::uki_section(bytes, ".osrel", where).value_or(""), "IMAGE_VERSION");
      out.kernel = boot::uki_section(bytes, ".uname", where).value_or("");
    }
    out.files.push_back(f);
  }
  out.root_hash = verity->root_hash;
  say(fmt::format("Checking {} against the root hash {} of its UKIs", image::kRootfsFile,
                  out.root_hash));
  try {
    image::verify_verity_tree(
        output / image::kRootfsFile,
        {verity->root_hash, verity->salt, verity->data_blocks, verity->hash_offset, 0});
  } catch (const Error& e) {
    throw Error(e.kind(),
                fmt::format("Failed to upgrade from the uki-iso {}: {}", iso_name, e.what()));
  }
  return out;
}

}  // namespace pok8s::build
