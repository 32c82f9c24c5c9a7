// The TPM 2.0 client against a real (software) TPM: swtpm on 127.0.0.1. What the factory writes
// into a UKI's .pcrsig (boot/pcr_policy) is what a TPM computes when systemd-stub and the boot
// phases are measured into PCR 11, and the PolicyPCR digests signed there are what the TPM's own
// trial session gives.
#include "pok8s/boot/tpm2.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <thread>

#include "pok8s/boot/pcr_policy.h"
#include "pok8s/util/error.h"
#include "pok8s/util/file.h"
#include "pok8s/util/process.h"

using namespace pok8s;

namespace {

// A TCP port on 127.0.0.1 nobody listens on now, or 0.
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

bool accepts(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

// swtpm serving a fresh TPM on 127.0.0.1: commands on port(), control on port() + 1, as tss2's
// swtpm TCTI expects.
class Swtpm {
 public:
  Swtpm() : dir_(util::TempDir::scratch()) {
    port_ = free_port();
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
    for (int i = 0; i < 200 && !accepts(port_); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ~Swtpm() {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  std::string tcti() const { return fmt::format("swtpm:host=127.0.0.1,port={}", port_); }
  bool up() const { return port_ != 0 && accepts(port_); }

 private:
  util::TempDir dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

class Tpm2Test : public ::testing::Test {
 protected:
  void SetUp() override {
    if (util::run_process({"sh", "-c", "command -v swtpm"}).status != 0)
      GTEST_SKIP() << "no swtpm (scripts/install-deps.sh test installs it)";
    swtpm_ = std::make_unique<Swtpm>();
    ASSERT_TRUE(swtpm_->up());
  }
  std::unique_ptr<Swtpm> swtpm_;
};

TEST_F(Tpm2Test, PcrElevenAfterTheStubAndEachPhaseIsWhatThePcrsigSays) {
  // A UKI's measured sections, in the stub's order.
  std::map<std::string, std::string_view> sections = {
      {".linux", "kernel bytes"},
      {".osrel", "ID=pok8s\n"},
      {".cmdline", "console=ttyS0 pok8s.mode=active"},
      {".initrd", "initramfs bytes"},
      {".pcrpkey", "-----BEGIN PUBLIC KEY-----"}};
  auto expected = boot::expected_pcr11(sections);
  boot::Tpm2 tpm(swtpm_->tcti());
  EXPECT_EQ(tpm.read_sha256(11), std::string(32, '\0'));
  for (const char* name : {".linux", ".osrel", ".cmdline", ".initrd", ".pcrpkey"}) {
    tpm.extend_sha256(11, std::string_view(name, std::strlen(name) + 1));
    tpm.extend_sha256(11, sections.at(name));
  }
  std::size_t phase = 0;
  for (const char* step : {"enter-initrd", "leave-initrd", "sysinit", "ready"}) {
    tpm.extend_sha256(11, step);
    std::string pcr = tpm.read_sha256(11);
    ASSERT_LT(phase, expected.size());
    EXPECT_EQ(pcr, expected[phase].pcr11) << expected[phase].phase;
    // The policy digest the .pcrsig signs for this phase is the TPM's own.
    EXPECT_EQ(tpm.trial_policy_pcr(11, pcr), boot::pcr11_policy_digest(pcr))
        << expected[phase].phase;
    ++phase;
  }
}

TEST_F(Tpm2Test, ABadPcrOrAnAbsentTpmIsNamed) {
  boot::Tpm2 tpm(swtpm_->tcti());
  EXPECT_THROW(tpm.extend_sha256(24, "x"), Error);
  try {
    boot::Tpm2 none(fmt::format("swtpm:host=127.0.0.1,port={}", free_port()));
    none.read_sha256(11);
    FAIL() << "an absent TPM answered";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the TPM at swtpm:host=127.0.0.1"), std::string::npos)
        << e.what();
  }
}

}  // namespace
