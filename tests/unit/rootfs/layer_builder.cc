// Tar layers for tests, written with libarchive so the reader is checked against another
// writer's idea of tar, plus hand-made damage for the attack tests.
#include "unit/rootfs/layer_builder.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace pok8s::test {

namespace {

la_ssize_t append_cb(archive*, void* client, const void* buf, size_t n) {
  static_cast<std::string*>(client)->append(static_cast<const char*>(buf), n);
  return static_cast<la_ssize_t>(n);
}

void check(int r, archive* a, const char* what) {
  if (r < ARCHIVE_WARN)
    throw std::runtime_error(std::string(what) + ": " + (archive_error_string(a) ?: "?"));
}

std::string base_name(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string dir_name(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
}

}  // namespace

LayerBuilder& LayerBuilder::file(std::string path, std::string data, unsigned mode) {
  Entry e;
  e.path = std::move(path);
  e.data = std::move(data);
  e.mode = mode;
  entries_.push_back(std::move(e));
  return *this;
}

LayerBuilder& LayerBuilder::dir(std::string path, unsigned mode) {
  Entry e;
  e.kind = Kind::kDir;
  e.path = std::move(path);
  e.mode = mode;
  entries_.push_back(std::move(e));
  return *this;
}

LayerBuilder& LayerBuilder::symlink(std::string path, std::string target) {
  Entry e;
  e.kind = Kind::kSymlink;
  e.path = std::move(path);
  e.target = std::move(target);
  e.mode = 0777;
  entries_.push_back(std::move(e));
  return *this;
}

LayerBuilder& LayerBuilder::hardlink(std::string path, std::string target) {
  Entry e;
  e.kind = Kind::kHardlink;
  e.path = std::move(path);
  e.target = std::move(target);
  entries_.push_back(std::move(e));
  return *this;
}

LayerBuilder& LayerBuilder::device(std::string path, bool block, std::uint32_t major,
                                   std::uint32_t minor) {
  Entry e;
  e.kind = block ? Kind::kBlockDevice : Kind::kCharDevice;
  e.path = std::move(path);
  e.mode = 0600;
  e.dev_major = major;
  e.dev_minor = minor;
  entries_.push_back(std::move(e));
  return *this;
}

LayerBuilder& LayerBuilder::fifo(std::string path, unsigned mode) {
  Entry e;
  e.kind = Kind::kFifo;
  e.path = std::move(path);
  e.mode = mode;
  entries_.push_back(std::move(e));
  return *this;
}

LayerBuilder& LayerBuilder::whiteout(const std::string& path) {
  return file(dir_name(path) + ".wh." + base_name(path), "", 0644);
}

LayerBuilder& LayerBuilder::opaque(const std::string& dir) {
  return file(dir.empty() ? ".wh..wh..opq" : dir + "/.wh..wh..opq", "", 0644);
}

LayerBuilder& LayerBuilder::owner(std::uint32_t uid, std::uint32_t gid) {
  entries_.back().uid = uid;
  entries_.back().gid = gid;
  return *this;
}

LayerBuilder& LayerBuilder::mtime(std::int64_t sec) {
  entries_.back().mtime = sec;
  return *this;
}

LayerBuilder& LayerBuilder::xattr(std::string name, std::string value) {
  entries_.back().xattrs.emplace_back(std::move(name), std::move(value));
  return *this;
}

std::string LayerBuilder::tar() const {
  std::string out;
  archive* a = archive_write_new();
  check(archive_write_set_format_pax_restricted(a), a, "format");
  check(archive_write_set_bytes_in_last_block(a, 1), a, "block");
  check(archive_write_open(a, &out, nullptr, append_cb, nullptr), a, "open");
  for (const Entry& e : entries_) {
    archive_entry* ae = archive_entry_new();
    archive_entry_set_pathname(ae, e.path.c_str());
    archive_entry_set_perm(ae, static_cast<mode_t>(e.mode));
    archive_entry_set_uid(ae, e.uid);
    archive_entry_set_gid(ae, e.gid);
    archive_entry_set_mtime(ae, static_cast<time_t>(e.mtime), 0);
    switch (e.kind) {
      case Kind::kFile:
        archive_entry_set_filetype(ae, AE_IFREG);
        archive_entry_set_size(ae, static_cast<la_int64_t>(e.data.size()));
        break;
      case Kind::kDir:
        archive_entry_set_filetype(ae, AE_IFDIR);
        break;
      case Kind::kSymlink:
        archive_entry_set_filetype(ae, AE_IFLNK);
        archive_entry_set_symlink(ae, e.target.c_str());
        break;
      case Kind::kHardlink:
        archive_entry_set_filetype(ae, AE_IFREG);
        archive_entry_set_hardlink(ae, e.target.c_str());
        archive_entry_set_size(ae, 0);
        break;
      case Kind::kCharDevice:
      case Kind::kBlockDevice:
        archive_entry_set_filetype(ae, e.kind == Kind::kCharDevice ? AE_IFCHR : AE_IFBLK);
        archive_entry_set_rdevmajor(ae, e.dev_major);
        archive_entry_set_rdevminor(ae, e.dev_minor);
        break;
      case Kind::kFifo:
        archive_entry_set_filetype(ae, AE_IFIFO);
        break;
    }
    for (const auto& [name, value] : e.xattrs)
      archive_entry_xattr_add_entry(ae, name.c_str(), value.data(), value.size());
    check(archive_write_header(a, ae), a, "header");
    if (e.kind == Kind::kFile && !e.data.empty())
      if (archive_write_data(a, e.data.data(), e.data.size()) !=
          static_cast<la_ssize_t>(e.data.size()))
        throw std::runtime_error("short tar write");
    archive_entry_free(ae);
  }
  check(archive_write_close(a), a, "close");
  archive_write_free(a);
  return out;
}

std::string compress(const std::string& tar, Compression compression) {
  if (compression == Compression::kNone) return tar;
  std::string out;
  archive* a = archive_write_new();
  check(archive_write_set_format_raw(a), a, "format");
  check(compression == Compression::kGzip ? archive_write_add_filter_gzip(a)
                                          : archive_write_add_filter_zstd(a),
        a, "filter");
  check(archive_write_set_bytes_in_last_block(a, 1), a, "block");
  check(archive_write_open(a, &out, nullptr, append_cb, nullptr), a, "open");
  archive_entry* ae = archive_entry_new();
  archive_entry_set_pathname(ae, "layer.tar");
  archive_entry_set_filetype(ae, AE_IFREG);
  archive_entry_set_size(ae, static_cast<la_int64_t>(tar.size()));
  check(archive_write_header(a, ae), a, "header");
  if (!tar.empty() &&
      archive_write_data(a, tar.data(), tar.size()) != static_cast<la_ssize_t>(tar.size()))
    throw std::runtime_error("short compressed write");
  archive_entry_free(ae);
  check(archive_write_close(a), a, "close");
  archive_write_free(a);
  return out;
}

std::string patch_size(std::string tar, const std::string& name, std::uint64_t size) {
  for (std::size_t off = 0; off + 512 <= tar.size(); off += 512) {
    char* h = tar.data() + off;
    if (std::strncmp(h, name.c_str(), 100) != 0 || std::memcmp(h + 257, "ustar", 5) != 0) continue;
    std::snprintf(h + 124, 12, "%011llo", static_cast<unsigned long long>(size));
    // The ustar checksum: the header's bytes summed with the checksum field read as spaces.
    std::memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; ++i) sum += static_cast<unsigned char>(h[i]);
    std::snprintf(h + 148, 8, "%06o", sum);
    h[155] = ' ';
    return tar;
  }
  throw std::runtime_error("no ustar header named " + name);
}

