// fork + (chroot) + execve with the exec error reported back through a close-on-exec pipe.
#include "pok8s/node/command.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>

#include "pok8s/util/error.h"

extern char** environ;

namespace pok8s::node {

util::Path find_program(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* env = std::getenv("PATH");
  std::string path =
      env && *env ? env : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t colon = path.find(':', start);
    std::string dir =
        path.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    if (!dir.empty()) {
      util::Path candidate = util::Path(dir) / name;
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return {};
}

int run_command(const Command& command) {
  if (command.argv.empty()) throw Error(ErrorKind::kInternal, "run_command without argv");
  const std::string& name = command.argv[0];
  util::Path program = find_program(name);
  if (program.empty())
    throw Error(ErrorKind::kNotFound, fmt::format("Failed to run {}: not found in PATH", name));

  // Everything the child needs is prepared before fork: after it only async-signal-safe calls.
  std::map<std::string, std::string> env_map;
  std::vector<std::string> env_order;
  for (char** e = environ; e && *e; ++e) {
    std::string_view entry = *e;
    auto eq = entry.find('=');
    if (eq == std::string_view::npos) continue;
    std::string key(entry.substr(0, eq));
    if (env_map.emplace(key, entry.substr(eq + 1)).second) env_order.push_back(key);
  }
  for (const auto& [key, value] : command.environment) {
    if (env_map.find(key) == env_map.end()) env_order.push_back(key);
    env_map[key] = value;
  }
  std::vector<std::string> env_strings;
  env_strings.reserve(env_order.size());
  for (const auto& key : env_order) env_strings.push_back(key + "=" + env_map[key]);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = command.argv;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string program_str = program.string();
  bool do_chroot = !command.chroot_dir.empty() && command.chroot_dir != "/";
  std::string chroot_str = command.chroot_dir.string();

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw_errno("Failed to create a pipe for " + name, errno);
  util::UniqueFd read_end(pipe_fds[0]);
  util::UniqueFd write_end(pipe_fds[1]);

  pid_t pid = ::fork();
  if (pid < 0) throw_errno("Failed to start " + name, errno);
  if (pid == 0) {
    // The child: report the failing call's errno and the stage ("c" chroot, "e" exec).
    auto die = [&](char stage) {
      int err = errno;
      char msg[1 + sizeof(int)];
      msg[0] = stage;
      std::memcpy(msg + 1, &err, sizeof err);
      (void)!::write(write_end.get(), msg, sizeof msg);
      ::_exit(127);
    };
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) {
      ::dup2(null_fd, 0);
      if (null_fd != 0) ::close(null_fd);
    }
    if (do_chroot && (::chroot(chroot_str.c_str()) != 0 || ::chdir("/") != 0)) die('c');
    ::execve(program_str.c_str(), argv.data(), envp.data());
    die('e');
  }
  write_end.reset();
  char msg[1 + sizeof(int)];
  ssize_t n;
  do {
    n = ::read(read_end.get(), msg, sizeof msg);
  } while (n < 0 && errno == EINTR);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw_errno("Failed to wait for " + name, errno);
  }
  if (n == static_cast<ssize_t>(sizeof msg)) {
    int err;
    std::memcpy(&err, msg + 1, sizeof err);
    if (msg[0] == 'c')
      throw_errno(fmt::format("Failed to run {}: chroot to {}", name, chroot_str), err);
    throw_errno(fmt::format("Failed to run {}", program_str), err);
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 255;
}

}  // namespace pok8s::node
