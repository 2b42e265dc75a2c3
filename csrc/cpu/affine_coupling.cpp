// CPU implementation of the soft-clamped affine transform (op 2 of DESIGN.md): one streaming
// pass each way over SIMD vectors, threads on contiguous ranges; a ragged tail goes through a
// zero-padded vector.
#include "cpu/affine_coupling.h"

#include <algorithm>
#include <vector>

#include "cpu/parallel_for.h"
#include "cpu/vector_math.h"

namespace msvae::cpu {
namespace {

constexpr int64_t kElementsPerThread = 32768;  // below this much work per thread, fewer threads

// tanh(z) = sign(z) (1 - e) / (1 + e) with e = exp(-2 |z|) in (0, 1].
template <typename T>
Vec<T> vtanh(Vec<T> z) {
  const Vec<T> magnitude = z < T(0) ? -z : z;
  const Vec<T> e = vexp(T(-2) * magnitude);
  const Vec<T> th = (T(1) - e) / (T(1) + e);
  return z < T(0) ? -th : th;
}

// Calls fn(offset, count, in..., out...) on whole vectors, then once on a zero-padded tail.
template <typename T, int Inputs, int Outputs, typename Fn>
void for_vectors(int64_t begin, int64_t end, const T* const (&in)[Inputs], T* const (&out)[Outputs],
                 Fn&& fn) {
  constexpr int64_t W = Simd<T>::width;
  Vec<T> a[Inputs], r[Outputs];
  int64_t i = begin;
  for (; i + W <= end; i += W) {
    for (int k = 0; k < Inputs; ++k) a[k] = load(in[k] + i);
    fn(a, r);
    for (int k = 0; k < Outputs; ++k) store(out[k] + i, r[k]);
  }
  if (i == end) return;
  alignas(64) T buf[W];
  for (int k = 0; k < Inputs; ++k) {
    std::fill(buf, buf + W, T(0));
    std::copy(in[k] + i, in[k] + end, buf);
    a[k] = load(buf);
  }
  fn(a, r);
  for (int k = 0; k < Outputs; ++k) {
    store(buf, r[k]);
    std::copy(buf, buf + (end - i), out[k] + i);
  }
}

}  // namespace

template <typename T>
bool affine_coupling_forward(const T* x, const T* shift, const T* scale_raw, int64_t n, double clamp,
                             bool inverse, T* y, T* logabsdet, int threads) {
  const T c = T(clamp), inv_c = T(1 / clamp);
  threads = threads_for(n, kElementsPerThread, threads);
  std::vector<char> finite(threads, 1);
  parallel_for(n, threads, [&](int64_t begin, int64_t end, int t) {
    Vec<T> probe = splat(T(0));  // v - v of every input: NaN from then on if one is not finite
    for_vectors<T, 3, 2>(begin, end, {x, shift, scale_raw}, {y, logabsdet},
                         [&](const Vec<T>* a, Vec<T>* r) {
                           probe += (a[0] - a[0]) + (a[1] - a[1]) + (a[2] - a[2]);
                           const Vec<T> s = c * vtanh<T>(a[2] * inv_c);
                           r[0] = inverse ? (a[0] - a[1]) * vexp(-s) : a[0] * vexp(s) + a[1];
                           r[1] = inverse ? -s : s;
                         });
    finite[t] = horizontal_sum<T>(probe) == T(0);
  });
  return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

template <typename T>
void affine_coupling_backward(const T* grad_y, const T* grad_logabsdet, const T* x, const T* shift,
                              const T* scale_raw, int64_t n, double clamp, bool inverse, T* dx,
                              T* dshift, T* dscale_raw, int threads) {
  const T c = T(clamp), inv_c = T(1 / clamp);
  threads = threads_for(n, kElementsPerThread, threads);
  parallel_for(n, threads, [&](int64_t begin, int64_t end, int) {
    for_vectors<T, 5, 3>(begin, end, {grad_y, grad_logabsdet, x, shift, scale_raw},
                         {dx, dshift, dscale_raw}, [&](const Vec<T>* a, Vec<T>* r) {
                           const Vec<T> th = vtanh<T>(a[4] * inv_c), s = c * th;
                           const Vec<T> ds_draw = T(1) - th * th;
                           if (inverse) {  // out = (x - shift) e^{-s}, d out / ds = -out
                             const Vec<T> scale = vexp(-s), g = a[0] * scale;
                             r[0] = g;
                             r[1] = -g;
                             r[2] = -(g * (a[2] - a[3]) + a[1]) * ds_draw;
                           } else {  // out = x e^s + shift, d out / ds = x e^s
                             const Vec<T> scale = vexp(s);
                             r[0] = a[0] * scale;
                             r[1] = a[0];
                             r[2] = (a[0] * a[2] * scale + a[1]) * ds_draw;
                           }
                         });
  });
}

#define MSVAE_INSTANTIATE(T)                                                                      \
  template bool affine_coupling_forward<T>(const T*, const T*, const T*, int64_t, double, bool,  \
                                           T*, T*, int);                                         \
  template void affine_coupling_backward<T>(const T*, const T*, const T*, const T*, const T*,    \
                                            int64_t, double, bool, T*, T*, T*, int);
MSVAE_INSTANTIATE(float)
MSVAE_INSTANTIATE(double)
#undef MSVAE_INSTANTIATE

}  // namespace msvae::cpu
