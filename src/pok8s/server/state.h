// The service's state: users, hashed tokens and sessions, the build queue with who may read each
// build, and each build's events, over SQL (server/sql.h) so one SQLite file or one PostgreSQL
// database holds it all. Every server and worker sharing a database sees the same queue.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/server/secret_box.h"
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
  bool disabled = false;  // by an admin: no login, token or session of theirs works
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
  std::string user_id;            // whose token it is
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
  bool shared = false;  // every logged-in user may read it (its secrets masked for them)
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

// Why a user may read a build, from not at all to most. What each sees of the build's secrets
// is the HTTP layer's to decide.
enum class BuildAccess {
  kNone,
  kShared,   // the owner shared it with every logged-in user
  kGranted,  // they submitted the same spec (secrets included) and were given this build
  kAdmin,
  kOwner,
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
  // Creates or upgrades the schema (columns added since are added to an existing database).
  // With `box`, builds' specs and files are sealed at rest, and rows written before sealing
  // still read. The database remembers that it holds sealed data, and under which key: a box
  // with another key, or none, is refused here (kSignature / kInvalidInput naming both keys)
  // rather than failing build by build.
  explicit ServiceState(std::unique_ptr<SqlDb> db, std::optional<SecretBox> box = std::nullopt);
  // The same with a copy of `*box` (none when null).
  ServiceState(std::unique_ptr<SqlDb> db, const SecretBox* box)
      : ServiceState(std::move(db), box ? std::optional<SecretBox>(*box) : std::nullopt) {}
  SqlDialect dialect() const { return db_->dialect(); }
  SqlDb& db() { return *db_; }
  bool seals_secrets() const { return box_.has_value(); }

  // --- users and tokens ---------------------------------------------------------------
  // When no user exists: creates the admin and returns a one-time login token for it.
  std::optional<std::string> bootstrap_admin();
  // A new one-time login token (valid 24 h) for user `name`; kNotFound when there is none.
  std::string new_login_token(std::string_view name);
  // A new user and their one-time login token; ApiError 409 when the name is taken.
  std::pair<User, std::string> create_user(std::string_view name, std::string_view role);
  std::vector<User> users();
  std::optional<User> user_by_id(std::string_view id);
  std::optional<User> user_by_name(std::string_view name);
  // Disables (or enables again) user `user_id` on behalf of admin `by`. Disabling deletes the
  // user's sessions; their API tokens are kept but refused until enabled again. kNotFound for
  // no such user; ApiError 403 when `by` is no enabled admin; ApiError 409 when `by` would
  // disable themselves or the last enabled admin. Returns the user as it now is.
  User set_user_disabled(std::string_view user_id, bool disabled, const User& by);
  // The caller an API token ("Authorization: Bearer …") belongs to; nullopt for an unknown
  // token or a disabled user.
  std::optional<Caller> authenticate_token(std::string_view secret);
  // The caller a session cookie belongs to, if the session is alive, its user enabled and the
  // API token it was made with (if any) not revoked.
  std::optional<Caller> authenticate_session(std::string_view cookie);
  // Exchanges a login token (consumed) or an API token (kept) for a session; kAuth otherwise,
  // and for a disabled user. A session made with an API token dies with that token.
  SessionGrant login(std::string_view secret);
  void logout(std::string_view session_id);
  NewToken create_api_token(const User& user, std::string_view name);
  // The API tokens of `user` / of the user with id `user_id` (for admins), oldest first.
  std::vector<TokenInfo> api_tokens(const User& user) { return api_tokens_of(user.id); }
  std::vector<TokenInfo> api_tokens_of(std::string_view user_id);
  // Deletes `user`'s API token `token_id` and the sessions made with it, in one transaction.
  // False when `user` has no such token.
  bool delete_api_token(const User& user, std::string_view token_id);
  // The same for any user's API token (admins). False when there is no such API token.
  bool revoke_token(std::string_view token_id);

  // --- builds --------------------------------------------------------------------------
  // Queues `proposed` (its owner is the submitter) unless a build of the same spec_id is
  // queued, running or succeeded: then that one is returned (reused), and when another user
  // owns it the submitter is granted access to it (they proved they know the whole spec,
  // secrets included). Concurrent identical submissions share one build. With a SecretBox,
  // spec and files are sealed before they are stored.
  Submission submit_build(BuildRecord proposed);
  // The whole build, spec and files opened. No access check: see access_to_build().
  std::optional<BuildRecord> build(std::string_view id);
  // The builds `viewer` may read (an admin: all), newest first, without their spec and files
  // (see build()); `total` counts the same builds across all pages.
  std::vector<BuildRecord> builds(std::optional<BuildState> state, std::int64_t limit,
                                  std::int64_t offset, std::int64_t* total, const User& viewer);
  // Why `user` may read `build` (kNone: they may not). A disabled user may read nothing.
  BuildAccess access_to_build(const BuildRecord& build, const User& user);
  bool can_read_build(const BuildRecord& build, const User& user) {
    return access_to_build(build, user) != BuildAccess::kNone;
  }
  // Whether `user` may change `build`: cancel it, share it (its owner or an admin).
  static bool can_manage_build(const BuildRecord& build, const User& user);
  // Shares build `id` with every logged-in user, or stops sharing it. The caller checks
  // can_manage_build(). False when there is no such build.
  bool set_build_shared(std::string_view id, bool shared);
  QueueCounts queue_counts();
  // Takes the oldest queued build for `worker` (FOR UPDATE SKIP LOCKED on PostgreSQL). A build
  // whose sealed spec cannot be opened is failed with the reason, which is then thrown.
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
  void create_schema();
  void check_secret_box();
  std::optional<Caller> caller_for(std::string_view kind, std::string_view secret);
  bool delete_token_and_sessions(std::string_view token_id, std::string_view user_id);
  // `b` with its spec and files opened (rows from before sealing pass through as they are).
  BuildRecord opened(BuildRecord b) const;

  std::unique_ptr<SqlDb> db_;
  std::optional<SecretBox> box_;
};

}  // namespace pok8s::server
