#include "pok8s/node/kernel_cmdline.h"

#include <gtest/gtest.h>

#include "pok8s/node/dm_verity.h"
#include "pok8s/util/error.h"

namespace pok8s::node {
namespace {

TEST(KernelCmdline, SplitsOnWhitespaceAndKeepsQuotedValues) {
  auto params = parse_kernel_cmdline("  console=ttyS0 quiet  foo=\"a b\"\tro ");
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params[0].key, "console");
  EXPECT_EQ(params[0].value, "ttyS0");
  EXPECT_EQ(params[1].key, "quiet");
  EXPECT_FALSE(params[1].value);
  EXPECT_EQ(params[2].value, "a b");
  EXPECT_EQ(params[3].key, "ro");
}

TEST(KernelCmdline, EmptyQuotesAreNoParameter) {
  auto params = parse_kernel_cmdline("a \"\" \"\"\"\" b");
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[1].key, "b");
}

TEST(KernelCmdline, ValueMayContainEquals) {
  auto params = parse_kernel_cmdline("root=LABEL=COS_LIVE");
  ASSERT_EQ(params.size(), 1u);
  EXPECT_EQ(params[0].key, "root");
  EXPECT_EQ(params[0].value, "LABEL=COS_LIVE");
}

TEST(BootOptions, DefaultsToLiveFromCosLive) {
  auto options = parse_boot_options("console=ttyS0 quiet");
  EXPECT_EQ(options.mode, BootMode::kLive);
  EXPECT_EQ(options.media_label, "COS_LIVE");
  EXPECT_EQ(options.image_path, "/rootfs.squashfs");
  EXPECT_FALSE(options.shell);
}

TEST(BootOptions, ReadsPok8sParameters) {
  auto options = parse_boot_options(
      "pok8s.mode=recovery pok8s.media=MYISO pok8s.image=img/root.sqfs pok8s.debug "
      "pok8s.shell=1 pok8s.wait=5 pok8s.modules=nvme,e1000e");
  EXPECT_EQ(options.mode, BootMode::kRecovery);
  EXPECT_EQ(options.media_label, "MYISO");
  EXPECT_EQ(options.image_path, "/img/root.sqfs");
  EXPECT_TRUE(options.debug);
  EXPECT_TRUE(options.shell);
  EXPECT_EQ(options.wait_seconds, 5u);
  EXPECT_EQ(options.modules, (std::vector<std::string>{"nvme", "e1000e"}));
}

TEST(BootOptions, IgnoresEverythingAfterDoubleDash) {
  auto options = parse_boot_options("pok8s.shell -- pok8s.mode=bogus");
  EXPECT_TRUE(options.shell);
}

TEST(BootOptions, RefusesUnknownPok8sKeyNamingIt) {
  try {
    parse_boot_options("quiet pok8s.shel=1");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("pok8s.shel"), std::string::npos);
  }
}

TEST(BootOptions, RefusesBadModeAndWait) {
  EXPECT_THROW(parse_boot_options("pok8s.mode=usb"), Error);
  EXPECT_THROW(parse_boot_options("pok8s.wait=forever"), Error);
  EXPECT_THROW(parse_boot_options("pok8s.wait=99999"), Error);
  EXPECT_THROW(parse_boot_options("pok8s.media="), Error);
}

TEST(BootOptions, ReadsTheVerityParametersAndTheirTableLine) {
  const std::string root(64, 'a');
  BootOptions o = parse_boot_options("pok8s.verity=" + root + ",0a0b,257,1052672");
  ASSERT_TRUE(o.verity);
  EXPECT_EQ(o.verity->root_hash, root);
  EXPECT_EQ(o.verity->salt, "0a0b");
  EXPECT_EQ(o.verity->data_blocks, 257u);
  EXPECT_EQ(o.verity->hash_offset, 1052672u);
  EXPECT_EQ(verity_table("7:0", *o.verity), "1 7:0 7:0 4096 4096 257 257 sha256 " + root + " 0a0b");
  EXPECT_FALSE(parse_boot_options("quiet").verity);
}

TEST(BootOptions, RefusesVerityParametersThatDoNotAddUp) {
  const std::string root(64, 'a');
  for (const std::string& bad :
       {root + ",0a0b,257", root + ",0a0b,257,4096", root.substr(1) + ",0a0b,1,4096",
        root + ",0A0B,1,4096", root + ",,1,4096", root + ",0a0b,0,0", root + ",0a0b,x,4096",
        root + ",0a0b,1,4096,extra", std::string(64, 'g') + ",0a0b,1,4096"}) {
    try {
      parse_boot_options("pok8s.verity=" + bad);
      ADD_FAILURE() << bad;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()),
                "Failed to read the kernel command line: pok8s.verity=" + bad +
                    " is not <root hash>,<salt>,<data blocks>,<hash offset>");
    }
  }
}

}  // namespace
}  // namespace pok8s::node
