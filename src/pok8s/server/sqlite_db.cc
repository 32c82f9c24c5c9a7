// The embedded backend: one SQLite connection in WAL mode, shared by all threads under a mutex
// (the service's state is small), with its prepared statements cached by SQL text.
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "pok8s/server/sql.h"
#include "pok8s/server/sql_detail.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

namespace pok8s::server {

namespace {

using detail::failed_to_run;
using detail::InTransactionBody;
using detail::t_transaction_of;
using detail::throw_nested;

// Long enough for a competing process (a second `pok8s serve` on the same file) to finish
// its write; short enough that a stuck lock surfaces as an error.
constexpr int kBusyTimeoutMs = 10'000;
// Statements are few and fixed; a bound keeps SQL built at run time from growing the cache.
constexpr std::size_t kMaxCachedStatements = 256;

struct SqliteCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct StatementFinalizer {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using SqlitePtr = std::unique_ptr<sqlite3, SqliteCloser>;
using StatementPtr = std::unique_ptr<sqlite3_stmt, StatementFinalizer>;

// A duplicate key is kInvalidInput with "already exists" in both dialects, so callers handle
// it one way; everything else the database refuses is kIo.
[[noreturn]] void throw_sql_error(std::string_view sql, int code, const char* message) {
  std::string reason = detail::one_line(message ? message : sqlite3_errstr(code));
  if (code == SQLITE_CONSTRAINT_UNIQUE || code == SQLITE_CONSTRAINT_PRIMARYKEY)
    throw Error(ErrorKind::kInvalidInput,
                failed_to_run(sql) + "a row with this key already exists (" + reason + ")");
  throw Error(ErrorKind::kIo, failed_to_run(sql) + reason);
}

// The database holds password hashes, session secrets and build specs: only its owner may read
// it, whatever the umask. SQLite gives a new -wal and -shm the mode of the database file, so
// creating that file 0600 is enough for new ones; files left from before (a crash, an older
// pok8s, a chmod by hand) are narrowed here. A file someone else owns is left as they set it.
void restrict_to_owner(const util::Path& file, bool create) {
  // The database itself may be a symlink (the admin's choice); its -wal and -shm are opened
  // the way SQLite opens them, without following one. O_NONBLOCK: a FIFO there must not hang us.
  int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | (create ? O_CREAT : O_NOFOLLOW);
  util::UniqueFd fd(::open(file.c_str(), flags, 0600));
  if (!fd.valid() && !create && (errno == ENOENT || errno == ELOOP)) return;
  if (!fd.valid()) throw_errno("Failed to open SQLite database " + file.string(), errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0)
    throw_errno("Failed to stat SQLite database " + file.string(), errno);
  if (!S_ISREG(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 077) == 0) return;
  if (::fchmod(fd.get(), st.st_mode & 0700) != 0)
    throw_errno("Failed to make SQLite database " + file.string() + " private to its owner", errno);
}

// ":memory:" and "" are SQLite's names for databases that are no file.
bool is_file_name(const util::Path& file) {
  return !file.empty() && file != ":memory:";
}

void restrict_database_files(const util::Path& file, bool create) {
  if (!is_file_name(file)) return;
  restrict_to_owner(file, create);
  restrict_to_owner(file.string() + "-wal", false);
  restrict_to_owner(file.string() + "-shm", false);
}

struct CachedStatement {
  StatementPtr stmt;  // null for a statement that is only comments
  // slots[n] is SQLite's bind index of parameter $n+1, 0 when the statement does not use it.
  std::vector<int> slots;
};

// A statement is reset after every use, so the next use starts afresh and no read stays open
// to block a checkpoint or a ROLLBACK.
class ResetOnExit {
 public:
  explicit ResetOnExit(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ResetOnExit(const ResetOnExit&) = delete;
  ResetOnExit& operator=(const ResetOnExit&) = delete;
  ~ResetOnExit() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

 private:
  sqlite3_stmt* stmt_;
};

SqlValue column_value(sqlite3_stmt* stmt, int i) {
  switch (sqlite3_column_type(stmt, i)) {
    case SQLITE_NULL:
      return std::monostate{};
    case SQLITE_INTEGER:
      return static_cast<std::int64_t>(sqlite3_column_int64(stmt, i));
    case SQLITE_BLOB: {
      const void* data = sqlite3_column_blob(stmt, i);
      auto size = static_cast<std::size_t>(sqlite3_column_bytes(stmt, i));
      return data ? std::string(static_cast<const char*>(data), size) : std::string();
    }
    default: {  // TEXT, and REAL printed as text (the schema has none)
      const unsigned char* data = sqlite3_column_text(stmt, i);
      auto size = static_cast<std::size_t>(sqlite3_column_bytes(stmt, i));
      return data ? std::string(reinterpret_cast<const char*>(data), size) : std::string();
    }
  }
}

// One connection; not thread-safe on its own (SqliteDb serialises it).
class SqliteConnection {
 public:
  explicit SqliteConnection(const util::Path& file) {
    restrict_database_files(file, true);
    sqlite3* raw = nullptr;
    int rc =
        sqlite3_open_v2(file.c_str(), &raw,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    db_.reset(raw);  // a handle comes back even on failure, and must be closed
    auto fail = [&](const std::string& reason) {
      throw Error(ErrorKind::kIo,
                  "Failed to open SQLite database " + file.string() + ": " + reason);
    };
    if (rc != SQLITE_OK) fail(raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc));
    sqlite3_extended_result_codes(raw, 1);
    sqlite3_busy_timeout(raw, kBusyTimeoutMs);
    // SQLite opens the file lazily: the first pragma is where a bad path shows.
    char* message = nullptr;
    rc = sqlite3_exec(raw,
                      "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                      "PRAGMA foreign_keys=ON;",
                      nullptr, nullptr, &message);
    if (rc != SQLITE_OK) {
      std::string reason = detail::one_line(message ? message : sqlite3_errstr(rc));
      sqlite3_free(message);
      fail(reason);
    }
    // WAL mode made the -wal and -shm files (with the database's mode, unless another process
    // made them first).
    restrict_database_files(file, false);
  }

