// Temporary files and directories appear only on commit; tree removal never follows links.
#include "pok8s/util/file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace fs = std::filesystem;
using namespace pok8s;

TEST(TempFile, IsInvisibleUntilCommitted) {
  auto dir = util::TempDir::scratch();
  fs::path target = dir.path() / "out.bin";
  {
    util::TempFile tmp(target);
    util::write_all(tmp.fd(), "hello", "test");
    EXPECT_FALSE(fs::exists(target));
  }
  EXPECT_FALSE(fs::exists(target));
  EXPECT_TRUE(fs::is_empty(dir.path()));
  util::TempFile tmp(target);
  util::write_all(tmp.fd(), "hello", "test");
  tmp.commit();
  EXPECT_EQ(util::read_file(target), "hello");
}

TEST(TempDir, IsRemovedWhenNotCommitted) {
  auto scratch = util::TempDir::scratch();
  fs::path final_path = scratch.path() / "tree";
  fs::path tmp_path;
  {
    util::TempDir d(final_path);
    tmp_path = d.path();
    fs::create_directories(tmp_path / "a" / "b");
    EXPECT_TRUE(fs::exists(tmp_path / "a" / "b"));
  }
  EXPECT_FALSE(fs::exists(tmp_path));
  EXPECT_FALSE(fs::exists(final_path));
}

TEST(RemoveTree, DoesNotFollowSymlinks) {
  auto scratch = util::TempDir::scratch();
  fs::create_directories(scratch.path() / "victim");
  util::write_file_atomic(scratch.path() / "victim" / "keep", "x");
  fs::create_directories(scratch.path() / "tree");
  fs::create_directory_symlink(scratch.path() / "victim", scratch.path() / "tree" / "link");
  util::remove_tree(scratch.path() / "tree");
  EXPECT_FALSE(fs::exists(scratch.path() / "tree"));
  EXPECT_TRUE(fs::exists(scratch.path() / "victim" / "keep"));
}

TEST(RemoveTree, EmptiesReadOnlyDirectories) {
  auto scratch = util::TempDir::scratch();
  fs::create_directories(scratch.path() / "t" / "ro");
  util::write_file_atomic(scratch.path() / "t" / "ro" / "f", "x");
  ::chmod((scratch.path() / "t" / "ro").c_str(), 0555);
  util::remove_tree(scratch.path() / "t");
  EXPECT_FALSE(fs::exists(scratch.path() / "t"));
}

TEST(ReadFile, RefusesFilesOverTheLimit) {
  auto scratch = util::TempDir::scratch();
  util::write_file_atomic(scratch.path() / "big", std::string(100, 'x'));
  EXPECT_THROW(util::read_file(scratch.path() / "big", 10), Error);
}

TEST(ReadFile, ReadsPseudoFilesThatReportNoSize) {
  // /proc files have st_size 0; their content is what a reader sees.
  std::string status = util::read_file("/proc/self/status");
  EXPECT_NE(status.find("Pid:"), std::string::npos);
  EXPECT_THROW(util::read_file("/proc/self/status", 16), Error);
  std::string big(10000, 'y');
  auto scratch = util::TempDir::scratch();
  util::write_file_atomic(scratch.path() / "f", big);
  EXPECT_EQ(util::read_file(scratch.path() / "f"), big);
}

TEST(CopyFileAtomic, CopiesWholeFilesWithTheModeAndLeavesNothingOnFailure) {
  auto scratch = util::TempDir::scratch();
  std::string data(3u << 20, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i % 251);
  util::write_file_atomic(scratch.path() / "from", data);
  util::copy_file_atomic(scratch.path() / "from", scratch.path() / "to", 0600);
  EXPECT_EQ(util::read_file(scratch.path() / "to"), data);
  EXPECT_EQ(fs::status(scratch.path() / "to").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  // A copy from /proc (copy_file_range cannot) goes the read(2) way.
  util::copy_file_atomic("/proc/self/status", scratch.path() / "status");
  EXPECT_NE(util::read_file(scratch.path() / "status").find("Pid:"), std::string::npos);
  EXPECT_THROW(util::copy_file_atomic(scratch.path() / "nope", scratch.path() / "x"), Error);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(scratch.path()))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"from", "status", "to"}));
}

TEST(Sha256, MatchesKnownVector) {
  EXPECT_EQ(util::sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(ErrorTable, MapsKindsToDistinctExitCodes) {
  EXPECT_EQ(exit_code(ErrorKind::kInvalidInput), 2);
  EXPECT_NE(exit_code(ErrorKind::kNotFound), exit_code(ErrorKind::kIo));
  EXPECT_EQ(http_status(ErrorKind::kNotFound), 404);
  EXPECT_EQ(error_kind_name(ErrorKind::kSignature), "signature");
}
