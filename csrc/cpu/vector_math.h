// Branch-free exp that GCC/Clang auto-vectorise inside `#pragma omp simd` loops (libm's exp is a
// scalar call). Cody-Waite range reduction with the Cephes polynomials: about 1 ulp in float32 and
// float64. Inputs are clamped to the normal range, so results never overflow and underflow to the
// smallest normal number instead of 0 (harmless for logsumexp weights, which are relative to 1).
#pragma once
#include <cstdint>
#include <cstring>

namespace msvae::cpu {

template <typename To, typename From>
inline To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

inline float vexp(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = x * 1.44269504088896341f + magic;
  const float n = shifted - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t k = bit_cast<int32_t>(shifted) - bit_cast<int32_t>(magic);
  return p * bit_cast<float>((k + 127) << 23);
}

inline double vexp(double x) {
  x = x < -708.3 ? -708.3 : (x > 709.7 ? 709.7 : x);
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  const double shifted = x * 1.4426950408889634074 + magic;
  const double n = shifted - magic;
  double r = x - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  const double rr = r * r;
  const double p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr +
                        9.99999999999999999910e-1);
  const double q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
                    2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
  const double e = 1.0 + 2.0 * p / (q - p);
  const int64_t k = bit_cast<int64_t>(shifted) - bit_cast<int64_t>(magic);
  return e * bit_cast<double>((k + 1023) << 52);
}

}  // namespace msvae::cpu
