// The SQL behind the service's state. Statements are written once for both dialects; only the
// schema's auto-increment column and the queue's row lock differ.
#include "pok8s/server/state.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

namespace pok8s::server {
namespace {

constexpr std::int64_t kLoginTokenLifetimeMs = 24LL * 3600 * 1000;
constexpr std::int64_t kSessionLifetimeMs = 7LL * 24 * 3600 * 1000;

std::string schema(SqlDialect d) {
  const char* serial =
      d == SqlDialect::kPostgres ? "BIGSERIAL PRIMARY KEY" : "INTEGER PRIMARY KEY AUTOINCREMENT";
  return fmt::format(R"(
CREATE TABLE IF NOT EXISTS users (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id), kind TEXT NOT NULL,
  name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, csrf TEXT, created_at BIGINT NOT NULL,
  expires_at BIGINT, last_used_at BIGINT);
CREATE TABLE IF NOT EXISTS builds (
  id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, spec TEXT NOT NULL, files TEXT NOT NULL,
  base_pinned TEXT NOT NULL, owner TEXT NOT NULL REFERENCES users(id), state TEXT NOT NULL,
  base TEXT NOT NULL, version TEXT NOT NULL, kubernetes TEXT NOT NULL, artifact_kinds TEXT NOT NULL,
  created_at BIGINT NOT NULL, started_at BIGINT, finished_at BIGINT, heartbeat_at BIGINT,
  attempts BIGINT NOT NULL DEFAULT 0, cancel_requested BIGINT NOT NULL DEFAULT 0,
  progress BIGINT NOT NULL DEFAULT 0, step TEXT, error TEXT, worker TEXT, artifacts TEXT,
  queue_seq BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS builds_by_state ON builds(state, queue_seq);
CREATE INDEX IF NOT EXISTS builds_by_spec ON builds(spec_id, state);
CREATE UNIQUE INDEX IF NOT EXISTS builds_one_active_per_spec ON builds(spec_id)
  WHERE state IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS events (
  seq {}, build_id TEXT NOT NULL, at BIGINT NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_build ON events(build_id, seq);
)",
                     serial);
}

constexpr const char* kBuildColumns =
    "b.id, b.spec_id, b.spec, b.files, b.base_pinned, b.owner, u.name, b.state, b.base, "
    "b.version, b.kubernetes, b.artifact_kinds, b.created_at, b.started_at, b.finished_at, "
    "b.heartbeat_at, b.attempts, b.cancel_requested, b.progress, b.step, b.error, b.worker, "
    "b.artifacts";

BuildRecord build_from_row(const SqlRow& r) {
  BuildRecord b;
  std::size_t i = 0;
  b.id = r.text(i++);
  b.spec_id = r.text(i++);
  b.spec = r.text(i++);
  b.files = r.text(i++);
  b.base_pinned = r.text(i++);
  b.owner = r.text(i++);
  b.owner_name = r.text(i++);
  b.state = parse_build_state(r.text(i++)).value_or(BuildState::kFailed);
  b.base = r.text(i++);
  b.version = r.text(i++);
  b.kubernetes = r.text(i++);
  b.artifact_kinds = r.text(i++);
  b.created_at = r.integer(i++);
  b.started_at = r.integer(i++);
  b.finished_at = r.integer(i++);
  b.heartbeat_at = r.integer(i++);
  b.attempts = r.integer(i++);
  b.cancel_requested = r.integer(i++) != 0;
  b.progress = r.integer(i++);
  b.step = r.text(i++);
  b.error = r.text(i++);
  b.worker = r.text(i++);
  b.artifacts = r.text(i++);
  return b;
}

std::string select_builds(std::string_view where) {
  return fmt::format("SELECT {} FROM builds b JOIN users u ON u.id = b.owner {}", kBuildColumns,
                     where);
}

// The same without the request (spec and files, up to megabytes each): what lists show.
std::string select_build_summaries(std::string_view where) {
  std::string columns = kBuildColumns;
  columns.replace(columns.find("b.spec, b.files"), 15, "'', '{}'");
  return fmt::format("SELECT {} FROM builds b JOIN users u ON u.id = b.owner {}", columns, where);
}

User user_from_row(const SqlRow& r, std::size_t i = 0) {
  return User{r.text(i), r.text(i + 1), r.text(i + 2), r.integer(i + 3)};
}

std::string hash_secret(std::string_view secret) {
  return util::sha256_hex(secret);
}

std::string base64url(const unsigned char* data, std::size_t n) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (std::size_t i = 0; i < n; ++i) {
    acc = (acc << 8) | data[i];
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += kAlphabet[(acc >> bits) & 0x3f];
    }
  }
  if (bits > 0) out += kAlphabet[(acc << (6 - bits)) & 0x3f];
  return out;
}

