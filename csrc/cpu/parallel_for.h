// Thread helpers of the CPU kernels: a denormal-flushing scope and a static parallel_for.
#pragma once
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace msvae::cpu {

// Flushes denormals to zero on this thread while alive (products of tiny values would otherwise
// take the slow denormal path), restoring the caller's mode afterwards.
class FlushDenormals {
 public:
#if defined(__SSE__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

// How many of `threads` to use for `work` units when each thread should get at least `min_work`
// (spawning a thread costs tens of microseconds): at least 1, at most `threads`.
inline int threads_for(int64_t work, int64_t min_work, int threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, work / min_work)));
}

// Calls fn(begin, end, thread_index) on `threads` contiguous chunks of [0, n).
template <typename Fn>
void parallel_for(int64_t n, int threads, Fn&& fn) {
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  auto run = [&fn](int64_t begin, int64_t end, int t) {
    FlushDenormals flush;
    fn(begin, end, t);
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int64_t chunk = (n + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    const int64_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    pool.emplace_back(run, begin, end, t);
  }
  run(0, std::min(n, chunk), 0);
  for (auto& th : pool) th.join();
}

}  // namespace msvae::cpu
