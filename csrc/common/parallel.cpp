#include "common/parallel.h"

#include <omp.h>

#include <algorithm>
#include <atomic>

namespace fastconv {

namespace {
std::atomic<int>& thread_setting() {
  static std::atomic<int> n{std::max(1, omp_get_max_threads())};
  return n;
}
}  // namespace

int get_num_threads() { return thread_setting().load(std::memory_order_relaxed); }

void set_num_threads(int n) { thread_setting().store(std::max(1, n), std::memory_order_relaxed); }

int threads_for(int64_t work, int64_t grain) {
  const int64_t useful = std::max<int64_t>(1, work / std::max<int64_t>(1, grain));
  return static_cast<int>(std::min<int64_t>(get_num_threads(), useful));
}

}  // namespace fastconv
