// The squashfs writer: libsquashfs's block processor compresses file data on worker threads
// as the layers stream past (FlatTree::read_files), then the inodes, directories, fragment,
// ID and xattr tables follow, and the superblock is written last.
#include "pok8s/image/squashfs.h"

extern "C" {
#include <sqfs/block.h>
#include <sqfs/block_processor.h>
#include <sqfs/block_writer.h>
#include <sqfs/compressor.h>
#include <sqfs/dir_writer.h>
#include <sqfs/error.h>
#include <sqfs/frag_table.h>
#include <sqfs/id_table.h>
#include <sqfs/inode.h>
#include <sqfs/io.h>
#include <sqfs/meta_writer.h>
#include <sqfs/super.h>
#include <sqfs/xattr_writer.h>
}

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pok8s/util/error.h"

namespace pok8s::image {

namespace {

using rootfs::EntryType;
using rootfs::FlatEntry;

constexpr std::uint32_t kNoXattr = 0xFFFFFFFF;
constexpr std::string_view kErrorPrefix = "Failed to write squashfs image";
// The kernel's limit on a squashfs name (SQUASHFS_NAME_LEN).
constexpr std::size_t kMaxNameBytes = 256;
// Images are padded to this, as mksquashfs does, so that a loop device sees all of it.
constexpr std::uint64_t kDeviceBlockSize = SQFS_DEVBLK_SIZE;

struct SqfsDestroy {
  void operator()(void* object) const { sqfs_destroy(object); }
};
template <typename T>
using SqfsPtr = std::unique_ptr<T, SqfsDestroy>;

struct InodeFree {
  void operator()(sqfs_inode_generic_t* inode) const { sqfs_free(inode); }
};
using InodePtr = std::unique_ptr<sqfs_inode_generic_t, InodeFree>;

// libsquashfs's file interface over the temporary file's descriptor: positioned reads and
// writes (the block writer reads blocks back to verify duplicates), keeping the errno of a
// failure for the error message.
struct OutputFile {
  sqfs_file_t base{};
  int fd = -1;
  std::atomic<std::uint64_t> size{0};
  std::atomic<int> last_errno{0};

