// The scale-out backend: a small pool of libpq connections to one PostgreSQL database, which
// several servers and workers on different hosts share (the build queue is claimed with
// SELECT … FOR UPDATE SKIP LOCKED).
#include <libpq-fe.h>
#include <poll.h>

#include <charconv>
#include <condition_variable>
#include <mutex>
#include <utility>

#include "pok8s/server/sql.h"
#include "pok8s/server/sql_detail.h"
#include "pok8s/util/error.h"

namespace pok8s::server {

namespace {

using detail::failed_to_run;
using detail::InTransactionBody;
using detail::t_transaction_of;
using detail::throw_nested;

// Enough for a server's request threads and its build workers; PostgreSQL's default limit is
// 100 connections, shared by every server and worker.
constexpr std::size_t kMaxConnections = 8;
// The protocol's limit on parameters of one statement.
constexpr std::size_t kMaxParameters = 65'535;
// Type OIDs from PostgreSQL's catalog (pg_type.dat); libpq-dev does not install pg_type_d.h.
constexpr Oid kBoolOid = 16;
constexpr Oid kInt8Oid = 20;
constexpr Oid kInt2Oid = 21;
constexpr Oid kInt4Oid = 23;
constexpr Oid kOidOid = 26;
constexpr std::string_view kUniqueViolation = "23505";

struct ConnectionCloser {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
struct ResultClearer {
  void operator()(PGresult* result) const { PQclear(result); }
};
struct ConninfoFreer {
  void operator()(PQconninfoOption* options) const { PQconninfoFree(options); }
};
using ConnectionPtr = std::unique_ptr<PGconn, ConnectionCloser>;
using ResultPtr = std::unique_ptr<PGresult, ResultClearer>;
using ConninfoPtr = std::unique_ptr<PQconninfoOption, ConninfoFreer>;

// The library never prints; what PostgreSQL says in passing (NOTICE, WARNING) is dropped.
void ignore_notice(void*, const char*) {}

// The result of a statement, or the error it is mapped to: a duplicate key is kInvalidInput
// with "already exists" (as for SQLite), everything else kIo.
ResultPtr checked(PGconn* conn, PGresult* raw, std::string_view sql) {
  ResultPtr result(raw);
  ExecStatusType status = result ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_EMPTY_QUERY)
    return result;
  const char* primary =
      result ? PQresultErrorField(result.get(), PG_DIAG_MESSAGE_PRIMARY) : nullptr;
  std::string reason = detail::one_line(primary  ? primary
                                        : result ? PQresultErrorMessage(result.get())
                                                 : PQerrorMessage(conn));
  if (reason.empty()) reason = std::string("unexpected result ") + PQresStatus(status);
  const char* state = result ? PQresultErrorField(result.get(), PG_DIAG_SQLSTATE) : nullptr;
  if (state && state == kUniqueViolation)
    throw Error(ErrorKind::kInvalidInput,
                failed_to_run(sql) + "a row with this key already exists (" + reason + ")");
  throw Error(ErrorKind::kIo, failed_to_run(sql) + reason);
}

std::vector<SqlRow> rows_of(const PGresult* result, std::string_view sql) {
  enum class Kind { kText, kInteger, kBool };
  int columns = PQnfields(result);
  std::vector<Kind> kinds;
  for (int c = 0; c < columns; ++c) {
    Oid type = PQftype(result, c);
    kinds.push_back(type == kBoolOid ? Kind::kBool
                    : type == kInt2Oid || type == kInt4Oid || type == kInt8Oid || type == kOidOid
                        ? Kind::kInteger
                        : Kind::kText);
  }
  std::vector<SqlRow> rows(static_cast<std::size_t>(PQntuples(result)));
  for (int r = 0; r < PQntuples(result); ++r) {
    SqlRow& row = rows[static_cast<std::size_t>(r)];
    row.values.reserve(static_cast<std::size_t>(columns));
    for (int c = 0; c < columns; ++c) {
      if (PQgetisnull(result, r, c)) {
        row.values.emplace_back(std::monostate{});
        continue;
      }
      const char* text = PQgetvalue(result, r, c);
      auto size = static_cast<std::size_t>(PQgetlength(result, r, c));
      Kind kind = kinds[static_cast<std::size_t>(c)];
      if (kind == Kind::kText) {
        row.values.emplace_back(std::string(text, size));
      } else if (kind == Kind::kBool) {
        row.values.emplace_back(std::int64_t{text[0] == 't' ? 1 : 0});
      } else {
        std::int64_t number = 0;
        auto [end, ec] = std::from_chars(text, text + size, number);
        if (ec != std::errc() || end != text + size)
          throw Error(ErrorKind::kInternal, failed_to_run(sql) + "column " + std::to_string(c) +
                                                " holds \"" + std::string(text, size) +
                                                "\", not an integer");
        row.values.emplace_back(number);
      }
    }
  }
  return rows;
}

std::vector<SqlRow> run_query(PGconn* conn, std::string_view sql,
                              const std::vector<SqlValue>& params) {
  if (params.size() > kMaxParameters)
    throw Error(ErrorKind::kInvalidInput, failed_to_run(sql) + "too many parameters");
  std::string statement(sql);
  std::vector<std::string> numbers(params.size());
  std::vector<const char*> values(params.size(), nullptr);
  // Integers are declared int8, so "$1 + 60000" stays 64-bit instead of being taken for
  // int4; text and NULL are left for the server to infer from where they are used.
  std::vector<Oid> types(params.size(), 0);
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (const auto* number = std::get_if<std::int64_t>(&params[i])) {
      numbers[i] = std::to_string(*number);
      values[i] = numbers[i].c_str();
      types[i] = kInt8Oid;
    } else if (const auto* text = std::get_if<std::string>(&params[i])) {
      // Text parameters travel NUL-terminated, and PostgreSQL text cannot hold a NUL anyway.
      if (text->find('\0') != std::string::npos)
        throw Error(ErrorKind::kInvalidInput, failed_to_run(sql) + "parameter $" +
                                                  std::to_string(i + 1) + " holds a NUL byte");
      values[i] = text->c_str();
    }
  }
  ResultPtr result = checked(conn,
                             PQexecParams(conn, statement.c_str(), static_cast<int>(params.size()),
                                          types.data(), values.data(), nullptr, nullptr, 0),
                             sql);
  return rows_of(result.get(), sql);
}

void run_script(PGconn* conn, std::string_view sql) {
  std::string script(sql);
  // Several statements in one simple query run in one implicit transaction: all or nothing.
  checked(conn, PQexec(conn, script.c_str()), sql);
}

// Best effort: a broken connection is discarded when it goes back to the pool anyway.
void roll_back(PGconn* conn) noexcept {
  if (PQtransactionStatus(conn) == PQTRANS_IDLE) return;
  PQclear(PQexec(conn, "ROLLBACK"));
}

std::string percent_decoded(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    unsigned value = 0;
    if (text[i] == '%' && i + 2 < text.size() &&
        std::from_chars(text.data() + i + 1, text.data() + i + 3, value, 16).ptr ==
            text.data() + i + 3) {
      out += static_cast<char>(value);
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

bool looks_like_conninfo(const std::string& conninfo) {
  return conninfo.find('=') != std::string::npos || conninfo.rfind("postgres://", 0) == 0 ||
         conninfo.rfind("postgresql://", 0) == 0;
}

// Connections to one database, made when first needed, at most kMaxConnections; a connection
// the server closed (a restart, an idle timeout) is replaced by a new one.
class ConnectionPool {
 public:
  // A connection taken from the pool; back in the pool when the lease ends.
  class Lease {
   public:
    Lease(ConnectionPool& pool, ConnectionPtr conn) : pool_(pool), conn_(std::move(conn)) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { pool_.give_back(std::move(conn_)); }
    PGconn* get() const { return conn_.get(); }

   private:
    ConnectionPool& pool_;
    ConnectionPtr conn_;
  };

  explicit ConnectionPool(std::string conninfo) : conninfo_(std::move(conninfo)) {
    if (!looks_like_conninfo(conninfo_)) return;  // a bare database name
    char* error = nullptr;
    ConninfoPtr options(PQconninfoParse(conninfo_.c_str(), &error));
    if (!options) {
      std::string reason = error ? detail::one_line(error) : "out of memory";
      PQfreemem(error);
      throw Error(ErrorKind::kInvalidInput,
                  "Failed to read the PostgreSQL connection string: " + without_secrets(reason));
    }
    for (PQconninfoOption* o = options.get(); o->keyword; ++o)
      if (std::string_view(o->keyword) == "password" && o->val) password_ = o->val;
    // An unencoded '/' or '@' in a URL's password makes libpq read it as part of the host or
    // port, and echo it in its messages: refuse such a URL before anything is said about it.
    std::string written = detail::url_password(conninfo_);
    if (!written.empty() && percent_decoded(written) != password_)
      throw Error(ErrorKind::kInvalidInput,
                  "Failed to read the PostgreSQL connection string \"" +
                      detail::one_line(detail::without_password(conninfo_)) +
                      "\": libpq does not find the password in it; percent-encode the "
                      "characters /, @, : and % in a password");
  }

  Lease acquire() {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [&] { return !idle_.empty() || open_ < kMaxConnections; });
    ConnectionPtr conn;
    if (!idle_.empty()) {
      conn = std::move(idle_.back());
      idle_.pop_back();
    } else {
      ++open_;
    }
    lock.unlock();
    if (conn && !usable(conn.get())) conn.reset();  // keeps its slot for the new connection
    if (!conn) {
      try {
        conn = connect();
      } catch (...) {
        lock.lock();
        --open_;
        ready_.notify_one();
        throw;
      }
    }
    return Lease(*this, std::move(conn));
  }

 private:
  // An idle connection has nothing to read unless the server spoke: almost always to say it
  // is ending the session (a restart, pg_terminate_backend), followed by the end of the
  // stream. Reading that turns the status to CONNECTION_BAD instead of failing the next query.
  static bool usable(PGconn* conn) {
    for (int i = 0; i < 4 && PQstatus(conn) == CONNECTION_OK && readable(PQsocket(conn)); ++i) {
      if (PQconsumeInput(conn) == 0) return false;
      PQisBusy(conn);  // parses what arrived; an error while idle goes to the notice processor
    }
    return PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) == PQTRANS_IDLE;
  }

  static bool readable(int fd) {
    if (fd < 0) return false;
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
  }

  ConnectionPtr connect() {
    // Entries before "dbname" are defaults the connection string may override; the ones
    // after it are fallbacks by nature. client_min_messages keeps NOTICEs off the wire.
    const char* keywords[] = {"connect_timeout", "options", "dbname", "fallback_application_name",
                              nullptr};
    const char* values[] = {"10", "-c client_min_messages=warning", conninfo_.c_str(), "pok8s",
                            nullptr};
    ConnectionPtr conn(PQconnectdbParams(keywords, values, 1));
    if (!conn) throw Error(ErrorKind::kIo, "Failed to connect to PostgreSQL: out of memory");
    if (PQstatus(conn.get()) != CONNECTION_OK)
      throw Error(ErrorKind::kIo,
                  "Failed to connect to PostgreSQL at " + target(conn.get()) + ": " +
                      without_secrets(detail::one_line(PQerrorMessage(conn.get()))));
    PQsetNoticeProcessor(conn.get(), ignore_notice, nullptr);
    return conn;
  }

  // host:port/database, as libpq resolved them (environment and defaults included).
  static std::string target(PGconn* conn) {
    auto or_unknown = [](const char* text) {
      return text && *text ? std::string(text) : std::string("?");
    };
    return or_unknown(PQhost(conn)) + ":" + or_unknown(PQport(conn)) + "/" + or_unknown(PQdb(conn));
  }

  // libpq does not echo passwords, but a message that might (a malformed URL quotes the bad
  // part) is cheap to make sure of. A password of a few letters would garble every word that
  // holds them, and hides nothing worth hiding.
  std::string without_secrets(std::string text) const {
    constexpr std::size_t kShortest = 4;
    for (const std::string& secret : {password_, detail::url_password(conninfo_)}) {
      if (secret.size() < kShortest) continue;
      for (std::size_t at = text.find(secret); at != std::string::npos;
           at = text.find(secret, at + 3))
        text.replace(at, secret.size(), "***");
    }
    return text;
  }

  void give_back(ConnectionPtr conn) {
    // A connection left inside a transaction or broken is closed, not reused.
    bool keep = conn && PQstatus(conn.get()) == CONNECTION_OK &&
                PQtransactionStatus(conn.get()) == PQTRANS_IDLE;
    {
      std::lock_guard lock(mutex_);
      if (keep)
        idle_.push_back(std::move(conn));
      else
        --open_;
    }
    ready_.notify_one();
    // A dropped connection closes here, outside the lock.
  }

  std::string conninfo_;
  std::string password_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::vector<ConnectionPtr> idle_;
  std::size_t open_ = 0;  // idle and leased
};

// The database a transaction's body runs on: one connection, inside BEGIN.
class PostgresTransaction final : public SqlDb {
 public:
  explicit PostgresTransaction(PGconn* conn) : conn_(conn) {}

