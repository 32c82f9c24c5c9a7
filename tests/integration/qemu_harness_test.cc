// The boot-test harness itself: OVMF starts under TCG and its console reaches the test.
#include <gtest/gtest.h>

#include <filesystem>

#include "integration/qemu.h"

namespace pok8s::testing {
namespace {

TEST(QemuHarness, FindsAKernelMessageInsideAGuestLine) {
  EXPECT_EQ(kernel_message_start("pok8s-agent: install: installed to /dev/vda[   55.009503]  vda: "
                                 "vda1 vda2"),
            std::string_view("pok8s-agent: install: installed to /dev/vda").size());
  EXPECT_EQ(kernel_message_start("[    0.000000] Linux version"), 0u);
  EXPECT_EQ(kernel_message_start("POK8S-STATUS {\"a\":[1.5],\"b\":[12.123456 ]}"),
            std::string_view::npos);
  EXPECT_EQ(kernel_message_start("[12.12345]"), std::string_view::npos);
}

TEST(QemuHarness, ReadsOvmfConsoleFromSerial) {
  auto dir = util::TempDir::scratch();
  QemuOptions options;
  options.firmware = Firmware::kUefi;
  options.memory_mib = 256;
  Qemu vm(options, dir.path());
  // With nothing to boot, OVMF's boot manager reports on the serial console.
  EXPECT_TRUE(vm.wait_for("BdsDxe", boot_timeout(std::chrono::seconds(120)))) << vm.tail();
}

// OVMF starts the swtpm TPM and measures into it: swtpm keeps its state in the directory, which
// outlives the machine for the next boot.
TEST(QemuHarness, GivesTheMachineATpmThatKeepsItsState) {
  auto dir = util::TempDir::scratch();
  QemuOptions options;
  options.firmware = Firmware::kUefi;
  options.memory_mib = 256;
  options.tpm_state = dir.path() / "tpm";
  {
    Qemu vm(options, dir.path());
    EXPECT_TRUE(vm.wait_for("BdsDxe", boot_timeout(std::chrono::seconds(120)))) << vm.tail();
  }
  auto state = dir.path() / "tpm" / "tpm2-00.permall";
  ASSERT_TRUE(std::filesystem::exists(state));
  EXPECT_GT(std::filesystem::file_size(state), 0u);
}

}  // namespace
}  // namespace pok8s::testing
