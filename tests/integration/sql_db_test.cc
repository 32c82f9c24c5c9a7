// The service's two databases behave alike: every conformance test, and the service's state on
// top (revocation, disabled users, who may read which build, sealed secrets, schema upgrades),
// runs against SQLite in a temporary directory and against a real PostgreSQL 15 server started
// for this test binary.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <ostream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "integration/postgres_harness.h"
#include "pok8s/server/secret_box.h"
#include "pok8s/server/sql.h"
#include "pok8s/server/state.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "server_testing.h"

// So that a failure names the backend rather than printing its bytes.
namespace pok8s::server {
void PrintTo(SqlDialect dialect, std::ostream* out) {
  *out << (dialect == SqlDialect::kSqlite ? "SQLite" : "PostgreSQL");
}
}  // namespace pok8s::server

namespace {

namespace server = pok8s::server;
using pok8s::Error;
using pok8s::ErrorKind;
using pok8s::testing::error_from;
using pok8s::testing::first_release_database;
using pok8s::testing::TestPostgres;
using server::SqlDialect;
using server::SqlRow;
using server::SqlValue;
using Values = std::vector<SqlValue>;

// The PostgreSQL server of this test process, started by the first test that needs it and
// stopped when the process exits. Null (and `failure` says why) if it could not start.
TestPostgres* shared_postgres(std::string& failure) {
  static std::string why;
  static std::unique_ptr<TestPostgres> server = [] {
    try {
      return std::make_unique<TestPostgres>();
    } catch (const std::exception& e) {
      why = e.what();
      return std::unique_ptr<TestPostgres>();
    }
  }();
  failure = why;
  return server.get();
}

// A database of its own on the shared server, so no test sees another's tables.
std::string fresh_postgres_database(TestPostgres& postgres) {
  static std::atomic<int> count{0};
  return postgres.create_database("test_" + std::to_string(++count));
}

std::vector<Values> values_of(const std::vector<SqlRow>& rows) {
  std::vector<Values> out;
  for (const SqlRow& row : rows) out.push_back(row.values);
  return out;
}

std::int64_t count_rows(server::SqlDb& db, const std::string& table) {
  return db.query("SELECT count(*) FROM " + table).at(0).integer(0);
}

class SqlDb : public ::testing::TestWithParam<SqlDialect> {
 protected:
  void SetUp() override {
    if (GetParam() == SqlDialect::kSqlite) {
      db_ = server::open_sqlite(dir_.path() / "state.db");
      return;
    }
    std::string failure;
    TestPostgres* postgres = shared_postgres(failure);
    ASSERT_NE(postgres, nullptr) << failure;
    db_ = server::open_postgres(fresh_postgres_database(*postgres));
  }

  server::SqlDb& db() { return *db_; }

  pok8s::util::TempDir dir_ = pok8s::util::TempDir::scratch();
  std::unique_ptr<server::SqlDb> db_;
};

TEST_P(SqlDb, ReportsItsDialect) {
  EXPECT_EQ(db().dialect(), GetParam());
}

TEST_P(SqlDb, RoundTripsNullIntegersAndText) {
  db().exec_script("CREATE TABLE v (id BIGINT PRIMARY KEY, n BIGINT, t TEXT)");
  const Values numbers = {std::monostate{},
                          0,
                          -1,
                          std::numeric_limits<std::int64_t>::max(),
                          std::numeric_limits<std::int64_t>::min(),
                          std::int64_t{9'007'199'254'740'993},  // not a double
                          std::int64_t{1'700'000'000'123}};     // a time in unix milliseconds
  const Values texts = {std::monostate{},
                        "",
                        "it's \"quoted\" and `ticked`; DROP TABLE v; --",
                        "unicode: żółw 🐢 日本語 ﷽",
                        "control bytes \x01\x02\t\n\r\x1b\x7f and a backslash \\x00 \\",
                        "$1 and '$2' are text here",
                        R"({"json": ["is", "text"], "n": 1})"};
  for (std::size_t i = 0; i < numbers.size(); ++i)
    db().query("INSERT INTO v (id, n, t) VALUES ($1, $2, $3)",
               {static_cast<std::int64_t>(i), numbers[i], texts[i]});
  std::vector<SqlRow> rows = db().query("SELECT id, n, t FROM v ORDER BY id");
  ASSERT_EQ(rows.size(), numbers.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].values, (Values{static_cast<std::int64_t>(i), numbers[i], texts[i]}))
        << "row " << i;
  }
  EXPECT_TRUE(rows[0].is_null(1));
  EXPECT_FALSE(rows[1].is_null(2));  // the empty string is not NULL in either dialect
}

