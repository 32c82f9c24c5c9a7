// The initramfs and kernel lookup on small synthetic images: what goes in, in which order,
// decompressed, and the same bytes every time.
#include "pok8s/boot/initramfs.h"

#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <map>

#include "pok8s/boot/kernel.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "unit/rootfs/layer_builder.h"

namespace fs = std::filesystem;
using namespace pok8s;
using namespace pok8s::boot;
using pok8s::test::LayerBuilder;

namespace {

constexpr const char* kVersion = "6.1.0-99-amd64";
const std::string kModDir = std::string("usr/lib/modules/") + kVersion + "/";

// A module's bytes: an ELF magic and its name, enough for pok8s (it never links them).
std::string fake_module(const std::string& name) {
  return "\x7f"
         "ELF fake module " +
         name;
}

// Compresses `data` with the host's `tool` (xz, zstd, gzip), as distributions do.
std::string compress_with(const std::string& tool, const std::string& data, const fs::path& dir) {
  fs::path in = dir / ("in-" + util::random_hex(4)), out = dir / ("out-" + util::random_hex(4));
  util::write_file_atomic(in, data);
  std::string cmd = tool + " -c " + in.string() + " > " + out.string() + " 2>/dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::string result = util::read_file(out);
  fs::remove(in);
  fs::remove(out);
  return result;
}

struct CpioFile {
  unsigned type = 0;
  unsigned mode = 0;
  std::int64_t mtime = 0;
  std::int64_t uid = -1;
  std::string data;
  unsigned rdev_major = 0;
};

// Every entry of a (compressed) cpio, read back with libarchive.
std::vector<std::pair<std::string, CpioFile>> read_cpio(const fs::path& path) {
  std::vector<std::pair<std::string, CpioFile>> out;
  archive* a = archive_read_new();
  archive_read_support_filter_all(a);
  archive_read_support_format_cpio(a);
  EXPECT_EQ(archive_read_open_filename(a, path.c_str(), 1 << 16), ARCHIVE_OK);
  archive_entry* e = nullptr;
  while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
    CpioFile f;
    f.type = archive_entry_filetype(e);
    f.mode = archive_entry_perm(e);
    f.mtime = archive_entry_mtime(e);
    f.uid = archive_entry_uid(e);
    f.rdev_major = static_cast<unsigned>(archive_entry_rdevmajor(e));
    std::array<char, 8192> buf{};
    la_ssize_t n;
    while ((n = archive_read_data(a, buf.data(), buf.size())) > 0)
      f.data.append(buf.data(), static_cast<std::size_t>(n));
    out.emplace_back(archive_entry_pathname(e), std::move(f));
  }
  EXPECT_EQ(archive_filter_code(a, 0), ARCHIVE_FILTER_ZSTD);
  archive_read_free(a);
  return out;
}

class Initramfs : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::path dir = scratch_.path();
    util::write_file_atomic(dir / "pok8s-init",
                            "\x7f"
                            "ELF the init");
    LayerBuilder base;
    base.dir("usr")
        .dir("usr/lib")
        .symlink("lib", "usr/lib")
        .dir("usr/bin")
        .symlink("bin", "usr/bin");
    base.dir("boot").file(std::string("boot/vmlinuz-") + kVersion, "MZ the kernel");
    base.symlink("boot/vmlinuz", std::string("vmlinuz-") + kVersion);
    base.file(kModDir + "kernel/fs/squashfs/squashfs.ko.xz",
              compress_with("xz", fake_module("squashfs"), dir));
    base.file(kModDir + "kernel/fs/overlayfs/overlay.ko.zst",
              compress_with("zstd -q", fake_module("overlay"), dir));
    base.file(kModDir + "kernel/drivers/block/loop.ko", fake_module("loop"));
    base.file(kModDir + "kernel/fs/isofs/isofs.ko.gz",
              compress_with("gzip", fake_module("isofs"), dir));
    base.file(kModDir + "kernel/drivers/scsi/sr_mod.ko", fake_module("sr_mod"));
    base.file(kModDir + "kernel/drivers/cdrom/cdrom.ko", fake_module("cdrom"));
    base.file(kModDir + "kernel/fs/unwanted.ko", fake_module("unwanted"));
    base.file(kModDir + "modules.dep", "stale\n");
    base.file("usr/bin/busybox", util::read_file("/usr/bin/busybox"), 0755);
    // pok8s-luks's bundle, as convert ships it.
    base.dir("usr/lib/pok8s/luks/lib")
        .file("usr/lib/pok8s/luks/pok8s-luks",
              "\x7f"
              "ELF luks",
              0755)
        .file("usr/lib/pok8s/luks/lib/libcryptsetup.so.12",
              "\x7f"
              "ELF lib",
              0755);
    // A second layer replaces modules.dep, as a kernel upgrade in a derived image would.
    LayerBuilder upper;
    upper.file(kModDir + "modules.dep",
               "kernel/fs/squashfs/squashfs.ko.xz:\n"
               "kernel/fs/overlayfs/overlay.ko.zst:\n"
               "kernel/drivers/block/loop.ko:\n"
               "kernel/fs/isofs/isofs.ko.gz:\n"
               "kernel/drivers/scsi/sr_mod.ko: kernel/drivers/cdrom/cdrom.ko\n"
               "kernel/drivers/cdrom/cdrom.ko:\n"
               "kernel/fs/unwanted.ko:\n");
    upper.file(kModDir + "modules.builtin", "kernel/fs/ext4/ext4.ko\n");
    auto l1 = test::write_layer(dir, "l1", base.tar(), test::Compression::kGzip);
    auto l2 = test::write_layer(dir, "l2", upper.tar(), test::Compression::kZstd);
    tree_ = std::make_unique<rootfs::FlatTree>(rootfs::FlatTree::build(
        {{l1.path, "layer 1", l1.diff_id}, {l2.path, "layer 2", l2.diff_id}}));
    options_.init_binary = dir / "pok8s-init";
    options_.modules = {"sr_mod", "squashfs", "overlay", "loop", "isofs", "ext4", "nvme?"};
    options_.mtime = 1700000000;
  }

  fs::path out(const std::string& name) const { return scratch_.path() / name; }

  util::TempDir scratch_ = util::TempDir::scratch();
  std::unique_ptr<rootfs::FlatTree> tree_;
  InitramfsOptions options_;
};

}  // namespace

