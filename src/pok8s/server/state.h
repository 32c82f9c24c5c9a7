// The service's state: users, hashed tokens and sessions, the build queue and each build's
// events, over SQL (server/sql.h) so one SQLite file or one PostgreSQL database holds it all.
// Every server and worker sharing a database sees the same queue.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/server/sql.h"
#include "pok8s/util/error.h"

namespace pok8s::server {

// A refusal with an HTTP status of its own (403, 409, 413, 416): the service's errors beyond
// the library's kinds. `kind` is the name in the JSON body ("forbidden", "conflict", …).
class ApiError : public Error {
 public:
  ApiError(int status, std::string kind, const std::string& message)
      : Error(ErrorKind::kInvalidInput, message), status_(status), kind_(std::move(kind)) {}
  int status() const { return status_; }
  const std::string& kind_name() const { return kind_; }

 private:
  int status_;
  std::string kind_;
};

std::int64_t now_ms();

struct User {
  std::string id;
  std::string name;
  std::string role;  // admin | user
  std::int64_t created_at = 0;
};

// Who made a request, and how: with an API token ("token") or a session cookie ("session",
// whose unsafe requests must carry `csrf`).
struct Caller {
  User user;
  std::string via;
  std::string session_id;
  std::string csrf;
};

struct TokenInfo {
  std::string id;
  std::string name;
  std::int64_t created_at = 0;
  std::int64_t last_used_at = 0;  // 0: never
};

struct NewToken {
  TokenInfo info;
  std::string secret;  // shown once; only its sha256 is stored
};

struct SessionGrant {
  std::string cookie;  // the session secret (only its sha256 is stored)
  std::string csrf;
  User user;
  std::int64_t expires_at = 0;
};

enum class BuildState { kQueued, kRunning, kSucceeded, kFailed, kCanceled };
std::string_view build_state_name(BuildState s);
std::optional<BuildState> parse_build_state(std::string_view s);

struct BuildRecord {
  std::string id;           // 16 hex, random
  std::string spec_id;      // the build id of the spec (config::build_id)
  std::string spec;         // the spec text as submitted
  std::string files;        // JSON object: relative path -> text
  std::string base_pinned;  // the base by digest, as resolved when it was submitted
  std::string owner;        // user id
  std::string owner_name;
  BuildState state = BuildState::kQueued;
  std::string base;            // for lists: the base as the spec names it
  std::string version;         // the OS version
  std::string kubernetes;      // none | k3s | k0s
  std::string artifact_kinds;  // JSON array
  std::int64_t created_at = 0, started_at = 0, finished_at = 0, heartbeat_at = 0;
  std::int64_t attempts = 0;
  bool cancel_requested = false;
  std::int64_t progress = 0;  // permille
  std::string step;
  std::string error;
  std::string worker;
  std::string artifacts;  // JSON array of {name, size, sha256}, once succeeded
};

struct BuildEvent {
  std::int64_t seq = 0;
  std::int64_t at = 0;
  std::string kind;  // state | step | log | progress
  std::string data;  // JSON object
};

struct Submission {
  BuildRecord build;
  bool reused = false;  // an existing build of the same spec id was returned
};

struct QueueCounts {
  std::int64_t queued = 0;
  std::int64_t running = 0;
};

// Token secrets: "pok8s_" + 43 base64url characters (256 random bits).
std::string random_secret(std::string_view prefix);
std::string random_id();  // 16 hex digits
// Constant-time comparison for secrets.
bool secrets_equal(std::string_view a, std::string_view b);

class ServiceState {
 public:
  // Creates or upgrades the schema.
  explicit ServiceState(std::unique_ptr<SqlDb> db);
  SqlDialect dialect() const { return db_->dialect(); }
  SqlDb& db() { return *db_; }

  // --- users and tokens ---------------------------------------------------------------
  // When no user exists: creates the admin and returns a one-time login token for it.
  std::optional<std::string> bootstrap_admin();
  // A new one-time login token (valid 24 h) for user `name`; kNotFound when there is none.
  std::string new_login_token(std::string_view name);
  // A new user and their one-time login token; ApiError 409 when the name is taken.
  std::pair<User, std::string> create_user(std::string_view name, std::string_view role);
  std::vector<User> users();
  // The caller an API token ("Authorization: Bearer …") belongs to.
  std::optional<Caller> authenticate_token(std::string_view secret);
  // The caller a session cookie belongs to, if the session is alive.
  std::optional<Caller> authenticate_session(std::string_view cookie);
  // Exchanges a login token (consumed) or an API token (kept) for a session; kAuth otherwise.
  SessionGrant login(std::string_view secret);
  void logout(std::string_view session_id);
  NewToken create_api_token(const User& user, std::string_view name);
  std::vector<TokenInfo> api_tokens(const User& user);
  bool delete_api_token(const User& user, std::string_view token_id);

  // --- builds --------------------------------------------------------------------------
  // Queues `proposed` unless a build of the same spec_id is queued, running or succeeded:
  // then that one is returned (reused). Concurrent identical submissions share one build.
  Submission submit_build(BuildRecord proposed);
  std::optional<BuildRecord> build(std::string_view id);
  // Newest first; without their spec and files (see build()).
  std::vector<BuildRecord> builds(std::optional<BuildState> state, std::int64_t limit,
                                  std::int64_t offset, std::int64_t* total);
  QueueCounts queue_counts();
  // Takes the oldest queued build for `worker` (FOR UPDATE SKIP LOCKED on PostgreSQL).
  std::optional<BuildRecord> claim_build(std::string_view worker);
  // Records that `worker` is alive and still on build `id`. Returns nullopt when the build is no
  // longer this worker's (taken back after a lost heartbeat), else whether cancel was asked.
  std::optional<bool> heartbeat(std::string_view id, std::string_view worker);
  void set_progress(std::string_view id, std::int64_t permille, std::string_view step);
  // Ends a running build of `worker`. Returns false when it was not this worker's any more.
  bool finish_build(std::string_view id, std::string_view worker, BuildState state,
                    std::string_view error, std::string_view artifacts_json);
  // Puts a running build of `worker` back in the queue without counting the attempt (the
  // worker is shutting down, the build did nothing wrong).
  void release_build(std::string_view id, std::string_view worker, std::string_view why);
  // Queued: canceled at once. Running: cancellation requested (the worker stops it).
  // Finished: ApiError 409.
  BuildRecord cancel_build(std::string_view id);
  // Running builds whose heartbeat is older than `stale_before` (unix ms) go back to the queue,
  // or fail once they have had `max_attempts`. Returns the ids touched.
  std::vector<std::string> recover_stale(std::int64_t stale_before, std::int64_t max_attempts,
                                         std::string_view why);
  // Marks a succeeded build failed (its artifacts are gone from the store).
  void invalidate_build(std::string_view id, std::string_view why);

  void append_event(std::string_view build_id, std::string_view kind, std::string_view data);
  std::vector<BuildEvent> events(std::string_view build_id, std::int64_t after_seq,
                                 std::int64_t limit);

 private:
  std::optional<Caller> caller_for(std::string_view kind, std::string_view secret);
  std::unique_ptr<SqlDb> db_;
};

}  // namespace pok8s::server
