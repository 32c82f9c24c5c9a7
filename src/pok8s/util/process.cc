// posix_spawn with a pipe for the output.
#include "pok8s/util/process.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

extern char** environ;

namespace pok8s::util {

ProcessResult run_process(const std::vector<std::string>& args, const ProcessOptions& options) {
  if (args.empty()) throw Error(ErrorKind::kInternal, "run_process: no program");
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno("Failed to create a pipe for " + args[0], errno);
  UniqueFd read_end(fds[0]);
  UniqueFd write_end(fds[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(
      &actions, 0, options.stdin_file.empty() ? "/dev/null" : options.stdin_file.c_str(), O_RDONLY,
      0);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, write_end.get(), 2);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  if (options.env) {
    for (const auto& e : *options.env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
  }
  pid_t pid = 0;
  int err = ::posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(),
                           options.env ? envp.data() : environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) throw_errno("Failed to run " + args[0], err);
  write_end.reset();

  ProcessResult result;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (result.output.size() < options.output_limit)
      result.output.append(buf, static_cast<std::size_t>(n));
  }
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0) {
    if (errno != EINTR) throw_errno("Failed to wait for " + args[0], errno);
  }
  result.status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
  return result;
}

std::string last_line(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  auto pos = text.rfind('\n');
  return std::string(pos == std::string_view::npos ? text : text.substr(pos + 1));
}

std::string single_quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

}  // namespace pok8s::util