TEST_P(SqlDb, NumbersParametersByPositionAndReusesThem) {
  db().exec_script("CREATE TABLE pairs (id BIGINT PRIMARY KEY, a TEXT, b TEXT)");
  db().query("INSERT INTO pairs (id, a, b) VALUES ($2, $1, $1)", {"same", 7});
  EXPECT_EQ(values_of(db().query("SELECT id, a, b FROM pairs WHERE a = $1 AND b = $1 AND id = $2",
                                 {"same", 7})),
            (std::vector<Values>{{7, "same", "same"}}));
  EXPECT_EQ(values_of(db().query("SELECT $10 - $1, $1 + $1", {1, 2, 3, 4, 5, 6, 7, 8, 9, 10})),
            (std::vector<Values>{{9, 2}}));
  // Integer parameters stay 64-bit in arithmetic.
  EXPECT_EQ(db().query("SELECT $1 + 60000", {std::int64_t{1'700'000'000'000}}).at(0).integer(0),
            1'700'000'060'000);
}

TEST_P(SqlDb, LeavesDollarSignsInsideStringLiteralsAlone) {
  db().exec_script("CREATE TABLE notes (id BIGINT PRIMARY KEY, body TEXT)");
  db().query("INSERT INTO notes (id, body) VALUES ($1, '$1 costs $2')", {5});
  EXPECT_EQ(db().query("SELECT body FROM notes WHERE id = $1", {5}).at(0).text(0), "$1 costs $2");
}

TEST_P(SqlDb, ReturnsTheRowsOfReturning) {
  db().exec_script("CREATE TABLE builds (id BIGINT PRIMARY KEY, state TEXT NOT NULL)");
  EXPECT_EQ(values_of(db().query("INSERT INTO builds (id, state) VALUES ($1, $2), ($3, $2) "
                                 "RETURNING id, state",
                                 {1, "queued", 2})),
            (std::vector<Values>{{1, "queued"}, {2, "queued"}}));
  EXPECT_EQ(values_of(db().query("UPDATE builds SET state = $1 WHERE id = $2 RETURNING id, state",
                                 {"done", 2})),
            (std::vector<Values>{{2, "done"}}));
}

TEST_P(SqlDb, ReturnsNoRowsForAnEmptyResult) {
  db().exec_script("CREATE TABLE empty (id BIGINT PRIMARY KEY)");
  EXPECT_TRUE(db().query("SELECT id FROM empty").empty());
  EXPECT_TRUE(db().query("UPDATE empty SET id = id + 1 WHERE id = $1", {1}).empty());
  EXPECT_TRUE(db().query("DELETE FROM empty RETURNING id").empty());
}

TEST_P(SqlDb, ReportsASyntaxErrorAsIoNamingTheStatement) {
  Error error = error_from([&] { db().query("SELEC id FROM nowhere"); });
  EXPECT_EQ(error.kind(), ErrorKind::kIo);
  EXPECT_NE(std::string(error.what()).find("Failed to run SQL \"SELEC id FROM nowhere\": "),
            std::string::npos)
      << error.what();
  EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos) << error.what();
}

TEST_P(SqlDb, ShortensALongStatementInItsError) {
  Error error = error_from([&] {
    db().query(
        "SELECT id,\n       name\n  FROM a_table_that_does_not_exist_anywhere\n WHERE id = 1");
  });
  EXPECT_EQ(error.kind(), ErrorKind::kIo);
  EXPECT_NE(std::string(error.what()).find("\"SELECT id, name FROM a_table_that_does_n…\""),
            std::string::npos)
      << error.what();
}

TEST_P(SqlDb, RefusesADuplicateKeyAsAlreadyExists) {
  db().exec_script(
      "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL);"
      "CREATE UNIQUE INDEX users_by_name ON users (name);");
  db().query("INSERT INTO users (id, name) VALUES ($1, $2)", {1, "ada"});
  for (const Values& duplicate : {Values{1, "grace"}, Values{2, "ada"}}) {
    Error error =
        error_from([&] { db().query("INSERT INTO users (id, name) VALUES ($1, $2)", duplicate); });
    EXPECT_EQ(error.kind(), ErrorKind::kInvalidInput) << error.what();
    EXPECT_NE(std::string(error.what()).find("already exists"), std::string::npos) << error.what();
  }
  EXPECT_EQ(count_rows(db(), "users"), 1);
}