  bool in_transaction() const { return sqlite3_get_autocommit(db_.get()) == 0; }

  std::vector<SqlRow> query(std::string_view sql, const std::vector<SqlValue>& params) {
    CachedStatement& cached = prepare(sql);
    // The same check PostgreSQL makes, so a mistake shows on the embedded database too.
    if (params.size() != cached.slots.size())
      throw Error(ErrorKind::kIo, failed_to_run(sql) + "it takes " +
                                      std::to_string(cached.slots.size()) + " parameters, not " +
                                      std::to_string(params.size()));
    sqlite3_stmt* stmt = cached.stmt.get();
    if (!stmt) return {};
    ResetOnExit reset(stmt);
    for (std::size_t n = 0; n < params.size(); ++n) {
      int slot = cached.slots[n];
      if (slot == 0) continue;
      const SqlValue& value = params[n];
      int rc = SQLITE_OK;
      if (const auto* number = std::get_if<std::int64_t>(&value)) {
        rc = sqlite3_bind_int64(stmt, slot, *number);
      } else if (const auto* text = std::get_if<std::string>(&value)) {
        // SQLITE_STATIC: `params` outlives the statement's use, which ends in `reset`.
        rc =
            sqlite3_bind_text64(stmt, slot, text->data(), text->size(), SQLITE_STATIC, SQLITE_UTF8);
      } else {
        rc = sqlite3_bind_null(stmt, slot);
      }
      if (rc != SQLITE_OK) throw_sql_error(sql, rc, sqlite3_errmsg(db_.get()));
    }
    std::vector<SqlRow> rows;
    int columns = sqlite3_column_count(stmt);
    for (;;) {
      int rc = sqlite3_step(stmt);
      if (rc == SQLITE_DONE) break;
      if (rc != SQLITE_ROW)
        throw_sql_error(sql, sqlite3_extended_errcode(db_.get()), sqlite3_errmsg(db_.get()));
      SqlRow& row = rows.emplace_back();
      row.values.reserve(static_cast<std::size_t>(columns));
      for (int i = 0; i < columns; ++i) row.values.push_back(column_value(stmt, i));
    }
    return rows;
  }

