// Account files edited in place of useradd/usermod, in the formats of passwd(5), shadow(5),
// group(5) and gshadow(5), and password hashing with libxcrypt's crypt(3).
#include "pok8s/node/users.h"

#include <crypt.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <ctime>
#include <set>

#include "pok8s/util/error.h"

namespace pok8s::node {
namespace {

// passwd: name:password:uid:gid:gecos:home:shell; group: name:password:gid:members
constexpr std::size_t kPasswdFields = 7;
constexpr std::size_t kShadowFields = 9;
constexpr std::size_t kGroupFields = 4;

std::optional<std::uint32_t> parse_id(std::string_view s) {
  std::uint32_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// Days since the epoch for shadow's "last change" field; SOURCE_DATE_EPOCH for reproducible
// images.
std::string days_since_epoch() {
  std::time_t now = std::time(nullptr);
  if (const char* sde = std::getenv("SOURCE_DATE_EPOCH"); sde && *sde)
    if (auto v = parse_id(sde)) now = static_cast<std::time_t>(*v);
  return std::to_string(now / 86400);
}

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    std::size_t pos = s.find(sep, start);
    out.emplace_back(s.substr(start, pos == std::string_view::npos ? s.npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

void set_owner(const util::Path& path, std::uint32_t uid, std::uint32_t gid) {
  if (::lchown(path.c_str(), uid, gid) != 0)
    throw_errno(fmt::format("Failed to change the owner of {}", path.string()), errno);
}

// Creates `dir` with `mode` if missing (parents 0755); true when it was created.
bool make_dir(const util::Path& dir, unsigned mode) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode))
      throw Error(
          ErrorKind::kIo,
          fmt::format("Failed to create directory {}: something else is there", dir.string()));
    return false;
  }
  util::make_dirs(dir.parent_path());
  if (::mkdir(dir.c_str(), mode) != 0 && errno != EEXIST)
    throw_errno("Failed to create directory " + dir.string(), errno);
  if (::chmod(dir.c_str(), mode) != 0) throw_errno("Failed to chmod " + dir.string(), errno);
  return true;
}

}  // namespace

std::string hash_password(std::string_view plaintext) {
  char setting[CRYPT_GENSALT_OUTPUT_SIZE];
  // A null random source lets libxcrypt draw the salt from the kernel (getrandom).
  if (!::crypt_gensalt_rn("$6$", 0, nullptr, 0, setting, sizeof setting))
    throw_errno("Failed to hash a password: no salt", errno);
  struct crypt_data data {};
  std::string phrase(plaintext);
  const char* hash = ::crypt_rn(phrase.c_str(), setting, &data, sizeof data);
  if (!hash || hash[0] == '*') throw_errno("Failed to hash a password", errno ? errno : EINVAL);
  return hash;
}

AccountDatabase::AccountDatabase(util::Path root) : root_(std::move(root)) {
  util::Path etc = root_ / "etc";
  passwd_.path = etc / "passwd";
  shadow_.path = etc / "shadow";
  shadow_.default_mode = 0600;
  group_.path = etc / "group";
  gshadow_.path = etc / "gshadow";
  gshadow_.default_mode = 0600;
  for (Table* t : {&passwd_, &shadow_, &group_, &gshadow_}) load(*t);
}