TEST_P(SqlDb, RefusesAMissingParameter) {
  Error error = error_from([&] { db().query("SELECT $1 + $2", {1}); });
  EXPECT_EQ(error.kind(), ErrorKind::kIo) << error.what();
}

TEST_P(SqlDb, RefusesSeveralStatementsInOneQuery) {
  db().exec_script("CREATE TABLE t (id BIGINT PRIMARY KEY)");
  Error error =
      error_from([&] { db().query("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)"); });
  EXPECT_EQ(error.kind(), ErrorKind::kIo) << error.what();
  EXPECT_EQ(count_rows(db(), "t"), 0);
}

TEST_P(SqlDb, RunsASchemaScriptWholeOrNotAtAll) {
  db().exec_script(
      "-- the schema\n"
      "CREATE TABLE a (id BIGINT PRIMARY KEY, note TEXT);\n"
      "CREATE INDEX a_by_note ON a (note);\n"
      "INSERT INTO a (id, note) VALUES (1, 'it''s here');\n");
  EXPECT_EQ(db().query("SELECT note FROM a").at(0).text(0), "it's here");

  Error error = error_from([&] {
    db().exec_script("CREATE TABLE b (id BIGINT PRIMARY KEY); INSERT INTO nowhere VALUES (1);");
  });
  EXPECT_EQ(error.kind(), ErrorKind::kIo);
  EXPECT_TRUE(error_from([&] { db().query("SELECT id FROM b"); }).kind() == ErrorKind::kIo)
      << "the first statement of a failed script was kept";
}

TEST_P(SqlDb, CommitsWhenTheBodyReturns) {
  db().exec_script("CREATE TABLE t (id BIGINT PRIMARY KEY, note TEXT)");
  db().transaction([](server::SqlDb& tx) {
    tx.query("INSERT INTO t (id, note) VALUES ($1, $2)", {1, "one"});
    tx.query("INSERT INTO t (id, note) VALUES ($1, $2)", {2, "two"});
    // The body sees its own writes.
    EXPECT_EQ(count_rows(tx, "t"), 2);
  });
  EXPECT_EQ(values_of(db().query("SELECT id, note FROM t ORDER BY id")),
            (std::vector<Values>{{1, "one"}, {2, "two"}}));
}

TEST_P(SqlDb, RollsBackWhenTheBodyThrows) {
  db().exec_script("CREATE TABLE t (id BIGINT PRIMARY KEY)");
  struct Boom : std::runtime_error {
    Boom() : std::runtime_error("boom") {}
  };
  EXPECT_THROW(db().transaction([](server::SqlDb& tx) {
    tx.query("INSERT INTO t (id) VALUES ($1)", {1});
    throw Boom();
  }),
               Boom);
  EXPECT_EQ(count_rows(db(), "t"), 0);

  // A failing statement's error passes through unchanged, and the database is usable after.
  Error error = error_from([&] {
    db().transaction([](server::SqlDb& tx) {
      tx.query("INSERT INTO t (id) VALUES ($1)", {1});
      tx.query("INSERT INTO t (id) VALUES ($1)", {1});
    });
  });
  EXPECT_EQ(error.kind(), ErrorKind::kInvalidInput) << error.what();
  EXPECT_EQ(count_rows(db(), "t"), 0);
  db().query("INSERT INTO t (id) VALUES ($1)", {1});
  EXPECT_EQ(count_rows(db(), "t"), 1);
}

TEST_P(SqlDb, RefusesToCommitABodyThatSwallowedAFailedStatement) {
  db().exec_script("CREATE TABLE t (id BIGINT PRIMARY KEY)");
  db().query("INSERT INTO t (id) VALUES ($1)", {1});
  Error error = error_from([&] {
    db().transaction([](server::SqlDb& tx) {
      tx.query("INSERT INTO t (id) VALUES ($1)", {2});
      try {
        tx.query("INSERT INTO t (id) VALUES ($1)", {1});
      } catch (const Error&) {
        // Ignored: PostgreSQL has aborted the transaction, and SQLite must behave the same.
      }
    });
  });
  EXPECT_EQ(error.kind(), ErrorKind::kIo) << error.what();
  EXPECT_EQ(count_rows(db(), "t"), 1);
}

TEST_P(SqlDb, RefusesTheOuterDatabaseInsideATransactionBody) {
  db().exec_script("CREATE TABLE t (id BIGINT PRIMARY KEY)");
  server::SqlDb& outer = db();
  Error error = error_from(
      [&] { outer.transaction([&](server::SqlDb&) { outer.query("SELECT count(*) FROM t"); }); });
  EXPECT_EQ(error.kind(), ErrorKind::kInternal) << error.what();
  error = error_from([&] { outer.transaction([](server::SqlDb& tx) { tx.transaction({}); }); });
  EXPECT_EQ(error.kind(), ErrorKind::kInternal) << error.what();
  EXPECT_EQ(count_rows(outer, "t"), 0);  // and it is usable after
}

