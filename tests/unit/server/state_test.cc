// The service's state over a real SQLite file: logins, tokens and their revocation, disabled
// users, who may read which build, sealed secrets, the queue's dedupe, claims, heartbeats,
// cancellation and recovery after a crash.
#include "pok8s/server/state.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "pok8s/server/secret_box.h"
#include "pok8s/util/file.h"
#include "server_testing.h"

using namespace pok8s;
using namespace pok8s::server;

using pok8s::testing::error_from;
using pok8s::testing::first_release_database;

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

  // A user and a session of theirs, made with a login token.
  std::pair<User, SessionGrant> user_with_session(const std::string& name,
                                                  const std::string& role = "user") {
    auto [user, login] = state_.create_user(name, role);
    return {user, state_.login(login)};
  }
  std::int64_t count(const std::string& sql, const std::vector<SqlValue>& params = {}) {
    return state_.db().query(sql, params).at(0).integer(0);
  }
};

int api_status(const std::function<void()>& action) {
  try {
    action();
  } catch (const ApiError& e) {
    return e.status();
  }
  return 0;
}

mode_t mode_of(const util::Path& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

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
  EXPECT_EQ(state_.builds(BuildState::kRunning, 10, 0, &total, admin()).size(), 1u);
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

TEST_F(State, ASessionMadeWithAnApiTokenDiesWithIt) {
  auto [bob, bob_session] = user_with_session("bob");
  NewToken t = state_.create_api_token(bob, "laptop");
  SessionGrant via_token = state_.login(t.secret);
  ASSERT_TRUE(state_.authenticate_session(via_token.cookie));
  EXPECT_TRUE(state_.delete_api_token(bob, t.info.id));
  EXPECT_FALSE(state_.authenticate_session(via_token.cookie));
  EXPECT_EQ(count("SELECT count(*) FROM tokens WHERE parent_id = $1", {t.info.id}), 0)
      << "the session row outlived its token";
  // The session made with a login token is the user's, not the token's.
  EXPECT_TRUE(state_.authenticate_session(bob_session.cookie));
}

TEST_F(State, ASessionWhoseTokenIsGoneIsRefusedEvenIfItsRowRemains) {
  auto [bob, unused] = user_with_session("bob");
  NewToken t = state_.create_api_token(bob, "ci");
  SessionGrant g = state_.login(t.secret);
  // As if the token's row went without its sessions (an older pok8s, a hand-made DELETE).
  state_.db().query("DELETE FROM tokens WHERE id = $1", {t.info.id});
  EXPECT_FALSE(state_.authenticate_session(g.cookie));
}

TEST_F(State, AdminsListAndRevokeAnyUsersApiTokens) {
  auto [bob, bob_session] = user_with_session("bob");
  NewToken first = state_.create_api_token(bob, "one");
  NewToken second = state_.create_api_token(bob, "two");
  state_.create_api_token(admin(), "mine");
  SessionGrant via_first = state_.login(first.secret);
  auto tokens = state_.api_tokens_of(bob.id);
  ASSERT_EQ(tokens.size(), 2u);
  // Tokens made in the same millisecond come in either order.
  std::set<std::string> names;
  for (const auto& t : tokens) {
    names.insert(t.name);
    EXPECT_EQ(t.user_id, bob.id);
  }
  EXPECT_EQ(names, (std::set<std::string>{"one", "two"}));
  EXPECT_EQ(state_.api_tokens(bob).size(), 2u);
  // Someone else's token through the user-scoped call: no.
  EXPECT_FALSE(state_.delete_api_token(admin(), first.info.id));
  EXPECT_TRUE(state_.revoke_token(first.info.id));
  EXPECT_FALSE(state_.revoke_token(first.info.id));
  EXPECT_FALSE(state_.authenticate_token(first.secret));
  EXPECT_FALSE(state_.authenticate_session(via_first.cookie));
  EXPECT_TRUE(state_.authenticate_token(second.secret));
  // Only API tokens: a session is ended by logout or by disabling its user.
  EXPECT_FALSE(state_.revoke_token(state_.authenticate_session(bob_session.cookie)->session_id));
  EXPECT_EQ(state_.api_tokens_of(bob.id).size(), 1u);
}

TEST_F(State, ADisabledUserIsLockedOutAtOnceAndBackWhenEnabled) {
  auto [bob, session] = user_with_session("bob");
  NewToken t = state_.create_api_token(bob, "ci");
  std::string login_token = state_.new_login_token("bob");
  User after = state_.set_user_disabled(bob.id, true, admin());
  EXPECT_TRUE(after.disabled);
  EXPECT_TRUE(state_.user_by_name("bob")->disabled);
  EXPECT_FALSE(state_.authenticate_session(session.cookie));
  EXPECT_FALSE(state_.authenticate_token(t.secret));
  EXPECT_EQ(error_from([&] { state_.login(t.secret); }).kind(), ErrorKind::kAuth);
  EXPECT_EQ(error_from([&] { state_.login(login_token); }).kind(), ErrorKind::kAuth);
  EXPECT_EQ(count("SELECT count(*) FROM tokens WHERE user_id = $1 AND kind = 'session'", {bob.id}),
            0);

  EXPECT_FALSE(state_.set_user_disabled(bob.id, false, admin()).disabled);
  EXPECT_TRUE(state_.authenticate_token(t.secret)) << "tokens are kept while disabled";
  EXPECT_FALSE(state_.authenticate_session(session.cookie)) << "sessions are not";
  EXPECT_TRUE(state_.login(login_token).user.id == bob.id) << "the refused login spent it";
}

TEST_F(State, AnAdminCannotDisableThemselvesOrTheLastAdmin) {
  User root = admin();
  EXPECT_EQ(api_status([&] { state_.set_user_disabled(root.id, true, root); }), 409);
  // Named, not structured bindings: clang 14 cannot capture those in a lambda.
  const User bob = user_with_session("bob").first;
  EXPECT_EQ(api_status([&] { state_.set_user_disabled(root.id, true, bob); }), 403);
  const User second = user_with_session("second", "admin").first;
  EXPECT_TRUE(state_.set_user_disabled(second.id, true, root).disabled);
  // The one left: nobody may disable it, not even a disabled admin.
  EXPECT_EQ(api_status([&] { state_.set_user_disabled(root.id, true, second); }), 403);
  state_.set_user_disabled(second.id, false, root);
  EXPECT_TRUE(state_.set_user_disabled(root.id, true, second).disabled);
  EXPECT_EQ(api_status([&] { state_.set_user_disabled(second.id, true, second); }), 409);
  EXPECT_EQ(error_from([&] { state_.set_user_disabled("0000000000000000", true, second); }).kind(),
            ErrorKind::kNotFound);
}

TEST_F(State, FindsUsersByIdAndName) {
  auto [bob, unused] = user_with_session("bob");
  EXPECT_EQ(state_.user_by_name("bob")->id, bob.id);
  EXPECT_EQ(state_.user_by_id(bob.id)->name, "bob");
  EXPECT_FALSE(state_.user_by_id(bob.id)->disabled);
  EXPECT_FALSE(state_.user_by_name("nobody"));
  EXPECT_FALSE(state_.user_by_id("0000000000000000"));
}

TEST_F(State, BuildsArePrivateToTheirOwnerUnlessShared) {
  auto [bob, s1] = user_with_session("bob");
  auto [carol, s2] = user_with_session("carol");
  BuildRecord mine = proposal("bob-spec");
  mine.owner = bob.id;
  BuildRecord b = state_.submit_build(mine).build;
  EXPECT_FALSE(b.shared);
  EXPECT_EQ(state_.access_to_build(b, bob), BuildAccess::kOwner);
  EXPECT_EQ(state_.access_to_build(b, admin()), BuildAccess::kAdmin);
  EXPECT_EQ(state_.access_to_build(b, carol), BuildAccess::kNone);
  EXPECT_FALSE(state_.can_read_build(b, carol));
  EXPECT_TRUE(ServiceState::can_manage_build(b, bob));
  EXPECT_TRUE(ServiceState::can_manage_build(b, admin()));
  EXPECT_FALSE(ServiceState::can_manage_build(b, carol));

  EXPECT_TRUE(state_.set_build_shared(b.id, true));
  b = *state_.build(b.id);
  EXPECT_TRUE(b.shared);
  EXPECT_EQ(state_.access_to_build(b, carol), BuildAccess::kShared);
  EXPECT_TRUE(state_.set_build_shared(b.id, false));
  EXPECT_FALSE(state_.can_read_build(*state_.build(b.id), carol));
  EXPECT_FALSE(state_.set_build_shared("0000000000000000", true));

  User disabled_bob = bob;
  disabled_bob.disabled = true;
  EXPECT_FALSE(state_.can_read_build(b, disabled_bob));
}

TEST_F(State, ResubmittingAnotherUsersSpecGrantsAccessToTheirBuild) {
  auto [bob, s1] = user_with_session("bob");
  auto [carol, s2] = user_with_session("carol");
  BuildRecord by_bob = proposal("same-spec");
  by_bob.owner = bob.id;
  BuildRecord b = state_.submit_build(by_bob).build;
  BuildRecord by_carol = proposal("same-spec");
  by_carol.owner = carol.id;
  Submission s = state_.submit_build(by_carol);
  EXPECT_TRUE(s.reused);
  EXPECT_EQ(s.build.id, b.id);
  EXPECT_EQ(s.build.owner, bob.id) << "reuse does not change the owner";
  EXPECT_EQ(state_.access_to_build(b, carol), BuildAccess::kGranted);
  // Twice is one grant; the owner resubmitting grants nothing.
  state_.submit_build(by_carol);
  state_.submit_build(by_bob);
  EXPECT_EQ(count("SELECT count(*) FROM build_access"), 1);
}

TEST_F(State, ListsOnlyTheBuildsTheViewerMayReadAndCountsThemSo) {
  auto [bob, s1] = user_with_session("bob");
  auto [carol, s2] = user_with_session("carol");
  auto [dave, s3] = user_with_session("dave");
  auto submit = [&](const std::string& spec_id, const User& owner) {
    BuildRecord r = proposal(spec_id);
    r.owner = owner.id;
    return state_.submit_build(r).build;
  };
  BuildRecord bob1 = submit("b1", bob);
  BuildRecord bob2 = submit("b2", bob);
  BuildRecord carol1 = submit("c1", carol);
  submit("b1", carol);  // carol is granted bob1
  state_.set_build_shared(bob2.id, true);
  auto ids = [&](const User& viewer, std::optional<BuildState> st = std::nullopt,
                 std::int64_t limit = 50, std::int64_t offset = 0) {
    std::int64_t total = -1;
    std::vector<std::string> out;
    for (const auto& b : state_.builds(st, limit, offset, &total, viewer)) out.push_back(b.id);
    return std::pair{out, total};
  };
  using Ids = std::vector<std::string>;
  EXPECT_EQ(ids(bob), (std::pair{Ids{bob2.id, bob1.id}, std::int64_t{2}}));
  EXPECT_EQ(ids(carol), (std::pair{Ids{carol1.id, bob2.id, bob1.id}, std::int64_t{3}}));
  EXPECT_EQ(ids(dave), (std::pair{Ids{bob2.id}, std::int64_t{1}}));
  EXPECT_EQ(ids(admin()), (std::pair{Ids{carol1.id, bob2.id, bob1.id}, std::int64_t{3}}));
  // Paging keeps the total of every page.
  EXPECT_EQ(ids(carol, std::nullopt, 1, 1), (std::pair{Ids{bob2.id}, std::int64_t{3}}));
  // The state filter applies on top.
  ASSERT_TRUE(state_.claim_build("w1"));  // bob1, the oldest
  EXPECT_EQ(ids(carol, BuildState::kRunning), (std::pair{Ids{bob1.id}, std::int64_t{1}}));
  EXPECT_EQ(ids(dave, BuildState::kRunning), (std::pair{Ids{}, std::int64_t{0}}));
  User disabled_admin = admin();
  disabled_admin.disabled = true;
  EXPECT_EQ(ids(disabled_admin), (std::pair{Ids{}, std::int64_t{0}}));
}

// --- secrets at rest -------------------------------------------------------------------

class SealedState : public ::testing::Test {
 protected:
  util::TempDir dir_ = util::TempDir::scratch();
  util::Path db_file_ = dir_.path() / "pok8s.db";
  util::Path key_file_ = dir_.path() / "secret.key";

  std::unique_ptr<ServiceState> open(bool with_box = true) {
    std::optional<SecretBox> box;
    if (with_box) box = SecretBox::load_or_create(key_file_);
    return std::make_unique<ServiceState>(open_sqlite(db_file_), std::move(box));
  }
  static BuildRecord proposal(ServiceState& state, const std::string& spec_id) {
    BuildRecord r;
    r.id = random_id();
    r.spec_id = spec_id;
    r.spec = "apiVersion: pok8s/v1\ncloudConfig: {users: [{passwd: hunter2}]}";
    r.files = R"({"wg.key":"wireguard-private-key"})";
    r.base_pinned = "docker://r/x@sha256:00";
    r.owner = state.users().at(0).id;
    r.base = "docker://r/x:1";
    r.version = "v1";
    r.kubernetes = "none";
    r.artifact_kinds = R"(["iso"])";
    return r;
  }
};

TEST_F(SealedState, StoresSpecAndFilesSealedAndReadsThemBackOpen) {
  auto state = open();
  EXPECT_TRUE(state->seals_secrets());
  state->bootstrap_admin();
  BuildRecord r = proposal(*state, "s1");
  Submission s = state->submit_build(r);
  EXPECT_EQ(s.build.spec, r.spec);
  EXPECT_EQ(s.build.files, r.files);
  auto raw = state->db().query("SELECT spec, files, spec_id FROM builds WHERE id = $1", {r.id});
  ASSERT_EQ(raw.size(), 1u);
  for (std::size_t i : {0u, 1u}) {
    std::string stored = raw[0].text(i);
    EXPECT_TRUE(SecretBox::is_sealed(stored)) << stored;
    EXPECT_EQ(stored.find("hunter2"), std::string::npos) << stored;
    EXPECT_EQ(stored.find("wireguard-private-key"), std::string::npos) << stored;
  }
  EXPECT_EQ(raw[0].text(2), "s1") << "the spec id stays as it was";
  EXPECT_EQ(state->build(r.id)->spec, r.spec);
  EXPECT_EQ(state->submit_build(proposal(*state, "s1")).build.files, r.files) << "reused";
  auto claimed = state->claim_build("w1");
  ASSERT_TRUE(claimed);
  EXPECT_EQ(claimed->spec, r.spec);
  EXPECT_EQ(claimed->files, r.files);
  // A new opening with the same key file reads them too.
  state.reset();
  EXPECT_EQ(open()->build(r.id)->files, r.files);
}

TEST_F(SealedState, ReadsRowsStoredBeforeSealing) {
  auto plain = open(false);
  plain->bootstrap_admin();
  BuildRecord r = proposal(*plain, "old");
  plain->submit_build(r);
  plain.reset();
  auto sealed = open();
  EXPECT_EQ(sealed->build(r.id)->spec, r.spec);
  BuildRecord fresh = proposal(*sealed, "new");
  sealed->submit_build(fresh);
  EXPECT_EQ(sealed->claim_build("w1")->spec, r.spec);
  EXPECT_EQ(sealed->claim_build("w1")->spec, fresh.spec);
}

TEST_F(SealedState, RefusesToOpenSealedStateWithAnotherKeyOrNone) {
  open()->bootstrap_admin();
  Error none = error_from([&] { open(false); });
  EXPECT_EQ(none.kind(), ErrorKind::kInvalidInput) << none.what();
  std::filesystem::remove(key_file_);
  Error other = error_from([&] { open(); });
  EXPECT_EQ(other.kind(), ErrorKind::kSignature) << other.what();
  EXPECT_NE(std::string(other.what()).find(key_file_.string()), std::string::npos) << other.what();
}

TEST_F(SealedState, ASpecMovedToAnotherBuildDoesNotOpenAndItsBuildFails) {
  auto state = open();
  state->bootstrap_admin();
  BuildRecord victim = proposal(*state, "victim");
  BuildRecord thief = proposal(*state, "thief");
  state->submit_build(victim);
  state->submit_build(thief);
  state->db().query(
      "UPDATE builds SET spec = (SELECT spec FROM builds WHERE id = $1) WHERE id = $2",
      {victim.id, thief.id});
  EXPECT_EQ(error_from([&] { state->build(thief.id); }).kind(), ErrorKind::kSignature);
  // The victim's build is claimed first and opens; the thief's fails when claimed.
  EXPECT_EQ(state->claim_build("w1")->id, victim.id);
  EXPECT_EQ(error_from([&] { state->claim_build("w1"); }).kind(), ErrorKind::kSignature);
  auto rows = state->db().query("SELECT state, error FROM builds WHERE id = $1", {thief.id});
  EXPECT_EQ(rows.at(0).text(0), "failed");
  EXPECT_NE(rows.at(0).text(1).find("builds/" + thief.id + "/spec"), std::string::npos)
      << rows.at(0).text(1);
}

// --- the database ------------------------------------------------------------------------

TEST(StateSchema, UpgradesADatabaseOfTheFirstRelease) {
  auto dir = util::TempDir::scratch();
  open_sqlite(dir.path() / "pok8s.db")->exec_script(first_release_database(SqlDialect::kSqlite));
  ServiceState state(open_sqlite(dir.path() / "pok8s.db"));
  User admin = state.users().at(0);
  EXPECT_FALSE(admin.disabled);
  auto old = state.build("00000000000000bb");
  ASSERT_TRUE(old);
  EXPECT_FALSE(old->shared);
  EXPECT_TRUE(state.set_build_shared(old->id, true));
  NewToken t = state.create_api_token(admin, "ci");
  SessionGrant g = state.login(t.secret);
  EXPECT_TRUE(state.delete_api_token(admin, t.info.id));
  EXPECT_FALSE(state.authenticate_session(g.cookie));
  // And opening it again changes nothing.
  ServiceState again(open_sqlite(dir.path() / "pok8s.db"));
  EXPECT_TRUE(again.build(old->id)->shared);
}

TEST(SqliteFiles, AreTheOwnersAloneWhateverTheUmask) {
  auto dir = util::TempDir::scratch();
  util::Path db = dir.path() / "pok8s.db";
  mode_t old = ::umask(022);
  {
    ServiceState state(open_sqlite(db));
    state.bootstrap_admin();
    // While the database is open, its -wal and -shm exist.
    EXPECT_EQ(mode_of(db), 0600);
    EXPECT_EQ(mode_of(db.string() + "-wal"), 0600);
    EXPECT_EQ(mode_of(db.string() + "-shm"), 0600);
  }
  // A database (and its leftovers) made readable before is narrowed when opened.
  ASSERT_EQ(::chmod(db.c_str(), 0644), 0);
  util::write_file_atomic(db.string() + "-shm", "", 0644);
  {
    auto reopened = open_sqlite(db);
    reopened->query("SELECT count(*) FROM users");
    EXPECT_EQ(mode_of(db), 0600);
    EXPECT_EQ(mode_of(db.string() + "-wal"), 0600);
    EXPECT_EQ(mode_of(db.string() + "-shm"), 0600);
  }
  ::umask(old);
}

}  // namespace