TEST_F(Initramfs, FindsTheVersionedKernelNotItsSymlink) {
  auto kernels = find_kernels(*tree_);
  ASSERT_EQ(kernels.size(), 1u);
  EXPECT_EQ(kernels[0].version, kVersion);
  EXPECT_EQ(kernels[0].image_path, std::string("boot/vmlinuz-") + kVersion);
}

TEST_F(Initramfs, HoldsInitModulesInLoadOrderAndTheEmptyDirectories) {
  auto result =
      write_initramfs(*tree_, find_kernels(*tree_)[0], options_, out("initrd"), out("vmlinuz"));
  EXPECT_EQ(result.modules_included,
            (std::vector<std::string>{"cdrom", "sr_mod", "squashfs", "overlay", "loop", "isofs"}));
  EXPECT_EQ(result.modules_skipped, std::vector<std::string>{"nvme"});
  EXPECT_TRUE(result.busybox);
  EXPECT_EQ(result.bytes, fs::file_size(out("initrd")));
  EXPECT_EQ(util::read_file(out("vmlinuz")), "MZ the kernel");

  std::map<std::string, CpioFile> files;
  std::vector<std::string> order;
  for (auto& [path, f] : read_cpio(out("initrd"))) {
    order.push_back(path);
    files[path] = f;
  }
  EXPECT_TRUE(std::is_sorted(order.begin(), order.end())) << "entries are written sorted";
  EXPECT_EQ(files["init"].data,
            "\x7f"
            "ELF the init");
  EXPECT_EQ(files["init"].mode, 0755u);
  std::string m = std::string("lib/modules/") + kVersion + "/";
  EXPECT_EQ(files[m + "kernel/fs/squashfs/squashfs.ko"].data, fake_module("squashfs"));
  EXPECT_EQ(files[m + "kernel/fs/overlayfs/overlay.ko"].data, fake_module("overlay"));
  EXPECT_EQ(files[m + "kernel/fs/isofs/isofs.ko"].data, fake_module("isofs"));
  EXPECT_FALSE(files.contains(m + "kernel/fs/unwanted.ko"));
  EXPECT_EQ(files["etc/pok8s/modules.load"].data,
            std::string("# Modules pok8s-init loads, in this order (kernel ") + kVersion + ").\n" +
                "/" + m + "kernel/drivers/cdrom/cdrom.ko\n/" + m +
                "kernel/drivers/scsi/sr_mod.ko\n/" + m + "kernel/fs/squashfs/squashfs.ko\n/" + m +
                "kernel/fs/overlayfs/overlay.ko\n/" + m + "kernel/drivers/block/loop.ko\n/" + m +
                "kernel/fs/isofs/isofs.ko\n");
  EXPECT_NE(files[m + "modules.dep"].data.find(
                "kernel/drivers/scsi/sr_mod.ko: kernel/drivers/cdrom/cdrom.ko\n"),
            std::string::npos);
  EXPECT_TRUE(is_static_executable(files["bin/busybox"].data));
  // The bundle that opens encrypted partitions, at the path pok8s-init runs it from.
  EXPECT_TRUE(result.luks);
  EXPECT_EQ(files["usr/lib/pok8s/luks/pok8s-luks"].data,
            "\x7f"
            "ELF luks");
  EXPECT_EQ(files["usr/lib/pok8s/luks/pok8s-luks"].mode, 0755u);
  EXPECT_EQ(files["usr/lib/pok8s/luks/lib/libcryptsetup.so.12"].data,
            "\x7f"
            "ELF lib");
  EXPECT_EQ(files["dev/console"].type, static_cast<unsigned>(AE_IFCHR));
  EXPECT_EQ(files["dev/console"].rdev_major, 5u);
  for (const char* d : {"dev", "proc", "sys", "run", "sysroot", "tmp"})
    EXPECT_EQ(files[d].type, static_cast<unsigned>(AE_IFDIR)) << d;
  EXPECT_EQ(files["tmp"].mode, 01777u);
  for (const auto& [path, f] : files) {
    EXPECT_EQ(f.mtime, 1700000000) << path;
    EXPECT_EQ(f.uid, 0) << path;
  }
}