TEST_P(SqlDb, InsertsFromFourThreadsThroughQuery) {
  db().exec_script("CREATE TABLE events (id BIGINT PRIMARY KEY, thread BIGINT NOT NULL)");
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (std::int64_t t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (std::int64_t i = 0; i < 50; ++i) {
        try {
          db().query("INSERT INTO events (id, thread) VALUES ($1, $2)", {t * 1000 + i, t});
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(count_rows(db(), "events"), 200);
  EXPECT_EQ(db().query("SELECT count(DISTINCT thread) FROM events").at(0).integer(0), 4);
}

TEST_P(SqlDb, InsertsFromFourThreadsThroughTransactions) {
  db().exec_script(
      "CREATE TABLE events (id BIGINT PRIMARY KEY, thread BIGINT NOT NULL);"
      "CREATE TABLE counter (id BIGINT PRIMARY KEY, n BIGINT NOT NULL);"
      "INSERT INTO counter (id, n) VALUES (1, 0);");
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (std::int64_t t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (std::int64_t i = 0; i < 50; ++i) {
        try {
          db().transaction([&](server::SqlDb& tx) {
            tx.query("INSERT INTO events (id, thread) VALUES ($1, $2)", {t * 1000 + i, t});
            // Every transaction updates the same row: they wait for each other, none is lost.
            tx.query("UPDATE counter SET n = n + 1 WHERE id = 1");
          });
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(count_rows(db(), "events"), 200);
  EXPECT_EQ(db().query("SELECT n FROM counter WHERE id = 1").at(0).integer(0), 200);
}

INSTANTIATE_TEST_SUITE_P(Backends, SqlDb,
                         ::testing::Values(SqlDialect::kSqlite, SqlDialect::kPostgres),
                         [](const ::testing::TestParamInfo<SqlDialect>& info) {
                           return info.param == SqlDialect::kSqlite ? "Sqlite" : "Postgres";
                         });

// The service's state on each backend: the queries behind revocation, disabled users, build
// ownership and sealed secrets, written once for both dialects.
class StateOn : public ::testing::TestWithParam<SqlDialect> {
 protected:
  void SetUp() override {
    if (GetParam() == SqlDialect::kPostgres) {
      std::string failure;
      TestPostgres* postgres = shared_postgres(failure);
      ASSERT_NE(postgres, nullptr) << failure;
      url_ = fresh_postgres_database(*postgres);
    }
  }

  // A new connection to this test's database: a restart, or a second server.
  std::unique_ptr<server::SqlDb> open_db() {
    return GetParam() == SqlDialect::kSqlite ? server::open_sqlite(dir_.path() / "state.db")
                                             : server::open_postgres(url_);
  }
  std::unique_ptr<server::ServiceState> open_state(bool sealed = false) {
    std::optional<server::SecretBox> box;
    if (sealed) box = server::SecretBox::load_or_create(dir_.path() / "secret.key");
    auto state = std::make_unique<server::ServiceState>(open_db(), std::move(box));
    state->bootstrap_admin();
    return state;
  }
  static server::BuildRecord proposal(const std::string& spec_id, const server::User& owner) {
    server::BuildRecord r;
    r.id = server::random_id();
    r.spec_id = spec_id;
    r.spec = "apiVersion: pok8s/v1\ncloudConfig: {users: [{passwd: hunter2}]}";
    r.files = R"({"wg.key":"wireguard-private-key"})";
    r.base_pinned = "docker://r/x@sha256:00";
    r.owner = owner.id;
    r.base = "docker://r/x:1";
    r.version = "v1";
    r.kubernetes = "none";
    r.artifact_kinds = R"(["iso"])";
    return r;
  }

  pok8s::util::TempDir dir_ = pok8s::util::TempDir::scratch();
  std::string url_;
};

TEST_P(StateOn, RevokingAnApiTokenEndsTheSessionsMadeWithIt) {
  auto state = open_state();
  server::User admin = state->users().at(0);
  auto [bob, login] = state->create_user("bob", "user");
  server::SessionGrant by_login = state->login(login);
  server::NewToken own = state->create_api_token(bob, "own");
  server::NewToken other = state->create_api_token(bob, "other");
  server::SessionGrant by_own = state->login(own.secret);
  server::SessionGrant by_other = state->login(other.secret);
  ASSERT_EQ(state->api_tokens_of(bob.id).size(), 2u);
  EXPECT_FALSE(state->delete_api_token(admin, own.info.id));
  EXPECT_TRUE(state->delete_api_token(bob, own.info.id));
  EXPECT_FALSE(state->authenticate_session(by_own.cookie));
  EXPECT_TRUE(state->authenticate_session(by_other.cookie));
  EXPECT_TRUE(state->revoke_token(other.info.id));
  EXPECT_FALSE(state->authenticate_session(by_other.cookie));
  EXPECT_FALSE(state->authenticate_token(other.secret));
  EXPECT_TRUE(state->authenticate_session(by_login.cookie));
  EXPECT_EQ(count_rows(state->db(), "tokens WHERE parent_id IS NOT NULL"), 0);
  // A session whose token row went without it is refused all the same.
  server::NewToken third = state->create_api_token(bob, "third");
  server::SessionGrant by_third = state->login(third.secret);
  state->db().query("DELETE FROM tokens WHERE id = $1", {third.info.id});
  EXPECT_FALSE(state->authenticate_session(by_third.cookie));
}

TEST_P(StateOn, DisablingAUserStopsThemAndKeepsTheLastAdmin) {
  auto state = open_state();
  server::User admin = state->users().at(0);
  auto [bob, login] = state->create_user("bob", "user");
  server::SessionGrant session = state->login(login);
  server::NewToken token = state->create_api_token(bob, "ci");
  EXPECT_TRUE(state->set_user_disabled(bob.id, true, admin).disabled);
  EXPECT_TRUE(state->user_by_id(bob.id)->disabled);
  EXPECT_FALSE(state->authenticate_session(session.cookie));
  EXPECT_FALSE(state->authenticate_token(token.secret));
  EXPECT_EQ(error_from([&] { state->login(token.secret); }).kind(), ErrorKind::kAuth);
  EXPECT_FALSE(state->set_user_disabled(bob.id, false, admin).disabled);
  EXPECT_TRUE(state->authenticate_token(token.secret));
  auto status = [&](const std::string& id, const server::User& by) {
    try {
      state->set_user_disabled(id, true, by);
    } catch (const server::ApiError& e) {
      return e.status();
    }
    return 0;
  };
  EXPECT_EQ(status(admin.id, admin), 409);
  EXPECT_EQ(status(admin.id, bob), 403);
  auto [second, unused] = state->create_user("second", "admin");
  EXPECT_EQ(status(second.id, admin), 0);
  EXPECT_EQ(status(admin.id, *state->user_by_name("second")), 403) << "a disabled admin";
}

TEST_P(StateOn, ListsTheBuildsEachUserMayRead) {
  auto state = open_state();
  server::User admin = state->users().at(0);
  server::User bob = state->create_user("bob", "user").first;
  server::User carol = state->create_user("carol", "user").first;
  server::User dave = state->create_user("dave", "user").first;
  auto bob1 = state->submit_build(proposal("b1", bob)).build;
  auto bob2 = state->submit_build(proposal("b2", bob)).build;
  auto carol1 = state->submit_build(proposal("c1", carol)).build;
  server::Submission again = state->submit_build(proposal("b1", carol));
  EXPECT_TRUE(again.reused);
  state->submit_build(proposal("b1", carol));  // granted once, not twice
  EXPECT_EQ(state->access_to_build(bob1, carol), server::BuildAccess::kGranted);
  EXPECT_EQ(state->access_to_build(bob1, dave), server::BuildAccess::kNone);
  EXPECT_TRUE(state->set_build_shared(bob2.id, true));
  EXPECT_EQ(state->access_to_build(*state->build(bob2.id), dave), server::BuildAccess::kShared);
  auto ids = [&](const server::User& viewer, std::int64_t limit, std::int64_t offset) {
    std::int64_t total = -1;
    std::vector<std::string> out;
    for (const auto& b : state->builds(std::nullopt, limit, offset, &total, viewer))
      out.push_back(b.id);
    out.push_back(std::to_string(total));
    return out;
  };
  using Ids = std::vector<std::string>;
  EXPECT_EQ(ids(bob, 50, 0), (Ids{bob2.id, bob1.id, "2"}));
  EXPECT_EQ(ids(carol, 50, 0), (Ids{carol1.id, bob2.id, bob1.id, "3"}));
  EXPECT_EQ(ids(carol, 1, 2), (Ids{bob1.id, "3"}));
  EXPECT_EQ(ids(dave, 50, 0), (Ids{bob2.id, "1"}));
  EXPECT_EQ(ids(admin, 2, 0), (Ids{carol1.id, bob2.id, "3"}));
  std::int64_t total = 0;
  ASSERT_TRUE(state->claim_build("w1"));
  EXPECT_EQ(state->builds(server::BuildState::kRunning, 10, 0, &total, dave).size(), 0u);
  EXPECT_EQ(total, 0);
  EXPECT_EQ(state->builds(server::BuildState::kRunning, 10, 0, &total, carol).at(0).id, bob1.id);
}

TEST_P(StateOn, SealsSpecsAtRestAndStillReadsRowsFromBefore) {
  server::BuildRecord old;
  {
    auto plain = open_state();
    old = proposal("old", plain->users().at(0));
    plain->submit_build(old);
  }
  auto state = open_state(true);
  server::BuildRecord fresh = proposal("fresh", state->users().at(0));
  EXPECT_EQ(state->submit_build(fresh).build.spec, fresh.spec);
  auto raw = state->db().query("SELECT spec, files FROM builds WHERE id = $1", {fresh.id});
  for (std::size_t i : {0u, 1u}) {
    EXPECT_TRUE(server::SecretBox::is_sealed(raw.at(0).text(i))) << raw.at(0).text(i);
    EXPECT_EQ(raw.at(0).text(i).find("hunter2"), std::string::npos);
    EXPECT_EQ(raw.at(0).text(i).find("wireguard-private-key"), std::string::npos);
  }
  EXPECT_EQ(state->claim_build("w1")->spec, old.spec);
  auto claimed = state->claim_build("w1");
  ASSERT_TRUE(claimed);
  EXPECT_EQ(claimed->files, fresh.files);
  // A second server (or worker) with the key reads them; one without is refused at once.
  EXPECT_EQ(open_state(true)->build(fresh.id)->spec, fresh.spec);
  EXPECT_EQ(error_from([&] { open_state(false); }).kind(), ErrorKind::kInvalidInput);
}

TEST_P(StateOn, UpgradesADatabaseOfTheFirstRelease) {
  open_db()->exec_script(first_release_database(GetParam()));
  for (int opening = 0; opening < 2; ++opening) {  // the second finds nothing to add
    auto state = open_state(true);
    server::User admin = state->users().at(0);
    EXPECT_FALSE(admin.disabled);
    auto old = state->build("00000000000000bb");
    ASSERT_TRUE(old);
    EXPECT_EQ(old->spec, "apiVersion: pok8s/v1");
    EXPECT_EQ(old->shared, opening == 1);
    state->set_build_shared(old->id, true);
    std::int64_t total = 0;
    EXPECT_EQ(state->builds(std::nullopt, 10, 0, &total, admin).size(), 1u);
    server::NewToken t = state->create_api_token(admin, "ci");
    server::SessionGrant g = state->login(t.secret);
    EXPECT_TRUE(state->revoke_token(t.info.id));
    EXPECT_FALSE(state->authenticate_session(g.cookie));
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, StateOn,
                         ::testing::Values(SqlDialect::kSqlite, SqlDialect::kPostgres),
                         [](const ::testing::TestParamInfo<SqlDialect>& info) {
                           return info.param == SqlDialect::kSqlite ? "Sqlite" : "Postgres";
                         });

// What only PostgreSQL does: workers on several hosts taking builds from one queue.
class Postgres : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string failure;
    postgres_ = shared_postgres(failure);
    ASSERT_NE(postgres_, nullptr) << failure;
    url_ = fresh_postgres_database(*postgres_);
  }

  TestPostgres* postgres_ = nullptr;
  std::string url_;
};

TEST_F(Postgres, ClaimsEachQueuedRowExactlyOnceWithSkipLocked) {
  constexpr int kRows = 20;
  constexpr int kWorkers = 4;
  auto db = server::open_postgres(url_);
  db->exec_script(
      "CREATE TABLE jobs (id BIGINT PRIMARY KEY, state TEXT NOT NULL, worker TEXT);"
      "INSERT INTO jobs (id, state) SELECT g, 'queued' FROM generate_series(1, 20) AS g;");
  std::vector<std::vector<std::int64_t>> claimed(kWorkers);
  std::vector<std::thread> workers;
  std::atomic<int> failures{0};
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      try {
        for (;;) {
          std::vector<SqlRow> rows = db->query(
              "UPDATE jobs SET state = 'running', worker = $1 WHERE id = (SELECT id FROM jobs "
              "WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id",
              {"worker-" + std::to_string(w)});
          if (rows.empty()) break;
          claimed[static_cast<std::size_t>(w)].push_back(rows.at(0).integer(0));
        }
      } catch (const std::exception&) {
        ++failures;
      }
    });
  }
  for (auto& worker : workers) worker.join();
  EXPECT_EQ(failures, 0);

  std::multiset<std::int64_t> all;
  for (const auto& ids : claimed) all.insert(ids.begin(), ids.end());
  EXPECT_EQ(all.size(), static_cast<std::size_t>(kRows));
  for (std::int64_t id = 1; id <= kRows; ++id) EXPECT_EQ(all.count(id), 1u) << "job " << id;
  EXPECT_EQ(db->query("SELECT count(*) FROM jobs WHERE state = 'queued'").at(0).integer(0), 0);
  // The table agrees with what each worker was told it claimed.
  for (int w = 0; w < kWorkers; ++w) {
    std::vector<std::int64_t> recorded;
    for (const SqlRow& row : db->query("SELECT id FROM jobs WHERE worker = $1 ORDER BY id",
                                       {"worker-" + std::to_string(w)}))
      recorded.push_back(row.integer(0));
    std::vector<std::int64_t> told = claimed[static_cast<std::size_t>(w)];
    std::sort(told.begin(), told.end());
    EXPECT_EQ(recorded, told) << "worker " << w;
  }
}

TEST_F(Postgres, ReplacesAConnectionTheServerClosed) {
  auto db = server::open_postgres(url_);
  std::int64_t first = db->query("SELECT pg_backend_pid()").at(0).integer(0);
  // From a second connection, end the first one's session as a server restart would.
  auto admin = server::open_postgres(url_);
  EXPECT_EQ(admin->query("SELECT pg_terminate_backend($1::int, 10000)", {first}).at(0).integer(0),
            1);
  std::int64_t second = db->query("SELECT pg_backend_pid()").at(0).integer(0);
  EXPECT_NE(second, first);
}

TEST_F(Postgres, ReadsBooleansAsIntegersAndNumericAsText) {
  auto db = server::open_postgres(url_);
  EXPECT_EQ(values_of(db->query("SELECT true, false, 7::smallint, 8::int, 9::oid, 1.5::numeric, "
                                "'a'::varchar")),
            (std::vector<Values>{{1, 0, 7, 8, 9, "1.5", "a"}}));
}

TEST(OpenDatabase, OpensSqliteInTheDataDirWhenTheUrlIsEmpty) {
  auto dir = pok8s::util::TempDir::scratch();
  auto db = server::open_database("", dir.path());
  EXPECT_EQ(db->dialect(), SqlDialect::kSqlite);
  db->exec_script("CREATE TABLE t (id BIGINT PRIMARY KEY)");
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "pok8s.db"));
}

