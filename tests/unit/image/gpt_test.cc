// GPT images written with libfdisk, read back by util-linux's sfdisk: what a partitioning tool
// on the node will see.
#include "pok8s/image/gpt.h"

#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "pok8s/util/error.h"
#include "pok8s/util/process.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::image;

namespace {

std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

GptLayout layout_for(std::uint64_t disk_mib) {
  GptLayout l;
  l.disk_uuid = derived_uuid("build-1", "disk");
  l.disk_size = disk_mib * kMiB;
  l.partitions = {
      {"BIOS", kBiosBootType, derived_uuid("build-1", "BIOS"), 1 * kMiB, true},
      {"COS_GRUB", kEspType, derived_uuid("build-1", "COS_GRUB"), 8 * kMiB, false},
      {"COS_OEM", kLinuxDataType, derived_uuid("build-1", "COS_OEM"), 4 * kMiB, false},
      {"COS_PERSISTENT", kLinuxDataType, derived_uuid("build-1", "COS_PERSISTENT"), 0, false},
  };
  return l;
}

std::string error_of(const GptLayout& l) {
  try {
    plan_gpt(l);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    return e.what();
  }
  return "";
}

TEST(Gpt, SfdiskReadsBackEveryPartitionAsWritten) {
  util::TempDir dir = util::TempDir::scratch();
  util::Path disk = dir.path() / "disk.raw";
  GptLayout l = layout_for(64);
  auto extents = write_gpt(disk, l);
  ASSERT_EQ(extents.size(), 4u);
  EXPECT_EQ(extents[0].offset, 1 * kMiB);
  EXPECT_EQ(extents[3].offset, 14 * kMiB);
  EXPECT_EQ(extents[3].size, 49 * kMiB);  // the last MiB is the backup GPT's

  auto r = util::run_process({"sfdisk", "--json", disk.string()});
  ASSERT_EQ(r.status, 0) << r.output;
  auto table = nlohmann::json::parse(r.output)["partitiontable"];
  EXPECT_EQ(table["label"], "gpt");
  EXPECT_EQ(table["id"], upper(l.disk_uuid)) << table;
  ASSERT_EQ(table["partitions"].size(), 4u) << table;
  for (std::size_t i = 0; i < 4; ++i) {
    const auto& p = table["partitions"][i];
    EXPECT_EQ(p["start"].get<std::uint64_t>() * 512, extents[i].offset) << p;
    EXPECT_EQ(p["size"].get<std::uint64_t>() * 512, extents[i].size) << p;
    EXPECT_EQ(p["name"], l.partitions[i].name);
    EXPECT_EQ(p["type"], l.partitions[i].type);
    EXPECT_EQ(p["uuid"], upper(l.partitions[i].uuid));
  }
  EXPECT_EQ(table["partitions"][0]["attrs"], "LegacyBIOSBootable");
}

TEST(Gpt, TheSameLayoutGivesTheSameBytes) {
  util::TempDir dir = util::TempDir::scratch();
  write_gpt(dir.path() / "a.raw", layout_for(32));
  write_gpt(dir.path() / "b.raw", layout_for(32));
  EXPECT_EQ(util::file_sha256(dir.path() / "a.raw"), util::file_sha256(dir.path() / "b.raw"));
}

TEST(Gpt, DerivedUuidsAreStableDistinctAndWellFormed) {
  EXPECT_EQ(derived_uuid("s", "COS_STATE"), derived_uuid("s", "COS_STATE"));
  EXPECT_NE(derived_uuid("s", "COS_STATE"), derived_uuid("s", "COS_OEM"));
  EXPECT_NE(derived_uuid("s", "COS_STATE"), derived_uuid("t", "COS_STATE"));
  std::string u = derived_uuid("s", "x");
  ASSERT_EQ(u.size(), 36u);
  EXPECT_EQ(u[14], '8');
  EXPECT_NE(std::string("89ab").find(u[19]), std::string::npos) << u;
}

TEST(Gpt, ALayoutThatDoesNotFitIsRefusedBeforeAnythingIsWritten) {
  GptLayout l = layout_for(64);
  l.partitions[2].size = 53 * kMiB;  // 10 + 53 = 63: nothing left before the backup GPT
  std::string e = error_of(l);
  EXPECT_NE(e.find("COS_PERSISTENT needs at least 1 MiB"), std::string::npos) << e;
  l.partitions[2].size = 70 * kMiB;
  e = error_of(l);
  EXPECT_NE(e.find("COS_OEM needs 70 MiB at 10 MiB, but the disk of 64 MiB"), std::string::npos)
      << e;
  util::TempDir dir = util::TempDir::scratch();
  EXPECT_THROW(write_gpt(dir.path() / "x.raw", l), Error);
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "x.raw"));
}

TEST(Gpt, RefusesMalformedLayouts) {
  GptLayout l = layout_for(64);
  l.partitions[1].size = kMiB + 1;
  EXPECT_NE(error_of(l).find("COS_GRUB: the size 1048577 is not a whole number of MiB"),
            std::string::npos);
  l = layout_for(64);
  l.partitions[2].name = "COS_GRUB";
  EXPECT_NE(error_of(l).find("COS_GRUB is named twice"), std::string::npos);
  l = layout_for(64);
  l.partitions[1].size = 0;
  EXPECT_NE(error_of(l).find("only the last partition may take the rest"), std::string::npos);
  l = layout_for(64);
  l.partitions[0].uuid = "not-a-guid";
  EXPECT_NE(error_of(l).find("BIOS: the UUID"), std::string::npos);
  l = layout_for(64);
  l.partitions[0].name = std::string(37, 'x');
  EXPECT_NE(error_of(l).find("must be 1-36 characters"), std::string::npos);
  l = layout_for(64);
  l.disk_size += 512;
  EXPECT_NE(error_of(l).find("not a whole number of MiB"), std::string::npos);
}

}  // namespace