  explicit OutputFile(int descriptor) : fd(descriptor) {
    base.base.destroy = [](sqfs_object_t*) {};  // owned here, not by libsquashfs
    base.base.copy = nullptr;
    base.read_at = &read_at;
    base.write_at = &write_at;
    base.get_size = &get_size;
    base.truncate = &truncate;
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  static OutputFile* self(sqfs_file_t* file) { return reinterpret_cast<OutputFile*>(file); }

  static int read_at(sqfs_file_t* file, sqfs_u64 offset, void* buffer, size_t size) {
    OutputFile* f = self(file);
    auto* p = static_cast<char*>(buffer);
    while (size > 0) {
      ssize_t n = ::pread(f->fd, p, size, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        f->last_errno = n < 0 ? errno : EIO;
        return SQFS_ERROR_IO;
      }
      p += n;
      size -= static_cast<size_t>(n);
      offset += static_cast<sqfs_u64>(n);
    }
    return 0;
  }

  static int write_at(sqfs_file_t* file, sqfs_u64 offset, const void* buffer, size_t size) {
    OutputFile* f = self(file);
    const auto* p = static_cast<const char*>(buffer);
    sqfs_u64 end = offset + size;
    while (size > 0) {
      ssize_t n = ::pwrite(f->fd, p, size, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        f->last_errno = n < 0 ? errno : EIO;
        return SQFS_ERROR_IO;
      }
      p += n;
      size -= static_cast<size_t>(n);
      offset += static_cast<sqfs_u64>(n);
    }
    std::uint64_t old = f->size.load();
    while (end > old && !f->size.compare_exchange_weak(old, end)) {
    }
    return 0;
  }

  static sqfs_u64 get_size(const sqfs_file_t* file) {
    return reinterpret_cast<const OutputFile*>(file)->size.load();
  }

  static int truncate(sqfs_file_t* file, sqfs_u64 size) {
    OutputFile* f = self(file);
    if (::ftruncate(f->fd, static_cast<off_t>(size)) != 0) {
      f->last_errno = errno;
      return SQFS_ERROR_IO;
    }
    f->size = size;
    return 0;
  }
};
static_assert(offsetof(OutputFile, base) == 0, "libsquashfs sees OutputFile as sqfs_file_t");

SQFS_COMPRESSOR compressor_id(SquashfsCompression c) {
  switch (c) {
    case SquashfsCompression::kZstd:
      return SQFS_COMP_ZSTD;
    case SquashfsCompression::kXz:
      return SQFS_COMP_XZ;
    case SquashfsCompression::kGzip:
      return SQFS_COMP_GZIP;
  }
  return SQFS_COMP_ZSTD;
}

std::string_view compression_name(SquashfsCompression c) {
  switch (c) {
    case SquashfsCompression::kZstd:
      return "zstd";
    case SquashfsCompression::kXz:
      return "xz";
    case SquashfsCompression::kGzip:
      return "gzip";
  }
  return "?";
}

std::pair<int, int> level_range(SquashfsCompression c) {
  switch (c) {
    case SquashfsCompression::kZstd:
      return {SQFS_ZSTD_MIN_LEVEL, SQFS_ZSTD_MAX_LEVEL};
    case SquashfsCompression::kXz:
      return {SQFS_XZ_MIN_LEVEL, SQFS_XZ_MAX_LEVEL};
    case SquashfsCompression::kGzip:
      return {SQFS_GZIP_MIN_LEVEL, SQFS_GZIP_MAX_LEVEL};
  }
  return {0, 0};
}

// The squashfs mode of an entry: the file type bits and the permission bits.
std::uint16_t squashfs_mode(const rootfs::TarEntry& meta) {
  std::uint32_t type = 0;
  switch (meta.type) {
    case EntryType::kFile:
    case EntryType::kHardlink:
      type = S_IFREG;
      break;
    case EntryType::kDirectory:
      type = S_IFDIR;
      break;
    case EntryType::kSymlink:
      type = S_IFLNK;
      break;
    case EntryType::kCharDevice:
      type = S_IFCHR;
      break;
    case EntryType::kBlockDevice:
      type = S_IFBLK;
      break;
    case EntryType::kFifo:
      type = S_IFIFO;
      break;
  }
  return static_cast<std::uint16_t>(type | (meta.mode & 07777));
}

// Squashfs keeps 32-bit unsigned seconds; times outside 1970..2106 are clamped to its range.
std::uint32_t squashfs_time(std::int64_t seconds) {
  return static_cast<std::uint32_t>(
      std::clamp<std::int64_t>(seconds, 0, std::numeric_limits<std::uint32_t>::max()));
}

// One inode of the image: an entry of the tree that is not a hardlink, named by itself and
// by every hardlink to it.
struct Inode {
  const FlatEntry* entry = nullptr;
  std::uint32_t number = 0;  // 1..count, in the order the inodes are written
  std::uint32_t nlink = 0;   // names of a non-directory; 2 + subdirectories of a directory
  std::uint64_t ref = 0;     // where it is in the inode table (block << 16 | offset)
  std::size_t parent = 0;    // directories: the inode of the parent directory
  // Directories: (name, inode) of every entry, sorted by name as squashfs requires.
  std::vector<std::pair<std::string, std::size_t>> children;
  // Regular files: the inode the block processor fills in (and may reallocate).
  sqfs_inode_generic_t* file_inode = nullptr;

