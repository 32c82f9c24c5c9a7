// `pok8s serve` against the clients an open port attracts, on loopback only: bytes that are not
// UTF-8, slow and idle connections, floods of headers and of event streams, too many connections
// from one address, and a kill -9 in the middle of it — while another client's health and status
// calls keep being answered, and nothing stored is lost. Abusers connect from 127.0.0.2 and up,
// so the per-address limits count them apart from the well-behaved client on 127.0.0.1.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "e2e/pok8s_cli.h"
#include "integration/service_harness.h"
#include "pok8s/util/file.h"

using namespace pok8s;
using namespace pok8s::testing;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr int kPerClient = 64;

// A TCP connection from a chosen loopback address, speaking raw bytes.
class RawConnection {
 public:
  RawConnection(int port, const std::string& from) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in src{};
    src.sin_family = AF_INET;
    ::inet_pton(AF_INET, from.c_str(), &src.sin_addr);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof src);
    sockaddr_in dst{};
    dst.sin_family = AF_INET;
    dst.sin_port = htons(static_cast<std::uint16_t>(port));
    ::inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&dst), sizeof dst) == 0;
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;
  ~RawConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connected() const { return connected_; }

  // False once the peer has closed (EPIPE, ECONNRESET).
  bool send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // What the peer sends until it closes, or until `limit` passes without a byte.
  std::string read_until_closed(std::chrono::milliseconds limit, bool* closed = nullptr) {
    std::string out;
    char buf[16384];
    for (;;) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) {
        if (closed) *closed = false;
        return out;
      }
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        if (closed) *closed = true;
        return out;
      }
      out.append(buf, static_cast<std::size_t>(n));
    }
  }

  // One response with a Content-Length body (or whatever arrived before `limit` passed).
  std::string read_response(std::chrono::milliseconds limit) {
    std::string out;
    char buf[16384];
    for (;;) {
      auto head_end = out.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        auto at = out.find("Content-Length: ");
        std::size_t length =
            at == std::string::npos || at > head_end ? 0 : std::stoul(out.substr(at + 16));
        if (out.size() >= head_end + 4 + length) return out;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) return out;
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return out;
      out.append(buf, static_cast<std::size_t>(n));
    }
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

int status_of(const std::string& response) {
  if (!response.starts_with("HTTP/1.1 ")) return -1;
  return std::stoi(response.substr(9, 3));
}

json body_of(const std::string& response) {
  auto at = response.find("\r\n\r\n");
  return at == std::string::npos ? json() : json::parse(response.substr(at + 4), nullptr, false);
}

std::size_t rss_bytes(pid_t pid) {
  std::ifstream status(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(status, line))
    if (line.starts_with("VmRSS:")) return std::stoul(line.substr(6)) * 1024;
  return 0;
}

// A tiny Debian-like root filesystem as a tar: enough for a build request to name as its base.
std::string tiny_base_tar(const util::Path& work) {
  util::Path root = work / "tiny-root";
  util::make_dirs(root / "etc");
  util::write_file_atomic(root / "etc/os-release",
                          "ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n");
  std::string tar = (work / "tiny.tar").string();
  run({"tar", "-C", root.string(), "-cf", tar, "."});
  return tar;
}

