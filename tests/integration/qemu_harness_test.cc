// The boot-test harness itself: OVMF starts under TCG and its console reaches the test.
#include <gtest/gtest.h>

#include "integration/qemu.h"

namespace pok8s::testing {
namespace {

TEST(QemuHarness, ReadsOvmfConsoleFromSerial) {
  auto dir = util::TempDir::scratch();
  QemuOptions options;
  options.firmware = Firmware::kUefi;
  options.memory_mib = 256;
  Qemu vm(options, dir.path());
  // With nothing to boot, OVMF's boot manager reports on the serial console.
  EXPECT_TRUE(vm.wait_for("BdsDxe", boot_timeout(std::chrono::seconds(120)))) << vm.tail();
}

}  // namespace
}  // namespace pok8s::testing
