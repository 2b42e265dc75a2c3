// CUDA backend of Op 1 (DESIGN.md): batch Gaussian-mixture log-density, forward and backward.
//
// Everything runs in log2 units: with a = -log2(e)/2 * exp(-logvar) and b = -log2(e)/2 * (logvar + log 2pi)
// (precomputed once per component into a scratch buffer, together with mu), the per-element term is
//   v = log2(e) * f_d(i, j) = diff * (diff * a) + b,  diff = x_id - mu_jd,
// so the hot loops do sub, mul, fma and one ex2.approx per element. The base log-weight is a constant
// factor applied at the end; MSS's diagonal / next weights only touch the few j-steps where a warp's
// rows meet the diagonal (warp-uniform branch), everywhere else the weight-free path runs.
//
// Thread mapping (all kernels): `lanes` (a power of two <= 32) consecutive lanes share one row and
// each owns a chunk of DC dims (compile-time, so per-thread arrays stay in registers); a warp covers
// 32 / lanes rows; the warps of a block cover the same rows and split the streamed dimension
// (components j for forward / dx, queries i for dmu / dlogvar); partial states are merged through
// shared memory at the end, so there are no atomics and results are deterministic. The sum over d
// needed by the joint is a butterfly shuffle over the `lanes` lanes of a row (bitwise identical in
// every lane, so every lane keeps the same joint state).
//
// Forward: online logsumexp per (i, d) and per i. The running offset m only moves when a term exceeds
// it by more than kSlack (checked once per j with a warp vote), so the rescale exp is rarely run.
// Backward: dx by rows, dmu / dlogvar by columns, each recomputing P and R from the saved joint and
// marginal; nothing of size Q x B is stored.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "msvae/mixture_log_density.h"

