// Token buckets keyed by a string (a user name, a client address): how often logins and token
// creation may be tried, in bounded memory whatever keys a client invents.
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace pok8s::server {

// Keys name what a client cannot multiply cheaply: a user name, an IPv4 address, an IPv6 /64
// (not the /128, of which one client has billions).
class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  // `per_second` tokens flow into each key's bucket, which holds at most `burst` (a key never
  // seen starts full). At most `max_keys` buckets are remembered. Throws kInvalidInput unless
  // per_second > 0, burst ≥ 1 (both finite) and max_keys ≥ 1.
  RateLimiter(double per_second, double burst, std::size_t max_keys = 100000);

  // Takes one token from `key`'s bucket at `now`; false, taking nothing, when it holds less than
  // one. Thread-safe. A key longer than kMaxKeyBytes is remembered by its SHA-256.
  bool allow(std::string_view key, Clock::time_point now = Clock::now());

  // How long until `key` holds a token again, rounded up to whole seconds and at least 1 (for a
  // Retry-After header after allow() said no).
  std::chrono::seconds retry_after(std::string_view key,
                                   Clock::time_point now = Clock::now()) const;

  // How many buckets are remembered now (≤ max_keys).
  std::size_t size() const;

  static constexpr std::size_t kMaxKeyBytes = 128;

 private:
  using FullIndex = std::multimap<Clock::time_point, const std::string*>;

  struct Bucket {
    double tokens = 0;          // at `updated`
    Clock::time_point updated;  // the latest `now` that touched it
    FullIndex::iterator full;   // its entry in full_at_, keyed by when it is full again
  };

  double tokens_at(const Bucket& bucket, Clock::time_point now) const;
  Clock::time_point full_at(const Bucket& bucket) const;
  void forget(std::unordered_map<std::string, Bucket>::iterator it);

  double per_second_;
  double burst_;
  std::size_t max_keys_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, Bucket> buckets_;
  // Every bucket by the time it is full again: its front is the bucket whose loss forgets the
  // least (see allow()).
  FullIndex full_at_;
};

}  // namespace pok8s::server
