// Rate limits for logins and token creation: bursts, refills, independent keys, a bounded table
// that an attacker cannot use to forget their own bucket. Time is always injected.
#include "pok8s/server/rate_limit.h"

#include <gtest/gtest.h>

#include <atomic>
#include <limits>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "pok8s/util/error.h"

using namespace pok8s;
using namespace pok8s::server;
using namespace std::chrono_literals;

namespace {

const RateLimiter::Clock::time_point kStart = RateLimiter::Clock::time_point{} + 1000h;

// How many of `tries` tries at `now` are allowed.
int allowed(RateLimiter& limiter, std::string_view key, RateLimiter::Clock::time_point now,
            int tries = 100) {
  int n = 0;
  for (int i = 0; i < tries; ++i) n += limiter.allow(key, now) ? 1 : 0;
  return n;
}

}  // namespace

TEST(RateLimiter, AllowsABurstThenRefuses) {
  RateLimiter limiter(1.0 / 12, 5);  // 5 a minute
  EXPECT_EQ(allowed(limiter, "user:alice", kStart), 5);
  EXPECT_FALSE(limiter.allow("user:alice", kStart + 1s));
}

TEST(RateLimiter, RefillsOverTime) {
  RateLimiter limiter(0.5, 2);
  EXPECT_EQ(allowed(limiter, "k", kStart), 2);
  EXPECT_EQ(allowed(limiter, "k", kStart + 1s), 0);
  EXPECT_EQ(allowed(limiter, "k", kStart + 2s), 1);
  EXPECT_EQ(allowed(limiter, "k", kStart + 3s), 0);
  // Never more than the burst, however long the key was idle.
  EXPECT_EQ(allowed(limiter, "k", kStart + 100h), 2);
}

TEST(RateLimiter, RefusalsDoNotDelayTheRefill) {
  RateLimiter limiter(1, 1);
  EXPECT_TRUE(limiter.allow("k", kStart));
  for (int i = 1; i < 10; ++i) EXPECT_FALSE(limiter.allow("k", kStart + i * 100ms));
  EXPECT_TRUE(limiter.allow("k", kStart + 1s));
}

TEST(RateLimiter, KeysAreIndependent) {
  RateLimiter limiter(1, 3);
  EXPECT_EQ(allowed(limiter, "user:alice", kStart), 3);
  EXPECT_EQ(allowed(limiter, "user:bob", kStart), 3);
  EXPECT_EQ(allowed(limiter, "addr:192.0.2.1", kStart), 3);
  EXPECT_EQ(allowed(limiter, "user:alice", kStart), 0);
}

TEST(RateLimiter, LongKeysAreKeptApartByTheirHash) {
  RateLimiter limiter(1, 1);
  std::string a(10000, 'a');
  std::string b = a;
  b.back() = 'b';
  EXPECT_TRUE(limiter.allow(a, kStart));
  EXPECT_FALSE(limiter.allow(a, kStart));
  EXPECT_TRUE(limiter.allow(b, kStart));
  EXPECT_TRUE(limiter.allow(a.substr(0, RateLimiter::kMaxKeyBytes), kStart));
}

TEST(RateLimiter, RetryAfterIsWholeSecondsUntilTheNextToken) {
  RateLimiter limiter(0.25, 2);
  EXPECT_EQ(limiter.retry_after("k", kStart), 1s);  // never seen
  EXPECT_EQ(allowed(limiter, "k", kStart), 2);
  EXPECT_EQ(limiter.retry_after("k", kStart), 4s);
  EXPECT_EQ(limiter.retry_after("k", kStart + 1500ms), 3s);
  EXPECT_EQ(limiter.retry_after("k", kStart + 3900ms), 1s);
  EXPECT_EQ(limiter.retry_after("k", kStart + 10s), 1s);
  EXPECT_FALSE(limiter.allow("k", kStart + 3900ms));
  EXPECT_TRUE(limiter.allow("k", kStart + 4s));

  RateLimiter fast(100, 1);
  EXPECT_TRUE(fast.allow("k", kStart));
  EXPECT_EQ(fast.retry_after("k", kStart), 1s);
  RateLimiter slow(1e-300, 1);
  EXPECT_TRUE(slow.allow("k", kStart));
  EXPECT_GT(slow.retry_after("k", kStart), 24h * 365 * 30);
  EXPECT_FALSE(slow.allow("k", kStart + 24h * 365 * 30));
}

