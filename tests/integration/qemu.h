// A real virtual machine for boot tests: qemu-system-x86_64 under TCG (KVM hangs guests on
// these machines; POK8S_QEMU_ACCEL=kvm opts in), with SeaBIOS or OVMF, the serial console on a
// pipe that tests read markers from, killed and reaped on destruction.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "pok8s/util/file.h"

namespace pok8s::testing {

// kUefiSecureBoot: OVMF built with Secure Boot (and SMM); its empty variables are setup mode.
enum class Firmware { kBios, kUefi, kUefiSecureBoot };

struct QemuOptions {
  Firmware firmware = Firmware::kBios;
  // UEFI variables to start from (copied into the work directory, where the machine changes
  // them: <work_dir>/OVMF_VARS.fd); default OVMF's empty ones.
  std::optional<util::Path> uefi_vars;
  std::optional<util::Path> cdrom;   // attached as a CD-ROM
  std::vector<util::Path> disks;     // disk images (virtio), in order; .qcow2 and .vhd by
                                     // their format, anything else raw
  std::optional<util::Path> kernel;  // direct kernel boot
  std::optional<util::Path> initrd;
  std::string append;  // the kernel command line with `kernel`
  unsigned memory_mib = 1536;
  unsigned cpus = 1;
  // With ports: a user-mode NIC, restricted (no host, no outside), whose only ways out are
  // 10.0.2.100:<guest port> forwarded to 127.0.0.1:<host port> (a test registry, a web server)
  // through socat.
  std::map<int, int> forward_ports;  // guest port -> host port
  // Network boot: the user-mode NIC's TFTP server serves `tftp_dir`, its DHCP names
  // `boot_file`, and the firmware boots from the network (iPXE, the NIC's option ROM). With
  // SeaBIOS, its serial console carries what the option ROM prints.
  std::optional<util::Path> tftp_dir;
  std::string boot_file;
  // A TPM 2.0 (swtpm, on a TIS interface) whose state lives in this directory, made if missing:
  // the same directory across boots is the same TPM, as a machine's own would be.
  std::optional<util::Path> tpm_state;
  std::vector<std::string> extra_args;
};

class Qemu {
 public:
  // Starts the machine; `work_dir` receives the firmware variables and serial.log.
  Qemu(const QemuOptions& options, const util::Path& work_dir);
  Qemu(const Qemu&) = delete;
  Qemu& operator=(const Qemu&) = delete;
  ~Qemu();

  // Waits until `marker` has appeared on the serial console, the machine has exited, or
  // `timeout` has passed; true if the marker appeared.
  bool wait_for(std::string_view marker, std::chrono::seconds timeout);
  // Waits for a whole line containing `marker` and returns it from the marker on (without the
  // line end), or nullopt like wait_for.
  std::optional<std::string> wait_for_line(std::string_view marker, std::chrono::seconds timeout);
  // Waits for the machine to power off by itself; true if it did within `timeout`.
  bool wait_exit(std::chrono::seconds timeout);
  // Types `text` on the serial console.
  void send(std::string_view text);
  // Everything the serial console printed so far.
  std::string serial() const;
  // The last `lines` lines of the serial console, for failure messages.
  std::string tail(std::size_t lines = 40) const;

 private:
  void read_serial();

  pid_t pid_ = -1;
  pid_t swtpm_pid_ = -1;  // with tpm_state; it ends with QEMU (--terminate) or is killed
  util::UniqueFd stdin_;
  util::UniqueFd stdout_;
  util::Path log_path_;
  util::UniqueFd live_log_;  // serial.log as it is written, for watching a slow boot
  std::thread reader_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::string output_;
  bool exited_ = false;
};

// The directory of OVMF's firmware (Debian's ovmf package).
inline constexpr const char* kOvmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd";
inline constexpr const char* kOvmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd";
inline constexpr const char* kOvmfSecureBootCode = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";

// Where a kernel log message ("[", spaces, seconds, ".", six digits, "]") starts in `line`, or
// npos. The kernel prints to the same console as the guest's programs, so one of its messages
// can land in the middle of their line; wait_for_line cuts it off.
std::size_t kernel_message_start(std::string_view line);

// How long a boot may take under TCG before a test gives up: generous, and scaled by
// POK8S_BOOT_TIMEOUT_SCALE on slow machines. Never an assertion about speed.
std::chrono::seconds boot_timeout(std::chrono::seconds base);

}  // namespace pok8s::testing
