// `pok8s serve` and `pok8s worker`: flags in, a Service or a BuildRunner out, stopped cleanly by
// SIGINT or SIGTERM.
#include "serve_command.h"

#include "common.h"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>
#include "pok8s/server/artifact_store.h"
#include "pok8s/server/runner.h"
#include "pok8s/server/secret_box.h"
#include "pok8s/server/service.h"
#include "pok8s/server/state.h"
#include "pok8s/util/error.h"
#include "pok8s/util/install_paths.h"

namespace pok8s::cli {
namespace {

struct ServeFlags {
  std::string listen = "127.0.0.1:8080";
  std::string data;
  std::string db;
  std::string store;
  int jobs = 1;
  std::string timeout = "2h";
  std::string heartbeat_timeout = "30s";
  std::string max_body = "8388608";
  std::vector<std::string> templates;
  bool tls_verify = true;
  bool allow_local_sources = false;
  bool login_token = false;
  bool once = false;  // worker: run one build (if any) and exit
  std::string worker_id;
  std::vector<std::string> allow_network;  // CIDRs fetched from despite the public-only policy
  std::string secret_key;                  // the key that seals builds' secrets at rest
  std::size_t max_connections = 4096;
  std::size_t max_connections_per_client = 256;
  std::string head_timeout = "15s";
  std::string body_timeout = "60s";
};

// The service is a public door: it fetches only from public addresses, in its own process and
// in the builds it starts, except from the networks the administrator allows. Sets the policy
// for this process and returns the global arguments that give a child `pok8s` the same.
std::vector<std::string> set_public_network_policy(const GlobalOptions& g, const ServeFlags& f) {
  std::vector<std::string> args = {"--public-network-only"};
  for (const auto& cidr : set_network_policy(g, true, f.allow_network))
    args.insert(args.end(), {"--allow-network", cidr});
  return args;
}

util::Path default_data_dir() {
  if (const char* x = std::getenv("XDG_DATA_HOME"); x && *x) return util::Path(x) / "pok8s";
  const char* home = std::getenv("HOME");
  return util::Path(home && *home ? home : "/root") / ".local/share/pok8s";
}

void log_line(std::string_view line) {
  std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  std::fprintf(stderr, "%s %.*s\n", stamp, static_cast<int>(line.size()), line.data());
}

util::Path self_exe() {
  return std::filesystem::read_symlink("/proc/self/exe");
}

// "90s", "30m", "2h", or minutes alone; `flag` names the option in the message.
std::chrono::seconds parse_duration(const std::string& text,
                                    std::string_view flag = "--build-timeout") {
  long n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  std::string_view unit(p, static_cast<std::size_t>(text.data() + text.size() - p));
  long scale = unit.empty() || unit == "m" ? 60 : unit == "s" ? 1 : unit == "h" ? 3600 : 0;
  if (ec != std::errc() || n <= 0 || scale == 0 || n > 7L * 24 * 3600)
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read {} {:?}: give e.g. 90s, 30m or 2h", flag, text));
  return std::chrono::seconds(n * scale);
}

// Blocks SIGINT and SIGTERM in every thread and calls `stop` from a thread that waits for them.
void stop_on_signal(std::function<void()> stop) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread t([set, stop = std::move(stop)] {
    int sig = 0;
    sigwait(&set, &sig);
    log_line(fmt::format("Stopping ({})", sig == SIGINT ? "SIGINT" : "SIGTERM"));
    stop();
  });
  t.detach();
}

int run_serve(const GlobalOptions& g, const ServeFlags& f) {
  server::ServiceOptions o;
  o.build_global_args = set_public_network_policy(g, f);
  o.listen = f.listen;
  o.data_dir = f.data.empty() ? default_data_dir() : util::Path(f.data);
  o.database = f.db;
  o.store = f.store;
  o.cache_dir = g.cache_dir.empty() ? util::default_cache_dir() : util::Path(g.cache_dir);
  o.web_dir = util::web_dir();
  o.openapi_file = util::data_dir() / "openapi.json";
  o.pok8s_binary = self_exe();
  o.version = POK8S_VERSION;
  o.jobs = f.jobs;
  o.build_timeout = parse_duration(f.timeout);
  o.heartbeat_timeout = parse_duration(f.heartbeat_timeout, "--heartbeat-timeout");
  o.max_body = static_cast<std::size_t>(parse_size(f.max_body, "--max-body"));
  o.secret_key_file = f.secret_key;
  o.http_limits.max_connections = f.max_connections;
  o.http_limits.max_connections_per_client = f.max_connections_per_client;
  o.http_limits.head_timeout = parse_duration(f.head_timeout, "--head-timeout");
  o.http_limits.body_timeout = parse_duration(f.body_timeout, "--body-timeout");
  for (const auto& t : f.templates) o.templates.push_back(server::parse_template(t));
  if (!o.templates.empty())
    for (const auto& d : server::default_templates()) {
      bool taken = false;
      for (const auto& t : o.templates) taken = taken || t.name == d.name;
      if (!taken) o.templates.push_back(d);
    }
  o.tls_verify = f.tls_verify;
  o.allow_local_sources = f.allow_local_sources;
  o.new_login_token = f.login_token;
  o.log = log_line;

  server::Service service(o);
  int port = service.bind();
  stop_on_signal([&service] { service.stop(); });
  std::string host = f.listen.substr(0, f.listen.rfind(':'));
  if (const auto& token = service.login_token()) {
    // The only time this secret exists outside its hash: a file only this user may read, never
    // the terminal or a log that others collect.
    util::Path file = o.data_dir / "login-token";
    util::write_file_atomic(file, *token + "\n", 0600);
    std::printf("pok8s: the one-time login token is in %s (log in as admin at http://%s:%d/)\n",
                file.c_str(), host.c_str(), port);
    std::fflush(stdout);
  }
  log_line(fmt::format("pok8s {} serving http://{}:{}/ (data {}, {} build{} at once)",
                       POK8S_VERSION, host, port, o.data_dir.string(), o.jobs,
                       o.jobs == 1 ? "" : "s"));
  if (g.json) {
    std::printf("%s\n", nlohmann::json{{"event", "listening"}, {"port", port}}.dump().c_str());
    std::fflush(stdout);
  }
  service.run();
  log_line("Stopped");
  return 0;
}

int run_worker(const GlobalOptions& g, const ServeFlags& f) {
  if (!f.db.starts_with("postgres://") && !f.db.starts_with("postgresql://"))
    throw Error(
        ErrorKind::kInvalidInput,
        "Failed to start the worker: --db must be a postgres:// URL shared with pok8s serve");
  if (f.store.empty())
    throw Error(
        ErrorKind::kInvalidInput,
        "Failed to start the worker: --store must name the artifact store pok8s serve reads "
        "(dir:/shared/path)");
  std::vector<std::string> policy_args = set_public_network_policy(g, f);
  util::Path data = f.data.empty() ? default_data_dir() : util::Path(f.data);
  if (f.secret_key.empty())
    throw Error(ErrorKind::kInvalidInput,
                "Failed to start the worker: --secret-key must name the key file of the pok8s "
                "serve it works for (its --secret-key, or DATA/secret.key): builds' secrets are "
                "sealed with it");
  server::ServiceState state(server::open_database(f.db, data),
                             server::SecretBox::load(f.secret_key));
  auto store = server::open_artifact_store(f.store, data, f.tls_verify);
  server::RunnerOptions r;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  r.worker_id = f.worker_id.empty() ? fmt::format("{}:{}:worker", host, ::getpid()) : f.worker_id;
  r.work_dir = data / "work";
  r.pok8s_binary = self_exe();
  r.global_args = {
      "--cache",
      (g.cache_dir.empty() ? util::default_cache_dir() : util::Path(g.cache_dir)).string()};
  r.global_args.insert(r.global_args.end(), policy_args.begin(), policy_args.end());
  if (!f.tls_verify) r.build_args.push_back("--tls-verify=false");
  r.timeout = parse_duration(f.timeout);
  r.stale_after = parse_duration(f.heartbeat_timeout, "--heartbeat-timeout");
  r.policy = [] { return server::RequestPolicy{}; };
  r.log = log_line;
  server::BuildRunner runner(state, *store, r);
  log_line(fmt::format("pok8s {} worker {} taking builds from the queue (store {})", POK8S_VERSION,
                       r.worker_id, store->describe()));
  if (f.once) {
    runner.run_one();
    return 0;
  }
  std::atomic<bool> stop{false};
  stop_on_signal([&] { stop = true; });
  runner.start(f.jobs);
  while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  runner.stop();
  log_line("Stopped");
  return 0;
}

}  // namespace

