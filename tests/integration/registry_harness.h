// A real registry for integration tests: Debian's docker-registry (distribution 2.8) on
// 127.0.0.1 with a temporary storage directory, anonymous or behind basic or token auth.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "pok8s/oci/digest.h"
#include "pok8s/util/file.h"

namespace pok8s::testing {

inline constexpr const char* kRegistryBinary = "/usr/bin/docker-registry";
inline constexpr const char* kTestUser = "pok8s";
inline constexpr const char* kTestPassword = "right-password";

// A child process in its own process group, which is killed (group and all) on destruction.
class ChildProcess {
 public:
  ChildProcess() = default;
  // Starts `argv` with stdout and stderr appended to `log`.
  ChildProcess(const std::vector<std::string>& argv, const util::Path& log);
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { stop(); }

  bool running();
  pid_t pid() const { return pid_; }
  void stop();
  // SIGKILL to the group at once, like a crash, and reaps the process.
  void crash();

 private:
  pid_t pid_ = -1;
};

// A port on 127.0.0.1 that nothing listened on a moment ago.
int free_port();
// The status of GET http://127.0.0.1:port/path, or -1 if nothing answers.
int http_status(int port, const std::string& path);
// Runs a command (no shell) and returns its stdout; throws with its output on failure.
std::string run(const std::vector<std::string>& argv);
// Waits for a file that a helper writes its port into.
int read_port_file(const util::Path& file, ChildProcess& writer, const util::Path& log);

class TestRegistry {
 public:
  enum class Auth { kNone, kBasic, kToken };

  // Starts the registry and waits until /v2/ answers. Throws, naming the setup script, if
  // docker-registry is not installed: the integration tests must fail, not skip, then.
  explicit TestRegistry(Auth auth = Auth::kNone);

  int port() const { return port_; }
  // "127.0.0.1:PORT"
  std::string host() const;
  // "docker://127.0.0.1:PORT/<repository_and_tag>"
  std::string docker(const std::string& repository_and_tag) const;
  // The file where the registry keeps a blob's bytes (filesystem storage driver layout).
  util::Path blob_data(const oci::Digest& digest) const;
  const util::Path& dir() const { return dir_.path(); }

 private:
  util::TempDir dir_;
  int port_ = 0;
  ChildProcess token_server_;
  ChildProcess registry_;
};

// A proxy in front of a port that fails its first `failures` requests (only those whose path
// contains `path_contains`, when given).
class FlakyProxy {
 public:
  enum class Mode { kServiceUnavailable, kDropConnection, kTruncateBody };
  FlakyProxy(int upstream_port, int failures, Mode mode, const std::string& path_contains = "");
  int port() const { return port_; }
  std::string host() const;
  // How many requests reached the proxy so far.
  int requests_seen() const;

 private:
  util::TempDir dir_;
  int port_ = 0;
  ChildProcess process_;
};

}  // namespace pok8s::testing
