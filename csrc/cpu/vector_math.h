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
template <typename T>
inline typename Simd<T>::Vec gather(const T* base, const typename Simd<T>::Int& index) {
#if defined(__AVX512F__)
  const __m512i i = reinterpret_cast<__m512i>(index);
  if constexpr (sizeof(T) == 4) {
    return reinterpret_cast<typename Simd<T>::Vec>(_mm512_i32gather_ps(i, base, sizeof(T)));
  } else {
    return reinterpret_cast<typename Simd<T>::Vec>(_mm512_i64gather_pd(i, base, sizeof(T)));
  }
#else
  typename Simd<T>::Vec v;
  for (int64_t l = 0; l < Simd<T>::width; ++l) v[l] = base[index[l]];
  return v;
#endif
}

// A store that bypasses the caches (no read for ownership of the line: half the memory traffic of
// writing an output that is not read again soon) where p is 64-byte aligned and the target has
// AVX-512; a plain store otherwise. stream_fence() orders them before the thread's work ends.
template <typename T>
inline void stream(T* p, const typename Simd<T>::Vec& v) {
#if defined(__AVX512F__)
  if (reinterpret_cast<uintptr_t>(p) % 64 == 0) {
    if constexpr (sizeof(T) == 4) {
      return _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
    } else {
      return _mm512_stream_pd(p, reinterpret_cast<__m512d>(v));
    }
  }
#endif
  std::memcpy(p, &v, sizeof(v));
}

inline void stream_fence() {
#if defined(__AVX512F__)
  _mm_sfence();
#endif
}

// 16 rows of cols <= 8 floats (16 * cols contiguous values) <-> 8 vectors, vector k holding
// column k of the 16 rows (zeros past cols): two rows a vector, each expanded to 8 lanes, then
// three rounds of two-source permutes, each swapping one bit of the vector index with one bit of
// the lane index. A row block is cols contiguous loads or stores instead of cols gathers, which
// wait on their 16 loads (most of the spline's time on an AMD EPYC). Only where AVX-512 is
// (Transpose16x8::available); elsewhere callers take their general path.
struct Transpose16x8 {
#if defined(__AVX512F__)
  static constexpr bool available = true;
  // Each round's indices of its two outputs ([r][0]: vector j, [r][1]: vector j | pair).
  __m512i to_columns[3][2], to_rows[3][2];
  Transpose16x8() {
    alignas(64) int32_t idx[6][16];
    auto bit = [](int p, int i) { return (p >> i) & 1; };
    for (int p = 0; p < 16; ++p) {
      idx[0][p] = bit(p, 0) << 4 | (p & ~1);
      idx[1][p] = bit(p, 1) << 4 | (p & ~2);
      idx[2][p] = bit(p, 3) << 4 | bit(p, 0) << 3 | bit(p, 2) << 1 | bit(p, 1);
      idx[3][p] = bit(p, 3) << 4 | (p & 7);
      idx[4][p] = bit(p, 2) << 4 | (p & ~4);
      idx[5][p] = bit(p, 0) << 4 | bit(p, 2) << 3 | bit(p, 1) << 2 | bit(p, 3);
    }
    const int32_t second_bit[6] = {1, 2, 4, 8, 4, 2};  // the lane bit the second output sets
    for (int r = 0; r < 6; ++r) {
      __m512i* out = r < 3 ? to_columns[r] : to_rows[r - 3];
      out[0] = _mm512_load_si512(idx[r]);
      out[1] = _mm512_or_si512(out[0], _mm512_set1_epi32(second_bit[r]));
    }
  }
  // One round: vectors j and j | pair (j without that bit) become their two permutes.
  static void round(__m512 v[8], int pair, const __m512i indices[2]) {
    for (int j = 0; j < 8; ++j) {
      if (j & pair) continue;
      const __m512 a = v[j], b = v[j | pair];
      v[j] = _mm512_permutex2var_ps(a, indices[0], b);
      v[j | pair] = _mm512_permutex2var_ps(a, indices[1], b);
    }
  }
  // The lanes of two rows of cols values spread over two 8-lane halves.
  static __mmask16 halves(int64_t cols) { return __mmask16(((1u << cols) - 1) * 0x0101u); }
  // rows [16][cols] -> out[k][l] = rows[l][k] (k < cols; zeros for k >= cols).
  void columns(const float* rows, int64_t cols, Simd<float>::Vec out[8]) const {
    __m512 v[8];
    const __mmask16 two_rows = __mmask16((1u << (2 * cols)) - 1);
    for (int j = 0; j < 8; ++j)
      v[j] = cols == 8 ? _mm512_loadu_ps(rows + 16 * j)
                       : _mm512_maskz_expand_ps(halves(cols), _mm512_maskz_loadu_ps(two_rows, rows + 2 * cols * j));
    round(v, 1, to_columns[0]);
    round(v, 2, to_columns[1]);
    round(v, 4, to_columns[2]);
    for (int k = 0; k < 8; ++k) out[k] = reinterpret_cast<Simd<float>::Vec>(v[k]);
  }
  // The inverse (columns k >= cols are not read), with streaming stores where cols is 8.
  void rows(const Simd<float>::Vec in[8], int64_t cols, float* rows) const {
    __m512 v[8];
    for (int k = 0; k < 8; ++k) v[k] = k < cols ? reinterpret_cast<__m512>(in[k]) : _mm512_setzero_ps();
    round(v, 4, to_rows[0]);
    round(v, 2, to_rows[1]);
    round(v, 1, to_rows[2]);
    const __mmask16 two_rows = __mmask16((1u << (2 * cols)) - 1);
    for (int j = 0; j < 8; ++j) {
      if (cols == 8) {
        stream<float>(rows + 16 * j, reinterpret_cast<Simd<float>::Vec>(v[j]));
      } else {
        _mm512_mask_storeu_ps(rows + 2 * cols * j, two_rows, _mm512_maskz_compress_ps(halves(cols), v[j]));
      }
    }
  }
#else
  static constexpr bool available = false;
  void columns(const float*, int64_t, Simd<float>::Vec*) const {}
  void rows(const Simd<float>::Vec*, int64_t, float*) const {}
#endif
};

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
