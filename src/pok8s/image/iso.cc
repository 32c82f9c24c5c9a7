// The hybrid ISO writer: libisofs builds the tree, the El Torito catalog, the system area (GRUB's
// hybrid MBR with a protective msdos label) and the GPT with the appended EFI partition, the
// same calls xorriso makes for `-as mkisofs --grub2-mbr ... -partition_offset 16
// -append_partition 2 0xef efi.img -appended_part_as_gpt --protective-msdos-label`.
#include "pok8s/image/iso.h"

#include <sys/stat.h>
#include <unistd.h>

// libisofs declares its copy of libburn's burn_source only on request; pok8s does not use libburn.
#define LIBISOFS_WITHOUT_LIBBURN 1
#include <libisofs/libisofs.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::image {

namespace {

constexpr std::size_t kMaxVolumeIdLength = 32;        // ECMA-119 8.4.6
constexpr std::size_t kMaxRockRidgeNameLength = 255;  // Rock Ridge names, as libisofs limits them
constexpr std::size_t kSystemAreaBytes = 32768;       // ECMA-119: the 16 blocks before the PVD
constexpr std::uint32_t kPartitionOffsetBlocks = 16;
constexpr int kEfiPartitionNumber = 2;
// The burn source delivers whole requests or nothing, so read block by block and write in
// larger chunks.
constexpr std::size_t kBlockBytes = 2048;
constexpr std::size_t kWriteChunk = 128 * kBlockBytes;

// iso_write_opts_set_system_area() option bits, see libisofs.h.
constexpr int kProtectiveMsdosLabel = 1 << 0;
constexpr int kCylinderAlignOff = 2 << 8;
constexpr int kGrub2BootProvisions = 1 << 14;  // patch the El Torito image's address at 0x1b0
constexpr int kForceBootableFlag = 1 << 15;
// el_torito_set_isolinux_options() option bits.
constexpr int kBootInfoTable = 1 << 0;
constexpr int kGrub2BootInfo = 1 << 9;
// El Torito platform ids.
constexpr std::uint8_t kPlatformEfi = 0xef;

std::once_flag g_libisofs_init;
// libisofs keeps its message queue in process-wide state; one writer at a time reads it.
std::mutex g_libisofs_mutex;

void init_libisofs() {
  std::call_once(g_libisofs_init, [] {
    if (iso_init() < 0) throw Error(ErrorKind::kInternal, "Failed to initialise libisofs");
    // The library never prints: queue what matters for error messages, print nothing.
    char queue[] = "SORRY";
    char print[] = "NEVER";
    char id[] = "libisofs";
    iso_set_msgs_severities(queue, print, id);
  });
}

// The oldest queued libisofs message of severity SORRY or worse, emptying the queue.
std::string drain_messages() {
  std::string first;
  char min[] = "SORRY";
  for (;;) {
    int code = 0, imgid = 0;
    char text[ISO_MSGS_MESSAGE_LEN] = {};
    char severity[80] = {};
    if (iso_obtain_msgs(min, &code, &imgid, text, severity) <= 0) break;
    if (first.empty()) first = text;
  }
  while (!first.empty() && (first.back() == '\n' || first.back() == ' ')) first.pop_back();
  return first;
}

struct ImageUnref {
  void operator()(IsoImage* image) const { iso_image_unref(image); }
};
struct WriteOptsFree {
  void operator()(IsoWriteOpts* opts) const { iso_write_opts_free(opts); }
};

// Owns the burn source of a running write: cancels the generator thread if the write stops
// early and waits for it before the source (and then the image) goes away.
class BurnSource {
 public:
  BurnSource(burn_source* source, IsoImage* image) : source_(source), image_(image) {}
  BurnSource(const BurnSource&) = delete;
  BurnSource& operator=(const BurnSource&) = delete;
  ~BurnSource() {
    if (!finished_) source_->cancel(source_);
    while (iso_image_generator_is_running(image_) == 1)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    source_->free_data(source_);
    std::free(source_);
  }
  burn_source* get() const { return source_; }
  void set_finished() { finished_ = true; }