TEST(OpenDatabase, OpensTheFileOfASqliteUrl) {
  auto dir = pok8s::util::TempDir::scratch();
  pok8s::util::Path file = dir.path() / "elsewhere.db";
  {
    auto db = server::open_database("sqlite:" + file.string(), dir.path() / "unused");
    db->exec_script("CREATE TABLE t (id BIGINT PRIMARY KEY); INSERT INTO t VALUES (42);");
  }
  // A second opening sees what the first wrote.
  auto db = server::open_database("sqlite:" + file.string(), dir.path() / "unused");
  EXPECT_EQ(db->query("SELECT id FROM t").at(0).integer(0), 42);
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "unused"));
}

TEST(OpenDatabase, OpensAPostgresUrl) {
  std::string failure;
  TestPostgres* postgres = shared_postgres(failure);
  ASSERT_NE(postgres, nullptr) << failure;
  auto db = server::open_database(postgres->url(), "/nonexistent");
  EXPECT_EQ(db->dialect(), SqlDialect::kPostgres);
  EXPECT_EQ(db->query("SELECT 1").at(0).integer(0), 1);
}

TEST(OpenDatabase, RefusesAnUnknownSchemeWithoutShowingThePassword) {
  Error error = error_from(
      [] { server::open_database("mysql://bob:hunter2@db.example:3306/state", "/tmp"); });
  EXPECT_EQ(error.kind(), ErrorKind::kInvalidInput);
  std::string message = error.what();
  EXPECT_EQ(message.rfind("Failed to open database URL: ", 0), 0u) << message;
  EXPECT_NE(message.find("mysql://bob:***@db.example:3306/state"), std::string::npos) << message;
  EXPECT_EQ(message.find("hunter2"), std::string::npos) << message;
}