WrittenLayer write_layer(const std::filesystem::path& dir, const std::string& name,
                         const std::string& tar, Compression compression) {
  std::string blob = compress(tar, compression);
  std::filesystem::path path = dir / name;
  std::ofstream(path, std::ios::binary)
      .write(blob.data(), static_cast<std::streamsize>(blob.size()));
  return {path, oci::Digest::sha256_of(blob), oci::Digest::sha256_of(tar)};
}

bool is_root() {
  return ::geteuid() == 0;
}

RootfsTest::RootfsTest() : scratch_(util::TempDir::scratch()), root_(scratch_.path() / "root") {
  std::filesystem::create_directory(root_);
  root_fd_ = util::open_file(root_, O_RDONLY | O_DIRECTORY);
  util::write_file_atomic(canary(), "canary");
  // A directory outside the root an escape through "../" or "/" would land in.
  std::filesystem::create_directory(scratch() / "outside");
}

void RootfsTest::TearDown() {
  EXPECT_TRUE(canary_intact()) << "a layer wrote outside the root";
}

rootfs::ApplyStats RootfsTest::apply(const LayerBuilder& layer, Compression compression,
                                     const rootfs::ApplyOptions& options) {
  return apply_tar(layer.tar(), compression, options);
}

rootfs::ApplyStats RootfsTest::apply_tar(const std::string& tar, Compression compression,
                                         const rootfs::ApplyOptions& options,
                                         std::optional<oci::Digest> diff_id) {
  WrittenLayer w = write_layer(scratch(), "layer" + std::to_string(++layers_), tar, compression);
  return rootfs::apply_layer(root_fd(), w.path, "layer " + std::to_string(layers_), diff_id,
                             options);
}

std::string RootfsTest::read(const std::filesystem::path& rel) const {
  return util::read_file(root_ / rel);
}

bool RootfsTest::canary_intact() const {
  std::error_code ec;
  if (std::filesystem::is_symlink(canary(), ec)) return false;
  if (util::read_file(canary()) != "canary") return false;
  return std::filesystem::is_empty(scratch() / "outside");
}

}  // namespace pok8s::test
