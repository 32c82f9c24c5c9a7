// The fixtures the boot tests share, made once per run before any of them needs them: the Debian
// base converted as v0.1.0 and as v2 (kept beside the mmdebstrap fixture, see
// convert_debian_fixture). ctest runs this first (FIXTURES_SETUP), so the tests that read the
// conversions never wait on a lock while a core stands idle; a test run alone still gets it.
#include <gtest/gtest.h>

#include "e2e/pok8s_cli.h"
#include "pok8s/util/file.h"

using namespace pok8s;
using namespace pok8s::testing;

TEST(Fixtures, TheDebianBaseIsConvertedAsV010AndV2) {
  util::TempDir work = util::TempDir::scratch("/var/tmp");
  for (const char* version : {"v0.1.0", "v2"}) {
    std::string error;
    EXPECT_EQ(convert_debian_fixture(work.path(), work.path() / "layout", version, error),
              converted_tag(version))
        << error;
  }
}
