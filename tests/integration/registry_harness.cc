// Starting and stopping docker-registry, the token server and the flaky proxy for tests.
#include "integration/registry_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <thread>

#include "pok8s/util/error.h"

#ifndef POK8S_TEST_SCRIPTS_DIR
#error "POK8S_TEST_SCRIPTS_DIR must name tests/integration"
#endif

namespace pok8s::testing {

namespace {

using namespace std::chrono_literals;

constexpr const char* kService = "pok8s-test-registry";
constexpr const char* kIssuer = "pok8s-test-issuer";

std::string tail_of(const util::Path& log) {
  std::ifstream in(log);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return all.size() > 4000 ? all.substr(all.size() - 4000) : all;
}

util::Path script(const char* name) {
  return util::Path(POK8S_TEST_SCRIPTS_DIR) / name;
}

}  // namespace

ChildProcess::ChildProcess(const std::vector<std::string>& argv, const util::Path& log) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  util::UniqueFd out = util::open_file(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  pid_ = ::fork();
  if (pid_ < 0) throw_errno("Failed to fork for " + argv[0], errno);
  if (pid_ == 0) {
    // Its own process group, so stop() reaches everything it starts.
    ::setpgid(0, 0);
    ::dup2(out.get(), 1);
    ::dup2(out.get(), 2);
    int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) ::dup2(null, 0);
    ::execv(args[0], args.data());
    ::dprintf(2, "exec %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::setpgid(pid_, pid_);  // also from the parent, so there is no window before the child runs
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept : pid_(std::exchange(other.pid_, -1)) {}

ChildProcess& ChildProcess::operator=(ChildProcess&& other) noexcept {
  if (this != &other) {
    stop();
    pid_ = std::exchange(other.pid_, -1);
  }
  return *this;
}

bool ChildProcess::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) {
    ::kill(-pid_, SIGKILL);  // whatever it started goes with it
    pid_ = -1;
    return false;
  }
  return true;
}

void ChildProcess::crash() {
  if (pid_ <= 0) return;
  ::kill(-pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

void ChildProcess::stop() {
  if (pid_ <= 0) return;
  ::kill(-pid_, SIGTERM);
  for (int i = 0; i < 50; ++i) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      ::kill(-pid_, SIGKILL);
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(100ms);
  }
  ::kill(-pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

int free_port() {
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

int http_status(int port, const std::string& path) {
  util::UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return -1;
  std::string request = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (::write(s.get(), request.data(), request.size()) != static_cast<ssize_t>(request.size()))
    return -1;
  char buf[64] = {};
  ssize_t n = ::read(s.get(), buf, sizeof buf - 1);
  // "HTTP/1.1 200 OK"
  if (n < 12 || std::strncmp(buf, "HTTP/1.", 7) != 0) return -1;
  return std::atoi(buf + 9);
}

std::string run(const std::vector<std::string>& argv) {
  auto dir = util::TempDir::scratch();
  util::Path out = dir.path() / "out", err = dir.path() / "err";
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) throw_errno("Failed to fork", errno);
  if (pid == 0) {
    int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(o, 1);
    ::dup2(e, 2);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::string stdout_text = util::read_file(out);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string cmd;
    for (const auto& a : argv) cmd += a + " ";
    throw std::runtime_error("command failed: " + cmd + "\n" + stdout_text + util::read_file(err));
  }
  return stdout_text;
}

int read_port_file(const util::Path& file, ChildProcess& writer, const util::Path& log) {
  for (int i = 0; i < 200; ++i) {
    struct stat st {};
    if (::stat(file.c_str(), &st) == 0) return std::stoi(util::read_file(file));
    if (!writer.running())
      throw std::runtime_error("helper exited before listening:\n" + tail_of(log));
    std::this_thread::sleep_for(50ms);
  }
  throw std::runtime_error("helper did not start listening within 10 s:\n" + tail_of(log));
}

TestRegistry::TestRegistry(Auth auth) : dir_(util::TempDir::scratch()) {
  struct stat st {};
  if (::stat(kRegistryBinary, &st) != 0)
    throw std::runtime_error(
        std::string("Failed to start the test registry: ") + kRegistryBinary +
        " is missing. Run the project's test setup script (it installs the Debian packages "
        "docker-registry, apache2-utils and skopeo) and run the tests again.");
  const util::Path& d = dir_.path();
  util::make_dirs(d / "storage");
  util::Path log = d / "registry.log";
  port_ = free_port();

  std::string auth_config;
  if (auth == Auth::kBasic) {
    std::string line = run({"htpasswd", "-Bbn", kTestUser, kTestPassword});
    util::write_file_atomic(d / "htpasswd", line);
    auth_config =
        "auth:\n  htpasswd:\n    realm: pok8s-test\n    path: " + (d / "htpasswd").string() + "\n";
  } else if (auth == Auth::kToken) {
    // A self-signed signing certificate: the registry trusts it as a root and finds it in
    // each token's x5c header.
    run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
         (d / "token.key").string(), "-out", (d / "token.crt").string(), "-days", "2", "-subj",
         "/CN=pok8s-test-token-issuer", "-addext", "basicConstraints=critical,CA:TRUE"});
    util::Path token_log = d / "token-server.log";
    token_server_ =
        ChildProcess({"/usr/bin/python3", script("token_server.py").string(), "--key",
                      (d / "token.key").string(), "--cert", (d / "token.crt").string(), "--issuer",
                      kIssuer, "--service", kService, "--user", kTestUser, "--password",
                      kTestPassword, "--port-file", (d / "token.port").string()},
                     token_log);
    int token_port = read_port_file(d / "token.port", token_server_, token_log);
    auth_config = "auth:\n  token:\n    realm: http://127.0.0.1:" + std::to_string(token_port) +
                  "/token\n    service: " + kService + "\n    issuer: " + kIssuer +
                  "\n    rootcertbundle: " + (d / "token.crt").string() + "\n";
  }
  std::string config =
      "version: 0.1\n"
      "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
      "storage:\n  filesystem:\n    rootdirectory: " +
      (d / "storage").string() +
      "\n  delete:\n    enabled: true\n"
      "http:\n  addr: 127.0.0.1:" +
      std::to_string(port_) + "\n" + auth_config;
  util::write_file_atomic(d / "config.yml", config);
  registry_ = ChildProcess({kRegistryBinary, "serve", (d / "config.yml").string()}, log);
  for (int i = 0; i < 300; ++i) {
    if (http_status(port_, "/v2/") > 0) return;
    if (!registry_.running())
      throw std::runtime_error("Failed to start the test registry: it exited:\n" + tail_of(log));
    std::this_thread::sleep_for(50ms);
  }
  throw std::runtime_error("Failed to start the test registry: /v2/ did not answer within 15 s:\n" +
                           tail_of(log));
}

std::string TestRegistry::host() const {
  return "127.0.0.1:" + std::to_string(port_);
}

std::string TestRegistry::docker(const std::string& repository_and_tag) const {
  return "docker://" + host() + "/" + repository_and_tag;
}

util::Path TestRegistry::blob_data(const oci::Digest& digest) const {
  return dir_.path() / "storage" / "docker" / "registry" / "v2" / "blobs" / digest.algorithm() /
         digest.hex().substr(0, 2) / digest.hex() / "data";
}

FlakyProxy::FlakyProxy(int upstream_port, int failures, Mode mode, const std::string& path_contains)
    : dir_(util::TempDir::scratch()) {
  util::Path log = dir_.path() / "proxy.log";
  const char* mode_name = mode == Mode::kDropConnection ? "drop"
                          : mode == Mode::kTruncateBody ? "truncate"
                                                        : "503";
  process_ = ChildProcess(
      {"/usr/bin/python3", script("flaky_proxy.py").string(), "--upstream",
       std::to_string(upstream_port), "--failures", std::to_string(failures), "--mode", mode_name,
       "--path-contains", path_contains, "--port-file", (dir_.path() / "port").string(),
       "--count-file", (dir_.path() / "count").string()},
      log);
  port_ = read_port_file(dir_.path() / "port", process_, log);
}

std::string FlakyProxy::host() const {
  return "127.0.0.1:" + std::to_string(port_);
}

int FlakyProxy::requests_seen() const {
  struct stat st {};
  util::Path count = dir_.path() / "count";
  if (::stat(count.c_str(), &st) != 0) return 0;
  return std::stoi(util::read_file(count));
}

}  // namespace pok8s::testing
