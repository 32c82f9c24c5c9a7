// ext4 file systems made inside a partition of a disk image, read back with e2fsprogs' own
// checker and debugfs from the partition's bytes.
#include "pok8s/image/ext4.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pok8s/image/gpt.h"
#include "pok8s/util/error.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::image;

namespace {

// The bytes of [offset, offset + size) of `image`, as a file of their own.
util::Path extract(const util::Path& image, std::uint64_t offset, std::uint64_t size,
                   const util::Path& out) {
  std::string data(size, '\0');
  util::UniqueFd in = util::open_file(image, O_RDONLY);
  EXPECT_EQ(::pread(in.get(), data.data(), size, static_cast<off_t>(offset)),
            static_cast<ssize_t>(size));
  util::write_file_atomic(out, data);
  return out;
}

class Ext4 : public ::testing::Test {
 protected:
  void SetUp() override {
    util::make_dirs(dir_.path() / "tree/etc");
    util::write_file_atomic(dir_.path() / "tree/etc/pok8s.yaml", "#cloud-config\nhostname: x\n");
    GptLayout l;
    l.disk_uuid = derived_uuid("t", "disk");
    l.disk_size = 64 * kMiB;
    l.partitions = {{"COS_GRUB", kEspType, derived_uuid("t", "g"), 8 * kMiB, false},
                    {"COS_OEM", kLinuxDataType, derived_uuid("t", "o"), 0, false}};
    extents_ = write_gpt(disk(), l);
  }
  util::Path disk() const { return dir_.path() / "disk.raw"; }
  Ext4Options oem() const {
    return {"COS_OEM", derived_uuid("t", "fs-oem"), extents_[1].offset, extents_[1].size,
            1700000000};
  }
  util::TempDir dir_ = util::TempDir::scratch();
  std::vector<PartitionExtent> extents_;
};

TEST_F(Ext4, FillsThePartitionFromATreeAndPassesFsck) {
  write_ext4(disk(), dir_.path() / "tree", oem());
  util::Path part = extract(disk(), extents_[1].offset, extents_[1].size, dir_.path() / "oem.img");
  auto fsck = util::run_process({"e2fsck", "-fn", part.string()});
  EXPECT_EQ(fsck.status, 0) << fsck.output;
  auto cat = util::run_process({"debugfs", "-R", "cat /etc/pok8s.yaml", part.string()});
  EXPECT_NE(cat.output.find("hostname: x"), std::string::npos) << cat.output;
  auto header = util::run_process({"dumpe2fs", "-h", part.string()});
  EXPECT_NE(header.output.find("COS_OEM"), std::string::npos);
  EXPECT_NE(header.output.find(oem().uuid), std::string::npos) << header.output;
  // The GPT around it is untouched.
  auto table = util::run_process({"sfdisk", "--dump", disk().string()});
  EXPECT_NE(table.output.find("name=\"COS_OEM\""), std::string::npos) << table.output;
}

TEST_F(Ext4, TheSameInputsGiveTheSameBytes) {
  write_ext4(disk(), dir_.path() / "tree", oem());
  std::string first = util::file_sha256(disk());
  write_ext4(disk(), dir_.path() / "tree", oem());
  EXPECT_EQ(util::file_sha256(disk()), first);
}

TEST_F(Ext4, TheTreesChangeAndAccessTimesDoNotLeakIn) {
  // The caller pins modes and modification times; change and access times it cannot set.
  util::Path file = dir_.path() / "tree/etc/pok8s.yaml";
  write_ext4(disk(), dir_.path() / "tree", oem());
  std::string first = util::file_sha256(disk());
  ::sleep(1);
  ASSERT_EQ(::chmod(file.c_str(), 0600), 0);  // a new change time, same mode as before below
  ASSERT_EQ(::chmod(file.c_str(), 0644), 0);
  util::read_file(file);
  write_ext4(disk(), dir_.path() / "tree", oem());
  EXPECT_EQ(util::file_sha256(disk()), first);
  util::Path part = extract(disk(), extents_[1].offset, extents_[1].size, dir_.path() / "oem.img");
  auto stat = util::run_process({"debugfs", "-R", "stat /etc/pok8s.yaml", part.string()});
  EXPECT_NE(stat.output.find(" ctime: 0x6553f100:00000000"), std::string::npos) << stat.output;
  auto fsck = util::run_process({"e2fsck", "-fn", part.string()});
  EXPECT_EQ(fsck.status, 0) << fsck.output;
}

TEST_F(Ext4, RefusesWhatItCannotMake) {
  auto o = oem();
  o.label = "COS_PERSISTENT_TOO_LONG";
  EXPECT_THROW(write_ext4(disk(), {}, o), Error);
  o = oem();
  o.size += 64 * kMiB;
  try {
    write_ext4(disk(), {}, o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("would end at"), std::string::npos) << e.what();
  }
  o = oem();
  o.uuid = "x";
  EXPECT_THROW(write_ext4(disk(), {}, o), Error);
}

}  // namespace
