// The sandbox: fork, unshare mount and pid namespaces, fork again to be pid 1 there, mount the
// minimal API filesystems inside the tree, chroot and exec. Between fork and exec only system
// calls run (everything is prepared before), since the parent may have threads. In a user
// namespace (pok8s convert without root) sysfs and device nodes cannot be made: the host's are
// bound instead.
#include "pok8s/convert/sandbox.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>

#include "pok8s/util/error.h"

namespace pok8s::convert {
namespace {

constexpr std::size_t kTailLines = 25;

// Writes "step: error" to fd 2 (the output pipe) and exits: the only way out of the child.
[[noreturn]] void child_fail(const char* step) {
  const char* err = strerror(errno);
  const char prefix[] = "pok8s sandbox: ";
  (void)!::write(2, prefix, sizeof prefix - 1);
  (void)!::write(2, step, strlen(step));
  (void)!::write(2, ": ", 2);
  (void)!::write(2, err, strlen(err));
  (void)!::write(2, "\n", 1);
  _exit(125);
}

struct DevNode {
  const char* name;
  unsigned major, minor;
};
constexpr DevNode kDevNodes[] = {{"null", 1, 3},   {"zero", 1, 5},    {"full", 1, 7},
                                 {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};

// Everything the child needs, as C strings made before fork.
struct Plan {
  std::string root, proc, sys, dev, dev_pts, dev_shm, tmp, run;
  std::vector<std::string> dev_nodes;
  std::vector<std::string> host_dev_nodes;  // bound over dev_nodes in a user namespace
  std::string resolv_target;                // where in the tree the host's resolv.conf goes
  bool resolv_bind = false;  // bind mount over an existing file (else write into /run)
  std::string resolv_host;
  std::string resolv_content;         // for the /run case
  std::vector<std::string> run_dirs;  // directories to create under the tmpfs /run
  std::string resolv_created;         // a mount point made for the run, removed after
  std::vector<std::string> argv;
  std::vector<std::string> env;
};

void mount_or_fail(const char* src, const char* target, const char* type, unsigned long flags,
                   const char* data, const char* step) {
  if (::mount(src, target, type, flags, data) != 0) child_fail(step);
}

[[noreturn]] void run_child(const Plan& plan) {
  // Nothing mounted here reaches the host.
  mount_or_fail(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr, "making mounts private");
  mount_or_fail("proc", plan.proc.c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr,
                "mounting /proc");
  constexpr unsigned long kSysFlags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
  if (::mount("sysfs", plan.sys.c_str(), "sysfs", kSysFlags, nullptr) != 0) {
    // In a user namespace sysfs cannot be mounted (it belongs to the host's network
    // namespace): the host's, bound and made read-only, is what the tools see.
    if (errno != EPERM) child_fail("mounting /sys");
    mount_or_fail("/sys", plan.sys.c_str(), nullptr, MS_BIND | MS_REC, nullptr,
                  "binding the host's /sys");
    (void)::mount(nullptr, plan.sys.c_str(), nullptr, MS_REMOUNT | MS_BIND | kSysFlags, nullptr);
  }
  mount_or_fail("tmpfs", plan.dev.c_str(), "tmpfs", MS_NOSUID, "mode=0755,size=16m",
                "mounting /dev");
  for (std::size_t i = 0; i < plan.dev_nodes.size(); ++i) {
    const DevNode& node = kDevNodes[i];
    const char* path = plan.dev_nodes[i].c_str();
    if (::mknod(path, S_IFCHR | 0666, makedev(node.major, node.minor)) == 0) {
      ::chmod(path, 0666);
      continue;
    }
    // Only the initial namespace may make device nodes: bind the host's over an empty file.
    if (errno != EPERM) child_fail("creating a device node");
    int fd = ::open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) child_fail("creating a device node's mount point");
    ::close(fd);
    mount_or_fail(plan.host_dev_nodes[i].c_str(), path, nullptr, MS_BIND, nullptr,
                  "binding a host device node");
  }
  if (::mkdir(plan.dev_pts.c_str(), 0755) != 0) child_fail("creating /dev/pts");
  mount_or_fail("devpts", plan.dev_pts.c_str(), "devpts", MS_NOSUID | MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=620", "mounting /dev/pts");
  if (::mkdir(plan.dev_shm.c_str(), 01777) != 0) child_fail("creating /dev/shm");
  mount_or_fail("tmpfs", plan.dev_shm.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777",
                "mounting /dev/shm");
  mount_or_fail("tmpfs", plan.tmp.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777",
                "mounting /tmp");
  mount_or_fail("tmpfs", plan.run.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755",
                "mounting /run");
  for (const auto& d : plan.run_dirs) ::mkdir(d.c_str(), 0755);
  if (!plan.resolv_target.empty()) {
    if (plan.resolv_bind) {
      mount_or_fail(plan.resolv_host.c_str(), plan.resolv_target.c_str(), nullptr, MS_BIND, nullptr,
                    "binding resolv.conf");
    } else {
      int fd = ::open(plan.resolv_target.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0644);
      if (fd < 0) child_fail("writing resolv.conf");
      (void)!::write(fd, plan.resolv_content.data(), plan.resolv_content.size());
      ::close(fd);
    }
  }
  if (::chroot(plan.root.c_str()) != 0) child_fail("chroot");
  if (::chdir("/") != 0) child_fail("chdir");
  std::vector<char*> argv, envp;
  for (const auto& a : plan.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : plan.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  ::execvpe(argv[0], argv.data(), envp.data());
  child_fail(plan.argv[0].c_str());
}

Plan make_plan(const util::Path& root, const std::vector<std::string>& argv,
               const SandboxOptions& options) {
  Plan plan;
  plan.root = root.string();
  for (auto [member, name] : {std::pair{&plan.proc, "proc"},
                              {&plan.sys, "sys"},
                              {&plan.dev, "dev"},
                              {&plan.tmp, "tmp"},
                              {&plan.run, "run"}}) {
    *member = (root / name).string();
    struct stat st {};
    // A missing mount point is created; one that is not a directory is the image's problem.
    if (::lstat(member->c_str(), &st) != 0) {
      if (::mkdir(member->c_str(), 0755) != 0)
        throw_errno("Failed to prepare the sandbox: create " + *member, errno);
    } else if (!S_ISDIR(st.st_mode)) {
      throw Error(
          ErrorKind::kInvalidInput,
          fmt::format("Failed to prepare the sandbox: /{} in the image is not a directory", name));
    }
  }
  plan.dev_pts = plan.dev + "/pts";
  plan.dev_shm = plan.dev + "/shm";
  for (const auto& node : kDevNodes) {
    plan.dev_nodes.push_back(plan.dev + "/" + node.name);
    plan.host_dev_nodes.push_back(std::string("/dev/") + node.name);
  }

  // DNS: bind the host's file over a regular one; follow a symlink only into /run, which is
  // our tmpfs (systemd-resolved's stub link); else leave name resolution to the image.
  auto resolv = root / "etc/resolv.conf";
  struct stat st {};
  if (::access(options.resolv_conf.c_str(), R_OK) == 0) {
    if (::lstat(resolv.c_str(), &st) != 0 && errno == ENOENT) {
      util::UniqueFd made(::open(resolv.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
      if (made.valid()) plan.resolv_created = resolv.string();
    }
    if (::lstat(resolv.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      plan.resolv_bind = true;
      plan.resolv_target = resolv.string();
      plan.resolv_host = options.resolv_conf.string();
    } else if (::lstat(resolv.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
      char target[4096];
      ssize_t n = ::readlink(resolv.c_str(), target, sizeof target - 1);
      std::string t(target, n > 0 ? static_cast<std::size_t>(n) : 0);
      if (t.starts_with("../run/")) t = t.substr(2);
      if (t.starts_with("/run/") && t.find("..") == std::string::npos) {
        plan.resolv_content = util::read_file(options.resolv_conf, 1 << 20);
        plan.resolv_target = (root / t.substr(1)).string();
        for (std::size_t p = 5; (p = t.find('/', p)) != std::string::npos; ++p)
          plan.run_dirs.push_back((root / t.substr(1, p - 1)).string());
      }
    }
  }
  plan.argv = argv;
  plan.env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
              "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "TERM=dumb"};
  for (const auto& [k, v] : options.env) plan.env.push_back(k + "=" + v);
  return plan;
}

}  // namespace

SandboxResult run_in_root(const util::Path& root, const std::vector<std::string>& argv,
                          const SandboxOptions& options) {
  if (argv.empty()) throw Error(ErrorKind::kInternal, "run_in_root: no command");
  if (::geteuid() != 0)
    throw Error(ErrorKind::kUnsupported,
                fmt::format("Failed to run {} in the image: installing packages into an image "
                            "needs root, or the user namespace pok8s convert makes without it",
                            argv[0]));
  Plan plan = make_plan(root, argv, options);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw_errno("Failed to prepare the sandbox: pipe", errno);
  util::UniqueFd read_end(pipe_fds[0]);
  util::UniqueFd write_end(pipe_fds[1]);

  pid_t outer = ::fork();
  if (outer < 0) throw_errno("Failed to start the sandbox", errno);
  if (outer == 0) {
    ::dup2(write_end.get(), 1);
    ::dup2(write_end.get(), 2);
    int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null >= 0) ::dup2(null, 0);
    if (::unshare(CLONE_NEWNS | CLONE_NEWPID) != 0) child_fail("unshare");
    pid_t inner = ::fork();
    if (inner < 0) child_fail("fork");
    if (inner == 0) run_child(plan);
    int status = 0;
    while (::waitpid(inner, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
    _exit(128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0));
  }
  write_end = util::UniqueFd();

  std::deque<std::string> tail;
  std::string partial;
  auto emit = [&](std::string line) {
    if (options.output) options.output(line);
    tail.push_back(std::move(line));
    if (tail.size() > kTailLines) tail.pop_front();
  };
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(read_end.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    partial.append(buf, static_cast<std::size_t>(n));
    for (std::size_t nl; (nl = partial.find('\n')) != std::string::npos;) {
      emit(partial.substr(0, nl));
      partial.erase(0, nl + 1);
    }
  }
  if (!partial.empty()) emit(partial);
  int status = 0;
  while (::waitpid(outer, &status, 0) < 0 && errno == EINTR) {
  }
  SandboxResult result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  for (const auto& line : tail) result.tail += line + "\n";
  if (!plan.resolv_created.empty()) ::unlink(plan.resolv_created.c_str());
  return result;
}

void run_in_root_checked(const util::Path& root, const std::vector<std::string>& argv,
                         const SandboxOptions& options, std::string_view what) {
  SandboxResult r = run_in_root(root, argv, options);
  if (r.exit_code == 0) return;
  // The last non-empty line is usually the reason (apt's "E: Unable to locate package x").
  std::string last;
  std::size_t end = r.tail.find_last_not_of('\n');
  if (end != std::string::npos) {
    std::size_t start = r.tail.rfind('\n', end);
    last = r.tail.substr(start == std::string::npos ? 0 : start + 1,
                         end - (start == std::string::npos ? 0 : start + 1) + 1);
  }
  throw Error(ErrorKind::kIo, fmt::format("Failed to {}: {} exited with {}{}{}", what, argv[0],
                                          r.exit_code, last.empty() ? "" : ": ", last));
}

}  // namespace pok8s::convert
