// The small SQL surface the service's state needs, over an embedded SQLite file (the default:
// nothing to install) or a PostgreSQL server (several servers and workers share one queue).
// Statements use $1, $2, … for parameters in both dialects.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::server {

// NULL, an integer or text: all the state uses (times are unix milliseconds, JSON is text).
using SqlValue = std::variant<std::monostate, std::int64_t, std::string>;

struct SqlRow {
  std::vector<SqlValue> values;

  bool is_null(std::size_t i) const { return std::holds_alternative<std::monostate>(values.at(i)); }
  // The integer in column i (0 for NULL); text that holds a number is converted.
  std::int64_t integer(std::size_t i) const;
  // The text in column i (empty for NULL); an integer is printed.
  std::string text(std::size_t i) const;
};

enum class SqlDialect { kSqlite, kPostgres };

class SqlDb {
 public:
  virtual ~SqlDb() = default;
  virtual SqlDialect dialect() const = 0;
  // Runs one statement and returns its rows. Throws Error(kIo) naming the statement's first
  // words and the database's message.
  // A duplicate unique or primary key is instead Error(kInvalidInput) saying "already exists".
  virtual std::vector<SqlRow> query(std::string_view sql,
                                    const std::vector<SqlValue>& params = {}) = 0;
  // Runs several statements without parameters (the schema).
  virtual void exec_script(std::string_view sql) = 0;
  // Runs `body` in one transaction on one connection, given to it as `db`: committed when body
  // returns, rolled back when it throws (and the exception passed on). SQLite takes the write
  // lock at BEGIN (BEGIN IMMEDIATE), so read-then-write bodies do not deadlock. Do not nest.
  virtual void transaction(const std::function<void(SqlDb& db)>& body) = 0;
};

// An SQLite database file (created when missing), in WAL mode with a busy timeout, safe to use
// from several threads.
std::unique_ptr<SqlDb> open_sqlite(const util::Path& file);

// A PostgreSQL database from a libpq connection URI ("postgres://user@host:port/db") or
// key=value string, with a small pool of connections, safe to use from several threads.
std::unique_ptr<SqlDb> open_postgres(const std::string& conninfo);

// `url` empty or "sqlite:PATH" → SQLite (PATH, or data_dir/pok8s.db when url is empty);
// "postgres://…" or "postgresql://…" → PostgreSQL. Anything else is kInvalidInput.
std::unique_ptr<SqlDb> open_database(const std::string& url, const util::Path& data_dir);

}  // namespace pok8s::server