  Inode() = default;
  Inode(const Inode&) = delete;
  Inode& operator=(const Inode&) = delete;
  Inode(Inode&& other) noexcept
      : entry(other.entry),
        number(other.number),
        nlink(other.nlink),
        ref(other.ref),
        parent(other.parent),
        children(std::move(other.children)),
        file_inode(std::exchange(other.file_inode, nullptr)) {}
  Inode& operator=(Inode&&) = delete;
  ~Inode() { sqfs_free(file_inode); }

  bool is_dir() const { return entry->meta.type == EntryType::kDirectory; }
};

class SquashfsWriter {
 public:
  SquashfsWriter(const rootfs::FlatTree& tree, const util::Path& out,
                 const SquashfsOptions& options, int fd)
      : tree_(tree), out_(out), options_(options), file_(fd) {}

  SquashfsResult write() {
    build_inodes();
    number_inodes();
    open_writers();
    write_file_data();
    write_metadata();
    return {file_.size.load(), inodes_.size(), data_bytes_};
  }

 private:
  [[noreturn]] void fail(ErrorKind kind, std::string_view what) const {
    throw Error(kind, fmt::format("{} {}: {}", kErrorPrefix, out_.string(), what));
  }

  [[noreturn]] void fail_entry(const FlatEntry& e, ErrorKind kind, std::string_view reason) const {
    fail(kind, fmt::format("entry {}: {}", e.path.empty() ? "/" : e.path, reason));
  }

  // The text of a libsquashfs error code, with the system's reason for an I/O error.
  std::string sqfs_reason(int code) const {
    switch (code) {
      case SQFS_ERROR_ALLOC:
        return "out of memory";
      case SQFS_ERROR_IO: {
        int err = file_.last_errno.load();
        return err ? fmt::format("I/O error: {}", std::strerror(err)) : "I/O error";
      }
      case SQFS_ERROR_COMPRESSOR:
        return "the compressor failed";
      case SQFS_ERROR_CORRUPTED:
        return "data read back from the image is corrupted";
      case SQFS_ERROR_UNSUPPORTED:
        return "not supported by squashfs";
      case SQFS_ERROR_OVERFLOW:
        return "a value is too large for squashfs";
      case SQFS_ERROR_OUT_OF_BOUNDS:
        return "more entries than squashfs can hold";
      case SQFS_ERROR_SUPER_BLOCK_SIZE:
        return "invalid block size";
      case SQFS_ERROR_ARG_INVALID:
        return "invalid argument";
      case SQFS_ERROR_SEQUENCE:
        return "calls out of sequence (a bug in pok8s)";
      default:
        return fmt::format("libsquashfs error {}", code);
    }
  }

  static ErrorKind sqfs_kind(int code) {
    switch (code) {
      case SQFS_ERROR_IO:
      case SQFS_ERROR_ALLOC:
        return ErrorKind::kIo;
      case SQFS_ERROR_UNSUPPORTED:
      case SQFS_ERROR_OVERFLOW:
      case SQFS_ERROR_OUT_OF_BOUNDS:
        return ErrorKind::kUnsupported;
      default:
        return ErrorKind::kInternal;
    }
  }

  void check(int code, std::string_view step) const {
    if (code < 0) fail(sqfs_kind(code), fmt::format("{}: {}", step, sqfs_reason(code)));
  }

  void check_entry(int code, const FlatEntry& e, std::string_view step) const {
    if (code < 0) fail_entry(e, sqfs_kind(code), fmt::format("{}: {}", step, sqfs_reason(code)));
  }

