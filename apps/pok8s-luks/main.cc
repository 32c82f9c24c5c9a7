// pok8s-luks: the LUKS2 partitions of install.encryption. The installer runs its `format`
// (COS_OEM and COS_PERSISTENT, the key sealed to the TPM or a passphrase, a recovery key), and
// pok8s-init its `open` from the initramfs, with the key the TPM unseals under the booted UKI's
// signed PCR policy, else a passphrase or the recovery key typed on the console.
//
// libcryptsetup and tpm2-tss have no static builds in Debian, so like pok8s-sysimage it is
// dynamically linked and shipped with its library closure and its own dynamic loader, under
// /usr/lib/pok8s/luks in every converted image and at the same path in its initramfs.
#include <fcntl.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "pok8s/boot/disk_encryption.h"
#include "pok8s/boot/pe.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"

namespace {

using nlohmann::json;
using namespace pok8s;

// DEVICE=VALUE, split at the last '='.
std::pair<util::Path, std::string> volume_arg(const std::string& arg, std::string_view value) {
  auto eq = arg.rfind('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == arg.size())
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to read the volume {:?}: not DEVICE={}", arg, value));
  return {util::Path(arg.substr(0, eq)), arg.substr(eq + 1)};
}

struct LuksFormatArgs {
  std::string mode = "tpm";
  std::string tcti = "device:/dev/tpmrm0";
  std::string uki;
  bool no_pcr7 = false;
  std::string passphrase_file;
  int kdf_ms = 2000;
  bool open = false;
  std::string recovery_key_file;
  std::vector<std::string> volumes;
};

// Writes the recovery key to --recovery-key-file (0600, for the installer to show once), else
// prints {"recovery_key": …} on stdout.
int luks_format(const LuksFormatArgs& a) {
  boot::EncryptRequest r;
  r.tcti = a.tcti;
  r.pcr7 = !a.no_pcr7;
  r.passphrase_kdf_ms = a.kdf_ms;
  r.open = a.open;
  for (const auto& v : a.volumes) r.volumes.push_back(volume_arg(v, "LABEL"));
  boot::PkeyPtr key;
  if (a.mode == "passphrase") {
    r.mode = boot::EncryptionMode::kPassphrase;
    r.passphrase = util::read_file(a.passphrase_file, 4096);
    while (!r.passphrase.empty() && (r.passphrase.back() == '\n' || r.passphrase.back() == '\r'))
      r.passphrase.pop_back();
  } else {
    std::string uki = util::read_file(a.uki, boot::kMaxPeImageBytes);
    auto pem = boot::uki_section(uki, ".pcrpkey", a.uki);
    if (!pem)
      throw Error(ErrorKind::kInvalidInput,
                  fmt::format("Failed to encrypt the disk: {} has no .pcrpkey section", a.uki));
    key = boot::read_public_key_pem(*pem, a.uki);
    r.pcr_key = key.get();
  }
  std::string recovery = boot::encrypt_volumes(r);
  if (!a.recovery_key_file.empty())
    util::write_file_atomic(a.recovery_key_file, recovery + "\n", 0600);
  else
    std::printf("%s\n", json{{"recovery_key", recovery}}.dump().c_str());
  return 0;
}

struct LuksOpenArgs {
  std::string tcti = "device:/dev/tpmrm0";
  std::string pcrsig;
  std::string pcrpkey;
  std::vector<std::string> consoles;  // empty: every active console
  bool no_measure = false;
  bool check = false;
  std::vector<std::string> volumes;
};

// The consoles keys are typed on: every console the kernel writes to (a serial line and the
// screen), each asked, the first line typed on any of them taken. Opened at the first question,
// with echo off until the end, so nothing typed ahead is echoed either; typed-ahead input is
// kept.
class KeyConsoles {
 public:
  explicit KeyConsoles(std::vector<std::string> paths) : paths_(std::move(paths)) {}
  KeyConsoles(const KeyConsoles&) = delete;
  KeyConsoles& operator=(const KeyConsoles&) = delete;
  ~KeyConsoles() {
    for (auto& t : ttys_) {
      if (t.tty) ::tcsetattr(t.fd, TCSANOW, &t.saved);
      ::close(t.fd);
    }
  }

  // One line typed after `prompt`; nullopt when no console can be read.
  std::optional<std::string> ask(const std::string& prompt) {
    if (!opened_) open_all();
    for (auto& t : ttys_) (void)!::write(t.fd, prompt.data(), prompt.size());
    while (true) {
      std::vector<pollfd> fds;
      for (const auto& t : ttys_)
        if (!t.closed) fds.push_back({t.fd, POLLIN, 0});
      if (fds.empty()) return std::nullopt;
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        return std::nullopt;
      }
      for (const auto& p : fds) {
        if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
        Tty& t =
            *std::find_if(ttys_.begin(), ttys_.end(), [&](const Tty& x) { return x.fd == p.fd; });
        char buf[256];
        ssize_t n = ::read(t.fd, buf, sizeof buf);
        if (n <= 0) {
          t.closed = true;
          continue;
        }
        for (ssize_t i = 0; i < n; ++i) {
          if (buf[i] != '\n' && buf[i] != '\r') {
            if (t.line.size() < 4096) t.line += buf[i];
            continue;
          }
          std::string line = std::move(t.line);
          t.line.clear();
          for (auto& other : ttys_) (void)!::write(other.fd, "\n", 1);
          return line;
        }
      }
    }
  }

 private:
  struct Tty {
    int fd = -1;
    bool tty = false;
    bool closed = false;
    termios saved{};
    std::string line;
  };

  void open_all() {
    opened_ = true;
    for (const auto& path : paths_) {
      int fd = ::open(path.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
      if (fd < 0) continue;
      Tty t;
      t.fd = fd;
      t.tty = ::tcgetattr(fd, &t.saved) == 0;
      if (t.tty) {
        termios quiet = t.saved;
        quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
        ::tcsetattr(fd, TCSANOW, &quiet);
      }
      ttys_.push_back(std::move(t));
    }
  }

  std::vector<std::string> paths_;
  std::vector<Tty> ttys_;
  bool opened_ = false;
};

// The consoles the kernel writes to (/sys/class/tty/console/active: "tty0 ttyS0"), as /dev
// paths; /dev/console when that cannot be read.
std::vector<std::string> active_consoles() {
  std::vector<std::string> out;
  try {
    std::string active = util::read_file("/sys/class/tty/console/active", 4096);
    std::size_t at = 0;
    while (at < active.size()) {
      std::size_t end = active.find_first_of(" \n", at);
      if (end == std::string::npos) end = active.size();
      std::string name = active.substr(at, end - at);
      if (!name.empty() && name.find('/') == std::string::npos && name != "." && name != "..")
        out.push_back("/dev/" + name);
      at = end + 1;
    }
  } catch (const Error&) {
  }
  if (out.empty()) out.push_back("/dev/console");
  return out;
}

int luks_open(const LuksOpenArgs& a) {
  boot::UnlockRequest r;
  r.tcti = a.tcti;
  r.measure = !a.no_measure;
  r.check_only = a.check;
  for (const auto& v : a.volumes) r.volumes.push_back(volume_arg(v, "NAME"));
  boot::PkeyPtr key;
  if (!a.pcrsig.empty() && util::is_regular_file(a.pcrsig))
    r.pcrsig = util::read_file(a.pcrsig, 1u << 20);
  if (!a.pcrpkey.empty() && util::is_regular_file(a.pcrpkey)) {
    key = boot::read_public_key_pem(util::read_file(a.pcrpkey, 1u << 16), a.pcrpkey);
    r.pcr_key = key.get();
  }
  r.say = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  KeyConsoles consoles(a.consoles.empty() ? active_consoles() : a.consoles);
  r.ask = [&](const std::string& prompt) { return consoles.ask(prompt); };
  boot::unlock_volumes(r);
  for (const auto& [device, name] : r.volumes)
    if (a.check)
      std::fprintf(stderr, "A key opens %s\n", device.c_str());
    else
      std::fprintf(stderr, "Opened %s as /dev/mapper/%s\n", device.c_str(), name.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "pok8s-luks: format and open the LUKS2 partitions of install.encryption; run by "
      "pok8s-agent install and pok8s-init"};
  app.set_version_flag("--version", std::string("pok8s-luks ") + POK8S_VERSION);
  app.require_subcommand(1);
  LuksFormatArgs lf;
  auto* format = app.add_subcommand(
      "format", "Make volumes LUKS2 for security.encryption and print the recovery key");
  format->add_option("--mode", lf.mode, "tpm or passphrase")
      ->check(CLI::IsMember({"tpm", "passphrase"}))
      ->default_val("tpm");
  format->add_option("--tcti", lf.tcti, "The TPM, as tss2's TCTI loader names it")
      ->default_val(lf.tcti);
  format->add_option("--uki", lf.uki, "A UKI whose .pcrpkey signs the PCR policies (tpm)");
  format->add_flag("--no-pcr7", lf.no_pcr7, "Do not bind the key to PCR 7 (tpm)");
  format->add_option("--passphrase-file", lf.passphrase_file, "The passphrase (passphrase)");
  format->add_option("--kdf-ms", lf.kdf_ms, "argon2id time for the passphrase")->default_val(2000);
  format->add_flag("--open", lf.open, "Open each volume as /dev/mapper/LABEL afterwards");
  format->add_option("--recovery-key-file", lf.recovery_key_file,
                     "Write the recovery key there (0600) instead of stdout");
  format->add_option("VOLUME", lf.volumes, "DEVICE=LABEL")->required();
  LuksOpenArgs lo;
  auto* open = app.add_subcommand(
      "open", "Open LUKS2 volumes with the TPM, else a passphrase or recovery key");
  open->add_option("--tcti", lo.tcti, "The TPM, as tss2's TCTI loader names it")
      ->default_val(lo.tcti);
  open->add_option("--pcrsig", lo.pcrsig, "The booted UKI's .pcrsig");
  open->add_option("--pcrpkey", lo.pcrpkey, "The booted UKI's .pcrpkey");
  open->add_option("--console", lo.consoles,
                   "Where to ask for a passphrase (default: every console the kernel writes to)");
  open->add_flag("--no-measure", lo.no_measure, "Do not measure the boot phases into PCR 11");
  open->add_flag("--check", lo.check, "Only check that a key opens each volume");
  open->add_option("VOLUME", lo.volumes, "DEVICE=NAME")->required();
  std::vector<std::string> close_names;
  auto* close = app.add_subcommand("close", "Close /dev/mapper/NAME");
  close->add_option("NAME", close_names, "The mapper names")->required();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (format->parsed()) {
      if (lf.mode == "tpm" && lf.uki.empty())
        throw Error(ErrorKind::kInvalidInput, "Failed to encrypt the disk: --mode tpm needs --uki");
      if (lf.mode == "passphrase" && lf.passphrase_file.empty())
        throw Error(ErrorKind::kInvalidInput,
                    "Failed to encrypt the disk: --mode passphrase needs --passphrase-file");
      return luks_format(lf);
    }
    if (open->parsed()) return luks_open(lo);
    if (close->parsed()) {
      for (const auto& name : close_names) boot::luks_close(name);
      return 0;
    }
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "pok8s-luks: %s\n", e.what());
    return exit_code(e.kind());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pok8s-luks: internal error: %s\n", e.what());
    return exit_code(ErrorKind::kInternal);
  }
}