TEST(RateLimiter, ToleratesAClockReadBeforeTheLastCall) {
  RateLimiter limiter(1, 2);
  EXPECT_EQ(allowed(limiter, "k", kStart + 10s), 2);
  // A thread that read the clock earlier must not be credited or debited for it.
  EXPECT_FALSE(limiter.allow("k", kStart));
  EXPECT_TRUE(limiter.allow("k", kStart + 11s));
}

TEST(RateLimiter, StaysBoundedUnderAMillionNewKeys) {
  RateLimiter limiter(1.0 / 12, 5, 1000);
  EXPECT_EQ(allowed(limiter, "user:admin", kStart), 5);
  for (int i = 0; i < 1000000; ++i) {
    EXPECT_TRUE(limiter.allow("addr:" + std::to_string(i), kStart + i * 1us));
    if (i % 1000 == 0) {
      ASSERT_LE(limiter.size(), 1000u);
    }
  }
  EXPECT_LE(limiter.size(), 1000u);
  // The flood owed less than the drained bucket did, so it was never the one forgotten.
  EXPECT_FALSE(limiter.allow("user:admin", kStart + 2s));
}

TEST(RateLimiter, ForgetsFullBucketsFirst) {
  RateLimiter limiter(1, 3, 2);
  EXPECT_EQ(allowed(limiter, "drained", kStart), 3);
  EXPECT_TRUE(limiter.allow("touched-once", kStart));
  // At kStart + 1s "touched-once" is full again: forgetting it loses nothing.
  EXPECT_TRUE(limiter.allow("new", kStart + 1s));
  EXPECT_EQ(limiter.size(), 2u);
  EXPECT_EQ(allowed(limiter, "drained", kStart + 1s), 1);
}

TEST(RateLimiter, ASlowFloodOfNewKeysDoesNotResetADrainedBucket) {
  // 3 tries, one more every 1000 s; 100 buckets. Forgetting the least recently used bucket
  // would reset "user:admin" after 100 new keys; here each new key refills before the drained
  // bucket does, so new keys push out each other.
  RateLimiter limiter(0.001, 3, 100);
  EXPECT_EQ(allowed(limiter, "user:admin", kStart), 3);
  for (int i = 0; i < 10000; ++i)
    EXPECT_TRUE(limiter.allow("addr:" + std::to_string(i), kStart + i * 100ms));
  EXPECT_EQ(limiter.size(), 100u);
  // After 1001 s exactly one try has come back, not the whole burst.
  EXPECT_EQ(allowed(limiter, "user:admin", kStart + 1001s), 1);
}

TEST(RateLimiter, AnIdleTableShrinks) {
  RateLimiter limiter(1, 1, 1000);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(limiter.allow(std::to_string(i), kStart));
  EXPECT_EQ(limiter.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(limiter.allow("again", kStart + 1h + i * 1s));
  EXPECT_EQ(limiter.size(), 1u);
}

TEST(RateLimiter, RefusesLimitsThatAreNotLimits) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
  for (auto [rate, burst, keys] : {std::tuple<double, double, std::size_t>{0, 1, 1},
                                   {-1, 1, 1},
                                   {1, 0.5, 1},
                                   {1, 1, 0},
                                   {kInf, 1, 1},
                                   {1, kInf, 1},
                                   {kNan, 1, 1},
                                   {1, kNan, 1}}) {
    try {
      RateLimiter limiter(rate, burst, keys);
      ADD_FAILURE() << rate << " " << burst << " " << keys;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidInput);
      EXPECT_TRUE(std::string_view(e.what()).starts_with("Failed to create a rate limiter"));
    }
  }
}

TEST(RateLimiter, IsThreadSafe) {
  RateLimiter limiter(1, 100, 50);
  std::atomic<int> shared_allowed = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        if (limiter.allow("shared", kStart)) ++shared_allowed;
        // Keys of their own, past max_keys, so threads also forget buckets at the same time.
        limiter.allow("t" + std::to_string(t) + ":" + std::to_string(i), kStart);
        (void)limiter.retry_after("shared", kStart);
      }
    });
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(shared_allowed, 100);
  EXPECT_LE(limiter.size(), 50u);
}
