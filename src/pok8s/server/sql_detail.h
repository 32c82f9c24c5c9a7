// What the SQLite and PostgreSQL backends share and no other module needs: message helpers and
// the guard that catches a transaction body using the outer database. Private to server/sql*.cc.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include "pok8s/server/sql.h"

namespace pok8s::server::detail {

// Database messages span lines; an error message is one line.
std::string one_line(std::string_view text);
// Enough of a statement to recognise it in a log: its first words, on one line.
std::string statement_excerpt(std::string_view sql);
// "Failed to run SQL \"…\": "
std::string failed_to_run(std::string_view sql);
std::string url_password(const std::string& url);
std::string without_password(const std::string& url);
// kInternal: a statement on the outer database (or a nested transaction) inside a body.
[[noreturn]] void throw_nested(std::string_view sql);

// Which database, if any, this thread is running a transaction body on: the outer database
// would run statements outside the transaction, and wait on the transaction's own lock.
extern thread_local const SqlDb* t_transaction_of;

// Marks this thread as running `db`'s transaction body while it exists.
class InTransactionBody {
 public:
  explicit InTransactionBody(const SqlDb* db) : outer_(std::exchange(t_transaction_of, db)) {}
  InTransactionBody(const InTransactionBody&) = delete;
  InTransactionBody& operator=(const InTransactionBody&) = delete;
  ~InTransactionBody() { t_transaction_of = outer_; }

 private:
  const SqlDb* outer_;
};

}  // namespace pok8s::server::detail
