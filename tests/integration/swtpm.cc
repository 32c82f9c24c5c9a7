#include "integration/swtpm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <thread>
#include <vector>

namespace pok8s::testing {

namespace {

sockaddr_in loopback(int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  return a;
}

// A TCP port on 127.0.0.1 nobody listens on now, or 0.
int free_port() {
  util::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(0);
  socklen_t len = sizeof a;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
    return 0;
  return ntohs(a.sin_port);
}

// Whether `port` can be bound (connect = false) or is listened on (connect = true).
bool try_port(int port, bool connect) {
  util::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(port);
  auto* addr = reinterpret_cast<sockaddr*>(&a);
  return (connect ? ::connect(fd.get(), addr, sizeof a) : ::bind(fd.get(), addr, sizeof a)) == 0;
}

bool port_free(int port) {
  return try_port(port, false);
}

bool accepts(int port) {
  return try_port(port, true);
}

}  // namespace

Swtpm::Swtpm() : dir_(util::TempDir::scratch()) {
  start();
}

void Swtpm::reboot() {
  stop();
  start();
}

std::string Swtpm::tcti() const {
  return fmt::format("swtpm:host=127.0.0.1,port={}", port_);
}

bool Swtpm::up() const {
  return port_ != 0 && accepts(port_);
}

// Both ports are chosen free, but another process may take them before swtpm binds: swtpm
// then exits, and another pair is tried.
void Swtpm::start() {
  for (int attempt = 0; attempt < 10; ++attempt) {
    port_ = free_port();
    if (port_ == 0 || !port_free(port_ + 1)) continue;
    std::vector<std::string> argv = {"swtpm",
                                     "socket",
                                     "--tpm2",
                                     "--tpmstate",
                                     "dir=" + dir_.path().string(),
                                     "--server",
                                     fmt::format("type=tcp,port={},bindaddr=127.0.0.1", port_),
                                     "--ctrl",
                                     fmt::format("type=tcp,port={},bindaddr=127.0.0.1", port_ + 1),
                                     "--flags",
                                     "not-need-init,startup-clear"};
    pid_ = ::fork();
    if (pid_ == 0) {
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      ::_exit(127);
    }
    for (int i = 0; i < 200; ++i) {
      if (accepts(port_)) return;
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;  // reaped: it could not bind
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    stop();
  }
  port_ = 0;
}

void Swtpm::stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

std::string absent_tpm_tcti() {
  return fmt::format("swtpm:host=127.0.0.1,port={}", free_port());
}

}  // namespace pok8s::testing
