// A small bounded parallel loop for blob transfers.
#include "pok8s/util/parallel.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace pok8s::util {

void parallel_for(std::size_t count, int jobs, const std::function<void(std::size_t)>& fn) {
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::exception_ptr failure;
  auto worker = [&] {
    while (!failed.load()) {
      std::size_t i = next.fetch_add(1);
      if (i >= count) return;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard lock(mu);
        if (!failure) failure = std::current_exception();
        failed = true;
        return;
      }
    }
  };
  std::size_t n = std::min<std::size_t>(count, static_cast<std::size_t>(std::max(1, jobs)));
  std::vector<std::thread> threads;
  for (std::size_t t = 1; t < n; ++t) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace pok8s::util
