// The build runner. Builds run in a child `pok8s build` rather than on a thread of the service:
// a conversion runs package managers for minutes, and only a process group can be cancelled,
// timed out or cleaned up after a crash without leaving anything behind.
#include "pok8s/server/runner.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>

#include "pok8s/config/secrets.h"
#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::server {
namespace fs = std::filesystem;
namespace {

constexpr std::size_t kMaxLine = 16u << 10;
constexpr std::size_t kMaxResult = 1u << 20;
constexpr auto kKillGrace = std::chrono::seconds(10);

// The child `pok8s build`, in a process group of its own so that everything it starts (package
// managers in a sandbox, mksquashfs) goes with it.
class BuildProcess {
 public:
  BuildProcess(const std::vector<std::string>& argv, unsigned child_umask) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
      throw_errno("Failed to start the build: pipe", errno);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) throw_errno("Failed to start the build: fork", errno);
    if (pid_ == 0) {
      ::setpgid(0, 0);
      // When the service dies (even by SIGKILL) its builds die with it; a restart requeues them.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::umask(static_cast<mode_t>(child_umask));
      int devnull = ::open("/dev/null", O_RDONLY);
      ::dup2(devnull, 0);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      ::execv(args[0], args.data());
      std::fprintf(stderr, "pok8s: Failed to run %s: %s\n", args[0], std::strerror(errno));
      ::_exit(127);
    }
    ::setpgid(pid_, pid_);
    ::close(out[1]);
    ::close(err[1]);
    out_.reset(out[0]);
    err_.reset(err[0]);
  }
  ~BuildProcess() {
    if (pid_ > 0 && status_ < 0) {
      kill(SIGKILL);
      wait();
    }
  }
  BuildProcess(const BuildProcess&) = delete;
  BuildProcess& operator=(const BuildProcess&) = delete;

  int pgid() const { return pid_; }
  void kill(int sig) const { ::kill(-pid_, sig); }

  // Reads what is available for up to `timeout`, handing complete stderr lines to `on_line`.
  // Returns false once both pipes are closed.
  bool pump(std::chrono::milliseconds timeout,
            const std::function<void(std::string_view)>& on_line) {
    std::array<pollfd, 2> fds{
        {{out_.valid() ? out_.get() : -1, POLLIN, 0}, {err_.valid() ? err_.get() : -1, POLLIN, 0}}};
    if (!out_.valid() && !err_.valid()) return false;
    int n = ::poll(fds.data(), fds.size(), static_cast<int>(timeout.count()));
    if (n < 0 && errno != EINTR) throw_errno("Failed to follow the build: poll", errno);
    char buf[16384];
    if (fds[0].revents != 0) {
      ssize_t got = ::read(out_.get(), buf, sizeof buf);
      if (got <= 0)
        out_.reset();
      else if (stdout_.size() < kMaxResult)
        stdout_.append(buf, static_cast<std::size_t>(got));
    }
    if (fds[1].revents != 0) {
      ssize_t got = ::read(err_.get(), buf, sizeof buf);
      if (got <= 0) {
        err_.reset();
        if (!line_.empty()) on_line(std::exchange(line_, {}));
      } else {
        for (ssize_t i = 0; i < got; ++i) {
          if (buf[i] == '\n' || buf[i] == '\r') {
            if (!line_.empty()) on_line(std::exchange(line_, {}));
          } else if (line_.size() < kMaxLine) {
            line_ += buf[i];
          }
        }
      }
    }
    return out_.valid() || err_.valid();
  }

  int wait() {
    if (status_ >= 0) return status_;
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return status_;
  }
  // Whether the child has exited (reaps it if so).
  bool exited() {
    if (status_ >= 0) return true;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) != pid_) return false;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return true;
  }
  const std::string& result() const { return stdout_; }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  util::UniqueFd out_, err_;
  std::string stdout_, line_;
};

// Rough shares of a build's time, so the progress bar moves steadily: fetching the base, the
// conversion (package installs), the squashfs, then GRUB and the ISO.
struct ProgressModel {
  std::int64_t permille = 0;
  std::string step = "starting";
  int convert_steps = 0;