  // One inode per entry that is not a hardlink; directories list their entries.
  void build_inodes() {
    const auto& entries = tree_.entries();
    inodes_.reserve(entries.size());
    for (const auto& [path, entry] : entries) {
      if (entry.meta.type == EntryType::kHardlink) continue;
      if (path.empty() && entry.meta.type != EntryType::kDirectory)
        fail_entry(entry, ErrorKind::kInvalidInput, "the root is not a directory");
      Inode inode;
      inode.entry = &entry;
      index_.emplace(std::string_view(path), inodes_.size());
      inodes_.push_back(std::move(inode));
      if (entry.meta.type == EntryType::kFile) total_bytes_ += entry.meta.size;
    }
    if (inodes_.empty() || !inodes_[0].entry->path.empty())
      fail(ErrorKind::kInternal, "the tree has no root directory");
    for (const auto& [path, entry] : entries) {
      if (path.empty()) continue;
      std::size_t slash = path.rfind('/');
      std::string_view parent_path =
          slash == std::string::npos ? std::string_view() : std::string_view(path).substr(0, slash);
      std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
      if (name.empty() || name.size() > kMaxNameBytes)
        fail_entry(entry, ErrorKind::kUnsupported,
                   fmt::format("a name must be 1 to {} bytes long", kMaxNameBytes));
      std::size_t parent = lookup(entry, parent_path);
      if (!inodes_[parent].is_dir())
        fail_entry(entry, ErrorKind::kInternal, "its parent is not a directory");
      std::size_t self = lookup(entry, entry.meta.type == EntryType::kHardlink
                                           ? std::string_view(entry.meta.link_target)
                                           : std::string_view(path));
      Inode& target = inodes_[self];
      if (target.is_dir()) {
        if (entry.meta.type == EntryType::kHardlink)
          fail_entry(entry, ErrorKind::kInvalidInput, "a hardlink to a directory");
        target.parent = parent;
        ++inodes_[parent].nlink;
      } else {
        ++target.nlink;
      }
      inodes_[parent].children.emplace_back(std::move(name), self);
    }
    for (Inode& inode : inodes_) {
      if (!inode.is_dir()) continue;
      inode.nlink += 2;
      std::sort(inode.children.begin(), inode.children.end());
    }
  }

  std::size_t lookup(const FlatEntry& e, std::string_view path) const {
    auto it = index_.find(path);
    if (it == index_.end())
      fail_entry(e, ErrorKind::kInternal, fmt::format("\"{}\" is not in the tree", path));
    return it->second;
  }

  // Numbers the inodes depth first, each directory after everything below it: that is the
  // order they are written in, so a directory's listing can point at its entries' inodes.
  void number_inodes() {
    order_.reserve(inodes_.size());
    std::uint32_t next = 0;
    auto assign = [&](std::size_t i) {
      inodes_[i].number = ++next;
      order_.push_back(i);
    };
    struct Frame {
      std::size_t dir;
      std::size_t child = 0;
    };
    std::vector<Frame> stack{{0}};
    while (!stack.empty()) {
      Frame& top = stack.back();
      const Inode& dir = inodes_[top.dir];
      if (top.child == dir.children.size()) {
        assign(top.dir);
        stack.pop_back();
        continue;
      }
      std::size_t c = dir.children[top.child++].second;
      if (inodes_[c].number != 0) continue;  // a hardlink to an inode already numbered
      if (inodes_[c].is_dir())
        stack.push_back({c});
      else
        assign(c);
    }
    if (order_.size() != inodes_.size())
      fail(ErrorKind::kInternal, "some entries are not reachable from the root");
  }

