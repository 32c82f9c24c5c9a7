// The SQL behind the service's state. Statements are written once for both dialects; only the
// schema's auto-increment column, how a missing column is found and the row locks differ.
#include "pok8s/server/state.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "pok8s/util/file.h"
#include "pok8s/util/sha256.h"

namespace pok8s::server {
namespace {

constexpr std::int64_t kLoginTokenLifetimeMs = 24LL * 3600 * 1000;
constexpr std::int64_t kSessionLifetimeMs = 7LL * 24 * 3600 * 1000;

// The tables as a new database gets them. A database made by an older pok8s gets the columns
// added since from kAddedColumns, and the indexes on them after that.
std::string schema(SqlDialect d) {
  const char* serial =
      d == SqlDialect::kPostgres ? "BIGSERIAL PRIMARY KEY" : "INTEGER PRIMARY KEY AUTOINCREMENT";
  return fmt::format(R"(
CREATE TABLE IF NOT EXISTS users (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL, created_at BIGINT NOT NULL,
  disabled BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS tokens (
  id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(id), kind TEXT NOT NULL,
  name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, csrf TEXT, created_at BIGINT NOT NULL,
  expires_at BIGINT, last_used_at BIGINT, parent_id TEXT);
CREATE TABLE IF NOT EXISTS builds (
  id TEXT PRIMARY KEY, spec_id TEXT NOT NULL, spec TEXT NOT NULL, files TEXT NOT NULL,
  base_pinned TEXT NOT NULL, owner TEXT NOT NULL REFERENCES users(id), state TEXT NOT NULL,
  base TEXT NOT NULL, version TEXT NOT NULL, kubernetes TEXT NOT NULL, artifact_kinds TEXT NOT NULL,
  created_at BIGINT NOT NULL, started_at BIGINT, finished_at BIGINT, heartbeat_at BIGINT,
  attempts BIGINT NOT NULL DEFAULT 0, cancel_requested BIGINT NOT NULL DEFAULT 0,
  progress BIGINT NOT NULL DEFAULT 0, step TEXT, error TEXT, worker TEXT, artifacts TEXT,
  queue_seq BIGINT NOT NULL, shared BIGINT NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS builds_by_state ON builds(state, queue_seq);
CREATE INDEX IF NOT EXISTS builds_by_spec ON builds(spec_id, state);
CREATE UNIQUE INDEX IF NOT EXISTS builds_one_active_per_spec ON builds(spec_id)
  WHERE state IN ('queued', 'running');
CREATE TABLE IF NOT EXISTS build_access (
  build_id TEXT NOT NULL REFERENCES builds(id), user_id TEXT NOT NULL REFERENCES users(id),
  granted_at BIGINT NOT NULL, PRIMARY KEY (build_id, user_id));
CREATE TABLE IF NOT EXISTS events (
  seq {}, build_id TEXT NOT NULL, at BIGINT NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_build ON events(build_id, seq);
CREATE TABLE IF NOT EXISTS service_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
)",
                     serial);
}

struct AddedColumn {
  const char* table;
  const char* column;
  const char* declaration;
};
// Columns added after the first release: `CREATE TABLE IF NOT EXISTS` leaves an existing table
// as it is. A declaration must hold for existing rows (nullable, or NOT NULL with a default).
constexpr AddedColumn kAddedColumns[] = {
    {"users", "disabled", "BIGINT NOT NULL DEFAULT 0"},
    {"tokens", "parent_id", "TEXT"},
    {"builds", "shared", "BIGINT NOT NULL DEFAULT 0"},
};

constexpr const char* kIndexesOnAddedColumns = R"(
CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens(user_id, kind);
CREATE INDEX IF NOT EXISTS tokens_by_parent ON tokens(parent_id);
CREATE INDEX IF NOT EXISTS builds_by_owner ON builds(owner, queue_seq);
CREATE INDEX IF NOT EXISTS build_access_by_user ON build_access(user_id);
)";

// Looks before it alters: ALTER TABLE locks the table (in PostgreSQL against every reader too),
// which every start of every server and worker would otherwise do.
void add_missing_column(SqlDb& db, const AddedColumn& c) {
  bool postgres = db.dialect() == SqlDialect::kPostgres;
  const char* look = postgres
                         ? "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                           "current_schema() AND table_name = $1 AND column_name = $2"
                         : "SELECT count(*) FROM pragma_table_info($1) WHERE name = $2";
  if (db.query(look, {std::string(c.table), std::string(c.column)}).at(0).integer(0) > 0) return;
  // SQLite has no ADD COLUMN IF NOT EXISTS, and needs none: the schema's write transaction
  // keeps other processes out between the look and the change. PostgreSQL's guards against
  // a second server adding the column meanwhile.
  db.query(fmt::format("ALTER TABLE {} ADD COLUMN {}{} {}", c.table,
                       postgres ? "IF NOT EXISTS " : "", c.column, c.declaration));
}

// A row the database keeps once any SecretBox has been used with it: sealed with that box's key,
// it tells a worker or server with another key (or none) to stop before it fails every build.
constexpr const char* kSecretBoxCheck = "secret_box_check";
constexpr std::string_view kSecretBoxCheckText = "pok8s: the build secrets of this database";

constexpr const char* kBuildColumns =
    "b.id, b.spec_id, b.spec, b.files, b.base_pinned, b.owner, u.name, b.state, b.base, "
    "b.version, b.kubernetes, b.artifact_kinds, b.created_at, b.started_at, b.finished_at, "
    "b.heartbeat_at, b.attempts, b.cancel_requested, b.progress, b.step, b.error, b.worker, "
    "b.artifacts, b.shared";

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
  b.shared = r.integer(i++) != 0;
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

// The columns user_from_row() reads, in its order, for a users table named `u`.
constexpr const char* kUserColumns = "u.id, u.name, u.role, u.created_at, u.disabled";
constexpr std::size_t kUserColumnCount = 5;

User user_from_row(const SqlRow& r, std::size_t i = 0) {
  return User{r.text(i), r.text(i + 1), r.text(i + 2), r.integer(i + 3), r.integer(i + 4) != 0};
}

// Where each build column is sealed: the context binds a sealed value to its row and column.
std::string seal_context(std::string_view build_id, std::string_view column) {
  return fmt::format("builds/{}/{}", build_id, column);
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

ServiceState::ServiceState(std::unique_ptr<SqlDb> db, std::optional<SecretBox> box)
    : db_(std::move(db)), box_(std::move(box)) {
  create_schema();
  check_secret_box();
}

void ServiceState::create_schema() {
  // One transaction: an older pok8s or a second server never sees half a schema.
  db_->transaction([&](SqlDb& db) {
    db.exec_script(schema(db.dialect()));
    for (const AddedColumn& c : kAddedColumns) add_missing_column(db, c);
    db.exec_script(kIndexesOnAddedColumns);
  });
}

void ServiceState::check_secret_box() {
  std::optional<std::string> sealed;
  db_->transaction([&](SqlDb& db) {
    if (box_)
      // A concurrent first start with another key may win this insert; the check below then
      // refuses the loser.
      db.query(
          "INSERT INTO service_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
          {std::string(kSecretBoxCheck), box_->seal(kSecretBoxCheckText, kSecretBoxCheck)});
    auto rows =
        db.query("SELECT value FROM service_meta WHERE name = $1", {std::string(kSecretBoxCheck)});
    if (!rows.empty()) sealed = rows[0].text(0);
  });
  if (!sealed) return;
  std::string sealed_with = SecretBox::sealed_key_id(*sealed).value_or("?");
  if (!box_)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to open the service's state: its build secrets are sealed "
                            "with key {}, and no secret key file was given (give this process "
                            "the key file of pok8s serve)",
                            sealed_with));
  if (sealed_with != box_->key_id())
    throw Error(
        ErrorKind::kSignature,
        fmt::format("Failed to open the service's state: its build secrets are sealed "
                    "with key {}, and the secret key {} is key {} (give this process the "
                    "key file of pok8s serve; if that key is lost, so are the sealed "
                    "specs: delete the row '{}' of table service_meta to start afresh)",
                    sealed_with, box_->key_file().string(), box_->key_id(), kSecretBoxCheck));
  if (box_->open(*sealed, kSecretBoxCheck) != kSecretBoxCheckText)
    throw Error(ErrorKind::kSignature,
                "Failed to open the service's state: its secret key check holds other text");
}

BuildRecord ServiceState::opened(BuildRecord b) const {
  for (auto [column, value] : {std::pair{"spec", &b.spec}, std::pair{"files", &b.files}}) {
    if (!SecretBox::is_sealed(*value)) continue;  // stored before sealing, or a list's ''
    if (!box_)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to open the {} of build {}: it is sealed, and this "
                              "process has no secret key",
                              column, b.id));
    *value = box_->open(*value, seal_context(b.id, column));
  }
  return b;
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
  for (const auto& r :
       db_->query(fmt::format("SELECT {} FROM users u ORDER BY u.name", kUserColumns)))
    out.push_back(user_from_row(r));
  return out;
}

