// Creating, starting and stopping the throw-away PostgreSQL cluster of the integration tests.
#include "integration/postgres_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "pok8s/util/error.h"
#include "pok8s/util/process.h"

namespace pok8s::testing {

namespace {

using namespace std::chrono_literals;

std::string bin(const char* tool) {
  return std::string(kPostgresBinDir) + "/" + tool;
}

std::string pg_log_tail(const util::Path& log) {
  std::ifstream in(log);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return all.size() > 4000 ? all.substr(all.size() - 4000) : all;
}

[[noreturn]] void fail(const std::string& reason) {
  throw std::runtime_error("Failed to start the test PostgreSQL server: " + reason);
}

int pg_free_port() {
  util::UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s.valid()) throw_errno("Failed to create a socket", errno);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw_errno("Failed to bind a socket on 127.0.0.1", errno);
  socklen_t len = sizeof addr;
  ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  return ntohs(addr.sin_port);
}

struct RunAs {
  bool switch_user;
  uid_t uid;
  gid_t gid;
};

// Starts `argv` in `cwd`, in its own process group, with stdout and stderr appended to `log`.
// The child dies with the thread that started it, so a crashing test leaves no server behind.
pid_t spawn(const std::vector<std::string>& argv, const util::Path& cwd, const util::Path& log,
            RunAs as) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  util::UniqueFd out = util::open_file(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw_errno("Failed to fork for " + argv[0], errno);
  if (pid == 0) {
    // Only async-signal-safe calls from here on: the test binary may have threads.
    ::setpgid(0, 0);
    if (as.switch_user &&
        (::setgroups(1, &as.gid) != 0 || ::setgid(as.gid) != 0 || ::setuid(as.uid) != 0)) {
      ::dprintf(out.get(), "switching to the postgres user: %s\n", std::strerror(errno));
      ::_exit(126);
    }
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(125);  // the parent already went
    if (::chdir(cwd.c_str()) != 0) ::_exit(124);
    ::dup2(out.get(), 1);
    ::dup2(out.get(), 2);
    int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) ::dup2(null, 0);
    ::execv(args[0], args.data());
    ::dprintf(2, "exec %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also from the parent, so there is no window before the child runs
  return pid;
}

// Whether `pid` has ended (reaping it if so), without waiting.
bool has_exited(pid_t pid) {
  int status = 0;
  return ::waitpid(pid, &status, WNOHANG) == pid;
}

}  // namespace

TestPostgres::TestPostgres() : dir_(util::TempDir::scratch()) {
  for (const char* tool : {"initdb", "postgres", "pg_isready", "createdb"}) {
    struct stat st {};
    if (::stat(bin(tool).c_str(), &st) != 0)
      fail(bin(tool) +
           " is missing. Install the Debian package postgresql (scripts/install-deps.sh test "
           "installs it) and run the tests again.");
  }
  if (::geteuid() == 0) {
    // PostgreSQL refuses to run as root; Debian's package creates a `postgres` user for it.
    const passwd* user = ::getpwnam("postgres");
    if (!user)
      fail(
          "it refuses to run as root and there is no `postgres` user (the Debian package "
          "postgresql creates it)");
    switch_user_ = true;
    uid_ = user->pw_uid;
    gid_ = user->pw_gid;
    if (::chown(dir().c_str(), uid_, gid_) != 0)
      throw_errno("Failed to hand " + dir().string() + " to the postgres user", errno);
  }

  util::Path log = dir() / "initdb.log";
  // --no-sync and trust: a cluster that lives for one test run needs neither durability nor
  // passwords. The C locale does not depend on which locales the host has generated.
  pid_t initdb =
      spawn({bin("initdb"), "-D", (dir() / "data").string(), "-U", kPostgresUser, "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"},
            dir(), log, {switch_user_, uid_, gid_});
  int status = 0;
  ::waitpid(initdb, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("initdb failed:\n" + pg_log_tail(log));

  try {
    // Another process may take the free port before postgres binds it; then try another.
    bool started = false;
    for (int attempt = 0; attempt < 3 && !started; ++attempt) started = start_server();
    if (!started) fail("no free port could be bound:\n" + pg_log_tail(dir() / "postgres.log"));
    create_database(kPostgresDatabase);
  } catch (...) {
    stop_server();  // the destructor does not run for a constructor that throws
    throw;
  }
}

TestPostgres::~TestPostgres() {
  stop_server();
}

bool TestPostgres::start_server() {
  util::Path log = dir() / "postgres.log";
  port_ = pg_free_port();
  postmaster_ = spawn({bin("postgres"), "-D", (dir() / "data").string(), "-k", dir().string(), "-p",
                       std::to_string(port_), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                       "-c", "full_page_writes=off", "-c", "synchronous_commit=off"},
                      dir(), log, {switch_user_, uid_, gid_});
  for (int i = 0; i < 600; ++i) {
    if (has_exited(postmaster_)) {
      postmaster_ = -1;
      std::string said = pg_log_tail(log);
      if (said.find("could not bind") != std::string::npos ||
          said.find("already in use") != std::string::npos)
        return false;
      fail("postgres exited:\n" + said);
    }
    util::ProcessResult ready =
        util::run_process({bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", std::to_string(port_),
                           "-U", kPostgresUser, "-d", "postgres"});
    if (ready.status == 0) return true;
    std::this_thread::sleep_for(50ms);
  }
  stop_server();
  fail("it did not accept connections within 30 s:\n" + pg_log_tail(log));
}

void TestPostgres::stop_server() {
  if (postmaster_ <= 0) return;
  // SIGINT is PostgreSQL's fast shutdown: it ends the sessions instead of waiting for them.
  ::kill(postmaster_, SIGINT);
  bool exited = false;
  for (int i = 0; i < 100 && !exited; ++i) {
    exited = has_exited(postmaster_);
    if (!exited) std::this_thread::sleep_for(100ms);
  }
  ::kill(-postmaster_, SIGKILL);  // whatever is left of the process group
  if (!exited) {
    int status = 0;
    ::waitpid(postmaster_, &status, 0);
  }
  postmaster_ = -1;
}

std::string TestPostgres::url(const std::string& database) const {
  return std::string("postgres://") + kPostgresUser + "@127.0.0.1:" + std::to_string(port_) + "/" +
         database;
}

std::string TestPostgres::create_database(const std::string& name) const {
  util::ProcessResult created = util::run_process(
      {bin("createdb"), "-h", "127.0.0.1", "-p", std::to_string(port_), "-U", kPostgresUser, name});
  if (created.status != 0)
    throw std::runtime_error("Failed to create database " + name + ": " + created.output);
  return url(name);
}

}  // namespace pok8s::testing