  void open_writers() {
    if (options_.block_size < SQFS_MIN_BLOCK_SIZE || options_.block_size > SQFS_MAX_BLOCK_SIZE ||
        (options_.block_size & (options_.block_size - 1)) != 0)
      fail(ErrorKind::kInvalidInput,
           fmt::format("block size {} is not a power of two from {} to {}", options_.block_size,
                       SQFS_MIN_BLOCK_SIZE, SQFS_MAX_BLOCK_SIZE));
    if (options_.mkfs_time < 0 || options_.mkfs_time > std::numeric_limits<std::uint32_t>::max())
      fail(ErrorKind::kInvalidInput,
           fmt::format("time {} does not fit the superblock (0 to 2^32-1)", options_.mkfs_time));

    SQFS_COMPRESSOR id = compressor_id(options_.compression);
    sqfs_compressor_config_t cfg{};
    check(sqfs_compressor_config_init(&cfg, id, options_.block_size, 0),
          "configuring the compressor");
    if (options_.level) {
      auto [lo, hi] = level_range(options_.compression);
      if (*options_.level < lo || *options_.level > hi)
        fail(ErrorKind::kInvalidInput,
             fmt::format("compression level {} is outside {}..{} for {}", *options_.level, lo, hi,
                         compression_name(options_.compression)));
      cfg.level = static_cast<sqfs_u32>(*options_.level);
    }
    sqfs_compressor_t* raw = nullptr;
    check(sqfs_compressor_create(&cfg, &raw), "creating the compressor");
    cmp_.reset(raw);
    cfg.flags |= SQFS_COMP_FLAG_UNCOMPRESS;
    raw = nullptr;
    check(sqfs_compressor_create(&cfg, &raw), "creating the decompressor");
    uncmp_.reset(raw);

    check(sqfs_super_init(&super_, options_.block_size, squashfs_time(options_.mkfs_time), id),
          "initialising the superblock");
    check(sqfs_super_write(&super_, &file_.base), "writing the superblock");
    int written = cmp_->write_options(cmp_.get(), &file_.base);
    check(written, "writing the compressor options");
    if (written > 0) super_.flags |= SQFS_FLAG_COMPRESSOR_OPTIONS;

    blkwr_.reset(sqfs_block_writer_create(&file_.base, kDeviceBlockSize, 0));
    if (!blkwr_) check(SQFS_ERROR_ALLOC, "creating the block writer");
    frags_.reset(sqfs_frag_table_create(0));
    if (!frags_) check(SQFS_ERROR_ALLOC, "creating the fragment table");

    unsigned jobs = options_.jobs ? options_.jobs : std::thread::hardware_concurrency();
    jobs = std::max(jobs, 1u);
    sqfs_block_processor_desc_t desc{};
    desc.size = sizeof(desc);
    desc.max_block_size = options_.block_size;
    desc.num_workers = jobs;
    desc.max_backlog = 10 * jobs;
    desc.cmp = cmp_.get();
    desc.wr = blkwr_.get();
    desc.tbl = frags_.get();
    // With the file and a decompressor, a duplicate tail end is compared byte for byte
    // before it is shared, not trusted on its hash.
    desc.file = &file_.base;
    desc.uncmp = uncmp_.get();
    sqfs_block_processor_t* proc = nullptr;
    check(sqfs_block_processor_create_ex(&desc, &proc), "starting the block processor");
    proc_.reset(proc);

    ids_.reset(sqfs_id_table_create(0));
    xattrs_.reset(sqfs_xattr_writer_create(0));
    inode_table_.reset(sqfs_meta_writer_create(&file_.base, cmp_.get(), 0));
    dir_table_.reset(
        sqfs_meta_writer_create(&file_.base, cmp_.get(), SQFS_META_WRITER_KEEP_IN_MEMORY));
    if (!ids_ || !xattrs_ || !inode_table_ || !dir_table_)
      check(SQFS_ERROR_ALLOC, "creating the table writers");
    dirs_.reset(sqfs_dir_writer_create(dir_table_.get(), 0));
    if (!dirs_) check(SQFS_ERROR_ALLOC, "creating the directory writer");
  }