  // A script runs whole or not at all, as a multi-statement query does in PostgreSQL.
  void exec_script(std::string_view sql) {
    bool own_transaction = !in_transaction();
    if (own_transaction) exec("BEGIN IMMEDIATE");
    try {
      exec(sql);
      if (own_transaction) exec("COMMIT");
    } catch (...) {
      if (own_transaction) roll_back();
      throw;
    }
  }

  void exec(std::string_view sql) {
    std::string text(sql);
    char* message = nullptr;
    int rc = sqlite3_exec(db_.get(), text.c_str(), nullptr, nullptr, &message);
    if (rc == SQLITE_OK) return;
    std::string reason = message ? message : sqlite3_errstr(rc);
    sqlite3_free(message);
    throw_sql_error(sql, sqlite3_extended_errcode(db_.get()), reason.c_str());
  }

  // Best effort: some errors (a full disk) already ended the transaction.
  void roll_back() noexcept {
    if (!in_transaction()) return;
    sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
  }

 private:
  CachedStatement& prepare(std::string_view sql) {
    std::string key(sql);
    if (auto found = statements_.find(key); found != statements_.end()) return found->second;
    if (sql.size() > static_cast<std::size_t>(INT_MAX))
      throw Error(ErrorKind::kInvalidInput, failed_to_run(sql) + "the statement is too long");
    sqlite3_stmt* raw = nullptr;
    const char* tail = nullptr;
    int rc = sqlite3_prepare_v3(db_.get(), sql.data(), static_cast<int>(sql.size()),
                                SQLITE_PREPARE_PERSISTENT, &raw, &tail);
    StatementPtr stmt(raw);
    if (rc != SQLITE_OK)
      throw_sql_error(sql, sqlite3_extended_errcode(db_.get()), sqlite3_errmsg(db_.get()));
    refuse_second_statement(sql, tail);
    CachedStatement cached{std::move(stmt), {}};
    if (cached.stmt) cached.slots = parameter_slots(sql, cached.stmt.get());
    if (statements_.size() >= kMaxCachedStatements) statements_.clear();
    return statements_.emplace(std::move(key), std::move(cached)).first->second;
  }

  // PostgreSQL runs one statement per parameterised query; so does this backend, rather than
  // silently ignoring what follows the first.
  void refuse_second_statement(std::string_view sql, const char* tail) {
    if (!tail) return;
    std::string_view rest(tail, static_cast<std::size_t>(sql.data() + sql.size() - tail));
    if (rest.find_first_not_of(" \t\r\n;") == std::string_view::npos) return;
    sqlite3_stmt* raw = nullptr;
    int rc =
        sqlite3_prepare_v2(db_.get(), rest.data(), static_cast<int>(rest.size()), &raw, nullptr);
    StatementPtr next(raw);
    if (rc == SQLITE_OK && !next) return;  // only comments follow
    throw Error(ErrorKind::kIo,
                failed_to_run(sql) + "it holds more than one statement (use exec_script)");
  }