class ServiceAbuse : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto fail = [](std::string why) { setup_error_ = std::move(why); };
    try {
      // Many sockets at once: the test's own descriptor limit must not be what gives out.
      rlimit nofile{};
      ::getrlimit(RLIMIT_NOFILE, &nofile);
      nofile.rlim_cur = nofile.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &nofile);
      // What other local users could read is decided by modes, not by this test's umask.
      ::umask(022);
      work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
      util::Path w = work_->path();
      cache_ = w / "cache";
      auto r = run_pok8s(cache_.string(), {"image", "import", tiny_base_tar(w),
                                           "oci:" + (w / "layout").string() + ":base"});
      if (r.status != 0) return fail("import failed: " + r.output);
      start();
      admin_ = new ApiClient(service_->port());
      auto login = admin_->login(service_->login_token());
      if (login.status != 200) return fail("admin login failed: " + login.body);
      auto token = admin_->post("/api/v1/tokens", json{{"name", "abuse"}});
      if (token.status != 201) return fail("token failed: " + token.body);
      admin_token_ = token.json()["token"];
      api_ = new ApiClient(service_->port());
      api_->bearer(admin_token_);
      // A build that stays queued (--jobs 0): something for event streams to follow.
      auto build = api_->post("/api/v1/builds", request("v1"));
      if (build.status != 201) return fail("build failed: " + build.body);
      build_id_ = build.json()["id"];
    } catch (const std::exception& e) {
      fail(std::string("setup failed: ") + e.what());
    }
  }
  static void start() {
    delete service_;
    service_ = new TestService(
        work_->path() / "data", cache_,
        {"--allow-local-sources", "--jobs", "0", "--max-connections-per-client",
         std::to_string(kPerClient), "--head-timeout", "3s", "--body-timeout", "5s"},
        /*allow_loopback=*/false);
  }
  static void TearDownTestSuite() {
    delete api_;
    delete admin_;
    delete service_;
    delete work_;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  static json request(const std::string& version) {
    return {{"spec", fmt::format("apiVersion: pok8s/v1\nkind: Build\nbase: oci:{}:base\n"
                                 "version: {}\n",
                                 (work_->path() / "layout").string(), version)}};
  }
  static int port() { return service_->port(); }
  static std::string raw(const std::string& request, const std::string& from = "127.0.0.1") {
    RawConnection c(port(), from);
    c.send(request);
    return c.read_response(std::chrono::seconds(30));
  }

  static inline std::string setup_error_;
  static inline util::TempDir* work_ = nullptr;
  static inline util::Path cache_;
  static inline TestService* service_ = nullptr;
  static inline ApiClient* admin_ = nullptr;
  static inline ApiClient* api_ = nullptr;
  static inline std::string admin_token_;
  static inline std::string build_id_;
};

TEST_F(ServiceAbuse, InvalidUtf8AnywhereGetsAJsonErrorAndTheServiceLives) {
  for (const std::string& request :
       {std::string("GET /x%FF HTTP/1.1\r\nHost: a\r\n\r\n"),
        std::string("GET /x\xff\xfe HTTP/1.1\r\nHost: a\r\n\r\n"),
        std::string("PUT /api/v1/%C3%28 HTTP/1.1\r\nHost: a\r\n\r\n"),
        std::string("DELETE /api/v1/builds HTTP/1.1\r\nHost: a\r\n\r\n"),
        "GET /api/v1/builds/%FF%FE HTTP/1.1\r\nAuthorization: Bearer " + admin_token_ + "\r\n\r\n",
        "GET /api/v1/builds?state=%FF HTTP/1.1\r\nAuthorization: Bearer " + admin_token_ +
            "\r\n\r\n",
        "GET /api/v1/keysets/%FF HTTP/1.1\r\nAuthorization: Bearer " + admin_token_ + "\r\n\r\n",
        std::string("GET /api/v1/health HTTP/1.1\r\nX-\xff: \xfe\r\n\r\n")}) {
    std::string response = raw(request);
    int status = status_of(response);
    EXPECT_TRUE(status >= 200 && status < 500) << response;
    if (status != 200) {
      json body = body_of(response);
      ASSERT_TRUE(body.is_object() && body.contains("error")) << response;
      EXPECT_EQ(body["error"]["message"].get<std::string>().find('\n'), std::string::npos);
    }
  }
  // A method that is not a token is malformed: 400, not a crash.
  EXPECT_EQ(status_of(raw("G\xff"
                          "T / HTTP/1.1\r\n\r\n")),
            400);
  EXPECT_EQ(api_->get("/api/v1/health").status, 200);
}