 private:
  burn_source* source_;
  IsoImage* image_;
  bool finished_ = false;
};

// "YYYYMMDDhhmmss00": the volume UUID libisofs writes as creation and modification time and
// from which it derives the GPT GUIDs.
std::string volume_uuid(std::int64_t timestamp) {
  std::time_t t = static_cast<std::time_t>(timestamp);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d%H%M%S00", &tm);
  return buf;
}

std::vector<std::string> split_iso_path(std::string_view path, const util::Path& out) {
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == ".." || part.size() > kMaxRockRidgeNameLength ||
        part.find('\0') != std::string_view::npos)
      throw Error(ErrorKind::kInvalidInput, fmt::format("Failed to write ISO {}: invalid path '{}'",
                                                        out.string(), std::string(path)));
    parts.emplace_back(part);
    start = end + 1;
  }
  return parts;
}

void set_attributes(IsoNode* node, mode_t mode, std::int64_t timestamp) {
  auto t = static_cast<time_t>(timestamp);
  iso_node_set_permissions(node, mode);
  iso_node_set_uid(node, 0);
  iso_node_set_gid(node, 0);
  iso_node_set_mtime(node, t);
  iso_node_set_atime(node, t);
  iso_node_set_ctime(node, t);
}

}  // namespace

std::string write_iso(const std::vector<IsoFile>& files, const IsoOptions& options,
                      const util::Path& out) {
  auto fail = [&](ErrorKind kind, const std::string& reason) {
    throw Error(kind, fmt::format("Failed to write ISO {}: {}", out.string(), reason));
  };
  // A libisofs call failed: say which step, and why in libisofs' words.
  auto check = [&](int ret, std::string_view step, ErrorKind kind = ErrorKind::kInvalidInput) {
    if (ret >= 0) return;
    std::string detail = drain_messages();
    fail(kind, fmt::format("{}: {}", step, detail.empty() ? iso_error_to_msg(ret) : detail));
  };

  const std::string& volume_id = options.volume_id;
  if (volume_id.empty() || volume_id.size() > kMaxVolumeIdLength ||
      !std::all_of(volume_id.begin(), volume_id.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
      }))
    fail(ErrorKind::kInvalidInput,
         fmt::format("invalid volume id '{}' (1 to 32 of A-Z 0-9 _)", volume_id));
  if (options.timestamp <= 0)
    fail(ErrorKind::kInvalidInput, fmt::format("invalid timestamp {}", options.timestamp));
  if (options.hybrid_mbr && !options.bios_boot_image)
    fail(ErrorKind::kInvalidInput, "a hybrid MBR needs a BIOS boot image to start");

  // Sort by path so that the image does not depend on the order of `files`.
  std::map<std::string, std::pair<std::vector<std::string>, const IsoFile*>> by_path;
  for (const auto& f : files) {
    auto parts = split_iso_path(f.path, out);
    std::string key;
    for (const auto& p : parts) key += (key.empty() ? "" : "/") + p;
    if (!by_path.emplace(key, std::pair{std::move(parts), &f}).second)
      fail(ErrorKind::kInvalidInput, fmt::format("'{}' is given twice", key));
  }

  std::string system_area;
  if (options.hybrid_mbr) {
    system_area = util::read_file(*options.hybrid_mbr, kSystemAreaBytes);
    if (system_area.size() < 512)
      fail(ErrorKind::kInvalidInput, fmt::format("hybrid MBR {} has {} bytes, less than one sector",
                                                 options.hybrid_mbr->string(), system_area.size()));
    system_area.resize(kSystemAreaBytes, '\0');
  }
  std::string efi_image;
  if (options.efi_image) {
    struct stat st {};
    if (::stat(options.efi_image->c_str(), &st) != 0)
      throw_errno(fmt::format("Failed to write ISO {}: cannot read EFI image {}", out.string(),
                              options.efi_image->string()),
                  errno);
    if (!S_ISREG(st.st_mode) || st.st_size == 0)
      fail(ErrorKind::kInvalidInput,
           fmt::format("EFI image {} is not a non-empty file", options.efi_image->string()));
    efi_image = std::filesystem::absolute(*options.efi_image).string();
  }

  init_libisofs();
  std::lock_guard lock(g_libisofs_mutex);
  drain_messages();  // nothing left over from an earlier write may explain this one

  IsoImage* raw_image = nullptr;
  check(iso_image_new(volume_id.c_str(), &raw_image), "create image", ErrorKind::kInternal);
  std::unique_ptr<IsoImage, ImageUnref> image(raw_image);
  iso_image_set_volume_id(image.get(), volume_id.c_str());
  iso_image_set_application_id(image.get(), "POK8S");
  iso_tree_set_follow_symlinks(image.get(), 1);
  // Refuse over-long names rather than silently rename files.
  check(iso_image_set_truncate_mode(image.get(), 0, static_cast<int>(kMaxRockRidgeNameLength)),
        "set name limit", ErrorKind::kInternal);

  IsoDir* root = iso_image_get_root(image.get());
  set_attributes(reinterpret_cast<IsoNode*>(root), 0555, options.timestamp);
  std::map<std::string, IsoDir*> dirs{{"", root}};
  std::set<std::string> file_paths;
  for (const auto& [path, entry] : by_path) {
    const auto& [parts, file] = entry;
    std::string dir_path;
    IsoDir* parent = root;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
      dir_path += (i ? "/" : "") + parts[i];
      if (file_paths.count(dir_path))
        fail(ErrorKind::kInvalidInput,
             fmt::format("'{}' is both a file and a directory", dir_path));
      auto it = dirs.find(dir_path);
      if (it == dirs.end()) {
        IsoDir* dir = nullptr;
        check(iso_image_add_new_dir(image.get(), parent, parts[i].c_str(), &dir),
              fmt::format("add directory {}", dir_path));
        set_attributes(reinterpret_cast<IsoNode*>(dir), 0555, options.timestamp);
        it = dirs.emplace(dir_path, dir).first;
      }
      parent = it->second;
    }
    if (dirs.count(path))
      fail(ErrorKind::kInvalidInput, fmt::format("'{}' is both a file and a directory", path));
    struct stat st {};
    if (::stat(file->source.c_str(), &st) != 0)
      throw_errno(fmt::format("Failed to write ISO {}: cannot read {}", out.string(),
                              file->source.string()),
                  errno);
    if (!S_ISREG(st.st_mode))
      fail(ErrorKind::kInvalidInput,
           fmt::format("{} is not a regular file", file->source.string()));
    IsoNode* node = nullptr;
    std::string source = std::filesystem::absolute(file->source).string();
    check(iso_tree_add_new_node(image.get(), parent, parts.back().c_str(), source.c_str(), &node),
          fmt::format("add {}", path));
    set_attributes(node, (st.st_mode & 0111) ? 0555 : 0444, options.timestamp);
    file_paths.insert(path);
  }

  // El Torito: the BIOS entry first (the default), then UEFI, which points into the appended
  // EFI partition instead of a second copy of the FAT image inside the ISO tree.
  const std::string catalog = "/boot.catalog";
  const std::string efi_interval =
      fmt::format("--interval:appended_partition_{}:all::", kEfiPartitionNumber);
  bool have_catalog = false;
  auto add_boot_image = [&](const std::string& path, ElToritoBootImage** boot) {
    if (!have_catalog) {
      check(iso_image_set_boot_image(image.get(), path.c_str(), ELTORITO_NO_EMUL, catalog.c_str(),
                                     boot),
            fmt::format("add boot image {}", path));
      have_catalog = true;
    } else {
      check(iso_image_add_boot_image(image.get(), path.c_str(), ELTORITO_NO_EMUL, 0, boot),
            fmt::format("add boot image {}", path));
    }
  };
  if (options.bios_boot_image) {
    std::string path = "/";
    for (const auto& p : split_iso_path(*options.bios_boot_image, out))
      path += (path.size() > 1 ? "/" : "") + p;
    if (!file_paths.count(path.substr(1)))
      fail(ErrorKind::kInvalidInput,
           fmt::format("BIOS boot image {} is not one of the files", path));
    ElToritoBootImage* boot = nullptr;
    add_boot_image(path, &boot);
    // cdboot.img loads the rest of GRUB's core image itself: the BIOS loads 4 sectors.
    el_torito_set_load_size(boot, 4);
    check(el_torito_set_isolinux_options(boot, kBootInfoTable | kGrub2BootInfo, 0),
          "set BIOS boot options", ErrorKind::kInternal);
  }
  if (options.efi_image) {
    ElToritoBootImage* boot = nullptr;
    add_boot_image(efi_interval, &boot);
    check(el_torito_set_boot_platform_id(boot, kPlatformEfi), "set EFI platform",
          ErrorKind::kInternal);
  }
  if (have_catalog) {
    IsoNode* node = nullptr;
    if (iso_image_path_to_node(image.get(), catalog.c_str(), &node) == 1 && node)
      set_attributes(node, 0444, options.timestamp);
  }

  IsoWriteOpts* raw_opts = nullptr;
  check(iso_write_opts_new(&raw_opts, 2), "create write options", ErrorKind::kInternal);
  std::unique_ptr<IsoWriteOpts, WriteOptsFree> opts(raw_opts);
  IsoWriteOpts* o = opts.get();
  auto check_opt = [&](int ret, std::string_view what) { check(ret, what, ErrorKind::kInternal); };
  check_opt(iso_write_opts_set_iso_level(o, 3), "set ISO level 3");  // files over 4 GiB
  check_opt(iso_write_opts_set_rockridge(o, 1), "enable Rock Ridge");
  check_opt(iso_write_opts_set_joliet(o, 1), "enable Joliet");
  check_opt(iso_write_opts_set_aaip(o, 0), "disable AAIP");
  check_opt(iso_write_opts_set_hardlinks(o, 0), "disable hard links");
  // RRIP 1.10 PX entries carry no file serial numbers. libisofs numbers inodes in the order of
  // the source files' (device, inode) and of node addresses, neither of which is reproducible;
  // without serial numbers readers derive inode numbers from directory record positions.
  check_opt(iso_write_opts_set_rrip_version_1_10(o, 1), "select RRIP 1.10");
  check_opt(iso_write_opts_set_rrip_1_10_px_ino(o, 0), "omit file serial numbers");
  // Ownership and modes as set on the nodes above; every time is `timestamp`, in UTC.
  check_opt(iso_write_opts_set_replace_mode(o, 0, 0, 0, 0), "keep node attributes");
  check_opt(iso_write_opts_set_replace_timestamps(o, 2), "replace timestamps");
  check_opt(iso_write_opts_set_default_timestamp(o, static_cast<time_t>(options.timestamp)),
            "set timestamp");
  check_opt(iso_write_opts_set_dir_rec_mtime(o, 7), "set directory record times");
  check_opt(iso_write_opts_set_always_gmt(o, 1), "record times in UTC");
  std::string uuid = volume_uuid(options.timestamp);
  check_opt(iso_write_opts_set_pvd_times(o, static_cast<time_t>(options.timestamp),
                                         static_cast<time_t>(options.timestamp), 0, 0, uuid.data()),
            "set volume times");

  if (options.efi_image) {
    check(iso_write_opts_set_partition_img(o, kEfiPartitionNumber, 0xef, efi_image.data(), 0),
          "append EFI partition");
    check_opt(iso_write_opts_set_appended_as_gpt(o, 1), "describe appended partition in GPT");
    check_opt(iso_write_opts_set_gpt_guid(o, nullptr, 2), "derive GPT GUID from volume UUID");
  }
  if (options.hybrid_mbr || options.efi_image) {
    int area = kProtectiveMsdosLabel | kCylinderAlignOff;
    if (options.hybrid_mbr) area |= kGrub2BootProvisions | kForceBootableFlag;
    check_opt(iso_write_opts_set_system_area(o, options.hybrid_mbr ? system_area.data() : nullptr,
                                             area, options.hybrid_mbr ? 0 : 1),
              "set system area");
    // A second superblock at 32 KiB makes the ISO mountable from partition 1 as well.
    check_opt(iso_write_opts_set_part_offset(o, kPartitionOffsetBlocks, 0, 0),
              "set partition offset");
  }

  util::TempFile tmp(out);
  burn_source* raw_source = nullptr;
  check(iso_image_create_burn_source(image.get(), o, &raw_source), "start writing");
  BurnSource source(raw_source, image.get());
  auto total = static_cast<std::uint64_t>(raw_source->get_size(raw_source));
  std::uint64_t done = 0;
  std::vector<unsigned char> buf(kWriteChunk);
  std::size_t fill = 0;
  util::Sha256 hash;
  auto flush = [&] {
    auto bytes = std::as_bytes(std::span(buf.data(), fill));
    util::write_all(tmp.fd(), bytes, tmp.path().string());
    hash.update(bytes);
    done += fill;
    fill = 0;
    if (options.progress) options.progress(done, total);
  };
  for (;;) {
    int n = raw_source->read_xt(raw_source, buf.data() + fill, static_cast<int>(kBlockBytes));
    if (n < 0) check(-1, "generate image", ErrorKind::kIo);
    if (n <= 0) break;
    fill += static_cast<std::size_t>(n);
    if (fill + kBlockBytes > buf.size()) flush();
  }
  if (fill > 0) flush();
  if (done != total)
    fail(ErrorKind::kIo, fmt::format("libisofs delivered {} of {} bytes", done, total));
  source.set_finished();
  drain_messages();
  tmp.commit();
  return hash.hex_digest();
}

}  // namespace pok8s::image
