// Subordinate id ranges are read as shadow's tools write them, and a process knows whether it
// runs in a user namespace of its own.
#include "pok8s/util/userns.h"

#include <gtest/gtest.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace pok8s::util;

namespace {

TEST(SubidRange, FindsTheUserByNameOrUid) {
  std::string text =
      "# comment\n"
      "alice:100000:65536\n"
      "1001:165536:65536\n"
      "bob:231072:1000\n";
  auto a = find_subid_range(text, "alice", 1000);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->start, 100000u);
  EXPECT_EQ(a->count, 65536u);
  auto b = find_subid_range(text, "carol", 1001);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->start, 165536u);
  auto c = find_subid_range(text, "bob", 1002);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->count, 1000u);
  EXPECT_FALSE(find_subid_range(text, "dave", 1003));
  EXPECT_FALSE(find_subid_range("", "alice", 1000));
}

TEST(SubidRange, SkipsMalformedAndOverflowingLines) {
  std::string text =
      "alice\n"
      "alice:x:65536\n"
      "alice:100000:\n"
      "alice:100000:0\n"
      "alice:4294967295:2\n"
      "alice:-1:5\n"
      "alice:200000:65536:extra\n"
      "alice:300000:65536";  // the last line without a newline is still read
  auto r = find_subid_range(text, "alice", 1000);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->start, 300000u);
}

TEST(SubidRange, DoesNotMatchAPrefixOfTheName) {
  EXPECT_FALSE(find_subid_range("alice2:100000:65536\n", "alice", 1000));
  EXPECT_FALSE(find_subid_range("10000:100000:65536\n", "x", 1000));
}

TEST(UserNamespace, TheInitialNamespaceIsNotOne) {
  EXPECT_FALSE(in_user_namespace());
}

TEST(UserNamespace, AChildInANewNamespaceKnowsIt) {
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::unshare(CLONE_NEWUSER) != 0) _exit(2);
    _exit(in_user_namespace() ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "2: unshare failed, 1: not detected";
}

}  // namespace