  // File data goes in layer by layer in the order read_files gives it, which depends on the
  // tree alone: the block processor writes blocks in the order they were submitted, so
  // the output does not depend on which worker finishes first.
  void write_file_data() {
    std::vector<std::byte> buffer(std::size_t{256} << 10);
    auto report = [&] {
      if (options_.progress) options_.progress(data_bytes_, total_bytes_);
    };
    report();
    auto write_file = [&](const FlatEntry& e, rootfs::LayerReader& reader) {
      Inode& inode = inodes_[lookup(e, e.path)];
      if (inode.file_inode != nullptr)
        fail_entry(e, ErrorKind::kInternal, "its data was offered twice");
      check_entry(sqfs_block_processor_begin_file(proc_.get(), &inode.file_inode, nullptr, 0), e,
                  "starting its data");
      std::uint64_t done = 0;
      try {
        for (;;) {
          std::size_t n = 0;
          try {
            n = reader.read(buffer);
          } catch (const Error& err) {
            fail_entry(e, err.kind(), err.what());
          }
          if (n == 0) break;
          check_entry(sqfs_block_processor_append(proc_.get(), buffer.data(), n), e,
                      "compressing its data");
          done += n;
          data_bytes_ += n;
          report();
        }
        if (done != e.meta.size)
          fail_entry(e, ErrorKind::kFormat,
                     fmt::format("the layer holds {} bytes of data, the header says {}", done,
                                 e.meta.size));
      } catch (...) {
        // Close the file so the block processor owns (and frees) its partial block.
        (void)sqfs_block_processor_end_file(proc_.get());
        throw;
      }
      check_entry(sqfs_block_processor_end_file(proc_.get()), e, "finishing its data");
    };
    try {
      tree_.read_files(write_file);
    } catch (const Error& err) {
      // libsquashfs 1.2 frees a pending fragment block only when finishing: finish into the
      // temporary file, which is removed anyway, so an abandoned image leaks nothing.
      (void)sqfs_block_processor_finish(proc_.get());
      // The flat view's own refusals (a layer changed since it was built) get our context.
      if (std::string_view(err.what()).starts_with(kErrorPrefix)) throw;
      fail(err.kind(), err.what());
    }
    check(sqfs_block_processor_finish(proc_.get()), "writing the last data blocks");
    for (const Inode& inode : inodes_)
      if (inode.entry->meta.type == EntryType::kFile && inode.file_inode == nullptr)
        fail_entry(*inode.entry, ErrorKind::kInternal, "its data was never read");
  }

  std::uint32_t xattr_index(const FlatEntry& e) {
    if (e.meta.xattrs.empty()) return kNoXattr;
    auto sorted = e.meta.xattrs;
    std::sort(sorted.begin(), sorted.end());
    check_entry(sqfs_xattr_writer_begin(xattrs_.get(), 0), e, "recording its xattrs");
    for (const auto& [key, value] : sorted)
      check_entry(sqfs_xattr_writer_add(xattrs_.get(), key.c_str(), value.data(), value.size()), e,
                  fmt::format("recording xattr {}", key));
    std::uint32_t index = kNoXattr;
    check_entry(sqfs_xattr_writer_end(xattrs_.get(), &index), e, "recording its xattrs");
    return index;
  }

  // A fresh inode of `extra` bytes of payload, as libsquashfs lays it out.
  static InodePtr allocate_inode(std::size_t extra) {
    auto* raw =
        static_cast<sqfs_inode_generic_t*>(std::calloc(1, sizeof(sqfs_inode_generic_t) + extra));
    if (raw == nullptr) throw std::bad_alloc();
    return InodePtr(raw);
  }

  // Linux's 32-bit device number encoding (new_encode_dev in include/linux/kdev_t.h), which
  // the kernel's squashfs decodes; libsquashfs stores the number as given.
  std::uint32_t device_number(const FlatEntry& e) const {
    std::uint32_t major = e.meta.dev_major;
    std::uint32_t minor = e.meta.dev_minor;
    if (major > 0xfff || minor > 0xfffff)
      fail_entry(e, ErrorKind::kUnsupported,
                 fmt::format("device {}:{} does not fit squashfs's 12-bit major, 20-bit minor",
                             major, minor));
    return (minor & 0xff) | (major << 8) | ((minor & ~0xffu) << 12);
  }