void AccountDatabase::load(Table& table) {
  struct stat st {};
  if (::stat(table.path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw_errno("Failed to read " + table.path.string(), errno);
  }
  table.exists = true;
  std::string text = util::read_file(table.path, 16u << 20);
  table.lines = split(text, '\n');
  if (!table.lines.empty() && table.lines.back().empty()) table.lines.pop_back();
}

std::vector<std::string> AccountDatabase::fields(const std::string& line) {
  return split(line, ':');
}

std::string AccountDatabase::join(const std::vector<std::string>& f) {
  std::string out;
  for (std::size_t i = 0; i < f.size(); ++i) {
    if (i) out.push_back(':');
    out += f[i];
  }
  return out;
}

long AccountDatabase::find(const Table& table, std::string_view name) const {
  for (std::size_t i = 0; i < table.lines.size(); ++i) {
    const std::string& line = table.lines[i];
    if (line.size() > name.size() && line.compare(0, name.size(), name) == 0 &&
        line[name.size()] == ':')
      return static_cast<long>(i);
  }
  return -1;
}

std::optional<std::uint32_t> AccountDatabase::uid_of(std::string_view user) const {
  if (auto a = account(user)) return a->uid;
  return std::nullopt;
}

std::optional<std::uint32_t> AccountDatabase::gid_of(std::string_view group) const {
  long i = find(group_, group);
  if (i < 0) return std::nullopt;
  auto f = fields(group_.lines[static_cast<std::size_t>(i)]);
  return f.size() >= 3 ? parse_id(f[2]) : std::nullopt;
}

std::optional<AccountDatabase::Account> AccountDatabase::account(std::string_view user) const {
  long i = find(passwd_, user);
  if (i < 0) return std::nullopt;
  auto f = fields(passwd_.lines[static_cast<std::size_t>(i)]);
  if (f.size() < kPasswdFields) return std::nullopt;
  auto uid = parse_id(f[2]);
  auto gid = parse_id(f[3]);
  if (!uid || !gid) return std::nullopt;
  return Account{*uid, *gid, f[5]};
}

std::uint32_t AccountDatabase::next_free(const Table& table, std::size_t id_field,
                                         std::optional<std::uint32_t> preferred) const {
  std::set<std::uint32_t> used;
  for (const auto& line : table.lines) {
    auto f = fields(line);
    if (f.size() > id_field)
      if (auto id = parse_id(f[id_field])) used.insert(*id);
  }
  if (preferred && !used.count(*preferred)) return *preferred;
  for (std::uint32_t id = kFirstRegularId; id <= kLastRegularId; ++id)
    if (!used.count(id)) return id;
  throw Error(ErrorKind::kIo, fmt::format("Failed to allocate an id in {}: all of {}-{} are used",
                                          table.path.string(), kFirstRegularId, kLastRegularId));
}

std::uint32_t AccountDatabase::ensure_group(std::string_view name,
                                            std::optional<std::uint32_t> preferred_gid) {
  if (auto gid = gid_of(name)) return *gid;
  std::uint32_t gid = next_free(group_, 2, preferred_gid);
  group_.lines.push_back(fmt::format("{}:x:{}:", name, gid));
  group_.changed = true;
  if (gshadow_.exists) {
    gshadow_.lines.push_back(fmt::format("{}:!::", name));
    gshadow_.changed = true;
  }
  return gid;
}

void AccountDatabase::add_member(std::string_view group, std::string_view user) {
  auto add = [&](Table& table, std::size_t members_field) {
    long i = find(table, group);
    if (i < 0) return;
    auto& line = table.lines[static_cast<std::size_t>(i)];
    auto f = fields(line);
    if (f.size() < kGroupFields) f.resize(kGroupFields);
    auto members =
        f[members_field].empty() ? std::vector<std::string>{} : split(f[members_field], ',');
    if (std::find(members.begin(), members.end(), user) != members.end()) return;
    f[members_field] += fmt::format("{}{}", members.empty() ? "" : ",", user);
    line = join(f);
    table.changed = true;
  };
  add(group_, 3);
  if (gshadow_.exists) add(gshadow_, 3);
}

AccountDatabase::Account AccountDatabase::apply(const config::UserSpec& user) {
  const std::string& name = user.name;
  long pi = find(passwd_, name);
  std::vector<std::string> pw;
  if (pi >= 0) {
    pw = fields(passwd_.lines[static_cast<std::size_t>(pi)]);
    if (pw.size() < kPasswdFields || !parse_id(pw[2]) || !parse_id(pw[3]))
      throw Error(ErrorKind::kFormat, fmt::format("Failed to update user {}: its line in {} is "
                                                  "malformed",
                                                  name, passwd_.path.string()));
  } else {
    std::uint32_t uid = user.uid ? *user.uid : next_free(passwd_, 2, std::nullopt);
    pw = {name, "x", std::to_string(uid), "", user.gecos, fmt::format("/home/{}", name), "/bin/sh"};
  }
  if (user.uid) {
    // Like useradd without -o: two names for one uid is refused.
    for (const auto& line : passwd_.lines) {
      auto other = fields(line);
      if (other.size() >= 3 && other[0] != name && parse_id(other[2]) == user.uid)
        throw Error(ErrorKind::kInvalidInput,
                    fmt::format("Failed to set uid {} for {}: {} already has it", *user.uid, name,
                                other[0]));
    }
    pw[2] = std::to_string(*user.uid);
  }
  std::uint32_t uid = *parse_id(pw[2]);
  if (pi < 0 || !user.primary_group.empty()) {
    std::string group = user.primary_group.empty() ? name : user.primary_group;
    // A user-private group gets the uid as gid when it is free, as useradd does.
    pw[3] = std::to_string(ensure_group(
        group, user.primary_group.empty() ? std::optional<std::uint32_t>(uid) : std::nullopt));
  }
  if (!user.gecos.empty()) pw[4] = user.gecos;
  if (!user.homedir.empty()) pw[5] = user.homedir;
  if (!user.shell.empty()) pw[6] = user.shell;

  // The password lives in shadow; an old-style hash in passwd moves there.
  std::string hash;
  bool hash_in_passwd = pw[1] != "x" && pw[1] != "*";
  if (hash_in_passwd) hash = pw[1];
  pw[1] = "x";
  long si = find(shadow_, name);
  std::vector<std::string> sh;
  if (si >= 0) {
    sh = fields(shadow_.lines[static_cast<std::size_t>(si)]);
    sh.resize(std::max(sh.size(), kShadowFields));
    if (!hash_in_passwd) hash = sh[1];
  } else {
    sh = {name, "", days_since_epoch(), "0", "99999", "7", "", "", ""};
    if (!hash_in_passwd) hash = "!";  // no password: only keys can log in
  }
  if (user.passwd) {
    hash = user.passwd->starts_with("$") ? *user.passwd : hash_password(*user.passwd);
    sh[2] = days_since_epoch();
  }
  if (user.lock_passwd && *user.lock_passwd && !hash.starts_with("!")) hash = "!" + hash;
  // Unlocking never turns "!" (no password) into "" (empty password, no login prompt).
  if (user.lock_passwd && !*user.lock_passwd && hash.starts_with("!")) {
    std::size_t first = hash.find_first_not_of('!');
    if (first != std::string::npos) hash.erase(0, first);
  }
  sh[1] = hash;

  std::string pw_line = join(pw);
  if (pi >= 0) {
    auto& line = passwd_.lines[static_cast<std::size_t>(pi)];
    if (line != pw_line) passwd_.changed = true;
    line = pw_line;
  } else {
    passwd_.lines.push_back(pw_line);
    passwd_.changed = true;
  }
  std::string sh_line = join(sh);
  if (si >= 0) {
    auto& line = shadow_.lines[static_cast<std::size_t>(si)];
    if (line != sh_line) shadow_.changed = true;
    line = sh_line;
  } else {
    shadow_.lines.push_back(sh_line);
    shadow_.changed = true;
  }
  for (const auto& group : user.groups) {
    ensure_group(group, std::nullopt);
    add_member(group, name);
  }
  return Account{uid, *parse_id(pw[3]), pw[5]};
}

void AccountDatabase::save_table(Table& table) {
  if (!table.changed) return;
  struct stat st {};
  bool had = ::stat(table.path.c_str(), &st) == 0;
  util::TempFile tmp(table.path);
  std::string text;
  for (const auto& line : table.lines) text += line + "\n";
  util::write_all(tmp.fd(), text, table.path.string());
  unsigned mode = had ? (st.st_mode & 07777) : table.default_mode;
  if (::fchmod(tmp.fd(), mode) != 0) throw_errno("Failed to chmod " + table.path.string(), errno);
  if (had && ::fchown(tmp.fd(), st.st_uid, st.st_gid) != 0)
    throw_errno("Failed to change the owner of " + table.path.string(), errno);
  tmp.commit();
  table.exists = true;
  table.changed = false;
}

void AccountDatabase::save() {
  util::make_dirs(root_ / "etc");
  // lckpwdf(3)'s lock, so a concurrent passwd(1) or useradd does not interleave with us.
  util::Path lock_path = root_ / "etc" / ".pwd.lock";
  util::UniqueFd lock = util::open_file(lock_path, O_WRONLY | O_CREAT, 0600);
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  while (::fcntl(lock.get(), F_SETLKW, &fl) != 0)
    if (errno != EINTR) throw_errno("Failed to lock " + lock_path.string(), errno);
  // Groups first, so passwd never names a group that is not there yet.
  save_table(group_);
  save_table(gshadow_);
  save_table(passwd_);
  save_table(shadow_);
}

void apply_users(std::span<const config::UserSpec> users, const util::Path& root) {
  AccountDatabase db(root);
  std::vector<AccountDatabase::Account> accounts;
  for (const auto& user : users) {
    try {
      accounts.push_back(db.apply(user));
    } catch (const Error& e) {
      throw Error(e.kind(), fmt::format("Failed to apply user {}: {}", user.name, e.what()));
    }
  }
  db.save();
  for (std::size_t i = 0; i < users.size(); ++i) {
    const auto& user = users[i];
    const auto& account = accounts[i];
    try {
      if (account.home.empty() || account.home.front() != '/' || account.home == "/") continue;
      util::Path home = path_in_root(root, account.home);
      if (make_dir(home, 0700)) set_owner(home, account.uid, account.gid);
      std::vector<std::string> keys;
      std::vector<std::string> remote;
      for (const auto& key : user.ssh_authorized_keys) {
        // Kairos fetches "github:USER"/"gitlab:USER" keys over the network; pok8s does not yet.
        if (key.starts_with("github:") || key.starts_with("gitlab:"))
          remote.push_back(key);
        else if (!key.empty())
          keys.push_back(key);
      }
      if (!keys.empty()) {
        util::Path ssh = home / ".ssh";
        if (make_dir(ssh, 0700)) set_owner(ssh, account.uid, account.gid);
        util::Path file = ssh / "authorized_keys";
        std::vector<std::string> lines;
        struct stat st {};
        if (::lstat(file.c_str(), &st) == 0) {
          lines = split(util::read_file(file, 1u << 20), '\n');
          if (!lines.empty() && lines.back().empty()) lines.pop_back();
        }
        for (const auto& key : keys)
          if (std::find(lines.begin(), lines.end(), key) == lines.end()) lines.push_back(key);
        std::string text;
        for (const auto& line : lines) text += line + "\n";
        util::TempFile tmp(file);
        util::write_all(tmp.fd(), text, file.string());
        if (::fchmod(tmp.fd(), 0600) != 0) throw_errno("Failed to chmod " + file.string(), errno);
        if (::fchown(tmp.fd(), account.uid, account.gid) != 0)
          throw_errno("Failed to change the owner of " + file.string(), errno);
        tmp.commit();
      }
      if (!remote.empty())
        throw Error(ErrorKind::kUnsupported,
                    fmt::format("Failed to import SSH keys {}: fetching keys from GitHub or "
                                "GitLab is not supported by pok8s",
                                remote.front()));
    } catch (const Error& e) {
      throw Error(e.kind(), fmt::format("Failed to apply user {}: {}", user.name, e.what()));
    }
  }
}

}  // namespace pok8s::node