void random_bytes(unsigned char* out, int n) {
  if (RAND_bytes(out, n) != 1)
    throw Error(ErrorKind::kInternal, "Failed to make a secret: OpenSSL's RAND_bytes failed");
}

// The data of a `state` event: {"state", "worker"?, "error"?}.
std::string state_event_json(std::string_view state, std::string_view worker = "",
                             std::string_view error = "") {
  nlohmann::json j = {{"state", state}};
  if (!worker.empty()) j["worker"] = worker;
  if (!error.empty()) j["error"] = error;
  return j.dump();
}

// A build's change of state, as an event in the same transaction as the change itself.
void record_state(SqlDb& db, std::string_view build_id, std::int64_t at, std::string_view state,
                  std::string_view worker = "", std::string_view error = "") {
  db.query("INSERT INTO events (build_id, at, kind, data) VALUES ($1, $2, 'state', $3)",
           {std::string(build_id), at, state_event_json(state, worker, error)});
}

bool is_user_role(std::string_view role) {
  return role == "admin" || role == "user";
}

}  // namespace

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string_view build_state_name(BuildState s) {
  switch (s) {
    case BuildState::kQueued:
      return "queued";
    case BuildState::kRunning:
      return "running";
    case BuildState::kSucceeded:
      return "succeeded";
    case BuildState::kFailed:
      return "failed";
    case BuildState::kCanceled:
      return "canceled";
  }
  return "failed";
}

std::optional<BuildState> parse_build_state(std::string_view s) {
  for (auto st : {BuildState::kQueued, BuildState::kRunning, BuildState::kSucceeded,
                  BuildState::kFailed, BuildState::kCanceled})
    if (build_state_name(st) == s) return st;
  return std::nullopt;
}

std::string random_secret(std::string_view prefix) {
  unsigned char bytes[32];
  random_bytes(bytes, sizeof bytes);
  return std::string(prefix) + base64url(bytes, sizeof bytes);
}

std::string random_id() {
  return util::random_hex(8);
}

bool secrets_equal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

ServiceState::ServiceState(std::unique_ptr<SqlDb> db) : db_(std::move(db)) {
  db_->exec_script(schema(db_->dialect()));
}

// --- users and tokens -------------------------------------------------------------------

std::optional<std::string> ServiceState::bootstrap_admin() {
  std::optional<std::string> token;
  db_->transaction([&](SqlDb& db) {
    if (db.query("SELECT count(*) FROM users").at(0).integer(0) > 0) return;
    std::string id = random_id();
    db.query("INSERT INTO users (id, name, role, created_at) VALUES ($1, 'admin', 'admin', $2)",
             {id, now_ms()});
    std::string secret = random_secret("pok8s_login_");
    db.query(
        "INSERT INTO tokens (id, user_id, kind, name, hash, created_at, expires_at) "
        "VALUES ($1, $2, 'login', 'first login', $3, $4, $5)",
        {random_id(), id, hash_secret(secret), now_ms(), now_ms() + kLoginTokenLifetimeMs});
    token = secret;
  });
  return token;
}

std::string ServiceState::new_login_token(std::string_view name) {
  auto rows = db_->query("SELECT id FROM users WHERE name = $1", {std::string(name)});
  if (rows.empty())
    throw Error(ErrorKind::kNotFound,
                fmt::format("Failed to make a login token: there is no user {}", name));
  std::string secret = random_secret("pok8s_login_");
  db_->query(
      "INSERT INTO tokens (id, user_id, kind, name, hash, created_at, expires_at) "
      "VALUES ($1, $2, 'login', 'login', $3, $4, $5)",
      {random_id(), rows[0].text(0), hash_secret(secret), now_ms(),
       now_ms() + kLoginTokenLifetimeMs});
  return secret;
}

std::pair<User, std::string> ServiceState::create_user(std::string_view name,
                                                       std::string_view role) {
  if (!is_user_role(role))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to create user {}: role must be admin or user, not {:?}", name,
                            std::string(role)));
  User user{random_id(), std::string(name), std::string(role), now_ms()};
  try {
    db_->query("INSERT INTO users (id, name, role, created_at) VALUES ($1, $2, $3, $4)",
               {user.id, user.name, user.role, user.created_at});
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidInput) throw;
    throw ApiError(409, "conflict",
                   fmt::format("Failed to create user {}: the name is taken", name));
  }
  return {user, new_login_token(name)};
}

