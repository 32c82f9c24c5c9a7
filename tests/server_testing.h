// What the service state's tests share: catching the error an action throws, and a database as
// the first release of the service left it (for the schema upgrade tests on both dialects).
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "pok8s/server/sql.h"
#include "pok8s/util/error.h"

namespace pok8s::testing {

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

// The schema of the first release in `dialect`, with a user ('00000000000000aa', admin) and a
// succeeded build ('00000000000000bb', spec "apiVersion: pok8s/v1") in it.
inline std::string first_release_database(server::SqlDialect dialect) {
  const char* serial = dialect == server::SqlDialect::kPostgres
                           ? "BIGSERIAL PRIMARY KEY"
                           : "INTEGER PRIMARY KEY AUTOINCREMENT";
  return std::string(R"(
CREATE TABLE users (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE tokens (
  id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id), kind TEXT NOT NULL,
  name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, csrf TEXT, created_at BIGINT NOT NULL,
  expires_at BIGINT, last_used_at BIGINT);
CREATE TABLE builds (
  id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, spec TEXT NOT NULL, files TEXT NOT NULL,
  base_pinned TEXT NOT NULL, owner TEXT NOT NULL REFERENCES users(id), state TEXT NOT NULL,
  base TEXT NOT NULL, version TEXT NOT NULL, kubernetes TEXT NOT NULL, artifact_kinds TEXT NOT NULL,
  created_at BIGINT NOT NULL, started_at BIGINT, finished_at BIGINT, heartbeat_at BIGINT,
  attempts BIGINT NOT NULL DEFAULT 0, cancel_requested BIGINT NOT NULL DEFAULT 0,
  progress BIGINT NOT NULL DEFAULT 0, step TEXT, error TEXT, worker TEXT, artifacts TEXT,
  queue_seq BIGINT NOT NULL);
CREATE TABLE events (
  seq )") +
         serial +
         R"(, build_id TEXT NOT NULL, at BIGINT NOT NULL, kind TEXT NOT NULL,
  data TEXT NOT NULL);
INSERT INTO users VALUES ('00000000000000aa', 'admin', 'admin', 1);
INSERT INTO builds (id, spec_id, spec, files, base_pinned, owner, state, base, version,
  kubernetes, artifact_kinds, created_at, queue_seq)
  VALUES ('00000000000000bb', 'old', 'apiVersion: pok8s/v1', '{}', 'b', '00000000000000aa',
  'succeeded', 'b', 'v1', 'none', '[]', 1, 1);
)";
}

}  // namespace pok8s::testing
