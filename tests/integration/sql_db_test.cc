// The service's two databases behave alike: every conformance test runs against SQLite in a
// temporary directory and against a real PostgreSQL 15 server started for this test binary.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <memory>
#include <ostream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "integration/postgres_harness.h"
#include "pok8s/server/sql.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

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

// Runs `action`, which must throw a pok8s::Error, and returns it.
template <typename Action>
Error error_from(Action&& action) {
  try {
    action();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected a pok8s::Error";
  return Error(ErrorKind::kInternal, "no error was thrown");
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