std::optional<User> ServiceState::user_by_id(std::string_view id) {
  auto rows = db_->query(fmt::format("SELECT {} FROM users u WHERE u.id = $1", kUserColumns),
                         {std::string(id)});
  if (rows.empty()) return std::nullopt;
  return user_from_row(rows[0]);
}

std::optional<User> ServiceState::user_by_name(std::string_view name) {
  auto rows = db_->query(fmt::format("SELECT {} FROM users u WHERE u.name = $1", kUserColumns),
                         {std::string(name)});
  if (rows.empty()) return std::nullopt;
  return user_from_row(rows[0]);
}

User ServiceState::set_user_disabled(std::string_view user_id, bool disabled, const User& by) {
  std::string verb = disabled ? "disable" : "enable";
  // PostgreSQL: lock the enabled admins, so two admins disabling each other at once cannot
  // both see the other as the one left. SQLite's write lock is already exclusive.
  const char* lock = db_->dialect() == SqlDialect::kPostgres ? " FOR UPDATE" : "";
  User user;
  db_->transaction([&](SqlDb& db) {
    auto rows = db.query(fmt::format("SELECT {} FROM users u WHERE u.id = $1", kUserColumns),
                         {std::string(user_id)});
    if (rows.empty())
      throw Error(ErrorKind::kNotFound,
                  fmt::format("Failed to {} user {}: there is no such user", verb, user_id));
    user = user_from_row(rows[0]);
    auto admins =
        db.query(fmt::format("SELECT id FROM users WHERE role = 'admin' AND disabled = 0{}", lock));
    bool by_is_admin = std::any_of(admins.begin(), admins.end(),
                                   [&](const SqlRow& r) { return r.text(0) == by.id; });
    if (!by_is_admin)
      throw ApiError(
          403, "forbidden",
          fmt::format("Failed to {} user {}: only an enabled admin may, and {} is not one", verb,
                      user.name, by.name));
    if (disabled && user.id == by.id)
      throw ApiError(
          409, "conflict",
          fmt::format("Failed to disable user {}: admins cannot disable themselves", user.name));
    if (disabled && user.role == "admin" && !user.disabled && admins.size() <= 1)
      throw ApiError(
          409, "conflict",
          fmt::format("Failed to disable user {}: it is the last enabled admin", user.name));
    db.query("UPDATE users SET disabled = $2 WHERE id = $1",
             {user.id, std::int64_t{disabled ? 1 : 0}});
    // Sessions end now; API tokens stay for when the user is enabled again (every use of one
    // checks the user).
    if (disabled) db.query("DELETE FROM tokens WHERE user_id = $1 AND kind = 'session'", {user.id});
    user.disabled = disabled;
  });
  return user;
}