std::vector<User> ServiceState::users() {
  std::vector<User> out;
  for (const auto& r : db_->query("SELECT id, name, role, created_at FROM users ORDER BY name"))
    out.push_back(user_from_row(r));
  return out;
}

std::optional<Caller> ServiceState::caller_for(std::string_view kind, std::string_view secret) {
  auto rows = db_->query(
      "SELECT u.id, u.name, u.role, u.created_at, t.id, t.csrf, t.expires_at, t.last_used_at "
      "FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = $1 AND t.kind = $2",
      {hash_secret(secret), std::string(kind)});
  if (rows.empty()) return std::nullopt;
  const auto& r = rows[0];
  std::int64_t now = now_ms();
  if (!r.is_null(6) && r.integer(6) < now) return std::nullopt;
  // last_used_at is for the tokens page; writing it at most once a minute keeps status polls cheap.
  if (r.integer(7) < now - 60'000)
    db_->query("UPDATE tokens SET last_used_at = $2 WHERE id = $1", {r.text(4), now});
  return Caller{user_from_row(r), kind == "session" ? "session" : "token", r.text(4), r.text(5)};
}

std::optional<Caller> ServiceState::authenticate_token(std::string_view secret) {
  return caller_for("api", secret);
}

std::optional<Caller> ServiceState::authenticate_session(std::string_view cookie) {
  return caller_for("session", cookie);
}

SessionGrant ServiceState::login(std::string_view secret) {
  SessionGrant grant;
  db_->transaction([&](SqlDb& db) {
    auto rows = db.query(
        "SELECT u.id, u.name, u.role, u.created_at, t.id, t.kind, t.expires_at "
        "FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = $1 AND t.kind IN "
        "('login', 'api')",
        {hash_secret(secret)});
    if (rows.empty() || (!rows[0].is_null(6) && rows[0].integer(6) < now_ms()))
      throw Error(ErrorKind::kAuth,
                  "Failed to log in: the token is unknown, used or expired (ask an admin for a "
                  "new login token, or run `pok8s serve --login-token`)");
    const auto& r = rows[0];
    // A login token works once.
    if (r.text(5) == "login") db.query("DELETE FROM tokens WHERE id = $1", {r.text(4)});
    grant.user = user_from_row(r);
    grant.cookie = random_secret("");
    grant.csrf = random_secret("");
    grant.expires_at = now_ms() + kSessionLifetimeMs;
    db.query(
        "INSERT INTO tokens (id, user_id, kind, name, hash, csrf, created_at, expires_at) "
        "VALUES ($1, $2, 'session', 'session', $3, $4, $5, $6)",
        {random_id(), grant.user.id, hash_secret(grant.cookie), grant.csrf, now_ms(),
         grant.expires_at});
    db.query("DELETE FROM tokens WHERE kind IN ('session', 'login') AND expires_at < $1",
             {now_ms()});
  });
  return grant;
}

void ServiceState::logout(std::string_view session_id) {
  db_->query("DELETE FROM tokens WHERE id = $1 AND kind = 'session'", {std::string(session_id)});
}

NewToken ServiceState::create_api_token(const User& user, std::string_view name) {
  NewToken t;
  t.info = TokenInfo{random_id(), std::string(name), now_ms(), 0};
  t.secret = random_secret("pok8s_");
  db_->query(
      "INSERT INTO tokens (id, user_id, kind, name, hash, created_at) "
      "VALUES ($1, $2, 'api', $3, $4, $5)",
      {t.info.id, user.id, t.info.name, hash_secret(t.secret), t.info.created_at});
  return t;
}

std::vector<TokenInfo> ServiceState::api_tokens(const User& user) {
  std::vector<TokenInfo> out;
  for (const auto& r : db_->query(
           "SELECT id, name, created_at, last_used_at FROM tokens WHERE user_id = $1 AND kind = "
           "'api' ORDER BY created_at",
           {user.id}))
    out.push_back({r.text(0), r.text(1), r.integer(2), r.integer(3)});
  return out;
}

bool ServiceState::delete_api_token(const User& user, std::string_view token_id) {
  return !db_->query(
                 "DELETE FROM tokens WHERE id = $1 AND user_id = $2 AND kind = 'api' RETURNING id",
                 {std::string(token_id), user.id})
              .empty();
}

// --- builds ------------------------------------------------------------------------------

Submission ServiceState::submit_build(BuildRecord proposed) {
  // Two attempts: a concurrent identical submission may win the unique index between our look
  // and our insert; the second look then finds it.
  for (int attempt = 0;; ++attempt) {
    std::optional<Submission> result;
    try {
      db_->transaction([&](SqlDb& db) {
        auto rows =
            db.query(select_builds("WHERE b.spec_id = $1 AND b.state IN ('queued', 'running', "
                                   "'succeeded') ORDER BY b.queue_seq DESC LIMIT 1"),
                     {proposed.spec_id});
        if (!rows.empty()) {
          result = Submission{build_from_row(rows[0]), true};
          return;
        }
        proposed.state = BuildState::kQueued;
        proposed.created_at = now_ms();
        db.query(
            "INSERT INTO builds (id, spec_id, spec, files, base_pinned, owner, state, base, "
            "version, kubernetes, artifact_kinds, created_at, queue_seq) "
            "VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11, "
            "(SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM builds))",
            {proposed.id, proposed.spec_id, proposed.spec, proposed.files, proposed.base_pinned,
             proposed.owner, proposed.base, proposed.version, proposed.kubernetes,
             proposed.artifact_kinds, proposed.created_at});
        record_state(db, proposed.id, proposed.created_at, "queued");
      });
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kInvalidInput && attempt == 0) continue;
      throw;
    }
    if (result) return *result;
    return Submission{*build(proposed.id), false};
  }
}

