// Runs queued builds: claims one from the shared queue, materializes its request in a work
// directory, builds it with `pok8s build -f` in a child process (its own process group, killed
// on cancel, timeout or when we die), turns the child's JSON progress into build events, and
// commits the artifacts to the store before marking the build succeeded. The service runs
// `jobs` of these; `pok8s worker` runs them without an HTTP server.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "pok8s/server/artifact_store.h"
#include "pok8s/server/build_request.h"
#include "pok8s/server/state.h"

namespace pok8s::server {

struct RunnerOptions {
  std::string worker_id;                 // unique per process: host:pid
  util::Path work_dir;                   // scratch for requests and outputs
  util::Path pok8s_binary;               // the pok8s executable that builds
  std::vector<std::string> global_args;  // e.g. --cache DIR
  std::vector<std::string> build_args;   // e.g. --tls-verify=false
  // The umask builds run with: the service keeps its own files private (umask 077), while what
  // a build writes into an image must not be (a package manager's files follow the umask).
  unsigned child_umask = 022;
  std::chrono::seconds timeout{2 * 3600};
  std::chrono::milliseconds poll_interval{500};
  std::chrono::seconds heartbeat_interval{2};
  std::chrono::seconds stale_after{30};  // a running build without heartbeat is requeued
  std::int64_t max_attempts = 2;
  std::function<RequestPolicy()> policy;      // read per build: key sets come and go
  std::function<void(std::string_view)> log;  // the runner's own log lines
  // Wakes the event streams of a build in this process: its id.
  std::function<void(std::string_view)> on_event;
};

class BuildRunner {
 public:
  BuildRunner(ServiceState& state, ArtifactStore& store, RunnerOptions options);
  ~BuildRunner();
  BuildRunner(const BuildRunner&) = delete;
  BuildRunner& operator=(const BuildRunner&) = delete;

  // Starts `jobs` threads that claim and run builds until stop(); every one of them also queues
  // again the builds of workers that stopped sending heartbeats (with no jobs, one thread only
  // does that).
  void start(int jobs);
  // Stops claiming; kills running builds and puts them back in the queue.
  void stop();
  // Runs one queued build if there is one; returns whether it ran one. (Tests, `worker --once`.)
  bool run_one();

 private:
  void loop(bool build);
  void run(const BuildRecord& build);
  // Records an event of `build`; its strings are scrubbed of the build's secrets first.
  void event(const BuildRecord& build, std::string_view kind, const nlohmann::json& data,
             std::span<const std::string> secrets);

  ServiceState& state_;
  ArtifactStore& store_;
  RunnerOptions options_;
  std::atomic<bool> stopping_{false};
  std::vector<std::thread> threads_;
  std::mutex stop_mutex_;
  std::mutex children_mutex_;
  std::set<int> children_;  // process groups of running builds
};

}  // namespace pok8s::server
