// The user namespace is made by a child that unshares it and waits; the parent writes its id
// maps with newuidmap/newgidmap (only they may map ids other than the caller's own) and lets
// it exec this program again. Between fork and exec the child makes system calls only.
#include "pok8s/util/userns.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <tuple>

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "pok8s/util/process.h"

extern char** environ;

namespace pok8s::util {
namespace {

constexpr std::string_view kContext = "Failed to enter a user namespace to work without root";

std::optional<std::uint32_t> parse_u32(std::string_view s) {
  std::uint32_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

std::string user_name(uid_t uid) {
  struct passwd pw {};
  struct passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found) return pw.pw_name;
  return std::to_string(uid);
}

std::string find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string_view dirs = path && *path ? path : "/usr/local/bin:/usr/bin:/bin";
  while (!dirs.empty()) {
    auto colon = dirs.find(':');
    std::string dir(dirs.substr(0, colon));
    dirs = colon == std::string_view::npos ? std::string_view() : dirs.substr(colon + 1);
    if (dir.empty()) continue;
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

SubidRange range_for(const char* file, const std::string& user, std::uint32_t id) {
  std::string text;
  try {
    text = read_file(file, 4u << 20);
  } catch (const Error&) {
  }
  auto range = find_subid_range(text, user, id);
  if (!range || range->count == 0)
    throw Error(ErrorKind::kUnsupported,
                fmt::format("{}: user {} has no subordinate id range in {} (add one with: "
                            "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {}), "
                            "or run as root",
                            kContext, user, file, user));
  return *range;
}

pid_t g_child = 0;
extern "C" void forward_signal(int sig) {
  if (g_child > 0) ::kill(g_child, sig);
}

// What the child does between fork and exec: system calls only.
[[noreturn]] void child(int ready_w, int go_r, char* const* argv, char* const* envp) {
  char byte = ::unshare(CLONE_NEWUSER) == 0 ? 'u' : 'e';
  int unshare_errno = errno;
  (void)!::write(ready_w, &byte, 1);
  if (byte == 'e') _exit(unshare_errno == EPERM || unshare_errno == ENOSPC ? 126 : 125);
  while (::read(go_r, &byte, 1) < 0 && errno == EINTR) {
  }
  if (byte != 'g') _exit(125);
  // The maps are written: become uid and gid 0 everywhere and drop the host's groups, which
  // have no name here.
  if (::setresgid(0, 0, 0) != 0 || ::setresuid(0, 0, 0) != 0) _exit(125);
  (void)::setgroups(0, nullptr);
  ::execve("/proc/self/exe", argv, envp);
  _exit(127);
}

}  // namespace

std::optional<SubidRange> find_subid_range(std::string_view text, std::string_view user,
                                           std::uint32_t id) {
  std::string id_text = std::to_string(id);
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (line.empty() || line.front() == '#') continue;
    auto c1 = line.find(':');
    auto c2 = c1 == std::string_view::npos ? c1 : line.find(':', c1 + 1);
    if (c2 == std::string_view::npos) continue;
    std::string_view name = line.substr(0, c1);
    if (name != user && name != id_text) continue;
    auto start = parse_u32(line.substr(c1 + 1, c2 - c1 - 1));
    auto count = parse_u32(line.substr(c2 + 1));
    if (!start || !count || *count == 0) continue;
    if (static_cast<std::uint64_t>(*start) + *count > 0xffffffffull) continue;
    return SubidRange{*start, *count};
  }
  return std::nullopt;
}

bool in_user_namespace() {
  // The initial namespace maps every id to itself: "0 0 4294967295".
  std::string map;
  try {
    map = read_file("/proc/self/uid_map", 1 << 16);
  } catch (const Error&) {
    return false;
  }
  auto fields = [](std::string_view s) {
    std::vector<std::string_view> out;
    while (!s.empty()) {
      auto b = s.find_first_not_of(" \t\n");
      if (b == std::string_view::npos) break;
      s.remove_prefix(b);
      auto e = s.find_first_of(" \t\n");
      out.push_back(s.substr(0, e));
      s = e == std::string_view::npos ? std::string_view() : s.substr(e);
    }
    return out;
  };
  auto f = fields(map);
  return !(f.size() == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295");
}

int run_self_in_user_namespace(const std::vector<std::string>& args) {
  uid_t uid = ::getuid();
  gid_t gid = ::getgid();
  std::string user = user_name(uid);
  SubidRange uids = range_for("/etc/subuid", user, uid);
  SubidRange gids = range_for("/etc/subgid", user, uid);
  std::string newuidmap = find_program("newuidmap");
  std::string newgidmap = find_program("newgidmap");
  if (newuidmap.empty() || newgidmap.empty())
    throw Error(ErrorKind::kUnsupported,
                fmt::format("{}: newuidmap and newgidmap are not installed (apt-get install "
                            "uidmap), or run as root",
                            kContext));

  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int ready[2], go[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) throw_errno(std::string(kContext) + ": pipe", errno);
  UniqueFd ready_r(ready[0]), ready_w(ready[1]);
  if (::pipe2(go, O_CLOEXEC) != 0) throw_errno(std::string(kContext) + ": pipe", errno);
  UniqueFd go_r(go[0]), go_w(go[1]);

  pid_t pid = ::fork();
  if (pid < 0) throw_errno(std::string(kContext) + ": fork", errno);
  if (pid == 0) child(ready_w.get(), go_r.get(), argv.data(), environ);
  ready_w.reset();
  go_r.reset();
  auto wait_child = [pid] {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  };
  auto abort_child = [&](const std::string& why) -> int {
    char stop = 'x';
    (void)!::write(go_w.get(), &stop, 1);
    go_w.reset();
    wait_child();
    throw Error(ErrorKind::kUnsupported, fmt::format("{}: {}", kContext, why));
  };

  char byte = 0;
  while (::read(ready_r.get(), &byte, 1) < 0 && errno == EINTR) {
  }
  if (byte != 'u') {
    int code = wait_child();
    throw Error(ErrorKind::kUnsupported,
                fmt::format("{}: {}", kContext,
                            code == 126 ? "the kernel does not allow unprivileged user namespaces "
                                          "(sysctl user.max_user_namespaces, or "
                                          "kernel.unprivileged_userns_clone), or run as root"
                                        : "unshare failed"));
  }
  for (auto [tool, id, range] : {std::tuple{&newuidmap, static_cast<std::uint32_t>(uid), uids},
                                 std::tuple{&newgidmap, static_cast<std::uint32_t>(gid), gids}}) {
    ProcessResult r = run_process({*tool, std::to_string(pid), "0", std::to_string(id), "1", "1",
                                   std::to_string(range.start), std::to_string(range.count)});
    if (r.status != 0)
      return abort_child(
          fmt::format("{} exited with {}: {}", *tool, r.status, last_line(r.output)));
  }

  // From here the child is the program: let it see the terminal's signals and pass on the rest.
  g_child = pid;
  struct sigaction ignore {
  }, forward{}, old_int{}, old_term{}, old_hup{};
  ignore.sa_handler = SIG_IGN;
  forward.sa_handler = forward_signal;
  ::sigaction(SIGINT, &ignore, &old_int);
  ::sigaction(SIGTERM, &forward, &old_term);
  ::sigaction(SIGHUP, &forward, &old_hup);
  char go_byte = 'g';
  (void)!::write(go_w.get(), &go_byte, 1);
  go_w.reset();
  int code = wait_child();
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  ::sigaction(SIGHUP, &old_hup, nullptr);
  g_child = 0;
  return code;
}

}  // namespace pok8s::util
