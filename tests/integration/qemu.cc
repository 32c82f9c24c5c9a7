// Starts QEMU with the serial console on pipes and collects its output on a thread.
#include "integration/qemu.h"

#include <fmt/format.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>

namespace pok8s::testing {
namespace {

// Where QEMU finds swtpm's control socket.
util::Path swtpm_socket(const util::Path& work_dir) {
  return work_dir / "swtpm.sock";
}

std::vector<std::string> qemu_argv(const QemuOptions& options, const util::Path& work_dir) {
  const char* accel = std::getenv("POK8S_QEMU_ACCEL");
  std::vector<std::string> argv = {"qemu-system-x86_64",
                                   "-accel",
                                   accel && *accel ? accel : "tcg",
                                   "-m",
                                   std::to_string(options.memory_mib),
                                   "-display",
                                   "none",
                                   "-vga",
                                   "none",
                                   "-monitor",
                                   "none",
                                   "-serial",
                                   "stdio",
                                   "-no-reboot",
                                   "-nic",
                                   "none"};
  if (options.firmware != Firmware::kBios) {
    auto vars = work_dir / "OVMF_VARS.fd";
    std::filesystem::copy_file(options.uefi_vars.value_or(kOvmfVars), vars,
                               std::filesystem::copy_options::overwrite_existing);
    bool secure = options.firmware == Firmware::kUefiSecureBoot;
    // The Secure Boot build keeps its variables in SMM, so only SMM code may write them.
    std::vector<std::string> args = {"-machine", secure ? "q35,smm=on" : "q35"};
    if (secure)
      args.insert(args.end(), {"-global", "driver=cfi.pflash01,property=secure,value=on"});
    args.insert(args.end(), {"-drive",
                             std::string("if=pflash,format=raw,unit=0,readonly=on,file=") +
                                 (secure ? kOvmfSecureBootCode : kOvmfCode),
                             "-drive", "if=pflash,format=raw,unit=1,file=" + vars.string()});
    argv.insert(argv.end(), args.begin(), args.end());
  }
  if (options.cdrom) {
    argv.push_back("-drive");
    argv.push_back("file=" + options.cdrom->string() + ",media=cdrom,readonly=on");
  }
  for (const auto& disk : options.disks) {
    argv.push_back("-drive");
    std::string ext = disk.extension().string();
    std::string format = ext == ".qcow2" ? "qcow2" : ext == ".vhd" ? "vpc" : "raw";
    argv.push_back("file=" + disk.string() + ",format=" + format + ",if=virtio");
  }
  if (options.kernel) {
    argv.push_back("-kernel");
    argv.push_back(options.kernel->string());
    if (options.initrd) {
      argv.push_back("-initrd");
      argv.push_back(options.initrd->string());
    }
    argv.push_back("-append");
    argv.push_back(options.append);
  }
  if (options.cpus > 1) argv.insert(argv.end(), {"-smp", std::to_string(options.cpus)});
  if (options.tftp_dir) {
    if (options.firmware == Firmware::kBios) {
      // SeaBIOS's serial console (etc/sercon-port, a little-endian integer): iPXE prints there.
      util::write_file_atomic(work_dir / "sercon-port", std::string("\xf8\x03", 2));
      argv.insert(argv.end(),
                  {"-fw_cfg", "name=etc/sercon-port,file=" + (work_dir / "sercon-port").string()});
    }
    argv.insert(argv.end(), {"-boot", "n"});
  }
  if (!options.forward_ports.empty() || options.tftp_dir) {
    std::string nic = "user,model=virtio-net-pci,restrict=on";
    if (options.tftp_dir)
      nic += fmt::format(",tftp={},bootfile={}", options.tftp_dir->string(), options.boot_file);
    // cmd: starts socat for each connection (a chardev target would carry only one).
    for (const auto& [guest, host] : options.forward_ports)
      nic += fmt::format(",guestfwd=tcp:10.0.2.100:{}-cmd:socat - TCP:127.0.0.1:{}", guest, host);
    argv.insert(argv.end(), {"-nic", nic});
  }
  if (options.tpm_state)
    argv.insert(argv.end(),
                {"-chardev", "socket,id=chrtpm,path=" + swtpm_socket(work_dir).string(), "-tpmdev",
                 "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"});
  argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());
  return argv;
}

}  // namespace

std::size_t kernel_message_start(std::string_view line) {
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  for (std::size_t at = line.find('['); at != std::string_view::npos; at = line.find('[', at + 1)) {
    std::size_t i = at + 1;
    while (i < line.size() && line[i] == ' ') ++i;
    std::size_t whole = i;
    while (i < line.size() && digit(line[i])) ++i;
    if (i == whole || i >= line.size() || line[i] != '.') continue;
    std::size_t fraction = ++i;
    while (i < line.size() && digit(line[i])) ++i;
    if (i - fraction == 6 && i < line.size() && line[i] == ']') return at;
  }
  return std::string_view::npos;
}

