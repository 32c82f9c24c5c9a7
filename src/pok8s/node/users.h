// Users and groups of a target root, written straight into /etc/{passwd,shadow,group,gshadow}
// (no useradd: the same code works for every distribution and for a root that is not running).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pok8s/config/cloud_config.h"
#include "pok8s/util/file.h"

namespace pok8s::node {

inline constexpr std::uint32_t kFirstRegularId = 1000;  // login.defs UID_MIN / GID_MIN
inline constexpr std::uint32_t kLastRegularId = 60000;  // login.defs UID_MAX / GID_MAX

// `absolute` (a clean absolute path, as the cloud-config parser checks) inside `root`.
inline util::Path path_in_root(const util::Path& root, std::string_view absolute) {
  return root / util::Path(absolute).relative_path();
}

// Hashes a plaintext password with crypt(3) SHA-512 ("$6$", readable by glibc, musl and
// busybox alike) and a random salt.
std::string hash_password(std::string_view plaintext);

// The four account files of a root, kept as lines so entries pok8s does not touch are written
// back byte for byte. gshadow is only maintained when the root already has one.
class AccountDatabase {
 public:
  // Reads <root>/etc/{passwd,shadow,group,gshadow}; missing files are empty.
  explicit AccountDatabase(util::Path root);

  std::optional<std::uint32_t> uid_of(std::string_view user) const;
  std::optional<std::uint32_t> gid_of(std::string_view group) const;
  struct Account {
    std::uint32_t uid;
    std::uint32_t gid;
    std::string home;
  };
  std::optional<Account> account(std::string_view user) const;

  // Creates or updates `user` in memory: uid, primary group (created when missing), shell,
  // home, password (plaintext is hashed, "$..." kept), lock, supplementary groups.
  Account apply(const config::UserSpec& user);

  // Writes the files that changed, each through a temporary file renamed into place, keeping
  // the mode and owner of the file it replaces. Holds <root>/etc/.pwd.lock while writing.
  void save();

 private:
  struct Table {
    util::Path path;
    std::vector<std::string> lines;
    bool exists = false;
    bool changed = false;
    unsigned default_mode = 0644;
  };
  static void load(Table& table);
  static std::vector<std::string> fields(const std::string& line);
  static std::string join(const std::vector<std::string>& fields);
  long find(const Table& table, std::string_view name) const;
  std::uint32_t next_free(const Table& table, std::size_t id_field,
                          std::optional<std::uint32_t> preferred) const;
  std::uint32_t ensure_group(std::string_view name, std::optional<std::uint32_t> preferred_gid);
  void add_member(std::string_view group, std::string_view user);
  void save_table(Table& table);

  util::Path root_;
  Table passwd_, shadow_, group_, gshadow_;
};

// Applies users to `root`: the account files, then for each user a home (created 0700 without
// skel when missing) and ~/.ssh/authorized_keys (0600, keys appended when not already there),
// both owned by the user. Throws on the first failure naming the user.
void apply_users(std::span<const config::UserSpec> users, const util::Path& root);

}  // namespace pok8s::node