  void on_step(std::string_view text) {
    std::int64_t p = permille;
    if (text.starts_with("Fetching"))
      p = 20;
    else if (text.starts_with("Building spec"))
      p = 50;
    else if (text.starts_with("Writing the squashfs"))
      p = 550;
    else if (text.starts_with("Preparing GRUB"))
      p = 900;
    else if (text.starts_with("Writing "))
      p = 920;
    else if (permille < 550)
      p = std::min<std::int64_t>(500, 100 + 25 * ++convert_steps);
    step = std::string(text.substr(0, 200));
    permille = std::max(permille, p);
  }
  void on_bytes(std::string_view what, std::uint64_t done, std::uint64_t total) {
    if (total == 0) return;
    double f = static_cast<double>(done) / static_cast<double>(total);
    std::int64_t p = permille;
    if (what == "rootfs")
      p = 550 + static_cast<std::int64_t>(350 * f);
    else if (what == "iso")
      p = 920 + static_cast<std::int64_t>(70 * f);
    permille = std::max(permille, p);
  }
};

// Keeps a worker's claim on a build alive from a thread of its own for the whole of the run:
// writing the request, the child's output, and the artifacts' upload to the store afterwards may
// each take longer than the heartbeat timeout, and a silent claim is taken over by another worker.
class Heartbeat {
 public:
  Heartbeat(ServiceState& state, std::string id, std::string worker,
            std::chrono::milliseconds every)
      : thread_([this, &state, id = std::move(id), worker = std::move(worker), every] {
          std::unique_lock lock(mutex_);
          while (!wake_.wait_for(lock, every, [this] { return stopped_; })) {
            lock.unlock();
            try {
              auto beat = state.heartbeat(id, worker);
              if (!beat)
                lost_ = true;
              else if (*beat)
                cancel_requested_ = true;
            } catch (const std::exception&) {
              // The database is unreachable for a moment; the next beat tries again.
            }
            lock.lock();
          }
        }) {}
  ~Heartbeat() {
    {
      std::lock_guard lock(mutex_);
      stopped_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  // The build is no longer this worker's (its claim was taken back).
  bool lost() const { return lost_; }
  bool cancel_requested() const { return cancel_requested_; }

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopped_ = false;
  std::atomic<bool> lost_{false};
  std::atomic<bool> cancel_requested_{false};
  std::thread thread_;  // last: it starts once the members above exist
};

}  // namespace

BuildRunner::BuildRunner(ServiceState& state, ArtifactStore& store, RunnerOptions options)
    : state_(state), store_(store), options_(std::move(options)) {
  util::make_dirs(options_.work_dir);
}

BuildRunner::~BuildRunner() {
  stop();
}

void BuildRunner::start(int jobs) {
  for (int i = 0; i < jobs; ++i) threads_.emplace_back([this] { loop(true); });
  // A service that leaves the builds to workers still takes back those of dead workers.
  if (jobs == 0) threads_.emplace_back([this] { loop(false); });
}

void BuildRunner::stop() {
  // Called from a signal-handling thread and from destructors: one of them joins.
  std::lock_guard stop_lock(stop_mutex_);
  stopping_ = true;
  {
    std::lock_guard lock(children_mutex_);
    for (int pgid : children_) ::kill(-pgid, SIGTERM);
  }
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

void BuildRunner::loop(bool build) {
  auto last_reap = std::chrono::steady_clock::time_point{};
  while (!stopping_) {
    try {
      // Any runner takes back builds whose worker went silent (crashed, host lost).
      if (std::chrono::steady_clock::now() - last_reap > std::chrono::seconds(5)) {
        last_reap = std::chrono::steady_clock::now();
        auto stale =
            now_ms() -
            std::chrono::duration_cast<std::chrono::milliseconds>(options_.stale_after).count();
        for (const auto& id : state_.recover_stale(stale, options_.max_attempts,
                                                   "its worker stopped sending heartbeats")) {
          if (options_.log)
            options_.log(fmt::format("Took back build {}: its worker went silent", id));
          if (options_.on_event) options_.on_event(id);
        }
      }
      if (build && run_one()) continue;
    } catch (const std::exception& e) {
      if (options_.log) options_.log(fmt::format("Build queue: {}", e.what()));
    }
    std::this_thread::sleep_for(options_.poll_interval);
  }
}

bool BuildRunner::run_one() {
  if (stopping_) return false;
  auto build = state_.claim_build(options_.worker_id);
  if (!build) return false;
  if (options_.on_event) options_.on_event(build->id);
  if (options_.log)
    options_.log(fmt::format("Building {} (spec {}, attempt {})", build->id, build->spec_id,
                             build->attempts));
  try {
    run(*build);
  } catch (const std::exception& e) {
    state_.finish_build(build->id, options_.worker_id, BuildState::kFailed, e.what(), "");
  }
  if (options_.on_event) options_.on_event(build->id);
  return true;
}

void BuildRunner::event(const BuildRecord& build, std::string_view kind, const nlohmann::json& data,
                        std::span<const std::string> secrets) {
  nlohmann::json scrubbed = data;
  for (auto& value : scrubbed)
    if (value.is_string()) value = config::scrub(value.get<std::string>(), secrets);
  state_.append_event(build.id, kind,
                      scrubbed.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  if (options_.on_event) options_.on_event(build.id);
}

void BuildRunner::run(const BuildRecord& build) {
  const std::string& worker = options_.worker_id;
  Heartbeat heartbeat(state_, build.id, worker, options_.heartbeat_interval);
  util::Path work = options_.work_dir / build.id;
  util::remove_tree(work);
  util::make_dirs(work / "request");
  struct Cleanup {
    util::Path p;
    ~Cleanup() {
      try {
        util::remove_tree(p);
      } catch (...) {
      }
    }
  } cleanup{work};

  // The request again, on this host: the same checks as when it was accepted, the base pinned.
  BuildRequest request{build.spec, {}};
  nlohmann::json files = nlohmann::json::parse(build.files);
  for (const auto& [name, text] : files.items())
    request.files.emplace(name, text.get<std::string>());
  // What the build prints may quote its cloud-config; no password or token reaches the log.
  const std::vector<std::string> secrets = config::secret_values(request.spec, request.files);
  // Nor does where this host keeps the build: its lines name paths inside the work directory.
  const std::string work_prefix = work.string() + "/";
  auto relative = [&](std::string text) {
    for (auto at = text.find(work_prefix); at != std::string::npos; at = text.find(work_prefix, at))
      text.erase(at, work_prefix.size());
    return text;
  };
  auto event = [&](const BuildRecord& b, std::string_view kind, const nlohmann::json& data) {
    nlohmann::json shown = data;
    for (auto& value : shown)
      if (value.is_string()) value = relative(value.get<std::string>());
    this->event(b, kind, shown, secrets);
  };
  config::BuildSpec spec = materialize_request(
      request, work / "request", options_.policy ? options_.policy() : RequestPolicy{});
  spec.base = build.base_pinned;
  util::write_file_atomic(work / "spec.yaml", config::to_yaml(spec), 0600);

  std::vector<std::string> argv = {options_.pok8s_binary.string()};
  argv.insert(argv.end(), options_.global_args.begin(), options_.global_args.end());
  argv.insert(argv.end(), {"--json", "build", "-f", (work / "spec.yaml").string(), "-o",
                           (work / "out").string()});
  argv.insert(argv.end(), options_.build_args.begin(), options_.build_args.end());

  BuildProcess child(argv, options_.child_umask);
  {
    std::lock_guard lock(children_mutex_);
    children_.insert(child.pgid());
  }
  struct Forget {
    BuildRunner* r;
    int pgid;
    ~Forget() {
      std::lock_guard lock(r->children_mutex_);
      r->children_.erase(pgid);
    }
  } forget{this, child.pgid()};

  ProgressModel model;
  std::string last_error;
  auto last_progress_write = std::chrono::steady_clock::time_point{};
  std::int64_t written_permille = -1;
  auto publish_progress = [&](bool force) {
    auto now = std::chrono::steady_clock::now();
    if (model.permille == written_permille) return;
    if (!force && now - last_progress_write < std::chrono::seconds(1)) return;
    last_progress_write = now;
    written_permille = model.permille;
    state_.set_progress(build.id, model.permille, model.step);
    event(build, "progress",
          {{"progress", static_cast<double>(model.permille) / 1000.0}, {"step", model.step}});
  };
  auto on_line = [&](std::string_view line) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.contains("event")) {
      std::string kind = j.value("event", "");
      if (kind == "step") {
        model.on_step(j.value("what", ""));
        event(build, "step", {{"text", j.value("what", "")}});
        publish_progress(true);
      } else if (kind == "output") {
        event(build, "log", {{"line", j.value("line", "")}});
      } else if (kind == "progress") {
        model.on_bytes(j.value("step", ""), j.value("done", std::uint64_t{0}),
                       j.value("total", std::uint64_t{0}));
        publish_progress(false);
      } else {
        event(build, "log", {{"line", fmt::format("{} {}", kind, j.value("what", ""))}});
      }
      return;
    }
    if (line.starts_with("pok8s: ")) last_error = relative(std::string(line.substr(7)));
    event(build, "log", {{"line", line}});
  };

  auto started = std::chrono::steady_clock::now();
  std::string outcome;  // why we stopped it, if we did
  BuildState stop_state = BuildState::kFailed;
  std::optional<std::chrono::steady_clock::time_point> killed_at;
  while (child.pump(std::chrono::milliseconds(500), on_line) || !child.exited()) {
    auto now = std::chrono::steady_clock::now();
    if (killed_at && now - *killed_at > kKillGrace) child.kill(SIGKILL);
    if (!outcome.empty()) continue;
    if (stopping_) {
      outcome = "the service stopped";
    } else if (now - started > options_.timeout) {
      outcome = fmt::format("timed out after {} s (the service's --build-timeout)",
                            options_.timeout.count());
    } else if (heartbeat.lost()) {
      outcome = "another worker took the build over";
    } else if (heartbeat.cancel_requested()) {
      outcome = "canceled";
      stop_state = BuildState::kCanceled;
    }
    if (!outcome.empty()) {
      event(build, "log", {{"line", "Stopping the build: " + outcome}});
      child.kill(SIGTERM);
      killed_at = now;
    }
  }
  int status = child.wait();

  if (outcome == "another worker took the build over") return;
  if (outcome == "the service stopped") {
    state_.release_build(build.id, worker, "the service stopped while it was running");
    return;
  }
  if (!outcome.empty()) {
    state_.finish_build(build.id, worker, stop_state, outcome, "");
    return;
  }
  if (status != 0) {
    state_.finish_build(build.id, worker, BuildState::kFailed,
                        last_error.empty() ? fmt::format("the build exited with status {}", status)
                                           : config::scrub(last_error, secrets),
                        "");
    return;
  }

  auto result = nlohmann::json::parse(child.result(), nullptr, false);
  if (!result.is_object() || !result.contains("artifacts"))
    throw Error(ErrorKind::kInternal, "Failed to read the build's result: not the JSON expected");
  std::vector<StoredArtifact> artifacts;
  for (const auto& a : result["artifacts"])
    artifacts.push_back({a.at("name").get<std::string>(), a.at("size").get<std::uint64_t>(),
                         a.at("sha256").get<std::string>()});
  util::Path manifest = result.value("manifest", "");
  if (!manifest.empty()) {
    artifacts.push_back(
        {manifest.filename().string(), fs::file_size(manifest), util::file_sha256(manifest)});
  }
  for (const auto& a : artifacts)
    if (a.name.empty() || a.name.find('/') != std::string::npos || a.name.front() == '.')
      throw Error(ErrorKind::kInternal,
                  fmt::format("Failed to store the build's artifacts: bad name {:?}", a.name));
  if (std::string id = result.value("specId", ""); id != build.spec_id)
    event(build, "log",
          {{"line", fmt::format("warning: the build computed spec id {}, the "
                                "service {}",
                                id, build.spec_id)}});
  store_.put(build.id, work / "out", artifacts);
  nlohmann::json list = nlohmann::json::array();
  for (const auto& a : artifacts)
    list.push_back({{"name", a.name}, {"size", a.size}, {"sha256", a.sha256}});
  model.permille = 1000;
  model.step = "done";
  publish_progress(true);
  state_.finish_build(build.id, worker, BuildState::kSucceeded, "", list.dump());
}

}  // namespace pok8s::server