std::optional<Caller> ServiceState::caller_for(std::string_view kind, std::string_view secret) {
  // A session made with an API token lives only as long as that token (the deletion that
  // revokes a token takes its sessions too; this join is the second line).
  auto rows = db_->query(fmt::format("SELECT {}, t.id, t.csrf, t.expires_at, t.last_used_at "
                                     "FROM tokens t JOIN users u ON u.id = t.user_id "
                                     "LEFT JOIN tokens p ON p.id = t.parent_id AND p.kind = 'api' "
                                     "WHERE t.hash = $1 AND t.kind = $2 AND u.disabled = 0 "
                                     "AND (t.parent_id IS NULL OR p.id IS NOT NULL)",
                                     kUserColumns),
                         {hash_secret(secret), std::string(kind)});
  if (rows.empty()) return std::nullopt;
  const auto& r = rows[0];
  constexpr std::size_t t = kUserColumnCount;
  std::int64_t now = now_ms();
  if (!r.is_null(t + 2) && r.integer(t + 2) < now) return std::nullopt;
  // last_used_at is for the tokens page; writing it at most once a minute keeps status polls cheap.
  if (r.integer(t + 3) < now - 60'000)
    db_->query("UPDATE tokens SET last_used_at = $2 WHERE id = $1", {r.text(t), now});
  return Caller{user_from_row(r), kind == "session" ? "session" : "token", r.text(t),
                r.text(t + 1)};
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
        fmt::format("SELECT {}, t.id, t.kind, t.expires_at "
                    "FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = $1 AND t.kind "
                    "IN ('login', 'api')",
                    kUserColumns),
        {hash_secret(secret)});
    constexpr std::size_t t = kUserColumnCount;
    if (rows.empty() || (!rows[0].is_null(t + 2) && rows[0].integer(t + 2) < now_ms()))
      throw Error(ErrorKind::kAuth,
                  "Failed to log in: the token is unknown, used or expired (ask an admin for a "
                  "new login token, or run `pok8s serve --login-token`)");
    const auto& r = rows[0];
    grant.user = user_from_row(r);
    // Refused before a login token is spent: it works once the user is enabled again.
    if (grant.user.disabled)
      throw Error(
          ErrorKind::kAuth,
          fmt::format("Failed to log in: user {} is disabled (ask an admin)", grant.user.name));
    bool with_api_token = r.text(t + 1) == "api";
    // A login token works once.
    if (!with_api_token) db.query("DELETE FROM tokens WHERE id = $1", {r.text(t)});
    grant.cookie = random_secret("");
    grant.csrf = random_secret("");
    grant.expires_at = now_ms() + kSessionLifetimeMs;
    // A session made with an API token is bound to it, and dies with it; one made with a login
    // token (now gone) is bound to the user only.
    db.query(
        "INSERT INTO tokens (id, user_id, kind, name, hash, csrf, created_at, expires_at, "
        "parent_id) VALUES ($1, $2, 'session', 'session', $3, $4, $5, $6, $7)",
        {random_id(), grant.user.id, hash_secret(grant.cookie), grant.csrf, now_ms(),
         grant.expires_at, with_api_token ? SqlValue{r.text(t)} : SqlValue{}});
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
  t.info = TokenInfo{random_id(), std::string(name), now_ms(), 0, user.id};
  t.secret = random_secret("pok8s_");
  db_->query(
      "INSERT INTO tokens (id, user_id, kind, name, hash, created_at) "
      "VALUES ($1, $2, 'api', $3, $4, $5)",
      {t.info.id, user.id, t.info.name, hash_secret(t.secret), t.info.created_at});
  return t;
}

