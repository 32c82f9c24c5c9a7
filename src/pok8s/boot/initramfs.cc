// Initramfs assembly: the kernel's modules read from the image's layers (two passes, each
// stopping after the last file it needs), written with libarchive as a newc cpio through zstd.
#include "pok8s/boot/initramfs.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include "pok8s/boot/modules.h"
#include "pok8s/util/archive_filters.h"
#include "pok8s/util/error.h"

namespace pok8s::boot {
namespace {

using rootfs::FlatEntry;
using rootfs::FlatTree;
using rootfs::LayerReader;

// Everything held in memory before the cpio is written: modules, busybox, pok8s-init.
constexpr std::uint64_t kMaxInitramfsBytes = 1ull << 30;
// One module or busybox, compressed or not; the largest modules (GPU drivers) are ~30 MiB.
constexpr std::uint64_t kMaxFileBytes = 256ull << 20;

struct ArchiveReadDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};
struct ArchiveWriteDeleter {
  void operator()(archive* a) const { archive_write_free(a); }
};
struct EntryDeleter {
  void operator()(archive_entry* e) const { archive_entry_free(e); }
};

std::string read_all(LayerReader& reader, const FlatEntry& entry, std::uint64_t limit) {
  if (entry.meta.size > limit)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read /{} from the image: {} bytes exceeds the limit of {}",
                            entry.path, entry.meta.size, limit));
  std::string data(entry.meta.size, '\0');
  std::size_t done = 0;
  while (done < data.size()) {
    std::size_t n =
        reader.read(std::as_writable_bytes(std::span(data.data() + done, data.size() - done)));
    if (n == 0) break;
    done += n;
  }
  data.resize(done);
  return data;
}

// Decompresses a .ko.xz, .ko.zst or .ko.gz with libarchive's raw format (in-process filters
// only) and checks that an ELF object comes out.
std::string decompress_module(const std::string& data, const std::string& what) {
  std::unique_ptr<archive, ArchiveReadDeleter> a(archive_read_new());
  util::support_in_process_filters(a.get());
  archive_read_support_format_raw(a.get());
  auto fail = [&](const std::string& reason) -> std::string {
    throw Error(ErrorKind::kFormat, fmt::format("Failed to decompress {}: {}", what, reason));
  };
  if (archive_read_open_memory(a.get(), data.data(), data.size()) != ARCHIVE_OK)
    return fail(archive_error_string(a.get()) ? archive_error_string(a.get()) : "unreadable");
  archive_entry* e = nullptr;
  if (archive_read_next_header(a.get(), &e) != ARCHIVE_OK)
    return fail(archive_error_string(a.get()) ? archive_error_string(a.get()) : "empty");
  std::string out;
  std::array<char, 64 << 10> buf{};
  while (true) {
    la_ssize_t n = archive_read_data(a.get(), buf.data(), buf.size());
    if (n < 0)
      return fail(archive_error_string(a.get()) ? archive_error_string(a.get()) : "corrupt");
    if (n == 0) break;
    out.append(buf.data(), static_cast<std::size_t>(n));
    if (out.size() > kMaxFileBytes)
      return fail(fmt::format("more than {} bytes once decompressed", kMaxFileBytes));
  }
  if (!out.starts_with("\x7f"
                       "ELF"))
    return fail("not an ELF object");
  return out;
}

std::uint16_t get16(std::string_view d, std::size_t off, bool le) {
  auto b = [&](std::size_t i) {
    return static_cast<std::uint16_t>(static_cast<unsigned char>(d[off + i]));
  };
  return le ? static_cast<std::uint16_t>(b(0) | b(1) << 8)
            : static_cast<std::uint16_t>(b(1) | b(0) << 8);
}
std::uint32_t get32(std::string_view d, std::size_t off, bool le) {
  std::uint32_t lo = get16(d, off, le), hi = get16(d, off + 2, le);
  return le ? (lo | hi << 16) : (hi | lo << 16);
}
std::uint64_t get64(std::string_view d, std::size_t off, bool le) {
  std::uint64_t lo = get32(d, off, le), hi = get32(d, off + 4, le);
  return le ? (lo | hi << 32) : (hi | lo << 32);
}

// One entry of the cpio, before it is written.
struct CpioEntry {
  unsigned type = AE_IFREG;
  unsigned mode = 0644;
  std::string data;
  unsigned dev_major = 0;
  unsigned dev_minor = 0;
};