  // Both dialects write parameters $1, $2, …; SQLite takes "$1" as a named parameter, so each
  // is found by name, and any other form (?, :name) is refused as PostgreSQL would.
  static std::vector<int> parameter_slots(std::string_view sql, sqlite3_stmt* stmt) {
    std::vector<int> slots;
    int count = sqlite3_bind_parameter_count(stmt);
    for (int i = 1; i <= count; ++i) {
      const char* name = sqlite3_bind_parameter_name(stmt, i);
      std::string_view text = name ? name : "?";
      std::size_t n = 0;
      bool numbered = text.size() >= 2 && text.size() <= 6 && text[0] == '$';
      for (std::size_t k = 1; numbered && k < text.size(); ++k) {
        numbered = text[k] >= '0' && text[k] <= '9';
        n = n * 10 + static_cast<std::size_t>(text[k] - '0');
      }
      if (!numbered || n == 0)
        throw Error(ErrorKind::kIo, failed_to_run(sql) + "parameter " + std::string(text) +
                                        " is not written $1, $2, …");
      if (slots.size() < n) slots.resize(n, 0);
      slots[n - 1] = i;
    }
    return slots;
  }

  SqlitePtr db_;
  // Declared after db_, so the statements are finalised before the connection closes.
  std::unordered_map<std::string, CachedStatement> statements_;
};

// The database a transaction's body runs on: the connection, already locked and in BEGIN.
// Like PostgreSQL, it refuses further statements once one has failed, so a body that swallows
// an error cannot commit half its work.
class SqliteTransaction final : public SqlDb {
 public:
  explicit SqliteTransaction(SqliteConnection& connection) : connection_(connection) {}

  SqlDialect dialect() const override { return SqlDialect::kSqlite; }

  std::vector<SqlRow> query(std::string_view sql, const std::vector<SqlValue>& params) override {
    refuse_after_failure(sql);
    try {
      return connection_.query(sql, params);
    } catch (...) {
      failed_ = true;
      throw;
    }
  }

  void exec_script(std::string_view sql) override {
    refuse_after_failure(sql);
    try {
      connection_.exec_script(sql);
    } catch (...) {
      failed_ = true;
      throw;
    }
  }

  void transaction(const std::function<void(SqlDb& db)>&) override { throw_nested("BEGIN"); }

  bool failed() const { return failed_; }

 private:
  void refuse_after_failure(std::string_view sql) const {
    if (failed_)
      throw Error(ErrorKind::kIo, failed_to_run(sql) +
                                      "an earlier statement in this transaction failed, so it "
                                      "can only roll back");
  }

  SqliteConnection& connection_;
  bool failed_ = false;
};

class SqliteDb final : public SqlDb {
 public:
  explicit SqliteDb(const util::Path& file) : connection_(file) {}

  SqlDialect dialect() const override { return SqlDialect::kSqlite; }

  std::vector<SqlRow> query(std::string_view sql, const std::vector<SqlValue>& params) override {
    if (t_transaction_of == this) throw_nested(sql);
    std::lock_guard lock(mutex_);
    return connection_.query(sql, params);
  }

  void exec_script(std::string_view sql) override {
    if (t_transaction_of == this) throw_nested(sql);
    std::lock_guard lock(mutex_);
    connection_.exec_script(sql);
  }

  void transaction(const std::function<void(SqlDb& db)>& body) override {
    if (t_transaction_of == this) throw_nested("BEGIN");
    std::lock_guard lock(mutex_);
    // IMMEDIATE takes the write lock now, so a body that reads and then writes cannot fail
    // halfway on a lock another process took in between.
    connection_.exec("BEGIN IMMEDIATE");
    SqliteTransaction tx(connection_);
    try {
      InTransactionBody marker(this);
      body(tx);
    } catch (...) {
      connection_.roll_back();
      throw;
    }
    if (tx.failed()) {
      connection_.roll_back();
      throw Error(ErrorKind::kIo, "Failed to commit the transaction: a statement in it failed");
    }
    try {
      connection_.exec("COMMIT");
    } catch (...) {
      connection_.roll_back();
      throw;
    }
  }

 private:
  std::mutex mutex_;
  SqliteConnection connection_;
};

}  // namespace

std::unique_ptr<SqlDb> open_sqlite(const util::Path& file) {
  return std::make_unique<SqliteDb>(file);
}

}  // namespace pok8s::server
