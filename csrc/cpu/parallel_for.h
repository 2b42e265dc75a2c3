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
