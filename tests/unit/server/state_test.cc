// The service's state over a real SQLite file: logins and tokens, the queue's dedupe, claims,
// heartbeats, cancellation and recovery after a crash.
#include "pok8s/server/state.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "pok8s/util/file.h"

using namespace pok8s;
using namespace pok8s::server;

namespace {

class State : public ::testing::Test {
 protected:
  util::TempDir dir_ = util::TempDir::scratch();
  ServiceState state_{open_sqlite(dir_.path() / "pok8s.db")};

  User admin() { return state_.users().at(0); }
  BuildRecord proposal(const std::string& spec_id) {
    BuildRecord r;
    r.id = random_id();
    r.spec_id = spec_id;
    r.spec = "apiVersion: pok8s/v1";
    r.files = "{}";
    r.base_pinned = "docker://r/x@sha256:00";
    r.owner = admin().id;
    r.base = "docker://r/x:1";
    r.version = "v1";
    r.kubernetes = "none";
    r.artifact_kinds = R"(["iso"])";
    return r;
  }
  void SetUp() override { ASSERT_TRUE(state_.bootstrap_admin()); }
};

TEST_F(State, TheAdminIsMadeOnceAndItsLoginTokenWorksOnce) {
  EXPECT_FALSE(state_.bootstrap_admin());
  std::string token = state_.new_login_token("admin");
  SessionGrant g = state_.login(token);
  EXPECT_EQ(g.user.name, "admin");
  EXPECT_THROW(state_.login(token), Error);
  auto caller = state_.authenticate_session(g.cookie);
  ASSERT_TRUE(caller);
  EXPECT_EQ(caller->via, "session");
  EXPECT_TRUE(secrets_equal(caller->csrf, g.csrf));
  state_.logout(caller->session_id);
  EXPECT_FALSE(state_.authenticate_session(g.cookie));
}

TEST_F(State, ApiTokensAuthenticateUntilRevokedAndAreNotSessions) {
  NewToken t = state_.create_api_token(admin(), "ci");
  EXPECT_TRUE(t.secret.starts_with("pok8s_"));
  EXPECT_TRUE(state_.authenticate_token(t.secret));
  EXPECT_FALSE(state_.authenticate_session(t.secret));
  EXPECT_FALSE(state_.authenticate_token(t.secret + "x"));
  EXPECT_TRUE(state_.delete_api_token(admin(), t.info.id));
  EXPECT_FALSE(state_.authenticate_token(t.secret));
  EXPECT_FALSE(state_.delete_api_token(admin(), t.info.id));
}

TEST_F(State, ATakenUserNameIsAConflict) {
  state_.create_user("bob", "user");
  try {
    state_.create_user("bob", "user");
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 409);
  }
  EXPECT_THROW(state_.create_user("eve", "root"), Error);
}

TEST_F(State, TheSameSpecIdIsOneBuildUntilItFails) {
  Submission first = state_.submit_build(proposal("aaaa"));
  EXPECT_FALSE(first.reused);
  Submission second = state_.submit_build(proposal("aaaa"));
  EXPECT_TRUE(second.reused);
  EXPECT_EQ(second.build.id, first.build.id);
  auto claimed = state_.claim_build("w1");
  ASSERT_TRUE(claimed);
  EXPECT_TRUE(state_.finish_build(claimed->id, "w1", BuildState::kFailed, "broke", ""));
  Submission retry = state_.submit_build(proposal("aaaa"));
  EXPECT_FALSE(retry.reused);
  EXPECT_NE(retry.build.id, first.build.id);
}

