// The depmod text indexes and the dependency closure pok8s puts in an initramfs.
#include "pok8s/boot/modules.h"

#include <gtest/gtest.h>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::boot;

namespace {

constexpr const char* kDep =
    "kernel/fs/squashfs/squashfs.ko.xz:\n"
    "kernel/drivers/scsi/sr_mod.ko.xz: kernel/drivers/cdrom/cdrom.ko.xz "
    "kernel/drivers/scsi/scsi_mod.ko.xz kernel/lib/scsi_common.ko.xz\n"
    "kernel/drivers/cdrom/cdrom.ko.xz:\n"
    "kernel/drivers/scsi/scsi_mod.ko.xz: kernel/lib/scsi_common.ko.xz\n"
    "kernel/lib/scsi_common.ko.xz:\n"
    "kernel/drivers/usb/storage/usb-storage.ko.zst: kernel/drivers/scsi/scsi_mod.ko.xz "
    "kernel/lib/scsi_common.ko.xz kernel/drivers/usb/core/usbcore.ko\n"
    "kernel/fs/nls/nls_iso8859-1.ko.gz:\n";
constexpr const char* kBuiltin = "kernel/drivers/usb/core/usbcore.ko\nkernel/fs/ext4/ext4.ko\n";

std::vector<std::string> names(const std::vector<const ModuleEntry*>& order) {
  std::vector<std::string> out;
  for (const auto* m : order) out.push_back(m->name);
  return out;
}

}  // namespace

TEST(ModuleName, StripsDirectoryAndCompressionAndUnifiesDashes) {
  EXPECT_EQ(module_name("kernel/fs/nls/nls_iso8859-1.ko.xz"), "nls_iso8859_1");
  EXPECT_EQ(module_name("usb-storage"), "usb_storage");
  EXPECT_EQ(module_name("a/b/virtio_blk.ko"), "virtio_blk");
  EXPECT_EQ(uncompressed_module_path("a/b.ko.zst"), "a/b.ko");
  EXPECT_EQ(uncompressed_module_path("a/b.ko"), "a/b.ko");
}

TEST(ModuleIndex, ResolvesDependenciesBeforeTheModulesThatNeedThem) {
  auto index = ModuleIndex::parse(kDep, kBuiltin, "kernel 6.1");
  auto order = resolve_modules(index, {"sr_mod", "squashfs"});
  EXPECT_EQ(names(order),
            (std::vector<std::string>{"cdrom", "scsi_common", "scsi_mod", "sr_mod", "squashfs"}));
}

TEST(ModuleIndex, TreatsDashAndUnderscoreAsTheSameName) {
  auto index = ModuleIndex::parse(kDep, kBuiltin, "kernel 6.1");
  auto order = resolve_modules(index, {"usb_storage", "nls_iso8859_1", "usb-storage"});
  EXPECT_EQ(names(order),
            (std::vector<std::string>{"scsi_common", "scsi_mod", "usb_storage", "nls_iso8859_1"}));
  EXPECT_EQ(order[2]->path, "kernel/drivers/usb/storage/usb-storage.ko.zst");
}

TEST(ModuleIndex, SkipsBuiltinModulesAndBuiltinDependencies) {
  auto index = ModuleIndex::parse(kDep, kBuiltin, "kernel 6.1");
  EXPECT_TRUE(index.is_builtin("ext4"));
  auto order = resolve_modules(index, {"ext4", "usb-storage"});
  EXPECT_EQ(names(order), (std::vector<std::string>{"scsi_common", "scsi_mod", "usb_storage"}));
}

TEST(ModuleIndex, LeavesOutMissingOptionalModulesAndNamesThem) {
  auto index = ModuleIndex::parse(kDep, kBuiltin, "kernel 6.1");
  std::vector<std::string> skipped;
  auto order = resolve_modules(index, {"nvme?", "squashfs", "virtio-blk?"}, &skipped);
  EXPECT_EQ(names(order), std::vector<std::string>{"squashfs"});
  EXPECT_EQ(skipped, (std::vector<std::string>{"nvme", "virtio_blk"}));
}

TEST(ModuleIndex, RefusesMissingRequiredModulesNamingEachOne) {
  auto index = ModuleIndex::parse(kDep, kBuiltin, "kernel 6.1");
  try {
    resolve_modules(index, {"overlay", "squashfs", "loop"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("overlay, loop"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("kernel 6.1"), std::string::npos) << e.what();
  }
}

TEST(ModuleIndex, MakesOldAbsolutePathsRelative) {
  auto index = ModuleIndex::parse(
      "/lib/modules/2.6.32/kernel/fs/a.ko: /lib/modules/2.6.32/kernel/fs/b.ko\n"
      "/lib/modules/2.6.32/kernel/fs/b.ko:\n",
      "", "kernel 2.6.32");
  auto order = resolve_modules(index, {"a"});
  ASSERT_EQ(order.size(), 2u);
  EXPECT_EQ(order[0]->path, "kernel/fs/b.ko");
  EXPECT_EQ(order[1]->path, "kernel/fs/a.ko");
}

TEST(ModuleIndex, RefusesPathsLeavingTheModuleDirectory) {
  EXPECT_THROW(ModuleIndex::parse("kernel/../../../etc/x.ko:\n", "", "k"), Error);
  EXPECT_THROW(ModuleIndex::parse("/etc/x.ko:\n", "", "k"), Error);
  EXPECT_THROW(ModuleIndex::parse("a.ko: kernel//b.ko\n", "", "k"), Error);
  EXPECT_THROW(ModuleIndex::parse("", "../x.ko\n", "k"), Error);
}

TEST(ModuleIndex, NamesTheLineOfAMalformedEntry) {
  try {
    ModuleIndex::parse("a.ko:\nkernel/b.txt\n", "", "kernel 6.1");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kFormat);
    EXPECT_NE(std::string(e.what()).find("modules.dep of kernel 6.1: line 2"), std::string::npos)
        << e.what();
  }
}

TEST(ModuleIndex, RefusesDependencyCyclesAndUnlistedDependencies) {
  auto cyclic = ModuleIndex::parse("a.ko: b.ko\nb.ko: a.ko\n", "", "k");
  EXPECT_THROW(resolve_modules(cyclic, {"a"}), Error);
  auto dangling = ModuleIndex::parse("a.ko: gone.ko\n", "", "k");
  EXPECT_THROW(resolve_modules(dangling, {"a"}), Error);
}

TEST(ModuleIndex, RefusesAnIndexOverItsLimits) {
  ModuleIndexLimits limits;
  limits.max_modules = 2;
  EXPECT_THROW(ModuleIndex::parse("a.ko:\nb.ko:\nc.ko:\n", "", "k", limits), Error);
  limits = {};
  limits.max_dependencies = 1;
  EXPECT_THROW(ModuleIndex::parse("a.ko: b.ko c.ko\n", "", "k", limits), Error);
}
