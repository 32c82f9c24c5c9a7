// Netboot's download against a real web server on 127.0.0.1: the file arrives complete and
// checked; a wrong digest, a 404, a file over the limit and a server that is not there are each
// refused naming the URL, and nothing is left behind.
#include <gtest/gtest.h>

#include <filesystem>

#include "integration/file_server.h"
#include "pok8s/node/netboot.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::node;
using pok8s::testing::FileServer;
namespace fs = std::filesystem;

namespace {

class NetbootFetch : public ::testing::Test {
 protected:
  void SetUp() override {
    body_.resize(3u << 20);
    for (std::size_t i = 0; i < body_.size(); ++i) body_[i] = static_cast<char>(i * 7919 % 251);
    web_ = std::make_unique<FileServer>(std::map<std::string, std::string>{{"/rootfs.img", body_}});
  }
  ErrorKind refused(const std::string& path, const std::string& sha, std::uint64_t max,
                    std::string& message) {
    try {
      http_fetch(parse_http_url(web_->url(path)), out(), sha, max, nullptr);
    } catch (const Error& e) {
      message = e.what();
      return e.kind();
    }
    message = "";
    return ErrorKind::kInternal;
  }
  util::Path out() const { return dir_.path() / "rootfs.squashfs"; }

  util::TempDir dir_ = util::TempDir::scratch();
  std::string body_;
  std::unique_ptr<FileServer> web_;
};

TEST_F(NetbootFetch, DownloadsTheFileAndChecksItsDigest) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> reports;
  http_fetch(parse_http_url(web_->url("/rootfs.img")), out(), util::sha256_hex(body_), 1u << 30,
             [&](std::uint64_t done, std::uint64_t total) { reports.emplace_back(done, total); });
  EXPECT_EQ(util::read_file(out(), 1u << 30), body_);
  EXPECT_EQ(fs::status(out()).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  ASSERT_FALSE(reports.empty());
  EXPECT_EQ(reports.back().first, body_.size());
  EXPECT_EQ(reports.back().second, body_.size());
}

TEST_F(NetbootFetch, RefusalsNameTheUrlAndLeaveNothingBehind) {
  std::string url = web_->url("/rootfs.img"), m;
  std::string wrong(64, '0');
  EXPECT_EQ(refused("/rootfs.img", wrong, 1u << 30, m), ErrorKind::kSignature);
  EXPECT_EQ(m, "Failed to fetch " + url + ": its sha256 is " + util::sha256_hex(body_) +
                   ", the kernel command line says " + wrong);
  EXPECT_EQ(refused("/nope", wrong, 1u << 30, m), ErrorKind::kNotFound);
  EXPECT_EQ(m, "Failed to fetch " + web_->url("/nope") + ": the server answered 404 Not Found");
  EXPECT_EQ(refused("/rootfs.img", util::sha256_hex(body_), 1u << 20, m), ErrorKind::kInvalidInput);
  EXPECT_NE(m.find("over the limit of 1048576"), std::string::npos) << m;
  EXPECT_TRUE(fs::is_empty(dir_.path()));
  int port = web_->port();
  web_.reset();  // nobody listens there now
  try {
    http_fetch(parse_http_url("http://127.0.0.1:" + std::to_string(port) + "/rootfs.img"), out(),
               wrong, 1u << 30, nullptr);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_NE(std::string(e.what()).find("Connection refused"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_empty(dir_.path()));
}

}  // namespace