  InodePtr make_directory_inode(const Inode& inode, std::uint32_t xattr) {
    const FlatEntry& e = *inode.entry;
    check_entry(sqfs_dir_writer_begin(dirs_.get(), 0), e, "starting its listing");
    for (const auto& [name, child] : inode.children) {
      const Inode& c = inodes_[child];
      check_entry(sqfs_dir_writer_add_entry(dirs_.get(), name.c_str(), c.number, c.ref,
                                            squashfs_mode(c.entry->meta)),
                  e, fmt::format("listing {}", name));
    }
    check_entry(sqfs_dir_writer_end(dirs_.get()), e, "writing its listing");
    // The root's parent is one past the last inode, as mksquashfs writes it.
    std::uint32_t parent = e.path.empty() ? static_cast<std::uint32_t>(inodes_.size() + 1)
                                          : inodes_[inode.parent].number;
    InodePtr out(sqfs_dir_writer_create_inode(dirs_.get(), inode.nlink, xattr, parent));
    if (!out) check_entry(SQFS_ERROR_ALLOC, e, "creating its inode");
    if (out->base.type == SQFS_INODE_DIR)
      out->data.dir.nlink = inode.nlink;
    else
      out->data.dir_ext.nlink = inode.nlink;
    return out;
  }

  InodePtr make_inode(Inode& inode, std::uint32_t xattr) {
    const FlatEntry& e = *inode.entry;
    const rootfs::TarEntry& m = e.meta;
    InodePtr out;
    switch (m.type) {
      case EntryType::kDirectory:
        return make_directory_inode(inode, xattr);
      case EntryType::kFile:
        out.reset(std::exchange(inode.file_inode, nullptr));
        break;
      case EntryType::kSymlink:
        out = allocate_inode(m.link_target.size());
        out->base.type = SQFS_INODE_SLINK;
        out->data.slink.nlink = inode.nlink;
        out->data.slink.target_size = static_cast<sqfs_u32>(m.link_target.size());
        std::memcpy(out->extra, m.link_target.data(), m.link_target.size());
        break;
      case EntryType::kCharDevice:
      case EntryType::kBlockDevice:
        out = allocate_inode(0);
        out->base.type = m.type == EntryType::kCharDevice ? SQFS_INODE_CDEV : SQFS_INODE_BDEV;
        out->data.dev.nlink = inode.nlink;
        out->data.dev.devno = device_number(e);
        break;
      case EntryType::kFifo:
        out = allocate_inode(0);
        out->base.type = SQFS_INODE_FIFO;
        out->data.ipc.nlink = inode.nlink;
        break;
      case EntryType::kHardlink:
        fail_entry(e, ErrorKind::kInternal, "a hardlink has no inode of its own");
    }
    if (xattr != kNoXattr)
      check_entry(sqfs_inode_set_xattr_index(out.get(), xattr), e, "setting its xattrs");
    if (m.type == EntryType::kFile && inode.nlink > 1) {
      // Only the extended file inode has a link count.
      check_entry(sqfs_inode_make_extended(out.get()), e, "extending its inode");
      out->data.file_ext.nlink = inode.nlink;
    }
    return out;
  }

  void write_inode(Inode& inode) {
    const FlatEntry& e = *inode.entry;
    InodePtr out = make_inode(inode, xattr_index(e));
    out->base.mode = squashfs_mode(e.meta);
    out->base.mod_time = squashfs_time(e.meta.mtime_sec);
    out->base.inode_number = inode.number;
    check_entry(sqfs_id_table_id_to_index(ids_.get(), e.meta.uid, &out->base.uid_idx), e,
                fmt::format("recording uid {}", e.meta.uid));
    check_entry(sqfs_id_table_id_to_index(ids_.get(), e.meta.gid, &out->base.gid_idx), e,
                fmt::format("recording gid {}", e.meta.gid));
    sqfs_u64 block = 0;
    sqfs_u32 offset = 0;
    sqfs_meta_writer_get_position(inode_table_.get(), &block, &offset);
    inode.ref = (block << 16) | offset;
    check_entry(sqfs_meta_writer_write_inode(inode_table_.get(), out.get()), e,
                "writing its inode");
  }

