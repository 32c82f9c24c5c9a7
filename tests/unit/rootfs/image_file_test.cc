// os-release parsing follows os-release(5): quotes, escapes, comments.
#include "pok8s/rootfs/image_file.h"

#include <gtest/gtest.h>

using pok8s::rootfs::parse_os_release;

TEST(OsRelease, ParsesQuotedAndEscapedValues) {
  auto m = parse_os_release(
      "# comment\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID='12'\n"
      "NAME=\"A \\\"quoted\\\" name\"\nID_LIKE=\"rhel centos fedora\"\n\nbroken line\n");
  EXPECT_EQ(m["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
  EXPECT_EQ(m["ID"], "debian");
  EXPECT_EQ(m["VERSION_ID"], "12");
  EXPECT_EQ(m["NAME"], "A \"quoted\" name");
  EXPECT_EQ(m["ID_LIKE"], "rhel centos fedora");
  EXPECT_EQ(m.count("broken line"), 0u);
}
