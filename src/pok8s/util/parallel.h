// Running independent work items on a few threads, stopping at the first failure.
#pragma once

#include <cstddef>
#include <functional>

namespace pok8s::util {

// Calls fn(i) for every i in [0, count) on at most `jobs` threads (the caller's included).
// After the first exception no new item starts; the exception is rethrown once all threads
// have finished.
void parallel_for(std::size_t count, int jobs, const std::function<void(std::size_t)>& fn);

}  // namespace pok8s::util
