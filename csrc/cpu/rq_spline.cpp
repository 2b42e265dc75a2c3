// CPU implementation of the rational-quadratic spline (op 2 of DESIGN.md).
//
// Elements are processed in SIMD blocks of Simd<T>::width, one element per lane; threads take
// contiguous ranges of blocks. A block's bin parameters are transposed into small [K][lanes]
// buffers (on the thread's stack-like scratch, never a global per-bin tensor), then one scan over
// the bins computes the softmax fractions, the knots and, branch-free, the bin each lane falls in
// together with everything the spline needs there (knot, width, height, derivative parameters,
// the softmax probability of the bin and of the bins before it). Forward evaluates the spline (or
// solves its quadratic for the inverse); backward repeats the scan and writes the analytic
// gradients of every raw parameter from the handful of per-element partial derivatives:
// with p = softmax(raw), fraction_j = m + (1 - K m) p_j, knot_k = -B + 2B sum_{j<k} fraction_j,
// width_k = 2B fraction_k, the gradient of raw_i is
//   (1 - K m) p_i 2B (G_knot [i < k] + G_width [i == k] - G_knot P_{<k} - G_width p_k).
#include "cpu/rq_spline.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu/parallel_for.h"
#include "cpu/vector_math.h"

namespace msvae::cpu {
namespace {

constexpr int64_t kBlocksPerThread = 64;  // below this much work per thread, fewer threads

template <typename T>
struct FloatBits;
template <>
struct FloatBits<float> {
  using Int = int32_t;
  static constexpr int mantissa = 23;
  static constexpr Int bias = 127, exponent_mask = 0xff;
  static constexpr int series_terms = 6;  // atanh series to u^11: |u| < 0.172, error < 1e-9
  static constexpr float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
};
template <>
struct FloatBits<double> {
  using Int = int64_t;
  static constexpr int mantissa = 52;
  static constexpr Int bias = 1023, exponent_mask = 0x7ff;
  static constexpr int series_terms = 11;  // to u^21: error < 1e-17
  static constexpr double ln2_hi = 6.93145751953125e-1, ln2_lo = 1.42860682030941723212e-6;
};

// Natural log of positive normal numbers: x = 2^e m with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh((m - 1) / (m + 1)) by its odd series.
template <typename T>
Vec<T> vlog(Vec<T> x) {
  using F = FloatBits<T>;
  using Int = typename Simd<T>::Int;
  using I = typename F::Int;
  const Int bits = bit_cast<Int>(x);
  Int exponent = ((bits >> F::mantissa) & F::exponent_mask) - F::bias;
  const I mantissa_mask = (I(1) << F::mantissa) - 1;
  Vec<T> m = bit_cast<Vec<T>>((bits & mantissa_mask) | (F::bias << F::mantissa));  // [1, 2)
  const Int big = m > T(1.41421356237309504880);
  m = big ? m * T(0.5) : m;
  exponent -= big;  // comparisons give -1 for true
  const Vec<T> u = (m - T(1)) / (m + T(1)), u2 = u * u;
  Vec<T> series = splat(T(1) / T(2 * F::series_terms - 1));
  for (int k = F::series_terms - 2; k >= 0; --k) series = series * u2 + T(1) / T(2 * k + 1);
  const Vec<T> e = __builtin_convertvector(exponent, Vec<T>);
  return e * T(F::ln2_hi) + (e * T(F::ln2_lo) + T(2) * u * series);
}

template <typename T>
Vec<T> vsqrt(Vec<T> x) {
  for (int64_t l = 0; l < Simd<T>::width; ++l) x[l] = std::sqrt(x[l]);
  return x;
}

template <typename T>
Vec<T> vabs(Vec<T> x) {
  return x < T(0) ? -x : x;
}

// softplus(r) = max(r, 0) + log1p(exp(-|r|)), log1p(e) = log(u) e / (u - 1) with u = 1 + e.
template <typename T>
Vec<T> vsoftplus(Vec<T> r) {
  const Vec<T> e = vexp(-vabs<T>(r)), u = T(1) + e;
  const Vec<T> log1p = u == T(1) ? e : vlog<T>(u) * e / (u - T(1));
  return (r > T(0) ? r : splat(T(0))) + log1p;
}

template <typename T>
Vec<T> vsigmoid(Vec<T> r) {
  return T(1) / (T(1) + vexp(-r));
}

// The first count (<= W) values at p as a vector, zeros after them.
template <typename T>
Vec<T> load_part(const T* p, int64_t count) {
  if (count == Simd<T>::width) return load(p);
  alignas(64) T buffer[Simd<T>::width] = {};
  std::copy(p, p + count, buffer);
  return load(buffer);
}

// Writes the first count (<= W) lanes of v to p.
template <typename T>
void store_part(T* p, int64_t count, Vec<T> v) {
  if (count == Simd<T>::width) return store(p, v);
  alignas(64) T buffer[Simd<T>::width];
  store(buffer, v);
  std::copy(buffer, buffer + count, p);
}

// One block's bin parameters transposed to [bins][W] (softmax_exps turns widths and heights into
// their exps in place): a full float block of at most 8 columns by Transpose16x8, another full
// block's column by one gather of stride cols, a partial block lane by lane.
template <typename T>
struct BlockParams {
  static constexpr int64_t W = Simd<T>::width;
  using Int = typename Simd<T>::Int;
  int64_t K;
  std::vector<T> widths, heights, derivs;
  Int stride_K, stride_K1;
  Transpose16x8 by_permutes;  // full float blocks of at most 8 columns
  explicit BlockParams(int64_t K_)
      : K(K_), widths(K_ * W), heights(K_ * W), derivs((K_ - 1) * W),
        stride_K(lanes_times<T>(K_)), stride_K1(lanes_times<T>(K_ - 1)) {}