void add_serve_commands(CLI::App& app, GlobalOptions& g, std::function<int()>& run) {
  auto f = std::make_shared<ServeFlags>();
  CLI::App* serve = app.add_subcommand(
      "serve", "Serve the web builder and the HTTP API, and run the builds they queue");
  serve->add_option("--listen", f->listen, "HOST:PORT to listen on (port 0 picks a free one)")
      ->default_str("127.0.0.1:8080");
  serve->add_option("--data", f->data, "State directory: database, artifacts, key sets")
      ->default_str("$XDG_DATA_HOME/pok8s");
  serve->add_option("--db", f->db,
                    "Database: empty for SQLite in --data, or postgres://… shared with workers");
  serve->add_option("--store", f->store,
                    "Artifact store (dir:/PATH, shared with workers); default --data/artifacts");
  serve
      ->add_option("--jobs", f->jobs, "Builds this process runs at once (0: leave them to workers)")
      ->default_val(1)
      ->check(CLI::Range(0, 64));
  serve->add_option("--build-timeout", f->timeout, "How long a build may run (90s, 30m, 2h)")
      ->default_str("2h");
  serve
      ->add_option("--heartbeat-timeout", f->heartbeat_timeout,
                   "A running build whose worker is silent this long is queued again")
      ->default_str("30s");
  serve->add_option("--max-body", f->max_body, "Largest request body (bytes, or with K or M)")
      ->default_str("8M");
  serve->add_option("--template", f->templates,
                    "A base image template NAME=[TITLE|]SOURCE for the web builder (repeatable)");
  serve
      ->add_option("--tls-verify", f->tls_verify,
                   "Require HTTPS with a verified certificate from registries (false allows HTTP)")
      ->default_val(true);
  serve->add_flag("--allow-local-sources", f->allow_local_sources,
                  "Let specs name bases on this host's disk (oci:, oci-archive:, dir:, …)");
  serve->add_flag("--login-token", f->login_token, "Print a new one-time admin login token");
  serve
      ->add_option("--secret-key", f->secret_key,
                   "The key file that seals builds' passwords, tokens and keys in the database "
                   "(made on first start; workers need the same file)")
      ->default_str("DATA/secret.key");
  serve->add_option("--max-connections", f->max_connections, "Open connections at most")
      ->default_val(4096)
      ->check(CLI::Range(16, 1 << 20));
  serve
      ->add_option("--max-connections-per-client", f->max_connections_per_client,
                   "Open connections one client address (an IPv6 /64) may hold")
      ->default_val(256)
      ->check(CLI::Range(2, 1 << 20));
  serve
      ->add_option("--head-timeout", f->head_timeout,
                   "Time for a request's head, idle keep-alive included (e.g. 15s)")
      ->default_str("15s");
  serve->add_option("--body-timeout", f->body_timeout, "Time for a request's whole body (60s)")
      ->default_str("60s");
  serve->add_option("--allow-network", f->allow_network,
                    "A network (CIDR) to fetch from although it is not public, e.g. a registry "
                    "mirror on 10.0.0.0/8 (repeatable; everything else non-public is refused)");
  serve->callback([&run, &g, f] { run = [&g, f] { return run_serve(g, *f); }; });

  CLI::App* worker = app.add_subcommand(
      "worker", "Run builds from a pok8s serve queue in PostgreSQL, storing artifacts for it");
  worker->add_option("--db", f->db, "The queue: postgres://… (the same as pok8s serve --db)")
      ->required();
  worker->add_option("--store", f->store, "The artifact store the servers read (dir:/PATH)")
      ->required();
  worker->add_option("--data", f->data, "Scratch directory for builds")
      ->default_str("$XDG_DATA_HOME/pok8s");
  worker->add_option("--jobs", f->jobs, "Builds at once")->default_val(1)->check(CLI::Range(1, 64));
  worker->add_option("--build-timeout", f->timeout, "How long a build may run (90s, 30m, 2h)")
      ->default_str("2h");
  worker
      ->add_option("--heartbeat-timeout", f->heartbeat_timeout,
                   "A running build whose worker is silent this long is queued again")
      ->default_str("30s");
  worker->add_option("--tls-verify", f->tls_verify, "Require HTTPS from registries")
      ->default_val(true);
  worker->add_option("--id", f->worker_id,
                     "The worker's name in the queue (default HOST:PID:worker)");
  worker->add_flag("--once", f->once, "Run one queued build, if any, and exit");
  worker
      ->add_option("--secret-key", f->secret_key,
                   "The key file of the pok8s serve this worker works for (DATA/secret.key)")
      ->required();
  worker->add_option("--allow-network", f->allow_network,
                     "A network (CIDR) builds fetch from although it is not public (repeatable; "
                     "everything else non-public is refused)");
  worker->callback([&run, &g, f] { run = [&g, f] { return run_worker(g, *f); }; });
}

}  // namespace pok8s::cli