class CpioTree {
 public:
  void dir(const std::string& path, unsigned mode = 0755) {
    add_parents(path);
    entries_.try_emplace(path, CpioEntry{AE_IFDIR, mode, {}, 0, 0});
  }
  void file(const std::string& path, std::string data, unsigned mode = 0644) {
    bytes_ += data.size();
    if (bytes_ > kMaxInitramfsBytes)
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format("Failed to assemble the initramfs: more than {} bytes", kMaxInitramfsBytes));
    add_parents(path);
    entries_[path] = CpioEntry{AE_IFREG, mode, std::move(data), 0, 0};
  }
  void char_device(const std::string& path, unsigned mode, unsigned major, unsigned minor) {
    add_parents(path);
    entries_[path] = CpioEntry{AE_IFCHR, mode, {}, major, minor};
  }

  // Writes every entry, sorted by path (parents first), owned by root, all with `mtime`.
  void write(int fd, std::int64_t mtime, int level, const std::string& what) const {
    std::unique_ptr<archive, ArchiveWriteDeleter> a(archive_write_new());
    auto check = [&](int rc, const std::string& step) {
      if (rc != ARCHIVE_OK)
        throw Error(
            ErrorKind::kIo,
            fmt::format("Failed to write {}: {}: {}", what, step,
                        archive_error_string(a.get()) ? archive_error_string(a.get()) : "error"));
    };
    check(archive_write_set_format_cpio_newc(a.get()), "cpio format");
    check(archive_write_add_filter_zstd(a.get()), "zstd filter");
    check(archive_write_set_filter_option(a.get(), "zstd", "compression-level",
                                          std::to_string(level).c_str()),
          "zstd level");
    // zstd's multi-threaded mode: its output is the same for any number of workers (but not the
    // same as single-threaded), so the initramfs stays reproducible across machines.
    std::string threads = std::to_string(std::max(2u, std::thread::hardware_concurrency()));
    check(archive_write_set_filter_option(a.get(), "zstd", "threads", threads.c_str()),
          "zstd threads");
    // No padding after the zstd frame: the file ends where the compressed stream does.
    check(archive_write_set_bytes_in_last_block(a.get(), 1), "block size");
    check(archive_write_open_fd(a.get(), fd), "open");
    std::int64_t ino = 0;
    for (const auto& [path, e] : entries_) {
      std::unique_ptr<archive_entry, EntryDeleter> ae(archive_entry_new());
      archive_entry_set_pathname(ae.get(), path.c_str());
      archive_entry_set_filetype(ae.get(), e.type);
      archive_entry_set_perm(ae.get(), e.mode);
      archive_entry_set_uid(ae.get(), 0);
      archive_entry_set_gid(ae.get(), 0);
      archive_entry_set_mtime(ae.get(), mtime, 0);
      archive_entry_set_ino64(ae.get(), ++ino);
      archive_entry_set_nlink(ae.get(), e.type == AE_IFDIR ? 2 : 1);
      if (e.type == AE_IFCHR) {
        archive_entry_set_rdevmajor(ae.get(), e.dev_major);
        archive_entry_set_rdevminor(ae.get(), e.dev_minor);
      }
      archive_entry_set_size(ae.get(), static_cast<la_int64_t>(e.data.size()));
      check(archive_write_header(a.get(), ae.get()), "entry " + path);
      if (!e.data.empty()) {
        la_ssize_t n = archive_write_data(a.get(), e.data.data(), e.data.size());
        if (n < 0 || static_cast<std::size_t>(n) != e.data.size())
          check(ARCHIVE_FATAL, "entry " + path);
      }
    }
    check(archive_write_close(a.get()), "close");
  }

 private:
  void add_parents(const std::string& path) {
    for (auto slash = path.find('/'); slash != std::string::npos; slash = path.find('/', slash + 1))
      entries_.try_emplace(path.substr(0, slash), CpioEntry{AE_IFDIR, 0755, {}, 0, 0});
  }

  std::map<std::string, CpioEntry> entries_;
  std::uint64_t bytes_ = 0;
};

}  // namespace