  // The tables after the data, in the order squashfs lays them out: inodes, directories,
  // fragments, IDs, xattrs; then the superblock that points at them, and the padding.
  void write_metadata() {
    super_.inode_count = static_cast<sqfs_u32>(inodes_.size());
    super_.inode_table_start = file_.size.load();
    for (std::size_t i : order_) write_inode(inodes_[i]);
    check(sqfs_meta_writer_flush(inode_table_.get()), "writing the inode table");
    check(sqfs_meta_writer_flush(dir_table_.get()), "writing the directory table");
    super_.root_inode_ref = inodes_[0].ref;
    super_.directory_table_start = file_.size.load();
    check(sqfs_meta_write_write_to_file(dir_table_.get()), "writing the directory table");
    check(sqfs_frag_table_write(frags_.get(), &file_.base, &super_, cmp_.get()),
          "writing the fragment table");
    check(sqfs_id_table_write(ids_.get(), &file_.base, &super_, cmp_.get()),
          "writing the ID table");
    check(sqfs_xattr_writer_flush(xattrs_.get(), &file_.base, &super_, cmp_.get()),
          "writing the xattr table");
    super_.bytes_used = file_.size.load();
    check(sqfs_super_write(&super_, &file_.base), "writing the superblock");
    std::uint64_t tail = super_.bytes_used % kDeviceBlockSize;
    if (tail != 0) {
      std::vector<char> zeros(kDeviceBlockSize - tail);
      check(file_.base.write_at(&file_.base, super_.bytes_used, zeros.data(), zeros.size()),
            "padding the image");
    }
  }

  const rootfs::FlatTree& tree_;
  const util::Path& out_;
  const SquashfsOptions& options_;

  std::vector<Inode> inodes_;  // [0] is the root; never resized once data goes in
  std::unordered_map<std::string_view, std::size_t> index_;  // path -> inode
  std::vector<std::size_t> order_;                           // inodes in the order written
  std::uint64_t total_bytes_ = 0;
  std::uint64_t data_bytes_ = 0;

  // Declared in dependency order: destroyed in reverse, users before what they use.
  OutputFile file_;
  sqfs_super_t super_{};
  SqfsPtr<sqfs_compressor_t> cmp_;
  SqfsPtr<sqfs_compressor_t> uncmp_;
  SqfsPtr<sqfs_block_writer_t> blkwr_;
  SqfsPtr<sqfs_frag_table_t> frags_;
  SqfsPtr<sqfs_block_processor_t> proc_;
  SqfsPtr<sqfs_id_table_t> ids_;
  SqfsPtr<sqfs_xattr_writer_t> xattrs_;
  SqfsPtr<sqfs_meta_writer_t> inode_table_;
  SqfsPtr<sqfs_meta_writer_t> dir_table_;
  SqfsPtr<sqfs_dir_writer_t> dirs_;
};

}  // namespace

SquashfsCompression parse_squashfs_compression(std::string_view name) {
  if (name == "zstd") return SquashfsCompression::kZstd;
  if (name == "xz") return SquashfsCompression::kXz;
  if (name == "gzip") return SquashfsCompression::kGzip;
  throw Error(
      ErrorKind::kInvalidInput,
      fmt::format("Failed to parse squashfs compression \"{}\": expected zstd, xz or gzip", name));
}

SquashfsResult write_squashfs(const rootfs::FlatTree& tree, const util::Path& out,
                              const SquashfsOptions& options) {
  util::TempFile tmp(out);
  SquashfsResult result;
  {
    // The writer (and its threads) is gone before the file is committed.
    SquashfsWriter writer(tree, out, options, tmp.fd());
    result = writer.write();
  }
  tmp.commit();
  return result;
}

}  // namespace pok8s::image