std::vector<TokenInfo> ServiceState::api_tokens_of(std::string_view user_id) {
  std::vector<TokenInfo> out;
  for (const auto& r : db_->query(
           "SELECT id, name, created_at, last_used_at, user_id FROM tokens WHERE user_id = $1 "
           "AND kind = 'api' ORDER BY created_at, id",
           {std::string(user_id)}))
    out.push_back({r.text(0), r.text(1), r.integer(2), r.integer(3), r.text(4)});
  return out;
}

// `user_id` empty: whoever's token it is.
bool ServiceState::delete_token_and_sessions(std::string_view token_id, std::string_view user_id) {
  bool deleted = false;
  db_->transaction([&](SqlDb& db) {
    deleted = !db.query(
                     "DELETE FROM tokens WHERE id = $1 AND kind = 'api' AND ($2 = '' OR user_id "
                     "= $2) RETURNING id",
                     {std::string(token_id), std::string(user_id)})
                   .empty();
    if (deleted)
      db.query("DELETE FROM tokens WHERE parent_id = $1 AND kind = 'session'",
               {std::string(token_id)});
  });
  return deleted;
}

bool ServiceState::delete_api_token(const User& user, std::string_view token_id) {
  // An empty id would mean "anyone's" below.
  if (user.id.empty()) return false;
  return delete_token_and_sessions(token_id, user.id);
}

