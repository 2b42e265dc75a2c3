// Fixed-width SIMD helpers on GCC/Clang vector extensions (64-byte vectors: one AVX-512 register,
// two AVX registers, four NEON registers; the compiler splits them for the target) and a
// branch-free exp on them: Cody-Waite range reduction with the Cephes polynomials, about 1 ulp in
// float32 and float64. Inputs are clamped to the normal range, so results never overflow and
// underflow to the smallest normal number instead of 0 (harmless for logsumexp weights, which are
// relative to 1).
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace msvae::cpu {

template <typename T>
struct Simd;

template <>
struct Simd<float> {
  typedef float Vec __attribute__((vector_size(64)));
  typedef int32_t Int __attribute__((vector_size(64)));
  static constexpr int64_t width = 16;
};

template <>
struct Simd<double> {
  typedef double Vec __attribute__((vector_size(64)));
  typedef int64_t Int __attribute__((vector_size(64)));
  static constexpr int64_t width = 8;
};

template <typename T>
using Vec = typename Simd<T>::Vec;

template <typename To, typename From>
inline To bit_cast(const From& v) {
  static_assert(sizeof(To) == sizeof(From));
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

template <typename T>
inline typename Simd<T>::Vec load(const T* p) {
  typename Simd<T>::Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, const typename Simd<T>::Vec& v) {
  std::memcpy(p, &v, sizeof(v));
}

// base[index[l]] in every lane l: one AVX-512 gather where the target has them (a vector built
// from scalar loads lands in a register; scalar stores read back as a vector would stall on
// store forwarding), else lane by lane.
inline Simd<float>::Vec gather(const float* base, const Simd<float>::Int& index) {
#if defined(__AVX512F__)
  return reinterpret_cast<Simd<float>::Vec>(
      _mm512_i32gather_ps(reinterpret_cast<__m512i>(index), base, sizeof(float)));
#else
  Simd<float>::Vec v;
  for (int64_t l = 0; l < Simd<float>::width; ++l) v[l] = base[index[l]];
  return v;
#endif
}

inline Simd<double>::Vec gather(const double* base, const Simd<double>::Int& index) {
#if defined(__AVX512F__)
  return reinterpret_cast<Simd<double>::Vec>(
      _mm512_i64gather_pd(reinterpret_cast<__m512i>(index), base, sizeof(double)));
#else
  Simd<double>::Vec v;
  for (int64_t l = 0; l < Simd<double>::width; ++l) v[l] = base[index[l]];
  return v;
#endif
}

// A store that bypasses the caches (no read for ownership of the line: half the memory traffic of
// writing an output that is not read again soon) where p is 64-byte aligned and the target has
// AVX-512; a plain store otherwise. stream_fence() orders them before the thread's work ends.
inline void stream(float* p, const Simd<float>::Vec& v) {
#if defined(__AVX512F__)
  if (reinterpret_cast<uintptr_t>(p) % 64 == 0) return _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
#endif
  std::memcpy(p, &v, sizeof(v));
}

inline void stream(double* p, const Simd<double>::Vec& v) {
#if defined(__AVX512F__)
  if (reinterpret_cast<uintptr_t>(p) % 64 == 0) return _mm512_stream_pd(p, reinterpret_cast<__m512d>(v));
#endif
  std::memcpy(p, &v, sizeof(v));
}

inline void stream_fence() {
#if defined(__AVX512F__)
  _mm_sfence();
#endif
}

// The lane numbers times stride: gather(base, lanes_times<T>(s)) reads base[0], base[s], ...
template <typename T>
inline typename Simd<T>::Int lanes_times(int64_t stride) {
  typename Simd<T>::Int index;
  for (int64_t l = 0; l < Simd<T>::width; ++l) index[l] = l * stride;
  return index;
}

template <typename T>
inline typename Simd<T>::Vec splat(T x) {
  return typename Simd<T>::Vec{} + x;
}

template <typename T>
inline T horizontal_sum(const typename Simd<T>::Vec& v) {
  T s = 0;
  for (int64_t l = 0; l < Simd<T>::width; ++l) s += v[l];
  return s;
}

template <typename T>
inline T horizontal_max(const typename Simd<T>::Vec& v) {
  T m = v[0];
  for (int64_t l = 1; l < Simd<T>::width; ++l) m = v[l] > m ? v[l] : m;
  return m;
}

template <typename T>
inline typename Simd<T>::Vec vmax(const typename Simd<T>::Vec& a, const typename Simd<T>::Vec& b) {
  return a > b ? a : b;
}

template <typename T>
inline typename Simd<T>::Vec vmin(const typename Simd<T>::Vec& a, const typename Simd<T>::Vec& b) {
  return a < b ? a : b;
}

inline Simd<float>::Vec vexp(Simd<float>::Vec x) {
  using Vec = Simd<float>::Vec;
  using Int = Simd<float>::Int;
  const Vec lo = splat(-87.3f), hi = splat(88.3f), magic = splat(12582912.0f);  // 1.5 * 2^23
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const Vec shifted = x * 1.44269504088896341f + magic;  // adding magic rounds to an integer
  const Vec n = shifted - magic;
  Vec r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  Vec p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const Int k = bit_cast<Int>(shifted) - bit_cast<Int>(magic);
  return p * bit_cast<Vec>((k + 127) << 23);
}

inline Simd<double>::Vec vexp(Simd<double>::Vec x) {
  using Vec = Simd<double>::Vec;
  using Int = Simd<double>::Int;
  const Vec lo = splat(-708.3), hi = splat(709.7), magic = splat(6755399441055744.0);  // 1.5 * 2^52
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const Vec shifted = x * 1.4426950408889634074 + magic;
  const Vec n = shifted - magic;
  Vec r = x - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  const Vec rr = r * r;
  const Vec p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr +
                     9.99999999999999999910e-1);
  const Vec q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
                 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
  const Vec e = 1.0 + 2.0 * p / (q - p);
  const Int k = bit_cast<Int>(shifted) - bit_cast<Int>(magic);
  return e * bit_cast<Vec>((k + 1023) << 52);
}

}  // namespace msvae::cpu