  SqlDialect dialect() const override { return SqlDialect::kPostgres; }

  std::vector<SqlRow> query(std::string_view sql, const std::vector<SqlValue>& params) override {
    try {
      return run_query(conn_, sql, params);
    } catch (...) {
      failed_ = true;
      throw;
    }
  }

  void exec_script(std::string_view sql) override {
    try {
      run_script(conn_, sql);
    } catch (...) {
      failed_ = true;
      throw;
    }
  }

  void transaction(const std::function<void(SqlDb& db)>&) override { throw_nested("BEGIN"); }

  // Also true for a mistake caught before the statement reached the server, so a body that
  // swallows an error cannot commit in either dialect.
  bool failed() const { return failed_ || PQtransactionStatus(conn_) == PQTRANS_INERROR; }

 private:
  PGconn* conn_;
  bool failed_ = false;
};

class PostgresDb final : public SqlDb {
 public:
  explicit PostgresDb(const std::string& conninfo) : pool_(conninfo) {
    pool_.acquire();  // a wrong address or password shows now, not at the first request
  }

  SqlDialect dialect() const override { return SqlDialect::kPostgres; }

  std::vector<SqlRow> query(std::string_view sql, const std::vector<SqlValue>& params) override {
    if (t_transaction_of == this) throw_nested(sql);
    ConnectionPool::Lease conn = pool_.acquire();
    return run_query(conn.get(), sql, params);
  }

  void exec_script(std::string_view sql) override {
    if (t_transaction_of == this) throw_nested(sql);
    ConnectionPool::Lease conn = pool_.acquire();
    run_script(conn.get(), sql);
  }

  void transaction(const std::function<void(SqlDb& db)>& body) override {
    if (t_transaction_of == this) throw_nested("BEGIN");
    ConnectionPool::Lease conn = pool_.acquire();
    run_script(conn.get(), "BEGIN");
    PostgresTransaction tx(conn.get());
    try {
      InTransactionBody marker(this);
      body(tx);
    } catch (...) {
      roll_back(conn.get());
      throw;
    }
    if (tx.failed()) {
      roll_back(conn.get());
      throw Error(ErrorKind::kIo, "Failed to commit the transaction: a statement in it failed");
    }
    run_script(conn.get(), "COMMIT");  // a failed COMMIT has already rolled back
  }

 private:
  ConnectionPool pool_;
};

}  // namespace

std::unique_ptr<SqlDb> open_postgres(const std::string& conninfo) {
  return std::make_unique<PostgresDb>(conninfo);
}

}  // namespace pok8s::server
