// Token buckets keyed by a string, refilled lazily when a key is touched, in a table of at most
// max_keys buckets that forgets first what it can forget without loss.
#include "pok8s/server/rate_limit.h"

#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "pok8s/util/error.h"
#include "pok8s/util/sha256.h"

namespace pok8s::server {

namespace {

// A wait longer than this (~31 years) is as good as forever, and stays far from the range of
// the clock's integer durations.
constexpr double kMaxWaitSeconds = 1e9;

// Each call forgets at most this many buckets that are full again, so an idle table shrinks as
// the service is used without one call paying for a whole sweep.
constexpr int kForgetPerCall = 2;

RateLimiter::Clock::duration seconds(double s) {
  return std::chrono::duration_cast<RateLimiter::Clock::duration>(
      std::chrono::duration<double>(std::min(s, kMaxWaitSeconds)));
}

// A key of any length costs at most kMaxKeyBytes of memory; the prefix keeps a hashed key apart
// from a short key that spells the same hex.
std::string bucket_key(std::string_view key) {
  if (key.size() <= RateLimiter::kMaxKeyBytes) return std::string(key);
  return "\x01sha256:" + util::sha256_hex(key);
}

}  // namespace

RateLimiter::RateLimiter(double per_second, double burst, std::size_t max_keys)
    : per_second_(per_second), burst_(burst), max_keys_(max_keys) {
  if (!(std::isfinite(per_second) && per_second > 0 && std::isfinite(burst) && burst >= 1 &&
        max_keys >= 1))
    throw Error(ErrorKind::kInvalidInput,
                fmt::format("Failed to create a rate limiter: {} tokens a second, a burst of {} "
                            "and {} keys is not a limit (want > 0, ≥ 1 and ≥ 1)",
                            per_second, burst, max_keys));
}

double RateLimiter::tokens_at(const Bucket& bucket, Clock::time_point now) const {
  // Callers read the clock before they take the lock, so `now` may be a little behind.
  double elapsed = std::max(0.0, std::chrono::duration<double>(now - bucket.updated).count());
  return std::min(burst_, bucket.tokens + elapsed * per_second_);
}

RateLimiter::Clock::time_point RateLimiter::full_at(const Bucket& bucket) const {
  return bucket.updated + seconds((burst_ - bucket.tokens) / per_second_);
}

void RateLimiter::forget(std::unordered_map<std::string, Bucket>::iterator it) {
  if (it->second.full != full_at_.end()) full_at_.erase(it->second.full);
  buckets_.erase(it);
}

bool RateLimiter::allow(std::string_view key, Clock::time_point now) {
  std::string name = bucket_key(key);
  std::lock_guard lock(mutex_);
  // A full bucket says nothing that a missing one does not (a new key starts full).
  for (int i = 0; i < kForgetPerCall && !full_at_.empty() && full_at_.begin()->first <= now; ++i)
    forget(buckets_.find(*full_at_.begin()->second));

  auto it = buckets_.find(name);
  if (it == buckets_.end()) {
    // At max_keys a new key takes the place of the bucket that is full again soonest: a full
    // one costs nothing to forget, and otherwise the one closest to full forgets the fewest
    // refused tries. To have their own drained bucket forgotten, an attacker must make every
    // other bucket owe at least as much: touch max_keys other keys within the last
    // burst / per_second seconds (100,000 keys in a minute for 5 logins a minute), and each such
    // reset wins back at most `burst` tries. Forgetting the least recently used bucket instead
    // would let them reset it with max_keys requests at any pace.
    if (buckets_.size() >= max_keys_ && !full_at_.empty())
      forget(buckets_.find(*full_at_.begin()->second));
    it = buckets_.emplace(std::move(name), Bucket{burst_, now, full_at_.end()}).first;
  }
  Bucket& bucket = it->second;
  double tokens = tokens_at(bucket, now);
  // A refused try takes nothing: the bucket refills on schedule however often a client knocks,
  // so the Retry-After it was given stays true.
  if (tokens < 1) return false;
  bucket.tokens = tokens - 1;
  bucket.updated = std::max(bucket.updated, now);
  if (bucket.full != full_at_.end()) full_at_.erase(bucket.full);
  bucket.full = full_at_.emplace(full_at(bucket), &it->first);
  return true;
}

std::chrono::seconds RateLimiter::retry_after(std::string_view key, Clock::time_point now) const {
  std::string name = bucket_key(key);
  std::lock_guard lock(mutex_);
  auto it = buckets_.find(name);
  if (it == buckets_.end()) return std::chrono::seconds(1);
  double missing = 1 - tokens_at(it->second, now);
  double wait = std::ceil(std::min(missing / per_second_, kMaxWaitSeconds));
  return std::chrono::seconds(std::max<std::int64_t>(1, static_cast<std::int64_t>(wait)));
}

std::size_t RateLimiter::size() const {
  std::lock_guard lock(mutex_);
  return buckets_.size();
}

}  // namespace pok8s::server