std::chrono::seconds boot_timeout(std::chrono::seconds base) {
  double scale = 1.0;
  if (const char* s = std::getenv("POK8S_BOOT_TIMEOUT_SCALE")) scale = std::atof(s);
  if (scale <= 0) scale = 1.0;
  return std::chrono::seconds(static_cast<long>(static_cast<double>(base.count()) * scale));
}

Qemu::Qemu(const QemuOptions& options, const util::Path& work_dir)
    : log_path_(work_dir / "serial.log") {
  if (options.tpm_state) {
    util::make_dirs(*options.tpm_state);
    util::Path sock = swtpm_socket(work_dir);
    std::filesystem::remove(sock);
    std::vector<std::string> swtpm = {"swtpm",
                                      "socket",
                                      "--tpm2",
                                      "--tpmstate",
                                      "dir=" + options.tpm_state->string(),
                                      "--ctrl",
                                      "type=unixio,path=" + sock.string(),
                                      "--log",
                                      "file=" + (work_dir / "swtpm.log").string(),
                                      "--terminate"};
    swtpm_pid_ = fork();
    if (swtpm_pid_ < 0) throw std::runtime_error("Failed to start swtpm: fork");
    if (swtpm_pid_ == 0) {
      std::vector<char*> args;
      for (auto& a : swtpm) args.push_back(a.data());
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    // QEMU connects at start: the socket must be there first.
    for (int i = 0; i < 200 && !std::filesystem::exists(sock); ++i) {
      if (waitpid(swtpm_pid_, nullptr, WNOHANG) == swtpm_pid_) {
        swtpm_pid_ = -1;
        throw std::runtime_error("Failed to start swtpm: it exited (is swtpm installed?)");
      }
      usleep(50 * 1000);
    }
    if (!std::filesystem::exists(sock))
      throw std::runtime_error("Failed to start swtpm: no socket " + sock.string());
  }
  auto argv = qemu_argv(options, work_dir);
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0)
    throw std::runtime_error("Failed to start QEMU: pipe");
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("Failed to start QEMU: fork");
  if (pid_ == 0) {
    setpgid(0, 0);
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(out[1], 2);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  stdin_ = util::UniqueFd(in[1]);
  stdout_ = util::UniqueFd(out[0]);
  std::string cmd;
  for (const auto& a : argv) cmd += a + " ";
  {
    std::lock_guard lock(mutex_);
    output_ = "";
  }
  util::write_file_atomic(work_dir / "qemu.cmdline", cmd + "\n");
  live_log_ =
      util::UniqueFd(::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  reader_ = std::thread([this] { read_serial(); });
}

Qemu::~Qemu() {
  if (pid_ > 0) {
    kill(-pid_, SIGKILL);
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (reader_.joinable()) reader_.join();
  if (swtpm_pid_ > 0) {
    kill(swtpm_pid_, SIGTERM);
    waitpid(swtpm_pid_, nullptr, 0);
  }
  try {
    util::write_file_atomic(log_path_, serial());
  } catch (...) {
  }
}

void Qemu::read_serial() {
  char buf[4096];
  for (;;) {
    ssize_t n = read(stdout_.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    std::lock_guard lock(mutex_);
    if (n <= 0) {
      exited_ = true;
      changed_.notify_all();
      return;
    }
    output_.append(buf, static_cast<std::size_t>(n));
    if (live_log_.valid() && ::write(live_log_.get(), buf, static_cast<std::size_t>(n)) < 0)
      live_log_.reset();
    changed_.notify_all();
  }
}

bool Qemu::wait_for(std::string_view marker, std::chrono::seconds timeout) {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] {
    return output_.find(marker) != std::string::npos || exited_;
  }) && output_.find(marker) != std::string::npos;
}

std::optional<std::string> Qemu::wait_for_line(std::string_view marker,
                                               std::chrono::seconds timeout) {
  std::unique_lock lock(mutex_);
  auto complete = [&] {
    auto at = output_.find(marker);
    return at != std::string::npos && output_.find('\n', at) != std::string::npos;
  };
  if (!changed_.wait_for(lock, timeout, [&] { return complete() || exited_; }) || !complete())
    return std::nullopt;
  auto at = output_.find(marker);
  std::string line = output_.substr(at, output_.find('\n', at) - at);
  // The kernel prints to the same console: a message ("[   55.009503]  vda: vda1 vda2") may
  // land in the middle of the guest's line, before its newline. It is cut off.
  if (auto kernel = kernel_message_start(line); kernel != std::string::npos) line.resize(kernel);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

bool Qemu::wait_exit(std::chrono::seconds timeout) {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return exited_; });
}

void Qemu::send(std::string_view text) {
  util::write_all(stdin_.get(), text, "the QEMU serial console");
}

std::string Qemu::serial() const {
  std::lock_guard lock(mutex_);
  return output_;
}

std::string Qemu::tail(std::size_t lines) const {
  std::string all = serial();
  std::size_t pos = all.size();
  for (std::size_t i = 0; i <= lines && pos > 0; ++i) {
    pos = all.rfind('\n', pos - 1);
    if (pos == std::string::npos) return all;
  }
  return all.substr(pos);
}

}  // namespace pok8s::testing
