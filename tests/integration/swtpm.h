// A software TPM 2.0 for tests: swtpm on 127.0.0.1, commands on one port and control on the
// next, as tss2's swtpm TCTI expects. Its state stays in a directory, so reboot() is the same TPM
// powered up again (its PCRs reset by TPM2_Startup(CLEAR)).
#pragma once

#include <sys/types.h>

#include <string>

#include "pok8s/util/file.h"

namespace pok8s::testing {

class Swtpm {
 public:
  Swtpm();
  ~Swtpm() { stop(); }
  Swtpm(const Swtpm&) = delete;
  Swtpm& operator=(const Swtpm&) = delete;

  void reboot();
  std::string tcti() const;  // "swtpm:host=127.0.0.1,port=N"
  bool up() const;

 private:
  void start();
  void stop();

  util::TempDir dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// A TCTI for 127.0.0.1 where no TPM listens.
std::string absent_tpm_tcti();

}  // namespace pok8s::testing
