// Scale-out on real engines: a real PostgreSQL and a real registry on 127.0.0.1, one `pok8s
// serve` that runs no builds itself and two `pok8s worker` processes. Several builds are queued
// through the API; each runs exactly once, on one of the workers, and the server serves the
// artifacts they stored. A worker killed mid-build loses its build to the other one.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <regex>
#include <thread>

#include "e2e/pok8s_cli.h"
#include "integration/postgres_harness.h"
#include "integration/registry_harness.h"
#include "integration/service_harness.h"
#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

using namespace pok8s;
using namespace pok8s::testing;
using json = nlohmann::json;

namespace {

class ScaleOut : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    try {
      std::string tar = debian_fixture(setup_error_);
      if (tar.empty()) return;
      postgres_ = new TestPostgres();
      registry_ = new TestRegistry();
      work_ = new util::TempDir(util::TempDir::scratch("/var/tmp"));
      util::Path w = work_->path();
      cache_ = test_cache_dir("service-cache");
      push_debian_bases(tar, *registry_, w / "layout", cache_, "v0.3.0");
      store_ = registry_->docker("pok8s/builds");
      service_ = new TestService(w / "server", cache_,
                                 {"--db", postgres_->url(), "--store", store_, "--jobs", "0",
                                  "--tls-verify=false", "--heartbeat-timeout", "5s"});
      api_ = new ApiClient(service_->port());
      if (api_->login(service_->login_token()).status != 200)
        throw std::runtime_error("login failed:\n" + service_->log());
    } catch (const std::exception& e) {
      setup_error_ = std::string("setup failed: ") + e.what();
    }
  }
  static void TearDownTestSuite() {
    delete api_;
    delete service_;
    delete registry_;
    delete postgres_;
    delete work_;
  }
  void SetUp() override { ASSERT_EQ(setup_error_, ""); }

  // A worker on its own "host": its own scratch directory and its own blob cache.
  static ChildProcess start_worker(const std::string& name) {
    util::Path dir = work_->path() / name;
    util::make_dirs(dir);
    return ChildProcess({pok8s_binary(), "--cache", (dir / "cache").string(), "worker", "--db",
                         postgres_->url(), "--store", store_, "--data", (dir / "data").string(),
                         "--id", name, "--tls-verify=false", "--heartbeat-timeout", "5s",
                         // The server's key, which seals the builds' secrets in the database.
                         "--secret-key", (work_->path() / "server/secret.key").string(),
                         // The registry is on loopback, which workers do not fetch from unasked.
                         "--allow-network", "127.0.0.0/8"},
                        work_->path() / (name + ".log"));
  }
  static std::string worker_log(const std::string& name) {
    return util::read_file(work_->path() / (name + ".log"));
  }
  static json request(const std::string& tag) {
    return {{"spec", fmt::format("apiVersion: pok8s/v1\nkind: Build\nbase: {}\nversion: v0.3.0\n"
                                 "cloudConfig: cc.yaml\n",
                                 registry_->docker("pok8s/debian:v0.3.0"))},
            {"files", {{"cc.yaml", "#cloud-config\nhostname: " + tag + "\n"}}}};
  }

  static inline std::string setup_error_;
  static inline TestPostgres* postgres_ = nullptr;
  static inline TestRegistry* registry_ = nullptr;
  static inline util::TempDir* work_ = nullptr;
  static inline util::Path cache_;
  static inline std::string store_;
  static inline TestService* service_ = nullptr;
  static inline ApiClient* api_ = nullptr;
};

TEST_F(ScaleOut, TwoWorkersRunEachQueuedBuildExactlyOnce) {
  EXPECT_EQ(api_->get("/api/v1/health").json()["database"], "postgres");
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    auto r = api_->post("/api/v1/builds", request(fmt::format("node-{}", i)));
    ASSERT_EQ(r.status, 201) << r.body;
    ids.push_back(r.json()["id"]);
  }
  ChildProcess a = start_worker("worker-a");
  ChildProcess b = start_worker("worker-b");
  std::map<std::string, int> by_worker;
  for (const auto& id : ids) {
    auto build = wait_for_build(*api_, id, {"succeeded", "failed"}, 900);
    ASSERT_EQ(build["state"], "succeeded") << build << "\n"
                                           << api_->get("/api/v1/builds/" + id + "/log").body;
    EXPECT_EQ(build["attempts"], 1) << build;
    // Exactly one worker took it, once: one "running" state in its history.
    auto log = api_->get("/api/v1/builds/" + id + "/log").body;
    std::size_t runs = 0;
    for (std::size_t at = 0; (at = log.find("-- running", at)) != std::string::npos; ++at) ++runs;
    EXPECT_EQ(runs, 1u) << log;
    std::string seen = worker_log("worker-a") + worker_log("worker-b");
    std::size_t mentions = 0;
    for (std::size_t at = 0; (at = seen.find("Building " + id, at)) != std::string::npos; ++at)
      ++mentions;
    EXPECT_EQ(mentions, 1u) << seen;
    by_worker[worker_log("worker-a").find("Building " + id) != std::string::npos ? "a" : "b"]++;
    // The server serves what a worker stored in the registry.
    for (const auto& artifact : build["artifacts"]) {
      auto file = api_->get(artifact["url"]);
      ASSERT_EQ(file.status, 200) << artifact;
      EXPECT_EQ(util::sha256_hex(file.body), artifact["sha256"]);
    }
  }
  EXPECT_EQ(by_worker["a"] + by_worker["b"], 5);
}

TEST_F(ScaleOut, ABuildOfAWorkerThatDiesIsQueuedAgainAndFinishedByAnother) {
  auto r = api_->post("/api/v1/builds", request("orphan"));
  ASSERT_EQ(r.status, 201) << r.body;
  std::string id = r.json()["id"];
  {
    ChildProcess doomed = start_worker("worker-doomed");
    auto build = wait_for_build(*api_, id, {"running"}, 300);
    ASSERT_EQ(build["state"], "running") << build;
    doomed.crash();
  }
  ChildProcess rescuer = start_worker("worker-rescuer");
  auto build = wait_for_build(*api_, id, {"succeeded", "failed"}, 900);
  EXPECT_EQ(build["state"], "succeeded")
      << build << api_->get("/api/v1/builds/" + id + "/log").body;
  EXPECT_EQ(build["attempts"], 2);
  auto log = api_->get("/api/v1/builds/" + id + "/log").body;
  EXPECT_NE(log.find("stopped sending heartbeats"), std::string::npos) << log;
  EXPECT_NE(worker_log("worker-rescuer").find("Building " + id), std::string::npos);
}

}  // namespace
