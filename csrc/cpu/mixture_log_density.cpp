// CPU implementation of the batch Gaussian-mixture log-density (op 1 of DESIGN.md).
//
// Rows (queries) are split across threads. Each row streams over the components in blocks of
// kBlock with an online logsumexp, so no Q x B (or Q x B x D) intermediate exists. Component
// constants are stored transposed ([D][B], padded to whole blocks) so the inner loops run over
// components in SIMD vectors whatever D is; padded components get log-weight -inf and contribute
// nothing measurable (no finite sentinel that a true log-density could fall below). Each block costs one pass per dimension: the log-density, its running sum
// over d (for the joint), the block max and the exp-sum relative to the running max are computed
// together; only a block whose max exceeds the running max by more than kHeadroom (the first block
// of a row, or a rare jump) is summed again. The backward pass recomputes the per-block
// log-densities in the forward's exact order of operations, and clamps each log-responsibility
// (log-density minus its logsumexp, <= 0 exactly) at 0, so rounding at extreme scales (|logvar|
// near its limit, far-away x) never turns a responsibility into an overflow; dx accumulates per
// row, dmu / dlogvar in per-thread [D][panel] buffers summed at the end of each column panel
// (panels bound that scratch memory).
#include "cpu/mixture_log_density.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/parallel_for.h"
#include "cpu/vector_math.h"

