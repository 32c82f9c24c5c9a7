// A real, throw-away PostgreSQL 15 server for integration tests: a fresh cluster in a
// temporary directory, listening on 127.0.0.1 only, gone again when the harness is destroyed.
#pragma once

#include <sys/types.h>

#include <string>

#include "pok8s/util/file.h"

namespace pok8s::testing {

inline constexpr const char* kPostgresBinDir = "/usr/lib/postgresql/15/bin";
// The cluster's superuser; the server trusts every local connection, so it has no password.
inline constexpr const char* kPostgresUser = "pok8s";
inline constexpr const char* kPostgresDatabase = "pok8s_test";

class TestPostgres {
 public:
  // Runs initdb, starts postgres, waits until it accepts connections and creates the database
  // kPostgresDatabase. As root, the server runs as the `postgres` user (it refuses root).
  // Throws, naming the Debian package, if PostgreSQL 15 is not installed: the tests must
  // fail, not skip, then.
  TestPostgres();
  // Fast shutdown (SIGINT), SIGKILL if that takes too long; removes the directory.
  ~TestPostgres();
  TestPostgres(const TestPostgres&) = delete;
  TestPostgres& operator=(const TestPostgres&) = delete;

  int port() const { return port_; }
  // "postgres://pok8s@127.0.0.1:PORT/<database>"
  std::string url(const std::string& database = kPostgresDatabase) const;
  // Creates another database and returns its URL, for tests that must not see each other's
  // tables.
  std::string create_database(const std::string& name) const;
  const util::Path& dir() const { return dir_.path(); }

 private:
  // Starts postgres on a free port; false if another process took the port first.
  bool start_server();
  void stop_server();

  util::TempDir dir_;
  uid_t uid_ = 0;  // whom initdb and postgres run as, when that differs from us
  gid_t gid_ = 0;
  bool switch_user_ = false;
  int port_ = 0;
  pid_t postmaster_ = -1;
};

}  // namespace pok8s::testing