std::optional<BuildRecord> ServiceState::build(std::string_view id) {
  auto rows = db_->query(select_builds("WHERE b.id = $1"), {std::string(id)});
  if (rows.empty()) return std::nullopt;
  return build_from_row(rows[0]);
}

std::vector<BuildRecord> ServiceState::builds(std::optional<BuildState> state, std::int64_t limit,
                                              std::int64_t offset, std::int64_t* total) {
  std::string filter = state ? std::string(build_state_name(*state)) : "";
  if (total)
    *total = db_->query("SELECT count(*) FROM builds WHERE $1 = '' OR state = $1", {filter})
                 .at(0)
                 .integer(0);
  std::vector<BuildRecord> out;
  for (const auto& r : db_->query(select_build_summaries("WHERE $1 = '' OR b.state = $1 ORDER BY "
                                                         "b.queue_seq DESC LIMIT $2 OFFSET $3"),
                                  {filter, limit, offset}))
    out.push_back(build_from_row(r));
  return out;
}

QueueCounts ServiceState::queue_counts() {
  QueueCounts c;
  for (const auto& r :
       db_->query("SELECT state, count(*) FROM builds WHERE state IN ('queued', 'running') "
                  "GROUP BY state")) {
    if (r.text(0) == "queued") c.queued = r.integer(1);
    if (r.text(0) == "running") c.running = r.integer(1);
  }
  return c;
}

std::optional<BuildRecord> ServiceState::claim_build(std::string_view worker) {
  // PostgreSQL: SKIP LOCKED lets several workers claim at once, each a different row.
  // SQLite has one writer at a time, so the plain subquery is already exclusive.
  const char* lock = db_->dialect() == SqlDialect::kPostgres ? " FOR UPDATE SKIP LOCKED" : "";
  std::optional<std::string> id;
  db_->transaction([&](SqlDb& db) {
    std::int64_t now = now_ms();
    auto rows = db.query(
        fmt::format("UPDATE builds SET state = 'running', worker = $1, started_at = $2, "
                    "heartbeat_at = $2, attempts = attempts + 1, progress = 0, step = 'starting', "
                    "error = NULL WHERE id = (SELECT id FROM builds WHERE state = 'queued' "
                    "ORDER BY queue_seq LIMIT 1{}) RETURNING id",
                    lock),
        {std::string(worker), now});
    if (rows.empty()) return;
    id = rows[0].text(0);
    record_state(db, *id, now, "running", worker);
  });
  if (!id) return std::nullopt;
  return build(*id);
}

std::optional<bool> ServiceState::heartbeat(std::string_view id, std::string_view worker) {
  auto rows = db_->query(
      "UPDATE builds SET heartbeat_at = $3 WHERE id = $1 AND worker = $2 AND state = 'running' "
      "RETURNING cancel_requested",
      {std::string(id), std::string(worker), now_ms()});
  if (rows.empty()) return std::nullopt;
  return rows[0].integer(0) != 0;
}

void ServiceState::set_progress(std::string_view id, std::int64_t permille, std::string_view step) {
  db_->query("UPDATE builds SET progress = $2, step = $3 WHERE id = $1 AND state = 'running'",
             {std::string(id), permille, std::string(step)});
}