namespace msvae::cpu {
namespace {

constexpr int64_t kBlock = 256;
constexpr int64_t kMinWorkPerThread = int64_t(1) << 18;  // (query, component, dimension) triples
static_assert(kBlock % Simd<float>::width == 0 && kBlock % Simd<double>::width == 0);

template <typename T>
constexpr T kHeadroom = sizeof(T) == 4 ? T(60) : T(600);  // exp(kHeadroom) * kBlock is finite

// Per-component constants, transposed to [D][padded B]: mu, exp(-logvar), logvar + log(2 pi).
template <typename T>
struct Components {
  int64_t B, padded;
  std::vector<T> mu, inv_var, norm;
  Components(const T* mu_rows, const T* logvar_rows, int64_t B_, int64_t D)
      : B(B_), padded((B_ + kBlock - 1) / kBlock * kBlock), mu(padded * D, T(0)),
        inv_var(padded * D, T(0)), norm(padded * D, T(0)) {
    for (int64_t j = 0; j < B; ++j)
      for (int64_t d = 0; d < D; ++d) {
        const T lv = logvar_rows[j * D + d];
        mu[d * padded + j] = mu_rows[j * D + d];
        inv_var[d * padded + j] = std::exp(-lv);
        norm[d * padded + j] = lv + T(kLog2Pi);
      }
  }
};

// lw(i, j) for the block j in [j0, j0 + kBlock) into out; -inf past B.
template <typename T>
void fill_log_weights(const MixtureWeights& w, int64_t i, int64_t j0, int64_t B, T* out) {
  const int64_t n = std::min(kBlock, B - j0);
  std::fill(out, out + n, T(w.base));
  std::fill(out + n, out + kBlock, -std::numeric_limits<T>::infinity());
  if (w.scheme == 1) {
    const int64_t next = (i + 1) % B;
    if (next >= j0 && next < j0 + n) out[next - j0] = T(w.next);
    if (i >= j0 && i < j0 + n) out[i - j0] = T(w.diag);
  }
}

// Online logsumexp: running max m and sum of exp(v - m).
template <typename T>
struct LogSumExp {
  T max = -std::numeric_limits<T>::infinity();
  T sum = 0;
  // Folds in a block whose max is block_max and whose exp-sum relative to `ref` is ref_sum.
  void add(T block_max, T ref, T ref_sum) {
    const T new_max = std::max(max, block_max);
    sum = sum * std::exp(max - new_max) + ref_sum * std::exp(ref - new_max);
    max = new_max;
  }
  T value() const { return max + std::log(sum); }
};

// Adds the block of values produced by value(j) (j = kBlock-vector offsets) to lse: one pass when
// no value exceeds the running max by more than kHeadroom, else a second pass relative to the
// block max. value() may have side effects only on the first call for each offset (first_pass).
template <typename T, typename ValueFn>
void add_block(LogSumExp<T>& lse, ValueFn&& value) {
  using Vec = typename Simd<T>::Vec;
  constexpr int64_t W = Simd<T>::width;
  const bool have_ref = lse.max > -std::numeric_limits<T>::infinity();
  const Vec ref = splat(have_ref ? lse.max : T(0));
  Vec lane_max = splat(-std::numeric_limits<T>::infinity()), lane_sum = splat(T(0));
  for (int64_t j = 0; j < kBlock; j += W) {
    const Vec v = value(j, true);
    lane_max = vmax<T>(lane_max, v);
    lane_sum += vexp(v - ref);
  }
  const T block_max = horizontal_max<T>(lane_max);
  if (block_max == -std::numeric_limits<T>::infinity()) return;  // every term is exp(-inf) = 0
  if (have_ref && block_max <= lse.max + kHeadroom<T>) {
    lse.add(block_max, lse.max, horizontal_sum<T>(lane_sum));
    return;
  }
  const Vec block_ref = splat(block_max);
  lane_sum = splat(T(0));
  for (int64_t j = 0; j < kBlock; j += W) lane_sum += vexp(value(j, false) - block_ref);
  lse.add(block_max, block_max, horizontal_sum<T>(lane_sum));
}

template <typename T>
void forward_rows(const T* x, const Components<T>& c, int64_t D, const MixtureWeights& w,
                  int64_t row_begin, int64_t row_end, T* joint, T* marginal) {
  using Vec = typename Simd<T>::Vec;
  alignas(64) T log_w[kBlock], sum_f[kBlock];
  std::vector<LogSumExp<T>> lse_marginal(D);
  for (int64_t i = row_begin; i < row_end; ++i) {
    LogSumExp<T> lse_joint;
    std::fill(lse_marginal.begin(), lse_marginal.end(), LogSumExp<T>{});
    for (int64_t j0 = 0; j0 < c.padded; j0 += kBlock) {
      fill_log_weights(w, i, j0, c.B, log_w);
      std::copy(log_w, log_w + kBlock, sum_f);
      for (int64_t d = 0; d < D; ++d) {
        const Vec xd = splat(x[i * D + d]);
        const T* mu = c.mu.data() + d * c.padded + j0;
        const T* iv = c.inv_var.data() + d * c.padded + j0;
        const T* nm = c.norm.data() + d * c.padded + j0;
        add_block(lse_marginal[d], [&](int64_t j, bool first_pass) {
          const Vec diff = xd - load(mu + j);
          const Vec f = T(-0.5) * (diff * diff * load(iv + j) + load(nm + j));
          if (first_pass) store(sum_f + j, load(sum_f + j) + f);
          return f + load(log_w + j);
        });
      }
      add_block(lse_joint, [&](int64_t j, bool) { return load(sum_f + j); });
    }
    joint[i] = lse_joint.value();
    for (int64_t d = 0; d < D; ++d) marginal[i * D + d] = lse_marginal[d].value();
  }
}

// Adds this row range's contribution to dx (rows) and to the panel buffers dmu_t, dlv_t
// ([D][stride], entry k holding component panel_begin + k).
template <typename T>
void backward_rows(const T* grad_joint, const T* grad_marginal, const T* x, const T* joint,
                   const T* marginal, const Components<T>& c, int64_t D, const MixtureWeights& w,
                   int64_t row_begin, int64_t row_end, int64_t panel_begin, int64_t panel_end,
                   int64_t stride, T* dx, T* dmu_t, T* dlv_t) {
  using Vec = typename Simd<T>::Vec;
  constexpr int64_t W = Simd<T>::width;
  alignas(64) T log_w[kBlock], p[kBlock];
  for (int64_t i = row_begin; i < row_end; ++i) {
    const Vec gj = splat(grad_joint[i]), ji = splat(joint[i]);
    for (int64_t j0 = panel_begin; j0 < panel_end; j0 += kBlock) {
      fill_log_weights(w, i, j0, c.B, log_w);
      std::copy(log_w, log_w + kBlock, p);
      for (int64_t d = 0; d < D; ++d) {
        const Vec xd = splat(x[i * D + d]);
        const T* mu = c.mu.data() + d * c.padded + j0;
        const T* iv = c.inv_var.data() + d * c.padded + j0;
        const T* nm = c.norm.data() + d * c.padded + j0;
        for (int64_t j = 0; j < kBlock; j += W) {
          const Vec diff = xd - load(mu + j);
          store(p + j, load(p + j) + T(-0.5) * (diff * diff * load(iv + j) + load(nm + j)));
        }
      }
      const Vec zero = splat(T(0));
      for (int64_t j = 0; j < kBlock; j += W)  // gJ_i P_ij
        store(p + j, gj * vexp(vmin<T>(load(p + j) - ji, zero)));
      for (int64_t d = 0; d < D; ++d) {
        const Vec xd = splat(x[i * D + d]), gm = splat(grad_marginal[i * D + d]);
        const Vec shift = splat(marginal[i * D + d]);
        const T* mu = c.mu.data() + d * c.padded + j0;
        const T* iv = c.inv_var.data() + d * c.padded + j0;
        const T* nm = c.norm.data() + d * c.padded + j0;
        T* dmu = dmu_t + d * stride + (j0 - panel_begin);
        T* dlv = dlv_t + d * stride + (j0 - panel_begin);
        Vec dx_acc = splat(T(0));
        for (int64_t j = 0; j < kBlock; j += W) {
          const Vec diff = xd - load(mu + j);
          const Vec scaled = diff * load(iv + j);
          const Vec sq = diff * diff * load(iv + j);  // as the forward rounds it
          const Vec f = T(-0.5) * (sq + load(nm + j));
          const Vec r = vexp(vmin<T>(f + load(log_w + j) - shift, zero));
          const Vec g = load(p + j) + gm * r;
          dx_acc -= g * scaled;
          store(dmu + j, load(dmu + j) + g * scaled);
          store(dlv + j, load(dlv + j) + g * T(0.5) * (sq - T(1)));
        }
        dx[i * D + d] += horizontal_sum<T>(dx_acc);
      }
    }
  }
}

}  // namespace

template <typename T>
void mixture_log_density_forward(const T* x, const T* mu, const T* logvar, int64_t Q, int64_t B,
                                 int64_t D, MixtureWeights w, T* joint, T* marginal, int threads) {
  const Components<T> c(mu, logvar, B, D);
  threads = threads_for(Q * B * D, kMinWorkPerThread, std::min<int64_t>(threads, Q));
  parallel_for(Q, threads, [&](int64_t begin, int64_t end, int) {
    forward_rows(x, c, D, w, begin, end, joint, marginal);
  });
}

template <typename T>
void mixture_log_density_backward(const T* grad_joint, const T* grad_marginal, const T* x,
                                  const T* mu, const T* logvar, const T* joint, const T* marginal,
                                  int64_t Q, int64_t B, int64_t D, MixtureWeights w, T* dx, T* dmu,
                                  T* dlogvar, int threads, int64_t scratch_bytes) {
  const Components<T> c(mu, logvar, B, D);
  threads = threads_for(Q * B * D, kMinWorkPerThread, std::min<int64_t>(threads, Q));
  // Panel width: the per-thread dmu / dlogvar buffers (2 * D * width each) stay within
  // scratch_bytes, in whole blocks, at least one block.
  const int64_t per_column = int64_t(threads) * 2 * D * int64_t(sizeof(T));
  const int64_t width = std::min(c.padded, std::max(kBlock, scratch_bytes / per_column / kBlock * kBlock));
  std::vector<T> scratch(size_t(threads) * 2 * D * width);
  std::fill(dx, dx + Q * D, T(0));
  for (int64_t p0 = 0; p0 < c.padded; p0 += width) {
    const int64_t p1 = std::min(c.padded, p0 + width), pw = std::min(B, p1) - p0;
    std::fill(scratch.begin(), scratch.end(), T(0));
    parallel_for(Q, threads, [&](int64_t begin, int64_t end, int t) {
      T* dmu_t = scratch.data() + size_t(t) * 2 * D * width;
      backward_rows(grad_joint, grad_marginal, x, joint, marginal, c, D, w, begin, end, p0, p1,
                    width, dx, dmu_t, dmu_t + D * width);
    });
    // Sum the thread buffers (stride `width`, the first pw columns are real) into [B, D] outputs.
    parallel_for(pw, threads, [&](int64_t begin, int64_t end, int) {
      for (int64_t k = begin; k < end; ++k)
        for (int64_t d = 0; d < D; ++d) {
          T gmu = 0, glv = 0;
          for (int t = 0; t < threads; ++t) {
            const T* buf = scratch.data() + size_t(t) * 2 * D * width;
            gmu += buf[d * width + k];
            glv += buf[(D + d) * width + k];
          }
          dmu[(p0 + k) * D + d] = gmu;
          dlogvar[(p0 + k) * D + d] = glv;
        }
    });
  }
}

#define MSVAE_INSTANTIATE(T)                                                                     \
  template void mixture_log_density_forward<T>(const T*, const T*, const T*, int64_t, int64_t,  \
                                               int64_t, MixtureWeights, T*, T*, int);           \
  template void mixture_log_density_backward<T>(const T*, const T*, const T*, const T*,         \
                                                const T*, const T*, const T*, int64_t, int64_t, \
                                                int64_t, MixtureWeights, T*, T*, T*, int,       \
                                                int64_t);
MSVAE_INSTANTIATE(float)
MSVAE_INSTANTIATE(double)
#undef MSVAE_INSTANTIATE

}  // namespace msvae::cpu