std::vector<std::string> default_initramfs_modules() {
  return {// The live media and the rootfs image on it.
          "squashfs", "overlay", "loop", "isofs",
          // Storage controllers and disks: hardware differs, kernels differ.
          "ahci?", "ata_piix?", "ata_generic?", "sd_mod?", "sr_mod?", "nvme?", "virtio_blk?",
          "virtio_scsi?", "virtio_pci?", "usb-storage?", "uas?", "xhci_pci?", "ehci_pci?",
          "mmc_block?", "sdhci_pci?",
          // A keyboard for the emergency shell.
          "usbhid?", "hid_generic?",
          // The file systems of installed systems (COS_* partitions) and the EFI partition.
          "ext4?", "crc32c_generic?", "vfat?", "nls_cp437?", "nls_iso8859-1?", "nls_ascii?",
          "nls_utf8?",
          // Verified images and encrypted partitions (install.encryption): dm-crypt with
          // AES-XTS (xts asks for ecb(aes) by name, and nothing here runs modprobe for it), the
          // kernel's cipher API libcryptsetup opens keyslots with, and the TPM.
          "dm_verity?", "dm_crypt?", "ecb?", "xts?", "aesni_intel?", "aes_generic?",
          "algif_skcipher?", "tpm_tis?", "tpm_crb?",
          // Network cards, for netboot (pok8s.fetch): virtual machines' and the common
          // server and desktop ones whose drivers need no firmware files.
          "virtio_net?", "e1000?", "e1000e?", "igb?", "ixgbe?", "vmxnet3?"};
}

bool is_static_executable(std::string_view elf) {
  // ELF header and program headers as the System V gABI defines them (EI_CLASS, EI_DATA,
  // e_phoff, e_phentsize, e_phnum; PT_INTERP = 3); four fields do not warrant a library.
  if (elf.size() < 64 || !elf.starts_with("\x7f"
                                          "ELF"))
    return false;
  bool is64 = elf[4] == 2, le = elf[5] == 1;
  if ((elf[4] != 1 && !is64) || (elf[5] != 1 && elf[5] != 2)) return false;
  std::uint16_t type = get16(elf, 16, le);
  if (type != 2 && type != 3) return false;  // ET_EXEC or ET_DYN (static-pie)
  std::uint64_t phoff = is64 ? get64(elf, 32, le) : get32(elf, 28, le);
  std::uint16_t phentsize = get16(elf, is64 ? 54 : 42, le);
  std::uint16_t phnum = get16(elf, is64 ? 56 : 44, le);
  if (phnum == 0 || phentsize < 4 || phoff > elf.size()) return false;
  if ((elf.size() - phoff) / phentsize < phnum) return false;
  for (std::uint16_t i = 0; i < phnum; ++i)
    if (get32(elf, phoff + std::size_t{i} * phentsize, le) == 3) return false;
  return true;
}