bool ServiceState::finish_build(std::string_view id, std::string_view worker, BuildState state,
                                std::string_view error, std::string_view artifacts_json) {
  bool done = false;
  db_->transaction([&](SqlDb& db) {
    std::int64_t now = now_ms();
    auto rows = db.query(
        "UPDATE builds SET state = $3, finished_at = $4, error = $5, artifacts = $6, progress = "
        "CASE WHEN $3 = 'succeeded' THEN 1000 ELSE progress END WHERE id = $1 AND worker = $2 "
        "AND state = 'running' RETURNING id",
        {std::string(id), std::string(worker), std::string(build_state_name(state)), now,
         error.empty() ? SqlValue{} : SqlValue{std::string(error)},
         artifacts_json.empty() ? SqlValue{} : SqlValue{std::string(artifacts_json)}});
    if (rows.empty()) return;
    done = true;
    record_state(db, id, now, build_state_name(state), "", error);
  });
  return done;
}

void ServiceState::release_build(std::string_view id, std::string_view worker,
                                 std::string_view why) {
  db_->transaction([&](SqlDb& db) {
    auto rows = db.query(
        "UPDATE builds SET state = 'queued', worker = NULL, attempts = attempts - 1, "
        "started_at = NULL, heartbeat_at = NULL, progress = 0, step = NULL WHERE id = $1 AND "
        "worker = $2 AND state = 'running' RETURNING id",
        {std::string(id), std::string(worker)});
    if (rows.empty()) return;
    record_state(db, id, now_ms(), "queued", "", why);
  });
}

BuildRecord ServiceState::cancel_build(std::string_view id) {
  db_->transaction([&](SqlDb& db) {
    auto rows = db.query("SELECT state FROM builds WHERE id = $1", {std::string(id)});
    if (rows.empty())
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to cancel build {}: no such build", id));
    auto state = parse_build_state(rows[0].text(0));
    if (state == BuildState::kQueued) {
      std::int64_t now = now_ms();
      db.query(
          "UPDATE builds SET state = 'canceled', finished_at = $2, error = 'canceled before it "
          "started' WHERE id = $1",
          {std::string(id), now});
      record_state(db, id, now, "canceled");
    } else if (state == BuildState::kRunning) {
      db.query("UPDATE builds SET cancel_requested = 1 WHERE id = $1", {std::string(id)});
    } else {
      throw ApiError(
          409, "conflict",
          fmt::format("Failed to cancel build {}: it has already {}", id, rows[0].text(0)));
    }
  });
  return *build(id);
}

std::vector<std::string> ServiceState::recover_stale(std::int64_t stale_before,
                                                     std::int64_t max_attempts,
                                                     std::string_view why) {
  std::vector<std::string> ids;
  db_->transaction([&](SqlDb& db) {
    std::int64_t now = now_ms();
    auto rows = db.query(
        "UPDATE builds SET state = CASE WHEN attempts < $2 THEN 'queued' ELSE 'failed' END, "
        "finished_at = CASE WHEN attempts < $2 THEN NULL ELSE $3 END, worker = NULL, "
        "cancel_requested = 0, error = $4 WHERE state = 'running' AND heartbeat_at < $1 "
        "RETURNING id, state",
        {stale_before, max_attempts, now, std::string(why)});
    for (const auto& r : rows) {
      ids.push_back(r.text(0));
      record_state(db, r.text(0), now, r.text(1), "", why);
    }
  });
  return ids;
}

void ServiceState::invalidate_build(std::string_view id, std::string_view why) {
  db_->query("UPDATE builds SET state = 'failed', error = $2 WHERE id = $1 AND state = 'succeeded'",
             {std::string(id), std::string(why)});
}

void ServiceState::append_event(std::string_view build_id, std::string_view kind,
                                std::string_view data) {
  db_->query("INSERT INTO events (build_id, at, kind, data) VALUES ($1, $2, $3, $4)",
             {std::string(build_id), now_ms(), std::string(kind), std::string(data)});
}

std::vector<BuildEvent> ServiceState::events(std::string_view build_id, std::int64_t after_seq,
                                             std::int64_t limit) {
  std::vector<BuildEvent> out;
  for (const auto& r :
       db_->query("SELECT seq, at, kind, data FROM events WHERE build_id = $1 AND seq > $2 "
                  "ORDER BY seq LIMIT $3",
                  {std::string(build_id), after_seq, limit}))
    out.push_back({r.integer(0), r.integer(1), r.text(2), r.text(3)});
  return out;
}

}  // namespace pok8s::server