TEST(OpenDatabase, RefusesAKeyValueStringWithoutShowingThePassword) {
  Error error = error_from(
      [] { server::open_database("host=db.example password=hunter2 user=bob", "/tmp"); });
  EXPECT_EQ(error.kind(), ErrorKind::kInvalidInput);
  EXPECT_EQ(std::string(error.what()).find("hunter2"), std::string::npos) << error.what();
}

TEST(OpenDatabase, RefusesAPasswordLibpqWouldMisreadWithoutShowingIt) {
  // An unencoded '/' ends the host part for libpq: "hunter" would become the port.
  Error error =
      error_from([] { server::open_database("postgres://bob:hunter/2@127.0.0.1/state", "/tmp"); });
  EXPECT_EQ(error.kind(), ErrorKind::kInvalidInput);
  std::string message = error.what();
  EXPECT_NE(message.find("percent-encode"), std::string::npos) << message;
  EXPECT_EQ(message.find("hunter"), std::string::npos) << message;
}

TEST(OpenDatabase, NamesThePostgresServerButNotThePasswordWhenItCannotConnect) {
  // Nothing listens on port 1.
  Error error =
      error_from([] { server::open_database("postgres://bob:hunter2@127.0.0.1:1/state", "/tmp"); });
  EXPECT_EQ(error.kind(), ErrorKind::kIo);
  std::string message = error.what();
  EXPECT_EQ(message.rfind("Failed to connect to PostgreSQL at 127.0.0.1:1/state: ", 0), 0u)
      << message;
  EXPECT_EQ(message.find("hunter2"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST(OpenDatabase, HidesThePasswordWhenTheServerRefusesTheConnection) {
  std::string failure;
  TestPostgres* postgres = shared_postgres(failure);
  ASSERT_NE(postgres, nullptr) << failure;
  // The test cluster trusts everyone, so ask for a database that does not exist instead: the
  // server refuses after the password was sent.
  std::string url = "postgres://pok8s:hunter2@127.0.0.1:" + std::to_string(postgres->port()) +
                    "/no_such_database";
  Error error = error_from([&] { server::open_database(url, "/tmp"); });
  EXPECT_EQ(error.kind(), ErrorKind::kIo);
  std::string message = error.what();
  EXPECT_NE(message.find("no_such_database"), std::string::npos) << message;
  EXPECT_EQ(message.find("hunter2"), std::string::npos) << message;
}

TEST(Sqlite, SharesItsFileWithAnotherOpening) {
  // Two openings of one file stand for two processes: WAL, the busy timeout and BEGIN
  // IMMEDIATE let their writes wait for each other instead of failing.
  auto dir = pok8s::util::TempDir::scratch();
  auto first = server::open_sqlite(dir.path() / "state.db");
  auto second = server::open_sqlite(dir.path() / "state.db");
  first->exec_script(
      "CREATE TABLE events (id BIGINT PRIMARY KEY);"
      "CREATE TABLE counter (id BIGINT PRIMARY KEY, n BIGINT NOT NULL);"
      "INSERT INTO counter (id, n) VALUES (1, 0);");
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (std::int64_t t = 0; t < 4; ++t) {
    server::SqlDb& db = t % 2 == 0 ? *first : *second;
    threads.emplace_back([&, t] {
      for (std::int64_t i = 0; i < 50; ++i) {
        try {
          db.transaction([&](server::SqlDb& tx) {
            std::int64_t n = tx.query("SELECT n FROM counter WHERE id = 1").at(0).integer(0);
            tx.query("UPDATE counter SET n = $1 WHERE id = 1", {n + 1});
            tx.query("INSERT INTO events (id) VALUES ($1)", {t * 1000 + i});
          });
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(count_rows(*second, "events"), 200);
  EXPECT_EQ(first->query("SELECT n FROM counter").at(0).integer(0), 200);
}

TEST(SqlRow, ConvertsBetweenIntegersAndText) {
  SqlRow row{{std::monostate{}, std::int64_t{-42}, std::string("1234567890123"), std::string("x")}};
  EXPECT_EQ(row.integer(0), 0);
  EXPECT_EQ(row.text(0), "");
  EXPECT_EQ(row.integer(1), -42);
  EXPECT_EQ(row.text(1), "-42");
  EXPECT_EQ(row.integer(2), 1'234'567'890'123);
  EXPECT_EQ(row.text(3), "x");
  EXPECT_THROW(row.integer(3), Error);
  EXPECT_THROW(row.text(4), std::out_of_range);
}

}  // namespace