namespace msvae {
namespace {

constexpr double kLog2e = 1.4426950408889634073599246810019;
constexpr double kLn2 = 0.69314718055994530941723212145818;
constexpr int kMaxWarps = 8;         // warps per block
constexpr int kMaxD = 1024;          // 32 lanes x DC = 32
constexpr float kSlack = 16.0f;      // lazy rescale: terms may exceed the running offset by 2^16

// ---------------------------------------------------------------- element helpers

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ double fast_exp2(double x) { return exp2(x); }
__device__ __forceinline__ float log2_acc(float x) { return log2f(x); }
__device__ __forceinline__ double log2_acc(double x) { return log2(x); }
template <typename A>
__device__ __forceinline__ A lowest() { return std::is_same<A, float>::value ? A(-FLT_MAX) : A(-DBL_MAX); }

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// DC consecutive values from the (suitably aligned) scratch buffers, vectorised where possible.
template <int DC>
__device__ __forceinline__ void load_chunk(float (&dst)[DC], const float* __restrict__ src) {
  if constexpr (DC % 4 == 0) {
#pragma unroll
    for (int k = 0; k < DC / 4; ++k) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(src) + k);
      dst[4 * k] = v.x; dst[4 * k + 1] = v.y; dst[4 * k + 2] = v.z; dst[4 * k + 3] = v.w;
    }
  } else if constexpr (DC % 2 == 0) {
#pragma unroll
    for (int k = 0; k < DC / 2; ++k) {
      const float2 v = __ldg(reinterpret_cast<const float2*>(src) + k);
      dst[2 * k] = v.x; dst[2 * k + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int k = 0; k < DC; ++k) dst[k] = __ldg(src + k);
  }
}
template <int DC>
__device__ __forceinline__ void load_chunk(double (&dst)[DC], const double* __restrict__ src) {
  if constexpr (DC % 2 == 0) {
#pragma unroll
    for (int k = 0; k < DC / 2; ++k) {
      const double2 v = __ldg(reinterpret_cast<const double2*>(src) + k);
      dst[2 * k] = v.x; dst[2 * k + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int k = 0; k < DC; ++k) dst[k] = __ldg(src + k);
  }
}

// Sum over the `lanes` lanes of a row (xor butterfly: the same bits land in every lane).
template <typename A>
__device__ __forceinline__ A row_sum(A v, int lanes) {
  for (int off = lanes >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Merge two online-logsumexp states (offset m, sum s) in log2 units.
template <typename A>
__device__ __forceinline__ void lse_merge(A& m, A& s, A m2, A s2) {
  const A mn = m > m2 ? m : m2;
  s = s * fast_exp2(m - mn) + s2 * fast_exp2(m2 - mn);
  m = mn;
}

// MSS correction lw(i, j) - base (log2 units); the diagonal wins when B == 1.
template <typename A>
__device__ __forceinline__ A mss_correction(int64_t i, int64_t j, int64_t B, A dd, A dn) {
  const int64_t inext = i + 1 == B ? 0 : i + 1;
  return j == i ? dd : (j == inext ? dn : A(0));
}

// Does [r0, r0 + n) contain an i with i == j or (i + 1) mod B == j, i.e. j or j - 1 mod B?
__device__ __forceinline__ bool meets_diagonal(int64_t j, int64_t r0, int n, int64_t B) {
  const int64_t jprev = j == 0 ? B - 1 : j - 1;
  return static_cast<uint64_t>(j - r0) < static_cast<uint64_t>(n) ||
         static_cast<uint64_t>(jprev - r0) < static_cast<uint64_t>(n);
}

// Shared-memory staging for the cross-warp merge: warp w (w = 1 .. nw-1 in turn) publishes
// `n` per-thread values, warp 0 folds them in. Lane-major layout, conflict-free.
template <typename A, int N, typename Fold>
__device__ __forceinline__ void merge_warps(A* buf, A (&vals)[N], Fold fold) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int w = 1; w < nw; ++w) {
    if (warp == w) {
#pragma unroll
      for (int k = 0; k < N; ++k) buf[k * 32 + lane] = vals[k];
    }
    __syncthreads();
    if (warp == 0) {
      A other[N];
#pragma unroll
      for (int k = 0; k < N; ++k) other[k] = buf[k * 32 + lane];
      fold(vals, other);
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------- prologue kernels

// Per component j: mu, a = -log2(e)/2 exp(-logvar), b = -log2(e)/2 (logvar + log 2pi); zero padding.
template <typename T, typename A>
__global__ void prep_params(const T* __restrict__ mu, const T* __restrict__ logvar, int64_t B, int D,
                            int Dpad, A* __restrict__ pmu, A* __restrict__ pa, A* __restrict__ pb) {
  const int64_t n = B * Dpad;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = t / Dpad;
    const int d = static_cast<int>(t - j * Dpad);
    A m = 0, a = 0, b = 0;
    if (d < D) {
      const A lv = to_acc(logvar[j * D + d]);
      m = to_acc(mu[j * D + d]);
      a = A(-0.5 * kLog2e) * exp(-lv);
      b = A(-0.5 * kLog2e) * (lv + A(kLog2Pi));
    }
    pmu[t] = m; pa[t] = a; pb[t] = b;
  }
}

// Per query i (backward): x, cM = log2(e) M - base2, gM (zero padding), and (cJ, gJ) interleaved.
template <typename T, typename A>
__global__ void prep_rows(const T* __restrict__ x, const T* __restrict__ joint, const T* __restrict__ marginal,
                          const T* __restrict__ grad_joint, const T* __restrict__ grad_marginal, int64_t Q,
                          int D, int Dpad, A base2, A* __restrict__ rx, A* __restrict__ rcm,
                          A* __restrict__ rgm, A* __restrict__ rj) {
  const int64_t n = Q * Dpad;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = t / Dpad;
    const int d = static_cast<int>(t - i * Dpad);
    A xv = 0, cm = 0, gm = 0;
    if (d < D) {
      xv = to_acc(x[i * D + d]);
      cm = A(kLog2e) * to_acc(marginal[i * D + d]) - base2;
      gm = to_acc(grad_marginal[i * D + d]);
    }
    rx[t] = xv; rcm[t] = cm; rgm[t] = gm;
    if (d == 0) {
      rj[2 * i] = A(kLog2e) * to_acc(joint[i]) - base2;
      rj[2 * i + 1] = to_acc(grad_joint[i]);
    }
  }
}

// ---------------------------------------------------------------- forward

template <bool kMss, typename A, int DC>
__device__ __forceinline__ void fwd_step(const A (&xr)[DC], const A (&mu)[DC], const A (&a)[DC], const A (&b)[DC],
                                         A lwc, int lanes, A (&m)[DC], A (&s)[DC], A& mj, A& sj) {
  A acc = 0, dl[DC], tmax = lowest<A>();
#pragma unroll
  for (int k = 0; k < DC; ++k) {
    const A diff = xr[k] - mu[k];
    A v = fma(diff, diff * a[k], b[k]);
    acc += v;
    if (kMss) v += lwc;
    dl[k] = v - m[k];
    tmax = fmax(tmax, dl[k]);
  }
  if (__any_sync(0xffffffffu, tmax > A(kSlack))) {  // rare: move the offset to the new term
#pragma unroll
    for (int k = 0; k < DC; ++k) {
      if (dl[k] > A(kSlack)) {
        const A diff = xr[k] - mu[k];
        A v = fma(diff, diff * a[k], b[k]);
        if (kMss) v += lwc;
        s[k] *= fast_exp2(m[k] - v);
        m[k] = v;
        dl[k] = 0;
      }
    }
  }
#pragma unroll
  for (int k = 0; k < DC; ++k) s[k] += fast_exp2(dl[k]);

  acc = row_sum(acc, lanes);
  if (kMss) acc += lwc;
  A dj = acc - mj;
  if (dj > A(kSlack)) {
    sj *= fast_exp2(mj - acc);
    mj = acc;
    dj = 0;
  }
  sj += fast_exp2(dj);
}

template <typename T, typename A, int DC>
__global__ void __launch_bounds__(kMaxWarps * 32)
fwd_kernel(const T* __restrict__ x, const A* __restrict__ pmu, const A* __restrict__ pa, const A* __restrict__ pb,
           int64_t Q, int64_t B, int D, int lanes, bool mss, A base, A dd, A dn,
           T* __restrict__ joint, T* __restrict__ marginal) {
  __shared__ A buf[(2 * DC + 2) * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int rw = 32 / lanes, c = lane & (lanes - 1), d0 = c * DC, Dpad = lanes * DC;
  const int64_t r0 = blockIdx.x * int64_t(rw);
  const int64_t i = r0 + lane / lanes;
  const int64_t ic = i < Q ? i : Q - 1;

  A xr[DC], m[DC], s[DC];
#pragma unroll
  for (int k = 0; k < DC; ++k) {
    xr[k] = d0 + k < D ? to_acc(x[ic * D + d0 + k]) : A(0);
    m[k] = lowest<A>();
    s[k] = 0;
  }
  A mj = lowest<A>(), sj = 0;

  const int64_t jb = B * warp / nw, je = B * (warp + 1) / nw;
  for (int64_t j = jb; j < je; ++j) {
    A mu[DC], a[DC], b[DC];
    const int64_t off = j * Dpad + d0;
    load_chunk(mu, pmu + off);
    load_chunk(a, pa + off);
    load_chunk(b, pb + off);
    if (mss && meets_diagonal(j, r0, rw, B))
      fwd_step<true>(xr, mu, a, b, mss_correction(ic, j, B, dd, dn), lanes, m, s, mj, sj);
    else
      fwd_step<false>(xr, mu, a, b, A(0), lanes, m, s, mj, sj);
  }

  A st[2 * DC + 2];  // (m, s) pairs: the DC marginals, then the joint
#pragma unroll
  for (int k = 0; k < DC; ++k) { st[2 * k] = m[k]; st[2 * k + 1] = s[k]; }
  st[2 * DC] = mj; st[2 * DC + 1] = sj;
  merge_warps(buf, st, [](A (&u)[2 * DC + 2], const A (&o)[2 * DC + 2]) {
#pragma unroll
    for (int k = 0; k <= DC; ++k) lse_merge(u[2 * k], u[2 * k + 1], o[2 * k], o[2 * k + 1]);
  });
  if (warp != 0 || i >= Q) return;
  const A ln2 = A(kLn2);
#pragma unroll
  for (int k = 0; k < DC; ++k)
    if (d0 + k < D) store(marginal + i * D + d0 + k, (st[2 * k] + log2_acc(st[2 * k + 1])) * ln2 + base);
  if (c == 0) store(joint + i, (st[2 * DC] + log2_acc(st[2 * DC + 1])) * ln2 + base);
}

// ---------------------------------------------------------------- backward: dx (rows)

// SJ_d = sum_j P_ij da_ijd and SM_d = sum_j R_ijd da_ijd with da = diff * a; dx = 2 ln2 (gJ SJ + gM SM).
template <bool kMss, typename A, int DC>
__device__ __forceinline__ void dx_step(const A (&xr)[DC], const A (&cm)[DC], A cj, const A (&mu)[DC],
                                        const A (&a)[DC], const A (&b)[DC], A lwc, int lanes,
                                        A (&sjv)[DC], A (&smv)[DC]) {
  A acc = 0, da[DC];
#pragma unroll
  for (int k = 0; k < DC; ++k) {
    const A diff = xr[k] - mu[k];
    da[k] = diff * a[k];
    A v = fma(diff, da[k], b[k]);
    acc += v;
    if (kMss) v += lwc;
    smv[k] = fma(fast_exp2(fmin(v - cm[k], A(0))), da[k], smv[k]);  // a responsibility: <= 1
  }
  acc = row_sum(acc, lanes);
  if (kMss) acc += lwc;
  const A p = fast_exp2(fmin(acc - cj, A(0)));
#pragma unroll
  for (int k = 0; k < DC; ++k) sjv[k] = fma(p, da[k], sjv[k]);
}

template <typename T, typename A, int DC>
__global__ void __launch_bounds__(kMaxWarps * 32)
dx_kernel(const A* __restrict__ rx, const A* __restrict__ rcm, const A* __restrict__ rgm, const A* __restrict__ rj,
          const A* __restrict__ pmu, const A* __restrict__ pa, const A* __restrict__ pb,
          int64_t Q, int64_t B, int D, int lanes, bool mss, A dd, A dn, T* __restrict__ dx) {
  __shared__ A buf[2 * DC * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int rw = 32 / lanes, c = lane & (lanes - 1), d0 = c * DC, Dpad = lanes * DC;
  const int64_t r0 = blockIdx.x * int64_t(rw);
  const int64_t i = r0 + lane / lanes;
  const int64_t ic = i < Q ? i : Q - 1;

  A xr[DC], cm[DC], sjv[DC], smv[DC];
  load_chunk(xr, rx + ic * Dpad + d0);
  load_chunk(cm, rcm + ic * Dpad + d0);
  const A cj = rj[2 * ic];
#pragma unroll
  for (int k = 0; k < DC; ++k) sjv[k] = smv[k] = 0;

  const int64_t jb = B * warp / nw, je = B * (warp + 1) / nw;
  for (int64_t j = jb; j < je; ++j) {
    A mu[DC], a[DC], b[DC];
    const int64_t off = j * Dpad + d0;
    load_chunk(mu, pmu + off);
    load_chunk(a, pa + off);
    load_chunk(b, pb + off);
    if (mss && meets_diagonal(j, r0, rw, B))
      dx_step<true>(xr, cm, cj, mu, a, b, mss_correction(ic, j, B, dd, dn), lanes, sjv, smv);
    else
      dx_step<false>(xr, cm, cj, mu, a, b, A(0), lanes, sjv, smv);
  }

  A acc[2 * DC];
#pragma unroll
  for (int k = 0; k < DC; ++k) { acc[k] = sjv[k]; acc[DC + k] = smv[k]; }
  merge_warps(buf, acc, [](A (&u)[2 * DC], const A (&o)[2 * DC]) {
#pragma unroll
    for (int k = 0; k < 2 * DC; ++k) u[k] += o[k];
  });
  if (warp != 0 || i >= Q) return;
  A gm[DC];
  load_chunk(gm, rgm + i * Dpad + d0);
  const A gj = rj[2 * i + 1], two_ln2 = A(2 * kLn2);
#pragma unroll
  for (int k = 0; k < DC; ++k)
    if (d0 + k < D) store(dx + i * D + d0 + k, two_ln2 * fma(gj, acc[k], gm[k] * acc[DC + k]));
}

// ---------------------------------------------------------------- backward: dmu, dlogvar (columns)

// Per component j: U_d = sum_i G da, W_d = sum_i G diff da, Z_d = sum_i G, with G = gJ P + gM R;
// dmu = -2 ln2 U, dlogvar = -ln2 W - Z / 2.
template <bool kMss, typename A, int DC>
__device__ __forceinline__ void dparam_step(const A (&xr)[DC], const A (&cm)[DC], const A (&gm)[DC], A cj, A gj,
                                            const A (&mu)[DC], const A (&a)[DC], const A (&b)[DC], A lwc,
                                            int lanes, A (&u)[DC], A (&w)[DC], A (&z)[DC]) {
  A acc = 0, da[DC], e[DC], gr[DC];
#pragma unroll
  for (int k = 0; k < DC; ++k) {
    const A diff = xr[k] - mu[k];
    da[k] = diff * a[k];
    e[k] = diff * da[k];
    A v = fma(diff, da[k], b[k]);
    acc += v;
    if (kMss) v += lwc;
    gr[k] = gm[k] * fast_exp2(fmin(v - cm[k], A(0)));
  }
  acc = row_sum(acc, lanes);
  if (kMss) acc += lwc;
  const A gp = gj * fast_exp2(fmin(acc - cj, A(0)));
#pragma unroll
  for (int k = 0; k < DC; ++k) {
    const A g = gr[k] + gp;
    u[k] = fma(g, da[k], u[k]);
    w[k] = fma(g, e[k], w[k]);
    z[k] += g;
  }
}

template <typename T, typename A, int DC>
__global__ void __launch_bounds__(kMaxWarps * 32)
dparam_kernel(const A* __restrict__ rx, const A* __restrict__ rcm, const A* __restrict__ rgm,
              const A* __restrict__ rj, const A* __restrict__ pmu, const A* __restrict__ pa,
              const A* __restrict__ pb, int64_t Q, int64_t B, int D, int lanes, bool mss, A dd, A dn,
              T* __restrict__ dmu, T* __restrict__ dlogvar) {
  __shared__ A buf[3 * DC * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int rw = 32 / lanes, c = lane & (lanes - 1), d0 = c * DC, Dpad = lanes * DC;
  const int64_t c0 = blockIdx.x * int64_t(rw);
  const int64_t j = c0 + lane / lanes;
  const int64_t jc = j < B ? j : B - 1;

  A mu[DC], a[DC], b[DC], u[DC], w[DC], z[DC];
  load_chunk(mu, pmu + jc * Dpad + d0);
  load_chunk(a, pa + jc * Dpad + d0);
  load_chunk(b, pb + jc * Dpad + d0);
#pragma unroll
  for (int k = 0; k < DC; ++k) u[k] = w[k] = z[k] = 0;

  const int64_t ib = Q * warp / nw, ie = Q * (warp + 1) / nw;
  for (int64_t i = ib; i < ie; ++i) {
    A xr[DC], cm[DC], gm[DC];
    const int64_t off = i * Dpad + d0;
    load_chunk(xr, rx + off);
    load_chunk(cm, rcm + off);
    load_chunk(gm, rgm + off);
    const A cj = rj[2 * i], gj = rj[2 * i + 1];
    // (i, j) is special when j == i or j == (i + 1) mod B, i.e. i or i + 1 mod B in [c0, c0 + rw).
    if (mss && meets_diagonal(i + 1 == B ? 0 : i + 1, c0, rw, B))
      dparam_step<true>(xr, cm, gm, cj, gj, mu, a, b, mss_correction(i, jc, B, dd, dn), lanes, u, w, z);
    else
      dparam_step<false>(xr, cm, gm, cj, gj, mu, a, b, A(0), lanes, u, w, z);
  }

  A acc[3 * DC];
#pragma unroll
  for (int k = 0; k < DC; ++k) { acc[k] = u[k]; acc[DC + k] = w[k]; acc[2 * DC + k] = z[k]; }
  merge_warps(buf, acc, [](A (&s)[3 * DC], const A (&o)[3 * DC]) {
#pragma unroll
    for (int k = 0; k < 3 * DC; ++k) s[k] += o[k];
  });
  if (warp != 0 || j >= B) return;
  const A ln2 = A(kLn2);
#pragma unroll
  for (int k = 0; k < DC; ++k) {
    if (d0 + k < D) {
      store(dmu + j * D + d0 + k, A(-2) * ln2 * acc[k]);
      store(dlogvar + j * D + d0 + k, -ln2 * acc[DC + k] - A(0.5) * acc[2 * DC + k]);
    }
  }
}

// ---------------------------------------------------------------- host side

// lanes (power of two <= 32) x DC (one of the instantiated chunk sizes) >= D, with little padding.
struct Layout {
  int dc, lanes;
  int dpad() const { return dc * lanes; }
};
constexpr int kChunks[] = {1, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32};

Layout choose_layout(int64_t D) {
  int lanes = 1;
  while (lanes < 32 && lanes * 16 < D) lanes *= 2;
  const int64_t need = (D + lanes - 1) / lanes;
  for (int dc : kChunks)
    if (dc >= need) return {dc, lanes};
  return {0, 0};
}

template <typename F>
void with_chunk(int dc, F&& f) {
  switch (dc) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 10: f(std::integral_constant<int, 10>{}); break;
    case 12: f(std::integral_constant<int, 12>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 24: f(std::integral_constant<int, 24>{}); break;
    default: f(std::integral_constant<int, 32>{}); break;
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
// Scratch sub-arrays start on 256-byte boundaries (vector loads need 16).
int64_t round_up(int64_t n) { return ceil_div(n, 64) * 64; }
// Warps per block: split the streamed length, but keep at least ~32 steps per warp.
int warps_for(int64_t len) { return static_cast<int>(std::min<int64_t>(kMaxWarps, std::max<int64_t>(1, len / 32))); }
unsigned grid_for(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 65535)); }

int validate(int64_t Q, int64_t B, int64_t D, const MixtureWeights& w, Layout* layout) {
  if (Q < 1 || B < 1 || D < 1 || D > kMaxD || (w.scheme == 1 && Q != B)) return cudaErrorInvalidValue;
  *layout = choose_layout(D);
  return cudaSuccess;
}

template <typename T, typename A>
int forward_impl(const void* x, const void* mu, const void* logvar, int64_t Q, int64_t B, int64_t D,
                 const MixtureWeights& w, void* joint, void* marginal, cudaStream_t stream) {
  Layout L;
  if (int err = validate(Q, B, D, w, &L)) return err;
  const int Dpad = L.dpad(), Di = static_cast<int>(D);
  const int64_t np = round_up(B * Dpad);
  A* scratch = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&scratch), 3 * np * sizeof(A), stream);
  if (err != cudaSuccess) return err;
  A *pmu = scratch, *pa = scratch + np, *pb = scratch + 2 * np;
  prep_params<T, A><<<grid_for(B * Dpad), 256, 0, stream>>>(static_cast<const T*>(mu), static_cast<const T*>(logvar),
                                                             B, Di, Dpad, pmu, pa, pb);
  err = cudaGetLastError();
  if (err == cudaSuccess) {
    const bool mss = w.scheme == 1;
    const A dd = A((w.diag - w.base) * kLog2e), dn = A((w.next - w.base) * kLog2e);
    const unsigned blocks = static_cast<unsigned>(ceil_div(Q, 32 / L.lanes));
    const int threads = 32 * warps_for(B);
    with_chunk(L.dc, [&](auto dc) {
      fwd_kernel<T, A, decltype(dc)::value><<<blocks, threads, 0, stream>>>(
          static_cast<const T*>(x), pmu, pa, pb, Q, B, Di, L.lanes, mss, A(w.base), dd, dn,
          static_cast<T*>(joint), static_cast<T*>(marginal));
    });
    err = cudaGetLastError();
  }
  const cudaError_t ferr = cudaFreeAsync(scratch, stream);
  return err != cudaSuccess ? err : ferr;
}

template <typename T, typename A>
int backward_impl(const void* grad_joint, const void* grad_marginal, const void* x, const void* mu,
                  const void* logvar, const void* joint, const void* marginal, int64_t Q, int64_t B, int64_t D,
                  const MixtureWeights& w, void* dx, void* dmu, void* dlogvar, cudaStream_t stream) {
  Layout L;
  if (int err = validate(Q, B, D, w, &L)) return err;
  const int Dpad = L.dpad(), Di = static_cast<int>(D);
  const int64_t np = round_up(B * Dpad), nr = round_up(Q * Dpad), nj = round_up(2 * Q);
  A* scratch = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&scratch), (3 * np + 3 * nr + nj) * sizeof(A), stream);
  if (err != cudaSuccess) return err;
  A *pmu = scratch, *pa = pmu + np, *pb = pa + np;
  A *rx = pb + np, *rcm = rx + nr, *rgm = rcm + nr, *rj = rgm + nr;
  const A base2 = A(w.base * kLog2e);
  prep_params<T, A><<<grid_for(B * Dpad), 256, 0, stream>>>(static_cast<const T*>(mu), static_cast<const T*>(logvar),
                                                             B, Di, Dpad, pmu, pa, pb);
  err = cudaGetLastError();
  if (err == cudaSuccess) {
    prep_rows<T, A><<<grid_for(Q * Dpad), 256, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(joint), static_cast<const T*>(marginal),
        static_cast<const T*>(grad_joint), static_cast<const T*>(grad_marginal), Q, Di, Dpad, base2, rx, rcm, rgm, rj);
    err = cudaGetLastError();
  }
  const bool mss = w.scheme == 1;
  const A dd = A((w.diag - w.base) * kLog2e), dn = A((w.next - w.base) * kLog2e);
  // The backward kernels keep 8-10 DC values per thread: split 16-wide chunks over twice the lanes
  // (same Dpad, so the scratch layout is unchanged) to stay spill-free at 2+ blocks per SM.
  const Layout Lp = L.dc == 16 && L.lanes < 32 ? Layout{8, 2 * L.lanes} : L;
  if (err == cudaSuccess) {
    with_chunk(Lp.dc, [&](auto dc) {
      dx_kernel<T, A, decltype(dc)::value><<<static_cast<unsigned>(ceil_div(Q, 32 / Lp.lanes)), 32 * warps_for(B), 0, stream>>>(
          rx, rcm, rgm, rj, pmu, pa, pb, Q, B, Di, Lp.lanes, mss, dd, dn, static_cast<T*>(dx));
    });
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) {
    with_chunk(Lp.dc, [&](auto dc) {
      dparam_kernel<T, A, decltype(dc)::value><<<static_cast<unsigned>(ceil_div(B, 32 / Lp.lanes)), 32 * warps_for(Q), 0, stream>>>(
          rx, rcm, rgm, rj, pmu, pa, pb, Q, B, Di, Lp.lanes, mss, dd, dn, static_cast<T*>(dmu), static_cast<T*>(dlogvar));
    });
    err = cudaGetLastError();
  }
  const cudaError_t ferr = cudaFreeAsync(scratch, stream);
  return err != cudaSuccess ? err : ferr;
}

}  // namespace