TEST_F(Initramfs, IsBitForBitReproducible) {
  auto kernel = find_kernels(*tree_)[0];
  write_initramfs(*tree_, kernel, options_, out("a"), out("ka"));
  write_initramfs(*tree_, kernel, options_, out("b"), out("kb"));
  EXPECT_EQ(util::read_file(out("a")), util::read_file(out("b")));
}

TEST_F(Initramfs, NamesMissingModulesAndLeavesNoFileBehind) {
  options_.modules = {"squashfs", "btrfs", "zfs"};
  try {
    write_initramfs(*tree_, find_kernels(*tree_)[0], options_, out("initrd"), out("vmlinuz"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("btrfs, zfs"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out("initrd")));
  EXPECT_FALSE(fs::exists(out("vmlinuz")));
  for (const auto& e : fs::directory_iterator(scratch_.path()))
    EXPECT_FALSE(e.path().filename().string().starts_with(".")) << "temporary left: " << e.path();
}

TEST_F(Initramfs, RefusesAKernelWithoutModules) {
  KernelInfo other{"5.10.0-1-amd64", std::string("boot/vmlinuz-") + kVersion};
  EXPECT_THROW(write_initramfs(*tree_, other, options_, out("initrd"), out("vmlinuz")), Error);
  EXPECT_FALSE(fs::exists(out("initrd")));
}

TEST(FindKernels, FindsModuleDirectoryKernelsNewestFirst) {
  util::TempDir dir = util::TempDir::scratch();
  LayerBuilder layer;
  layer.dir("usr").dir("usr/lib").symlink("lib", "usr/lib");
  layer.file("usr/lib/modules/6.9.1-100.fc40.x86_64/vmlinuz", "MZ 6.9");
  layer.file("usr/lib/modules/6.10.2-200.fc40.x86_64/vmlinuz", "MZ 6.10");
  layer.dir("usr/lib/modules/6.8.0-extra");  // modules without a kernel image
  auto l = test::write_layer(dir.path(), "l", layer.tar());
  auto tree = rootfs::FlatTree::build({{l.path, "layer", l.diff_id}});
  auto kernels = find_kernels(tree);
  ASSERT_EQ(kernels.size(), 2u);
  EXPECT_EQ(kernels[0].version, "6.10.2-200.fc40.x86_64");
  EXPECT_EQ(kernels[0].image_path, "usr/lib/modules/6.10.2-200.fc40.x86_64/vmlinuz");
  EXPECT_EQ(kernels[1].version, "6.9.1-100.fc40.x86_64");
  EXPECT_EQ(resolve_tree_path(tree, "/lib/modules/6.8.0-extra"), "usr/lib/modules/6.8.0-extra");
  EXPECT_EQ(resolve_tree_path(tree, "lib/../../lib/modules/nope"), std::nullopt);
}

TEST(StaticExecutable, TellsStaticBusyboxFromDynamicPrograms) {
  EXPECT_TRUE(is_static_executable(util::read_file("/usr/bin/busybox")));
  EXPECT_FALSE(is_static_executable(util::read_file("/bin/ls")));
  EXPECT_FALSE(is_static_executable("#!/bin/sh\n"));
  EXPECT_FALSE(
      is_static_executable(std::string("\x7f"
                                       "ELF\x02\x01",
                                       6)));
}

TEST(KernelVersion, OrdersNumbersAsNumbers) {
  EXPECT_TRUE(version_less("6.9.0", "6.10.0"));
  EXPECT_FALSE(version_less("6.10.0", "6.9.0"));
  EXPECT_TRUE(version_less("6.1.0-26-amd64", "6.1.0-27-amd64"));
  EXPECT_FALSE(version_less("6.1", "6.1"));
}