InitramfsResult write_initramfs(const FlatTree& tree, const KernelInfo& kernel,
                                const InitramfsOptions& options, const util::Path& out,
                                const util::Path& kernel_out) {
  const std::string what = fmt::format("the initramfs for kernel {}", kernel.version);
  auto fail = [&](ErrorKind kind, const std::string& reason) {
    throw Error(kind, fmt::format("Failed to assemble {}: {}", what, reason));
  };
  if (kernel.version.empty() || kernel.version.find('/') != std::string::npos ||
      kernel.version == "." || kernel.version == "..")
    fail(ErrorKind::kInvalidInput, fmt::format("\"{}\" is not a kernel version", kernel.version));

  const FlatEntry* kernel_entry = file_entry(tree, kernel.image_path);
  if (!kernel_entry)
    fail(ErrorKind::kNotFound, fmt::format("the image has no file /{}", kernel.image_path));
  auto moddir = resolve_tree_path(tree, "lib/modules/" + kernel.version);
  if (!moddir) moddir = resolve_tree_path(tree, "usr/lib/modules/" + kernel.version);
  if (!moddir)
    fail(ErrorKind::kNotFound, fmt::format("the image has no /lib/modules/{}", kernel.version));

  // Pass 1: the indexes.
  const FlatEntry* dep_entry = file_entry(tree, *moddir + "/modules.dep");
  if (!dep_entry)
    fail(ErrorKind::kNotFound,
         fmt::format("the image has no /{}/modules.dep (run depmod)", *moddir));
  const FlatEntry* builtin_entry = file_entry(tree, *moddir + "/modules.builtin");
  ModuleIndexLimits limits;
  std::string dep_text, builtin_text;
  std::set<std::string> wanted{dep_entry->path};
  if (builtin_entry) wanted.insert(builtin_entry->path);
  tree.read_files(wanted, [&](const FlatEntry& e, LayerReader& r) {
    if (e.path == dep_entry->path) dep_text = read_all(r, e, limits.max_bytes);
    if (builtin_entry && e.path == builtin_entry->path)
      builtin_text = read_all(r, e, limits.max_bytes);
  });
  ModuleIndex index =
      ModuleIndex::parse(dep_text, builtin_text, "kernel " + kernel.version, limits);

  InitramfsResult result;
  std::vector<std::string> names =
      options.modules.empty() ? default_initramfs_modules() : options.modules;
  std::vector<const ModuleEntry*> order = resolve_modules(index, names, &result.modules_skipped);

  // Pass 2: the modules, busybox and the kernel image, in layer order.
  std::map<std::string, std::vector<const ModuleEntry*>> module_files;  // data path -> modules
  for (const ModuleEntry* m : order) {
    const FlatEntry* e = file_entry(tree, *moddir + "/" + m->path);
    if (!e)
      fail(ErrorKind::kNotFound, fmt::format("modules.dep lists {}, but the image has no /{}/{}",
                                             m->name, *moddir, m->path));
    module_files[e->path].push_back(m);
  }
  const FlatEntry* busybox_entry = file_entry(tree, "bin/busybox");
  wanted.clear();
  for (const auto& [path, mods] : module_files) wanted.insert(path);
  if (busybox_entry) wanted.insert(busybox_entry->path);
  wanted.insert(kernel_entry->path);
  // pok8s-luks's bundle (its own loader and libraries), which opens encrypted partitions.
  std::set<std::string> helper_files;
  for (const auto& [path, entry] : tree.entries())
    if (path.starts_with(kLuksBundlePrefix) && entry.meta.type == rootfs::EntryType::kFile)
      helper_files.insert(path);
  wanted.insert(helper_files.begin(), helper_files.end());

  CpioTree cpio;
  const std::string modroot = "lib/modules/" + kernel.version + "/";
  util::TempFile kernel_tmp(kernel_out);
  bool kernel_written = false;
  tree.read_files(wanted, [&](const FlatEntry& e, LayerReader& r) {
    if (e.path == kernel_entry->path) {
      r.copy_to(kernel_tmp.fd(), "/" + e.path);
      kernel_written = true;
    }
    if (busybox_entry && e.path == busybox_entry->path) {
      std::string data = read_all(r, e, kMaxFileBytes);
      if (is_static_executable(data)) {
        cpio.file("bin/busybox", std::move(data), 0755);
        result.busybox = true;
      }
    }
    if (helper_files.count(e.path)) {
      cpio.file(e.path, read_all(r, e, kMaxFileBytes), e.meta.mode & 0755);
      result.luks = true;
    }
    auto it = module_files.find(e.path);
    if (it == module_files.end()) return;
    std::string data = read_all(r, e, kMaxFileBytes);
    for (const ModuleEntry* m : it->second) {
      std::string path = uncompressed_module_path(m->path);
      std::string ko = path == m->path ? data : decompress_module(data, "module /" + e.path);
      if (!ko.starts_with("\x7f"
                          "ELF"))
        fail(ErrorKind::kFormat, fmt::format("/{} is not an ELF object", e.path));
      cpio.file(modroot + path, std::move(ko));
    }
  });
  if (!kernel_written)
    fail(ErrorKind::kIo, fmt::format("/{} was not read from the image", kernel_entry->path));

  // The load list, and a modules.dep of what is included for the emergency shell's modprobe.
  std::string load_list =
      fmt::format("# Modules pok8s-init loads, in this order (kernel {}).\n", kernel.version);
  std::string dep_subset;
  for (const ModuleEntry* m : order) {
    std::string path = uncompressed_module_path(m->path);
    load_list += "/" + modroot + path + "\n";
    dep_subset += path + ":";
    for (const auto& d : m->dependencies)
      if (!index.is_builtin(d)) dep_subset += " " + uncompressed_module_path(d);
    dep_subset += "\n";
    result.modules_included.push_back(m->name);
  }
  cpio.file(std::string(kModuleLoadList), std::move(load_list));
  cpio.file(modroot + "modules.dep", std::move(dep_subset));
  cpio.file("init", util::read_file(options.init_binary, kMaxFileBytes), 0755);
  // The kernel opens /dev/console for init's stdio before init mounts devtmpfs.
  cpio.char_device("dev/console", 0600, 5, 1);
  for (const char* d : {"dev", "proc", "sys", "run", "sysroot", "etc/pok8s"}) cpio.dir(d);
  cpio.dir("tmp", 01777);

  util::TempFile tmp(out);
  cpio.write(tmp.fd(), options.mtime, options.zstd_level, out.string());
  struct stat st {};
  if (::fstat(tmp.fd(), &st) != 0) throw_errno("Failed to stat " + tmp.path().string(), errno);
  result.bytes = static_cast<std::uint64_t>(st.st_size);
  ::fchmod(tmp.fd(), 0644);
  ::fchmod(kernel_tmp.fd(), 0644);
  tmp.commit();
  kernel_tmp.commit();
  return result;
}

}  // namespace pok8s::boot