int mixture_log_density_forward_cuda(DType dtype, const void* x, const void* mu, const void* logvar,
                                     int64_t Q, int64_t B, int64_t D, MixtureWeights w,
                                     void* joint, void* marginal, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::Float32: return forward_impl<float, float>(x, mu, logvar, Q, B, D, w, joint, marginal, s);
    case DType::Float64: return forward_impl<double, double>(x, mu, logvar, Q, B, D, w, joint, marginal, s);
    case DType::Float16: return forward_impl<__half, float>(x, mu, logvar, Q, B, D, w, joint, marginal, s);
    case DType::BFloat16: return forward_impl<__nv_bfloat16, float>(x, mu, logvar, Q, B, D, w, joint, marginal, s);
  }
  return cudaErrorInvalidValue;
}

int mixture_log_density_backward_cuda(DType dtype, const void* grad_joint, const void* grad_marginal,
                                      const void* x, const void* mu, const void* logvar,
                                      const void* joint, const void* marginal,
                                      int64_t Q, int64_t B, int64_t D, MixtureWeights w,
                                      void* dx, void* dmu, void* dlogvar, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
#define MSVAE_BWD(T, A) \
  backward_impl<T, A>(grad_joint, grad_marginal, x, mu, logvar, joint, marginal, Q, B, D, w, dx, dmu, dlogvar, s)
  switch (dtype) {
    case DType::Float32: return MSVAE_BWD(float, float);
    case DType::Float64: return MSVAE_BWD(double, double);
    case DType::Float16: return MSVAE_BWD(__half, float);
    case DType::BFloat16: return MSVAE_BWD(__nv_bfloat16, float);
  }
#undef MSVAE_BWD
  return cudaErrorInvalidValue;
}

const char* cuda_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace msvae