TEST_F(ServiceAbuse, OneAddressMayHoldOnlySoManyConnections) {
  std::vector<std::unique_ptr<RawConnection>> held;
  for (int i = 0; i < kPerClient; ++i) {
    held.push_back(std::make_unique<RawConnection>(port(), "127.0.0.2"));
    ASSERT_TRUE(held.back()->connected());
  }
  // The server counts a connection once it has accepted it; give it a moment to see them all.
  std::string refused;
  for (int attempt = 0; attempt < 50 && status_of(refused) != 503; ++attempt) {
    RawConnection extra(port(), "127.0.0.2");
    refused = extra.read_response(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(status_of(refused), 503) << refused;
  EXPECT_NE(body_of(refused)["error"]["message"].get<std::string>().find("your address"),
            std::string::npos);
  // Another address is served meanwhile.
  EXPECT_EQ(status_of(raw("GET /api/v1/health HTTP/1.1\r\n\r\n", "127.0.0.3")), 200);
  EXPECT_EQ(api_->get("/api/v1/health").status, 200);
}

TEST_F(ServiceAbuse, ASlowHeadIsCutOffByTheWholeRequestDeadline) {
  // One byte every half second would keep a per-read timeout waiting for ever.
  RawConnection slow(port(), "127.0.0.4");
  ASSERT_TRUE(slow.send("GET /api/v1/health HTTP/1.1\r\nX-Slow: "));
  bool alive = true;
  for (int i = 0; i < 120 && alive; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    alive = slow.send("a");
  }
  bool closed = false;
  if (alive) slow.read_until_closed(std::chrono::seconds(10), &closed);
  EXPECT_TRUE(!alive || closed) << "the slow head was still being read after a minute";
  // An idle connection goes the same way.
  RawConnection idle(port(), "127.0.0.4");
  idle.read_until_closed(std::chrono::seconds(60), &closed);
  EXPECT_TRUE(closed);
}

TEST_F(ServiceAbuse, HeaderFloodsAreRefusedAndMemoryStaysBounded) {
  std::size_t before = rss_bytes(service_->pid());
  ASSERT_GT(before, 0u);
  std::string line = "X-Flood: " + std::string(1014, 'a') + "\r\n";
  std::vector<std::thread> floods;
  std::atomic<int> answered_431{0};
  for (int t = 0; t < 8; ++t)
    floods.emplace_back([&, t] {
      RawConnection c(port(), fmt::format("127.0.0.{}", 10 + t));
      c.send("GET /api/v1/health HTTP/1.1\r\n");
      std::string chunk;
      for (int i = 0; i < 1000; ++i) chunk += line;
      // 200,000 lines of 1 KB: the server stops reading long before.
      for (int i = 0; i < 200 && c.send(chunk); ++i) {
      }
      if (status_of(c.read_response(std::chrono::seconds(10))) == 431) ++answered_431;
    });
  for (auto& t : floods) t.join();
  EXPECT_GT(answered_431.load(), 0);
  std::size_t after = rss_bytes(service_->pid());
  EXPECT_LT(after, before + (64u << 20)) << "before " << before << ", after " << after;
  // Many small fields are refused too.
  std::string many = "GET /api/v1/health HTTP/1.1\r\n";
  for (int i = 0; i < 150; ++i) many += fmt::format("X-F{}: 1\r\n", i);
  std::string r = raw(many + "\r\n");
  EXPECT_EQ(status_of(r), 431) << r;
  EXPECT_EQ(api_->get("/api/v1/health").status, 200);
}

TEST_F(ServiceAbuse, BadEventCursorsAreInvalidInputNotInternalErrors) {
  auto r = api_->get("/api/v1/builds/" + build_id_ + "/events?after=abc");
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(r.json()["error"]["kind"], "invalid-input");
  r = api_->get("/api/v1/builds/" + build_id_ + "/events", {{"Last-Event-ID", "12x"}});
  EXPECT_EQ(r.status, 400) << r.body;
}

TEST_F(ServiceAbuse, LoginTakesJsonOnlySoACrossSiteFormCannotLogIn) {
  std::string body = json{{"token", "pok8s_login_x"}}.dump();
  std::string r =
      raw(fmt::format("POST /api/v1/session HTTP/1.1\r\nContent-Type: text/plain\r\n"
                      "Content-Length: {}\r\n\r\n{}",
                      body.size(), body));
  EXPECT_EQ(status_of(r), 415) << r;
  r =
      raw(fmt::format("POST /api/v1/session HTTP/1.1\r\nContent-Type: "
                      "application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{}",
                      body.size(), body));
  EXPECT_EQ(status_of(r), 415) << r;
}

TEST_F(ServiceAbuse, LoginsAndTokenCreationAreRateLimited) {
  int limited = 0;
  std::string retry_after;
  for (int i = 0; i < 40 && limited == 0; ++i) {
    std::string body = json{{"token", fmt::format("pok8s_login_guess{}", i)}}.dump();
    std::string r = raw(fmt::format("POST /api/v1/session HTTP/1.1\r\nContent-Type: "
                                    "application/json\r\nContent-Length: {}\r\n\r\n{}",
                                    body.size(), body),
                        "127.0.0.20");
    if (status_of(r) == 429) {
      ++limited;
      auto at = r.find("Retry-After: ");
      if (at != std::string::npos) retry_after = r.substr(at + 13, r.find('\r', at) - at - 13);
    } else {
      EXPECT_EQ(status_of(r), 401) << r;
    }
  }
  EXPECT_EQ(limited, 1);
  EXPECT_FALSE(retry_after.empty());
  // The same guesses from another address are not held back by that one.
  std::string guess = json{{"token", "pok8s_login_x"}}.dump();
  EXPECT_EQ(status_of(raw(fmt::format("POST /api/v1/session HTTP/1.1\r\nContent-Type: "
                                      "application/json\r\nContent-Length: {}\r\n\r\n{}",
                                      guess.size(), guess),
                          "127.0.0.21")),
            401);
  int created = 0, refused = 0;
  for (int i = 0; i < 40; ++i) {
    auto r = api_->post("/api/v1/tokens", json{{"name", fmt::format("burst{}", i)}});
    if (r.status == 201) {
      ++created;
      api_->del("/api/v1/tokens/" + r.json()["id"].get<std::string>());
    } else if (r.status == 429) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_LT(created, 40);
}

TEST_F(ServiceAbuse, TheLoginTokenGoesToAPrivateFileNotToTheLog) {
  EXPECT_EQ(service_->log().find(service_->login_token()), std::string::npos);
  struct stat st {};
  ASSERT_EQ(::stat(service_->login_token_file().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(ServiceAbuse, TheDataDirectoryIsTheServiceUsersAloneWhateverTheUmask) {
  util::Path data = work_->path() / "data";
  struct stat st {};
  ASSERT_EQ(::stat(data.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  std::size_t files = 0;
  for (const auto& e : fs::recursive_directory_iterator(data)) {
    ASSERT_EQ(::lstat(e.path().c_str(), &st), 0);
    if (S_ISDIR(st.st_mode)) {
      EXPECT_EQ(st.st_mode & 0077, 0u) << e.path();
    } else if (S_ISREG(st.st_mode)) {
      ++files;
      EXPECT_EQ(st.st_mode & 0777, 0600u) << e.path();
    }
  }
  EXPECT_GE(files, 3u);  // the database, its WAL, the secret key at least
}

TEST_F(ServiceAbuse, ASpecCannotMakeTheServiceFetchFromItsOwnNetwork) {
  // A closed port, an open one (the service's own) and a name for 127.0.0.1: one refusal, the
  // same words apart from the port, and nothing that tells them apart.
  auto verdict = [&](const std::string& base) {
    std::string spec =
        fmt::format("apiVersion: pok8s/v1\nkind: Build\nbase: {}\nversion: v1\n", base);
    auto r = api_->post("/api/v1/specs/validate", json{{"spec", spec}});
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_FALSE(r.json()["valid"].get<bool>()) << r.body;
    return r.json().value("error", "");
  };
  int closed = free_port();
  std::string to_closed = verdict(fmt::format("docker://127.0.0.1:{}/x/y:1", closed));
  std::string to_open = verdict(fmt::format("docker://127.0.0.1:{}/x/y:1", port()));
  EXPECT_NE(to_closed.find("loopback"), std::string::npos) << to_closed;
  auto without_port = [](std::string text, int p) {
    for (auto at = text.find(std::to_string(p)); at != std::string::npos;
         at = text.find(std::to_string(p)))
      text.erase(at, std::to_string(p).size());
    return text;
  };
  EXPECT_EQ(without_port(to_closed, closed), without_port(to_open, port()));
  EXPECT_NE(verdict(fmt::format("docker://localhost:{}/x/y:1", port())).find("loopback"),
            std::string::npos);
  EXPECT_NE(verdict("docker://169.254.169.254/latest/meta-data:1").find("link-local"),
            std::string::npos);
  // A build would fetch the same way: it is refused before it is queued.
  std::string spec = fmt::format(
      "apiVersion: pok8s/v1\nkind: Build\nbase: docker://127.0.0.1:{}/x/y:1\nversion: v1\n",
      port());
  auto r = api_->post("/api/v1/builds", json{{"spec", spec}});
  EXPECT_EQ(r.status, 400) << r.body;
}

// The whole of it at once, for a while, with a well-behaved client watching; then a crash.
TEST_F(ServiceAbuse, UnderEveryAbuseAtOnceHealthAndStatusKeepAnsweringAndNothingIsLost) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> abusers;
  // Idle and slow connections, reopened as the server cuts them.
  for (int a = 0; a < 4; ++a)
    abusers.emplace_back([&, a] {
      std::vector<std::unique_ptr<RawConnection>> held;
      while (!stop) {
        if (held.size() >= kPerClient - 4) held.erase(held.begin(), held.begin() + 8);
        held.push_back(std::make_unique<RawConnection>(port(), fmt::format("127.0.0.{}", 30 + a)));
        if (a % 2) held.back()->send("GET / HTTP/1.1\r\nX-Slow: ");
        for (auto& c : held)
          if (a % 2) c->send("a");
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
  // Event streams, as many as one address may hold, from several addresses.
  for (int a = 0; a < 3; ++a)
    abusers.emplace_back([&, a] {
      std::vector<std::unique_ptr<RawConnection>> streams;
      for (int i = 0; i < kPerClient - 2 && !stop; ++i) {
        streams.push_back(
            std::make_unique<RawConnection>(port(), fmt::format("127.0.0.{}", 40 + a)));
        streams.back()->send(
            fmt::format("GET /api/v1/builds/{}/events HTTP/1.1\r\nAuthorization: "
                        "Bearer {}\r\n\r\n",
                        build_id_, admin_token_));
      }
      while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    });
  // Header floods and bytes that are not UTF-8, over and over.
  for (int a = 0; a < 2; ++a)
    abusers.emplace_back([&, a] {
      std::string junk = "GET /api/v1/health HTTP/1.1\r\n";
      for (int i = 0; i < 2000; ++i)
        junk += "X-Junk-\xff: \xfe\xfd" + std::string(500, 'z') + "\r\n";
      while (!stop) {
        RawConnection c(port(), fmt::format("127.0.0.{}", 50 + a));
        c.send(junk);
        c.read_response(std::chrono::seconds(2));
        RawConnection u(port(), fmt::format("127.0.0.{}", 50 + a));
        u.send("GET /\xff\xfe%FF?\xfe=%FE HTTP/1.1\r\nCookie: pok8s_session=\xff\r\n\r\n");
        u.read_response(std::chrono::seconds(2));
      }
    });
  int answered = 0, failed = 0;
  std::string failures;
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < until) {
    auto health = api_->get("/api/v1/health");
    auto status = api_->get("/api/v1/builds/" + build_id_);
    for (const auto& r : {health, status}) {
      if (r.status == 200) {
        ++answered;
      } else {
        ++failed;
        if (failures.size() < 2000) failures += fmt::format("{} {}\n", r.status, r.body);
      }
    }
  }
  EXPECT_EQ(failed, 0) << failures;
  EXPECT_GT(answered, 20);

  // A crash in the middle of it: nothing stored is lost, the database is whole.
  service_->kill();
  stop = true;
  for (auto& t : abusers) t.join();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open_v2((work_->path() / "data/pok8s.db").c_str(), &db, SQLITE_OPEN_READONLY,
                              nullptr),
              SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, nullptr), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "ok");
    sqlite3_finalize(st);
    sqlite3_close(db);
  }
  start();
  ApiClient again(service_->port());
  again.bearer(admin_token_);
  auto build = again.get("/api/v1/builds/" + build_id_);
  ASSERT_EQ(build.status, 200) << build.body;
  EXPECT_EQ(build.json()["state"], "queued");
  auto users = again.get("/api/v1/users");
  ASSERT_EQ(users.status, 200);
  EXPECT_EQ(users.json()["users"].size(), 1u);
  delete api_;
  api_ = new ApiClient(service_->port());
  api_->bearer(admin_token_);
}

}  // namespace