bool ServiceState::revoke_token(std::string_view token_id) {
  return delete_token_and_sessions(token_id, "");
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
          // The submitter knows the whole spec, secrets included (it hashes to the same id), so
          // they may read the build that answers it.
          if (result->build.owner != proposed.owner)
            db.query(
                "INSERT INTO build_access (build_id, user_id, granted_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (build_id, user_id) DO NOTHING",
                {result->build.id, proposed.owner, now_ms()});
          return;
        }
        proposed.state = BuildState::kQueued;
        proposed.created_at = now_ms();
        std::string spec = proposed.spec;
        std::string files = proposed.files;
        if (box_) {
          spec = box_->seal(spec, seal_context(proposed.id, "spec"));
          files = box_->seal(files, seal_context(proposed.id, "files"));
        }
        db.query(
            "INSERT INTO builds (id, spec_id, spec, files, base_pinned, owner, state, base, "
            "version, kubernetes, artifact_kinds, created_at, queue_seq) "
            "VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11, "
            "(SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM builds))",
            {proposed.id, proposed.spec_id, spec, files, proposed.base_pinned, proposed.owner,
             proposed.base, proposed.version, proposed.kubernetes, proposed.artifact_kinds,
             proposed.created_at});
        record_state(db, proposed.id, proposed.created_at, "queued");
      });
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kInvalidInput && attempt == 0) continue;
      throw;
    }
    if (result) return Submission{opened(std::move(result->build)), true};
    return Submission{*build(proposed.id), false};
  }
}

std::optional<BuildRecord> ServiceState::build(std::string_view id) {
  auto rows = db_->query(select_builds("WHERE b.id = $1"), {std::string(id)});
  if (rows.empty()) return std::nullopt;
  return opened(build_from_row(rows[0]));
}

std::vector<BuildRecord> ServiceState::builds(std::optional<BuildState> state, std::int64_t limit,
                                              std::int64_t offset, std::int64_t* total,
                                              const User& viewer) {
  std::string filter = state ? std::string(build_state_name(*state)) : "";
  // $1 the state ('' for any), $2 the viewer, $3 whether they see everything (an admin).
  // A disabled viewer sees nothing, like an unknown one.
  constexpr const char* kReadable =
      "WHERE ($1 = '' OR b.state = $1) AND $2 <> '' AND ($3 = 1 OR b.owner = $2 OR b.shared = 1 "
      "OR EXISTS (SELECT 1 FROM build_access a WHERE a.build_id = b.id AND a.user_id = $2))";
  std::string viewer_id = viewer.disabled ? "" : viewer.id;
  std::int64_t sees_all = viewer.role == "admin" && !viewer.disabled ? 1 : 0;
  if (total)
    *total = db_->query(fmt::format("SELECT count(*) FROM builds b {}", kReadable),
                        {filter, viewer_id, sees_all})
                 .at(0)
                 .integer(0);
  std::vector<BuildRecord> out;
  for (const auto& r :
       db_->query(select_build_summaries(
                      fmt::format("{} ORDER BY b.queue_seq DESC LIMIT $4 OFFSET $5", kReadable)),
                  {filter, viewer_id, sees_all, limit, offset}))
    out.push_back(build_from_row(r));
  return out;
}

BuildAccess ServiceState::access_to_build(const BuildRecord& build, const User& user) {
  if (user.disabled || user.id.empty()) return BuildAccess::kNone;
  if (build.owner == user.id) return BuildAccess::kOwner;
  if (user.role == "admin") return BuildAccess::kAdmin;
  if (!db_->query("SELECT 1 FROM build_access WHERE build_id = $1 AND user_id = $2",
                  {build.id, user.id})
           .empty())
    return BuildAccess::kGranted;
  if (build.shared) return BuildAccess::kShared;
  return BuildAccess::kNone;
}

bool ServiceState::can_manage_build(const BuildRecord& build, const User& user) {
  return !user.disabled && !user.id.empty() && (build.owner == user.id || user.role == "admin");
}

bool ServiceState::set_build_shared(std::string_view id, bool shared) {
  return !db_->query("UPDATE builds SET shared = $2 WHERE id = $1 RETURNING id",
                     {std::string(id), std::int64_t{shared ? 1 : 0}})
              .empty();
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
  auto rows = db_->query(select_builds("WHERE b.id = $1"), {*id});
  if (rows.empty()) return std::nullopt;
  try {
    return opened(build_from_row(rows[0]));
  } catch (const Error& e) {
    // A spec this worker cannot open (another key, altered) would only come back to it after
    // every heartbeat timeout; the build fails now, saying why, and the worker reports it.
    finish_build(*id, worker, BuildState::kFailed, e.what(), "");
    throw;
  }
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
