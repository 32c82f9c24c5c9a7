// Sealing secrets at rest: what is sealed opens only with the same key and context, any change
// is caught, and the key file is created private and refused when it is not.
#include "pok8s/server/secret_box.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "server_testing.h"

using namespace pok8s;
using namespace pok8s::server;
using pok8s::testing::error_from;

namespace {

class SecretBoxTest : public ::testing::Test {
 protected:
  util::TempDir dir_ = util::TempDir::scratch();
  util::Path key_file_ = dir_.path() / "secret.key";
};

mode_t key_mode(const util::Path& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

TEST_F(SecretBoxTest, SealedTextOpensToThePlaintextAndHidesIt) {
  SecretBox box = SecretBox::load_or_create(key_file_);
  std::string secret = "#cloud-config\nusers: [{name: kairos, passwd: hunter2}]\n";
  std::string sealed = box.seal(secret, "builds/1/spec");
  EXPECT_TRUE(sealed.starts_with(SecretBox::kPrefix)) << sealed;
  EXPECT_TRUE(SecretBox::is_sealed(sealed));
  EXPECT_EQ(sealed.find("hunter2"), std::string::npos);
  EXPECT_EQ(sealed.find('\n'), std::string::npos) << "not one line of text";
  EXPECT_EQ(SecretBox::sealed_key_id(sealed), box.key_id());
  EXPECT_EQ(box.open(sealed, "builds/1/spec"), secret);
  // A fresh nonce each time: the same text never seals the same way twice.
  EXPECT_NE(box.seal(secret, "builds/1/spec"), sealed);
  EXPECT_EQ(box.open(box.seal("", "x"), "x"), "");
  std::string binary("\0\x01\xff", 3);
  EXPECT_EQ(box.open(box.seal(binary)), binary);
}

TEST_F(SecretBoxTest, TheSameKeyFileOpensWhatAnotherLoadSealed) {
  std::string sealed = SecretBox::load_or_create(key_file_).seal("join-token", "c");
  EXPECT_EQ(SecretBox::load(key_file_).open(sealed, "c"), "join-token");
  EXPECT_EQ(SecretBox::load_or_create(key_file_).open(sealed, "c"), "join-token");
}

TEST_F(SecretBoxTest, RefusesAlteredText) {
  SecretBox box = SecretBox::load_or_create(key_file_);
  std::string sealed = box.seal("wireguard private key", "builds/1/files");
  std::size_t body = SecretBox::kPrefix.size() + 9;
  for (std::size_t at : {body, body + 10, sealed.size() - 6}) {
    std::string altered = sealed;
    altered[at] = altered[at] == 'A' ? 'B' : 'A';
    Error e = error_from([&] { box.open(altered, "builds/1/files"); });
    EXPECT_EQ(e.kind(), ErrorKind::kSignature) << "at " << at << ": " << e.what();
    EXPECT_NE(std::string(e.what()).find("Failed to open sealed builds/1/files: "),
              std::string::npos)
        << e.what();
  }
  // Moved to another record: the context is authenticated too.
  EXPECT_EQ(error_from([&] { box.open(sealed, "builds/2/files"); }).kind(), ErrorKind::kSignature);
  // Cut short, not base64, not sealed at all.
  EXPECT_EQ(error_from([&] { box.open(sealed.substr(0, body + 8), "builds/1/files"); }).kind(),
            ErrorKind::kFormat);
  EXPECT_EQ(
      error_from([&] { box.open(sealed.substr(0, sealed.size() - 1), "builds/1/files"); }).kind(),
      ErrorKind::kFormat);
  EXPECT_EQ(error_from([&] { box.open(sealed + "!!!!", "builds/1/files"); }).kind(),
            ErrorKind::kFormat);
  EXPECT_EQ(error_from([&] { box.open("apiVersion: pok8s/v1", "builds/1/files"); }).kind(),
            ErrorKind::kFormat);
}

TEST_F(SecretBoxTest, AnotherKeyCannotOpenAndSaysWhichKeySealed) {
  SecretBox mine = SecretBox::load_or_create(key_file_);
  SecretBox other = SecretBox::load_or_create(dir_.path() / "other.key");
  EXPECT_NE(mine.key_id(), other.key_id());
  std::string sealed = mine.seal("password", "p");
  Error e = error_from([&] { other.open(sealed, "p"); });
  EXPECT_EQ(e.kind(), ErrorKind::kSignature) << e.what();
  std::string message = e.what();
  EXPECT_NE(message.find(mine.key_id()), std::string::npos) << message;
  EXPECT_NE(message.find("other.key"), std::string::npos) << message;
  // The same id with another key (a forged header) is caught by the tag.
  std::string forged = sealed;
  forged.replace(SecretBox::kPrefix.size(), 8, other.key_id());
  EXPECT_EQ(error_from([&] { other.open(forged, "p"); }).kind(), ErrorKind::kSignature);
}

TEST_F(SecretBoxTest, CreatesTheKeyFilePrivateWhateverTheUmask) {
  mode_t old = ::umask(0);
  SecretBox::load_or_create(key_file_);
  ::umask(old);
  EXPECT_EQ(key_mode(key_file_), 0600);
  EXPECT_EQ(util::read_file(key_file_).size(), SecretBox::kKeyBytes);
  // Nothing is left under a temporary name.
  std::size_t entries = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir_.path()))
    ++entries;
  EXPECT_EQ(entries, 1u);
}

