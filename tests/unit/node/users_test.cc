#include "pok8s/node/users.h"

#include <crypt.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

namespace pok8s::node {
namespace {

class Accounts : public ::testing::Test {
 protected:
  void SetUp() override {
    util::make_dirs(root() / "etc");
    write("etc/passwd",
          "root:x:0:0:root:/root:/bin/sh\n# a comment kept as is\n"
          "daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\ntaken:x:1000:1000::/home/taken:/bin/sh\n");
    write("etc/shadow", "root:*:19000:0:99999:7:::\ntaken:!:19000:0:99999:7:::\n");
    write("etc/group", "root:x:0:\nwheel:x:10:root\ntaken:x:1000:\n");
    write("etc/gshadow", "root:*::\nwheel:*::root\ntaken:!::\n");
    ::chmod((root() / "etc/shadow").c_str(), 0640);
  }
  const util::Path& root() const { return dir_.path(); }
  void write(const std::string& rel, const std::string& text) {
    util::write_file_atomic(root() / rel, text);
  }
  std::string read(const std::string& rel) { return util::read_file(root() / rel); }
  // The line of `name` in etc/<file>, or "".
  std::string line_of(const std::string& file, const std::string& name) {
    std::string text = read("etc/" + file);
    std::size_t pos = text.starts_with(name + ":") ? 0 : text.find("\n" + name + ":");
    if (pos == std::string::npos) return "";
    if (pos) ++pos;
    return text.substr(pos, text.find('\n', pos) - pos);
  }
  util::TempDir dir_ = util::TempDir::scratch();
};

config::UserSpec user(const std::string& name) {
  config::UserSpec u;
  u.name = name;
  return u;
}

TEST(HashPassword, GivesASha512HashThatCryptVerifies) {
  std::string hash = hash_password("s3cret");
  EXPECT_TRUE(hash.starts_with("$6$")) << hash;
  struct crypt_data data {};
  EXPECT_STREQ(crypt_r("s3cret", hash.c_str(), &data), hash.c_str());
  EXPECT_STRNE(crypt_r("wrong", hash.c_str(), &data), hash.c_str());
  EXPECT_NE(hash_password("s3cret"), hash);  // a fresh salt each time
}

TEST_F(Accounts, NewUserGetsTheFirstFreeUidAPrivateGroupAndALockedShadowEntry) {
  apply_users(std::vector{user("alice")}, root());
  EXPECT_EQ(line_of("passwd", "alice"), "alice:x:1001:1001::/home/alice:/bin/sh");
  EXPECT_EQ(line_of("group", "alice"), "alice:x:1001:");
  EXPECT_EQ(line_of("gshadow", "alice"), "alice:!::");
  EXPECT_TRUE(line_of("shadow", "alice").starts_with("alice:!:")) << line_of("shadow", "alice");
  struct stat st {};
  ASSERT_EQ(::stat((root() / "home/alice").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  EXPECT_EQ(st.st_uid, 1001u);
  EXPECT_EQ(st.st_gid, 1001u);
}

TEST_F(Accounts, KeepsLinesItDoesNotTouchAndTheModeOfShadow) {
  apply_users(std::vector{user("alice")}, root());
  EXPECT_TRUE(read("etc/passwd")
                  .starts_with("root:x:0:0:root:/root:/bin/sh\n# a comment kept as is\n"
                               "daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n"));
  struct stat st {};
  ASSERT_EQ(::stat((root() / "etc/shadow").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
}

TEST_F(Accounts, PlaintextPasswordIsHashedAndVerifies) {
  auto u = user("alice");
  u.passwd = "hunter2";
  apply_users(std::vector{u}, root());
  std::string line = line_of("shadow", "alice");
  std::string hash = line.substr(6, line.find(':', 6) - 6);
  ASSERT_TRUE(hash.starts_with("$6$")) << line;
  struct crypt_data data {};
  EXPECT_STREQ(crypt_r("hunter2", hash.c_str(), &data), hash.c_str());
}

TEST_F(Accounts, AHashIsKeptAndLockPasswdPrefixesIt) {
  auto u = user("alice");
  u.passwd = "$6$salt$abcdef";
  u.lock_passwd = true;
  apply_users(std::vector{u}, root());
  EXPECT_TRUE(line_of("shadow", "alice").starts_with("alice:!$6$salt$abcdef:"));
  // Unlocking a user without any password must not leave an empty (passwordless) field.
  auto t = user("taken");
  t.lock_passwd = false;
  apply_users(std::vector{t}, root());
  EXPECT_TRUE(line_of("shadow", "taken").starts_with("taken:!:"));
}

TEST_F(Accounts, GroupsAreJoinedAndCreatedWhenMissing) {
  auto u = user("alice");
  u.groups = {"wheel", "admin"};
  apply_users(std::vector{u}, root());
  EXPECT_EQ(line_of("group", "wheel"), "wheel:x:10:root,alice");
  EXPECT_EQ(line_of("gshadow", "wheel"), "wheel:*::root,alice");
  EXPECT_EQ(line_of("group", "admin"), "admin:x:1002:alice");
  apply_users(std::vector{u}, root());  // applying again changes nothing
  EXPECT_EQ(line_of("group", "wheel"), "wheel:x:10:root,alice");
}

TEST_F(Accounts, ExplicitUidPrimaryGroupHomeAndShell) {
  auto u = user("bob");
  u.uid = 4242;
  u.primary_group = "wheel";
  u.homedir = "/var/lib/bob";
  u.shell = "/bin/bash";
  u.gecos = "Bob";
  apply_users(std::vector{u}, root());
  EXPECT_EQ(line_of("passwd", "bob"), "bob:x:4242:10:Bob:/var/lib/bob:/bin/bash");
  EXPECT_EQ(line_of("group", "bob"), "");
  EXPECT_TRUE(std::filesystem::is_directory(root() / "var/lib/bob"));
}

TEST_F(Accounts, RefusesAUidThatAnotherUserHas) {
  auto u = user("bob");
  u.uid = 1000;
  try {
    apply_users(std::vector{u}, root());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "Failed to apply user bob: Failed to set uid 1000 for bob: taken already has it");
  }
  EXPECT_EQ(line_of("passwd", "bob"), "");
}

TEST_F(Accounts, ExistingUserIsUpdatedInPlace) {
  auto u = user("taken");
  u.passwd = "$6$x$y";
  u.shell = "/bin/zsh";
  apply_users(std::vector{u}, root());
  EXPECT_EQ(line_of("passwd", "taken"), "taken:x:1000:1000::/home/taken:/bin/zsh");
  EXPECT_TRUE(line_of("shadow", "taken").starts_with("taken:$6$x$y:"));
  EXPECT_EQ(read("etc/passwd").find("\ntaken:"), read("etc/passwd").rfind("\ntaken:"));
}

TEST_F(Accounts, AuthorizedKeysAreWrittenOnceWith0600OwnedByTheUser) {
  auto u = user("alice");
  u.ssh_authorized_keys = {"ssh-ed25519 AAAA1 a@b", "ssh-ed25519 AAAA2 c@d"};
  apply_users(std::vector{u}, root());
  apply_users(std::vector{u}, root());
  util::Path keys = root() / "home/alice/.ssh/authorized_keys";
  EXPECT_EQ(util::read_file(keys), "ssh-ed25519 AAAA1 a@b\nssh-ed25519 AAAA2 c@d\n");
  struct stat st {};
  ASSERT_EQ(::stat(keys.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, 1001u);
  ASSERT_EQ(::stat(keys.parent_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  EXPECT_EQ(st.st_uid, 1001u);
}

TEST_F(Accounts, RemoteKeyImportIsReportedAsUnsupportedAfterTheOtherKeys) {
  auto u = user("alice");
  u.ssh_authorized_keys = {"github:alice", "ssh-ed25519 AAAA1 a@b"};
  try {
    apply_users(std::vector{u}, root());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("github:alice"), std::string::npos);
  }
  EXPECT_EQ(util::read_file(root() / "home/alice/.ssh/authorized_keys"), "ssh-ed25519 AAAA1 a@b\n");
}

TEST(AccountsEmptyRoot, CreatesTheFilesWhenTheRootHasNone) {
  util::TempDir dir = util::TempDir::scratch();
  apply_users(std::vector{user("alice")}, dir.path());
  EXPECT_EQ(util::read_file(dir.path() / "etc/passwd"), "alice:x:1000:1000::/home/alice:/bin/sh\n");
  EXPECT_EQ(util::read_file(dir.path() / "etc/group"), "alice:x:1000:\n");
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "etc/gshadow"));
  struct stat st {};
  ASSERT_EQ(::stat((dir.path() / "etc/shadow").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

}  // namespace
}  // namespace pok8s::node