TEST_F(State, ClaimsTakeTheOldestAndFinishingRecordsTheArtifacts) {
  auto a = state_.submit_build(proposal("a")).build;
  auto b = state_.submit_build(proposal("b")).build;
  auto claimed = state_.claim_build("w1");
  ASSERT_TRUE(claimed);
  EXPECT_EQ(claimed->id, a.id);
  EXPECT_EQ(claimed->attempts, 1);
  EXPECT_EQ(claimed->state, BuildState::kRunning);
  EXPECT_EQ(state_.claim_build("w2")->id, b.id);
  EXPECT_FALSE(state_.claim_build("w3"));
  EXPECT_FALSE(state_.finish_build(a.id, "w2", BuildState::kSucceeded, "", "[]"))
      << "a worker finished another's build";
  EXPECT_TRUE(state_.finish_build(a.id, "w1", BuildState::kSucceeded, "",
                                  R"([{"name":"x.iso","size":1,"sha256":"00"}])"));
  auto done = *state_.build(a.id);
  EXPECT_EQ(done.state, BuildState::kSucceeded);
  EXPECT_EQ(done.progress, 1000);
  EXPECT_GT(done.finished_at, 0);
  EXPECT_EQ(nlohmann::json::parse(done.artifacts)[0]["name"], "x.iso");
  EXPECT_EQ(done.error, "");
  std::int64_t total = 0;
  EXPECT_EQ(state_.builds(BuildState::kRunning, 10, 0, &total).size(), 1u);
  EXPECT_EQ(total, 1);
}

TEST_F(State, CancelEndsAQueuedBuildAndAsksARunningOne) {
  auto queued = state_.submit_build(proposal("q")).build;
  EXPECT_EQ(state_.cancel_build(queued.id).state, BuildState::kCanceled);
  auto running = state_.submit_build(proposal("r")).build;
  ASSERT_TRUE(state_.claim_build("w1"));
  EXPECT_EQ(state_.heartbeat(running.id, "w1"), false);
  EXPECT_TRUE(state_.cancel_build(running.id).cancel_requested);
  EXPECT_EQ(state_.heartbeat(running.id, "w1"), true);
  EXPECT_TRUE(state_.finish_build(running.id, "w1", BuildState::kCanceled, "canceled", ""));
  try {
    state_.cancel_build(running.id);
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 409);
  }
  EXPECT_THROW(state_.cancel_build("0000000000000000"), Error);
}

TEST_F(State, SilentWorkersLoseTheirBuildsToTheQueueThenToFailure) {
  auto b = state_.submit_build(proposal("s")).build;
  ASSERT_TRUE(state_.claim_build("w1"));
  auto ids = state_.recover_stale(now_ms() + 1, 2, "lost");
  ASSERT_EQ(ids, std::vector<std::string>{b.id});
  EXPECT_EQ(state_.build(b.id)->state, BuildState::kQueued);
  EXPECT_EQ(state_.heartbeat(b.id, "w1"), std::nullopt) << "the lost worker still owns it";
  ASSERT_TRUE(state_.claim_build("w2"));
  state_.recover_stale(now_ms() + 1, 2, "lost again");
  auto failed = *state_.build(b.id);
  EXPECT_EQ(failed.state, BuildState::kFailed);
  EXPECT_EQ(failed.error, "lost again");
  // A worker shutting down gives its build back without spending an attempt.
  auto c = state_.submit_build(proposal("t")).build;
  ASSERT_TRUE(state_.claim_build("w3"));
  state_.release_build(c.id, "w3", "stopping");
  EXPECT_EQ(state_.build(c.id)->attempts, 0);
  EXPECT_EQ(state_.build(c.id)->state, BuildState::kQueued);
}

TEST_F(State, EventsComeBackInOrderAfterASequenceNumber) {
  auto b = state_.submit_build(proposal("e")).build;
  for (int i = 0; i < 5; ++i) state_.append_event(b.id, "log", nlohmann::json{{"line", i}}.dump());
  auto all = state_.events(b.id, 0, 100);
  ASSERT_EQ(all.size(), 6u);  // the queued state, then the lines
  EXPECT_EQ(all[0].kind, "state");
  auto rest = state_.events(b.id, all[2].seq, 100);
  ASSERT_EQ(rest.size(), 3u);
  EXPECT_EQ(nlohmann::json::parse(rest[0].data)["line"], 2);
}

}  // namespace