TEST_F(SecretBoxTest, RefusesAKeyFileOthersMayRead) {
  SecretBox::load_or_create(key_file_);
  ASSERT_EQ(::chmod(key_file_.c_str(), 0644), 0);
  for (auto load : {&SecretBox::load, &SecretBox::load_or_create}) {
    Error e = error_from([&] { load(key_file_); });
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput) << e.what();
    EXPECT_NE(std::string(e.what()).find(key_file_.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("0644"), std::string::npos) << e.what();
  }
  ASSERT_EQ(::chmod(key_file_.c_str(), 0400), 0);
  EXPECT_NO_THROW(SecretBox::load(key_file_));
}

TEST_F(SecretBoxTest, RefusesAKeyFileOfTheWrongSize) {
  util::write_file_atomic(key_file_, "too short", 0600);
  Error e = error_from([&] { SecretBox::load_or_create(key_file_); });
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput) << e.what();
  EXPECT_NE(std::string(e.what()).find(key_file_.string()), std::string::npos) << e.what();
  EXPECT_EQ(util::read_file(key_file_), "too short") << "an existing key file was replaced";
}

TEST_F(SecretBoxTest, RefusesSomethingElseAtTheKeyFilesPlace) {
  util::make_dirs(key_file_);
  EXPECT_EQ(error_from([&] { SecretBox::load_or_create(key_file_); }).kind(),
            ErrorKind::kInvalidInput);
}

TEST_F(SecretBoxTest, LoadNeedsAnExistingKeyFile) {
  Error e = error_from([&] { SecretBox::load(key_file_); });
  EXPECT_EQ(e.kind(), ErrorKind::kNotFound) << e.what();
  EXPECT_NE(std::string(e.what()).find(key_file_.string()), std::string::npos) << e.what();
  EXPECT_FALSE(std::filesystem::exists(key_file_));
}

TEST_F(SecretBoxTest, RefusesAKeyFileOfAnotherUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "only root can give a file away";
  SecretBox::load_or_create(key_file_);
  ASSERT_EQ(::chown(key_file_.c_str(), 65534, 65534), 0);
  Error e = error_from([&] { SecretBox::load(key_file_); });
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput) << e.what();
  EXPECT_NE(std::string(e.what()).find("uid 65534"), std::string::npos) << e.what();
}

}  // namespace