  // Transposes rows e0 .. e0 + count of src [n][cols] into dst [cols][W] (zeros past count) and
  // returns the sum of v - v over the values: NaN if any of them is not finite, else 0.
  Vec<T> transpose(const T* src, int64_t e0, int64_t count, int64_t cols, const Int& stride,
                   T* dst) const {
    Vec<T> probe = splat(T(0));
    if constexpr (std::is_same_v<T, float>) {
      if (Transpose16x8::available && count == W && cols <= 8) {
        Vec<T> columns[8];
        by_permutes.columns(src + e0 * cols, cols, columns);
        for (int64_t c = 0; c < cols; ++c) {
          store(dst + c * W, columns[c]);
          probe += columns[c] - columns[c];
        }
        return probe;
      }
    }
    for (int64_t c = 0; c < cols; ++c) {
      Vec<T> v;
      if (count == W) {
        v = gather<T>(src + e0 * cols + c, stride);
      } else {
        v = splat(T(0));
        for (int64_t l = 0; l < count; ++l) v[l] = src[(e0 + l) * cols + c];
      }
      store(dst + c * W, v);
      probe += v - v;
    }
    return probe;
  }
  // Loads the block's parameters; returns the finiteness probe of transpose().
  Vec<T> load(const T* wr, const T* hr, const T* dr, int64_t e0, int64_t count) {
    return transpose(wr, e0, count, K, stride_K, widths.data()) +
           transpose(hr, e0, count, K, stride_K, heights.data()) +
           transpose(dr, e0, count, K - 1, stride_K1, derivs.data());
  }
};

// The inverse of the transpose for a full block's gradients: the gather indices into a
// [cols][W] buffer whose vector j, stored at j * W of the rows' [W][cols] output, is contiguous.
template <typename T>
std::vector<typename Simd<T>::Int> untranspose_indices(int64_t cols) {
  constexpr int64_t W = Simd<T>::width;
  std::vector<typename Simd<T>::Int> indices(cols);
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t l = 0; l < W; ++l) {
      const int64_t flat = j * W + l;  // element flat / cols, column flat % cols
      indices[j][l] = (flat % cols) * W + flat / cols;
    }
  return indices;
}

// Writes buffer [cols][W] to the rows e0 .. e0 + count of dst [n][cols] (a full block's with
// streaming stores: the gradients are not read again while they could still be in cache).
template <typename T>
void untranspose(const T* buffer, int64_t e0, int64_t count, int64_t cols,
                 const std::vector<typename Simd<T>::Int>& indices, const Transpose16x8& by_permutes,
                 T* dst) {
  constexpr int64_t W = Simd<T>::width;
  if constexpr (std::is_same_v<T, float>) {
    if (Transpose16x8::available && count == W && cols <= 8) {
      Vec<T> columns[8];
      for (int64_t c = 0; c < cols; ++c) columns[c] = load(buffer + c * W);
      return by_permutes.rows(columns, cols, dst + e0 * cols);
    }
  }
  if (count == W) {
    for (int64_t j = 0; j < cols; ++j) stream<T>(dst + e0 * cols + j * W, gather<T>(buffer, indices[j]));
    return;
  }
  for (int64_t l = 0; l < count; ++l)
    for (int64_t k = 0; k < cols; ++k) dst[(e0 + l) * cols + k] = buffer[k * W + l];
}

// Replaces raw[k] by exp(raw[k] - max) and returns 1 / sum: p_k = raw[k] * result.
template <typename T>
Vec<T> softmax_exps(T* raw, int64_t K) {
  constexpr int64_t W = Simd<T>::width;
  Vec<T> top = load(raw);
  for (int64_t k = 1; k < K; ++k) top = vmax<T>(top, load(raw + k * W));
  Vec<T> sum = splat(T(0));
  for (int64_t k = 0; k < K; ++k) {
    const Vec<T> e = vexp(load(raw + k * W) - top);
    store(raw + k * W, e);
    sum += e;
  }
  return T(1) / sum;
}

// Everything about the bin each lane falls in.
template <typename T>
struct Bin {
  Vec<T> index, x_knot, width, y_knot, height;
  Vec<T> derivative_lo_raw, derivative_hi_raw;  // raw parameters of d_k, d_{k+1} when interior
  Vec<T> p_width, p_width_before, p_height, p_height_before;  // softmax probabilities
};

// Scans the bins of the block (widths / heights already hold their exps) for the bin of z (x, or
// y when inverse): the last one whose left knot is <= z.
template <typename T>
Bin<T> locate(const BlockParams<T>& bp, Vec<T> inv_sum_w, Vec<T> inv_sum_h, Vec<T> z,
              const RQSplineParams& p) {
  constexpr int64_t W = Simd<T>::width;
  const int64_t K = bp.K;
  const T B = T(p.tail_bound), scale_w = T(1 - K * p.min_bin_width), scale_h = T(1 - K * p.min_bin_height);
  const T min_w = T(p.min_bin_width), min_h = T(p.min_bin_height);
  Bin<T> bin{};
  Vec<T> cum_w = splat(T(0)), cum_h = splat(T(0)), before_w = splat(T(0)), before_h = splat(T(0));
  Vec<T> x_lo = splat(-B), y_lo = splat(-B);
  for (int64_t k = 0; k < K; ++k) {
    const Vec<T> pw = load(bp.widths.data() + k * W) * inv_sum_w;
    const Vec<T> ph = load(bp.heights.data() + k * W) * inv_sum_h;
    cum_w += min_w + scale_w * pw;
    cum_h += min_h + scale_h * ph;
    const Vec<T> x_hi = k == K - 1 ? splat(B) : T(2) * B * cum_w - B;
    const Vec<T> y_hi = k == K - 1 ? splat(B) : T(2) * B * cum_h - B;
    const Vec<T> lo = k == 0 ? splat(-std::numeric_limits<T>::infinity()) : (p.inverse ? y_lo : x_lo);
    const auto in_bin = z >= lo;
    bin.index = in_bin ? splat(T(k)) : bin.index;
    bin.x_knot = in_bin ? x_lo : bin.x_knot;
    bin.width = in_bin ? x_hi - x_lo : bin.width;
    bin.y_knot = in_bin ? y_lo : bin.y_knot;
    bin.height = in_bin ? y_hi - y_lo : bin.height;
    bin.p_width = in_bin ? pw : bin.p_width;
    bin.p_width_before = in_bin ? before_w : bin.p_width_before;
    bin.p_height = in_bin ? ph : bin.p_height;
    bin.p_height_before = in_bin ? before_h : bin.p_height_before;
    const Vec<T> d_lo = k > 0 ? load(bp.derivs.data() + (k - 1) * W) : splat(T(0));
    const Vec<T> d_hi = k < K - 1 ? load(bp.derivs.data() + k * W) : splat(T(0));
    bin.derivative_lo_raw = in_bin ? d_lo : bin.derivative_lo_raw;
    bin.derivative_hi_raw = in_bin ? d_hi : bin.derivative_hi_raw;
    before_w += pw;
    before_h += ph;
    x_lo = x_hi;
    y_lo = y_hi;
  }
  return bin;
}

// The spline inside one bin at position xi, with the quantities the gradients reuse.
template <typename T>
struct Segment {
  Vec<T> xi, s, d0, d1, t, c0, denominator, numerator, slope_poly;  // slope = s^2 P / D^2
  Vec<T> log_slope() const { return vlog<T>(s * s * slope_poly / (denominator * denominator)); }
};

template <typename T>
Segment<T> segment(const Bin<T>& bin, Vec<T> z, int64_t K, const RQSplineParams& p) {
  Segment<T> g;
  const T min_d = T(p.min_derivative);
  g.d0 = bin.index == T(0) ? splat(T(1)) : min_d + vsoftplus<T>(bin.derivative_lo_raw);
  g.d1 = bin.index == T(K - 1) ? splat(T(1)) : min_d + vsoftplus<T>(bin.derivative_hi_raw);
  g.s = bin.height / bin.width;
  g.c0 = g.d0 + g.d1 - T(2) * g.s;
  if (p.inverse) {
    const Vec<T> dy = z - bin.y_knot;
    const Vec<T> a = bin.height * (g.s - g.d0) + dy * g.c0;
    const Vec<T> b = bin.height * g.d0 - dy * g.c0;
    const Vec<T> c = -g.s * dy;
    Vec<T> disc = b * b - T(4) * a * c;
    disc = disc > T(0) ? disc : splat(T(0));
    g.xi = T(2) * c / (-b - vsqrt<T>(disc));
  } else {
    g.xi = (z - bin.x_knot) / bin.width;
  }
  const Vec<T> one_minus = T(1) - g.xi;
  g.t = g.xi * one_minus;
  g.denominator = g.s + g.c0 * g.t;
  g.numerator = g.s * g.xi * g.xi + g.d0 * g.t;
  g.slope_poly = g.d1 * g.xi * g.xi + T(2) * g.s * g.t + g.d0 * one_minus * one_minus;
  return g;
}

// Returns whether every input value was finite.
template <typename T>
bool forward_blocks(const T* x, const T* wr, const T* hr, const T* dr, int64_t n, int64_t K,
                    const RQSplineParams& p, int64_t block_begin, int64_t block_end, T* y,
                    T* logabsdet) {
  constexpr int64_t W = Simd<T>::width;
  const T B = T(p.tail_bound);
  BlockParams<T> bp(K);
  Vec<T> probe = splat(T(0));
  for (int64_t blk = block_begin; blk < block_end; ++blk) {
    const int64_t e0 = blk * W, count = std::min(W, n - e0);
    probe += bp.load(wr, hr, dr, e0, count);
    const Vec<T> inv_sum_w = softmax_exps(bp.widths.data(), K);
    const Vec<T> inv_sum_h = softmax_exps(bp.heights.data(), K);
    const Vec<T> xv = load_part(x + e0, count);
    probe += xv - xv;
    const auto inside = (xv >= -B) & (xv <= B);
    const Vec<T> z = xv < -B ? splat(-B) : (xv > B ? splat(B) : xv);
    const Bin<T> bin = locate(bp, inv_sum_w, inv_sum_h, z, p);
    const Segment<T> g = segment(bin, z, K, p);
    const Vec<T> log_slope = g.log_slope();
    const Vec<T> out = p.inverse ? g.xi * bin.width + bin.x_knot
                                 : bin.y_knot + bin.height * g.numerator / g.denominator;
    store_part(y + e0, count, inside ? out : xv);
    store_part(logabsdet + e0, count, inside ? (p.inverse ? -log_slope : log_slope) : splat(T(0)));
  }
  return horizontal_sum<T>(probe) == T(0);
}

// Writes the raw-parameter gradients of one softmax-normalised size vector ([K][W] buffer `out`)
// from the gradients of the bin's left knot and size, given p (exps * inv_sum) at the bin.
template <typename T>
void size_gradients(const T* exps, Vec<T> inv_sum, int64_t K, Vec<T> index, Vec<T> grad_knot,
                    Vec<T> grad_size, Vec<T> p_bin, Vec<T> p_before, T scale, T* out) {
  constexpr int64_t W = Simd<T>::width;
  const Vec<T> mean = grad_knot * p_before + grad_size * p_bin;
  for (int64_t k = 0; k < K; ++k) {
    const Vec<T> pk = load(exps + k * W) * inv_sum;
    const Vec<T> own = index > T(k) ? grad_knot : (index == T(k) ? grad_size : splat(T(0)));
    store(out + k * W, scale * pk * (own - mean));
  }
}

template <typename T>
void backward_blocks(const T* grad_y, const T* grad_ld, const T* x, const T* wr, const T* hr,
                     const T* dr, int64_t n, int64_t K, const RQSplineParams& p,
                     int64_t block_begin, int64_t block_end, T* dx, T* dwr, T* dhr, T* ddr) {
  constexpr int64_t W = Simd<T>::width;
  const T B = T(p.tail_bound);
  BlockParams<T> bp(K);
  std::vector<T> gw(K * W), gh(K * W), gd((K - 1) * W);
  const auto indices_K = untranspose_indices<T>(K), indices_K1 = untranspose_indices<T>(K - 1);
  for (int64_t blk = block_begin; blk < block_end; ++blk) {
    const int64_t e0 = blk * W, count = std::min(W, n - e0);
    bp.load(wr, hr, dr, e0, count);  // finiteness was checked by the forward
    const Vec<T> inv_sum_w = softmax_exps(bp.widths.data(), K);
    const Vec<T> inv_sum_h = softmax_exps(bp.heights.data(), K);
    const Vec<T> xv = load_part(x + e0, count);
    const auto inside = (xv >= -B) & (xv <= B);
    const Vec<T> z = xv < -B ? splat(-B) : (xv > B ? splat(B) : xv);
    const Bin<T> bin = locate(bp, inv_sum_w, inv_sum_h, z, p);
    const Segment<T> g = segment(bin, z, K, p);
    const Vec<T> h = bin.height, w = bin.width, xi = g.xi, s = g.s, t = g.t;
    const Vec<T> Dn = g.denominator, N = g.numerator, P = g.slope_poly;
    const Vec<T> inv_D2 = T(1) / (Dn * Dn), one_minus_2xi = T(1) - T(2) * xi;
    // Partial derivatives of y and of log|dy/dx| in the bin's local coordinates.
    const Vec<T> D_xi = g.c0 * one_minus_2xi;
    const Vec<T> y_xi = h * ((T(2) * s * xi + g.d0 * one_minus_2xi) * Dn - N * D_xi) * inv_D2;
    const Vec<T> y_s = h * (xi * xi * Dn - N * (T(1) - T(2) * t)) * inv_D2;
    const Vec<T> y_d0 = h * t * (Dn - N) * inv_D2;
    const Vec<T> y_d1 = -h * t * N * inv_D2;
    const Vec<T> l_xi = (T(2) * g.d1 * xi + T(2) * s * one_minus_2xi - T(2) * g.d0 * (T(1) - xi)) / P -
                        T(2) * D_xi / Dn;
    const Vec<T> l_s = T(2) / s + T(2) * t / P - T(2) * (T(1) - T(2) * t) / Dn;
    const Vec<T> l_d0 = (T(1) - xi) * (T(1) - xi) / P - T(2) * t / Dn;
    const Vec<T> l_d1 = xi * xi / P - T(2) * t / Dn;
    const Vec<T> grad_out = load_part(grad_y + e0, count);
    Vec<T> gy = grad_out, gl = load_part(grad_ld + e0, count), grad_in;
    if (p.inverse) {
      // x = f^{-1}(y): the forward's partials with gy -> -(dL/dy) and gl -> -gl.
      const Vec<T> slope = s * s * P * inv_D2;
      grad_in = (gy - gl * l_xi / w) / slope;
      gy = -grad_in;
      gl = -gl;
    }
    const Vec<T> G_xi = gy * y_xi + gl * l_xi;
    const Vec<T> G_s = gy * y_s + gl * l_s;
    if (!p.inverse) grad_in = G_xi / w;
    const Vec<T> zero = splat(T(0));
    const Vec<T> G_x_knot = inside ? -G_xi / w : zero;
    const Vec<T> G_width = inside ? -(G_s * s + G_xi * xi) / w : zero;
    const Vec<T> G_y_knot = inside ? gy : zero;
    const Vec<T> G_height = inside ? gy * N / Dn + G_s / w : zero;
    const Vec<T> G_d0 = inside ? (gy * y_d0 + gl * l_d0) * vsigmoid<T>(bin.derivative_lo_raw) : zero;
    const Vec<T> G_d1 = inside ? (gy * y_d1 + gl * l_d1) * vsigmoid<T>(bin.derivative_hi_raw) : zero;
    store_part(dx + e0, count, inside ? grad_in : grad_out);
    const T two_B = T(2) * B;
    size_gradients(bp.widths.data(), inv_sum_w, K, bin.index, two_B * G_x_knot, two_B * G_width,
                   bin.p_width, bin.p_width_before, T(1 - K * p.min_bin_width), gw.data());
    size_gradients(bp.heights.data(), inv_sum_h, K, bin.index, two_B * G_y_knot, two_B * G_height,
                   bin.p_height, bin.p_height_before, T(1 - K * p.min_bin_height), gh.data());
    for (int64_t k = 0; k < K - 1; ++k)  // d_{k+1} is raw k: d0 of bin k + 1, d1 of bin k
      store(gd.data() + k * W, bin.index == T(k + 1) ? G_d0 : (bin.index == T(k) ? G_d1 : zero));
    untranspose(gw.data(), e0, count, K, indices_K, bp.by_permutes, dwr);
    untranspose(gh.data(), e0, count, K, indices_K, bp.by_permutes, dhr);
    untranspose(gd.data(), e0, count, K - 1, indices_K1, bp.by_permutes, ddr);
  }
  stream_fence();
}

// Asks for transparent huge pages over the whole 2 MiB pages inside [p, p + bytes): a large,
// freshly mapped output then faults in 2 MiB at a time instead of 4 KiB (the parameter gradients
// are written once, all of them). Advice only: any error leaves the memory as it was.
inline void advise_huge_pages(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t huge = uintptr_t(1) << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + huge - 1) & ~(huge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + uintptr_t(bytes)) & ~(huge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace

template <typename T>
bool rq_spline_forward(const T* x, const T* widths_raw, const T* heights_raw, const T* derivs_raw,
                       int64_t n, int64_t K, const RQSplineParams& p, T* y, T* logabsdet,
                       int threads) {
  const int64_t blocks = (n + Simd<T>::width - 1) / Simd<T>::width;
  threads = threads_for(blocks, kBlocksPerThread, threads);
  std::vector<char> finite(threads, 1);
  parallel_for(blocks, threads, [&](int64_t begin, int64_t end, int t) {
    finite[t] = forward_blocks(x, widths_raw, heights_raw, derivs_raw, n, K, p, begin, end, y,
                               logabsdet);
  });
  return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

template <typename T>
void rq_spline_backward(const T* grad_y, const T* grad_logabsdet, const T* x, const T* widths_raw,
                        const T* heights_raw, const T* derivs_raw, int64_t n, int64_t K,
                        const RQSplineParams& p, T* dx, T* dwidths_raw, T* dheights_raw,
                        T* dderivs_raw, int threads) {
  const int64_t blocks = (n + Simd<T>::width - 1) / Simd<T>::width;
  threads = threads_for(blocks, kBlocksPerThread, threads);
  for (T* g : {dwidths_raw, dheights_raw}) advise_huge_pages(g, n * K * int64_t(sizeof(T)));
  advise_huge_pages(dderivs_raw, n * (K - 1) * int64_t(sizeof(T)));
  parallel_for(blocks, threads, [&](int64_t begin, int64_t end, int) {
    backward_blocks(grad_y, grad_logabsdet, x, widths_raw, heights_raw, derivs_raw, n, K, p, begin,
                    end, dx, dwidths_raw, dheights_raw, dderivs_raw);
  });
}

#define MSVAE_INSTANTIATE(T)                                                                   \
  template bool rq_spline_forward<T>(const T*, const T*, const T*, const T*, int64_t, int64_t, \
                                     const RQSplineParams&, T*, T*, int);                      \
  template void rq_spline_backward<T>(const T*, const T*, const T*, const T*, const T*,        \
                                      const T*, int64_t, int64_t, const RQSplineParams&, T*,   \
                                      T*, T*, T*, int);
MSVAE_INSTANTIATE(float)
MSVAE_INSTANTIATE(double)
#undef MSVAE_INSTANTIATE

}  // namespace msvae::cpu
