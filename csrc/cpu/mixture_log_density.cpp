// CPU implementation of the batch Gaussian-mixture log-density (op 1 of DESIGN.md).
//
// Rows (queries) are split across threads. Each row streams over the components in blocks of
// kBlock with an online logsumexp, so no Q x B (or Q x B x D) intermediate exists. The component
// constants are stored transposed ([D][B]) so the innermost loop runs over components, contiguous
// and vectorised whatever D is. The backward pass recomputes the per-block log-densities; dx is
// accumulated per row, dmu / dlogvar in per-thread [D][panel] buffers that are summed at the end
// of each column panel (panels bound that scratch memory).
#include "cpu/mixture_log_density.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include "cpu/vector_math.h"

namespace msvae::cpu {
namespace {

constexpr int64_t kBlock = 256;

// Calls fn(begin, end, thread_index) on `threads` contiguous chunks of [0, n).
template <typename Fn>
void parallel_for(int64_t n, int threads, Fn&& fn) {
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  if (threads == 1) {
    fn(int64_t(0), n, 0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int64_t chunk = (n + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    const int64_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    pool.emplace_back([&fn, begin, end, t] { fn(begin, end, t); });
  }
  fn(int64_t(0), std::min(n, chunk), 0);
  for (auto& th : pool) th.join();
}

// Per-component constants, transposed to [D][B]: mu, exp(-logvar), logvar + log(2 pi).
template <typename T>
struct Components {
  std::vector<T> mu, inv_var, norm;
  Components(const T* mu_rows, const T* logvar_rows, int64_t B, int64_t D)
      : mu(B * D), inv_var(B * D), norm(B * D) {
    for (int64_t j = 0; j < B; ++j)
      for (int64_t d = 0; d < D; ++d) {
        const T lv = logvar_rows[j * D + d];
        mu[d * B + j] = mu_rows[j * D + d];
        inv_var[d * B + j] = std::exp(-lv);
        norm[d * B + j] = lv + T(kLog2Pi);
      }
  }
};

// lw(i, j) for j in [j0, j0 + n) into out[0, n).
template <typename T>
void fill_log_weights(const MixtureWeights& w, int64_t i, int64_t j0, int64_t n, int64_t B, T* out) {
  std::fill(out, out + n, T(w.base));
  if (w.scheme == 1) {
    const int64_t next = (i + 1) % B;
    if (next >= j0 && next < j0 + n) out[next - j0] = T(w.next);
    if (i >= j0 && i < j0 + n) out[i - j0] = T(w.diag);
  }
}

// max(v[0, n)) in kLanes independent lanes: GCC leaves a plain max reduction scalar (it may not
// reassociate floating-point max without -ffast-math), which costs a dependent vmaxss per element.
template <typename T>
T max_of(const T* v, int64_t n) {
  constexpr int64_t kLanes = 64 / sizeof(T);
  T lanes[kLanes];
  std::fill(lanes, lanes + kLanes, -std::numeric_limits<T>::infinity());
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = v[j + l] > lanes[l] ? v[j + l] : lanes[l];
  for (; j < n; ++j) lanes[0] = v[j] > lanes[0] ? v[j] : lanes[0];
  return *std::max_element(lanes, lanes + kLanes);
}

// Online logsumexp state: running max and sum of exp(v - max).
template <typename T>
struct LogSumExp {
  T max = -std::numeric_limits<T>::infinity();
  T sum = 0;
  void add(const T* v, int64_t n) {
    const T new_max = std::max(max, max_of(v, n));
    T block_sum = 0;
#pragma omp simd reduction(+ : block_sum)
    for (int64_t j = 0; j < n; ++j) block_sum += vexp(v[j] - new_max);
    sum = sum * vexp(max - new_max) + block_sum;
    max = new_max;
  }
  T value() const { return max + std::log(sum); }
};

template <typename T>
void forward_rows(const T* x, const Components<T>& c, int64_t B, int64_t D, const MixtureWeights& w,
                  int64_t row_begin, int64_t row_end, T* joint, T* marginal) {
  std::vector<T> log_w(kBlock), sum_f(kBlock), v(kBlock);
  std::vector<LogSumExp<T>> lse_marginal(D);
  for (int64_t i = row_begin; i < row_end; ++i) {
    LogSumExp<T> lse_joint;
    std::fill(lse_marginal.begin(), lse_marginal.end(), LogSumExp<T>{});
    for (int64_t j0 = 0; j0 < B; j0 += kBlock) {
      const int64_t n = std::min(kBlock, B - j0);
      fill_log_weights(w, i, j0, n, B, log_w.data());
      std::copy(log_w.begin(), log_w.begin() + n, sum_f.begin());
      for (int64_t d = 0; d < D; ++d) {
        const T xd = x[i * D + d];
        const T* mu = c.mu.data() + d * B + j0;
        const T* iv = c.inv_var.data() + d * B + j0;
        const T* nm = c.norm.data() + d * B + j0;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const T diff = xd - mu[j];
          const T f = T(-0.5) * (diff * diff * iv[j] + nm[j]);
          sum_f[j] += f;
          v[j] = f + log_w[j];
        }
        lse_marginal[d].add(v.data(), n);
      }
      lse_joint.add(sum_f.data(), n);
    }
    joint[i] = lse_joint.value();
    for (int64_t d = 0; d < D; ++d) marginal[i * D + d] = lse_marginal[d].value();
  }
}

// Adds this row range's contribution to dx (rows) and to the panel buffers dmu_t, dlv_t
// ([D][stride], entry k holding component panel_begin + k).
template <typename T>
void backward_rows(const T* grad_joint, const T* grad_marginal, const T* x, const T* joint,
                   const T* marginal, const Components<T>& c, int64_t B, int64_t D,
                   const MixtureWeights& w, int64_t row_begin, int64_t row_end, int64_t panel_begin,
                   int64_t panel_end, int64_t stride, T* dx, T* dmu_t, T* dlv_t) {
  std::vector<T> log_w(kBlock), p(kBlock);
  for (int64_t i = row_begin; i < row_end; ++i) {
    const T gj = grad_joint[i], ji = joint[i];
    for (int64_t j0 = panel_begin; j0 < panel_end; j0 += kBlock) {
      const int64_t n = std::min(kBlock, panel_end - j0);
      fill_log_weights(w, i, j0, n, B, log_w.data());
      std::copy(log_w.begin(), log_w.begin() + n, p.begin());
      for (int64_t d = 0; d < D; ++d) {
        const T xd = x[i * D + d];
        const T* mu = c.mu.data() + d * B + j0;
        const T* iv = c.inv_var.data() + d * B + j0;
        const T* nm = c.norm.data() + d * B + j0;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const T diff = xd - mu[j];
          p[j] += T(-0.5) * (diff * diff * iv[j] + nm[j]);
        }
      }
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) p[j] = gj * vexp(p[j] - ji);  // grad_joint * P_ij
      for (int64_t d = 0; d < D; ++d) {
        const T xd = x[i * D + d], gm = grad_marginal[i * D + d], mid = marginal[i * D + d];
        const T* mu = c.mu.data() + d * B + j0;
        const T* iv = c.inv_var.data() + d * B + j0;
        const T* nm = c.norm.data() + d * B + j0;
        T* dmu = dmu_t + d * stride + (j0 - panel_begin);
        T* dlv = dlv_t + d * stride + (j0 - panel_begin);
        T dx_acc = 0;
#pragma omp simd reduction(+ : dx_acc)
        for (int64_t j = 0; j < n; ++j) {
          const T diff = xd - mu[j];
          const T scaled = diff * iv[j];
          const T sq = diff * scaled;
          const T g = p[j] + gm * vexp(T(-0.5) * (sq + nm[j]) + log_w[j] - mid);
          dx_acc -= g * scaled;
          dmu[j] += g * scaled;
          dlv[j] += g * T(0.5) * (sq - T(1));
        }
        dx[i * D + d] += dx_acc;
      }
    }
  }
}

}  // namespace

template <typename T>
void mixture_log_density_forward(const T* x, const T* mu, const T* logvar, int64_t Q, int64_t B,
                                 int64_t D, MixtureWeights w, T* joint, T* marginal, int threads) {
  const Components<T> c(mu, logvar, B, D);
  parallel_for(Q, threads, [&](int64_t begin, int64_t end, int) {
    forward_rows(x, c, B, D, w, begin, end, joint, marginal);
  });
}

template <typename T>
void mixture_log_density_backward(const T* grad_joint, const T* grad_marginal, const T* x,
                                  const T* mu, const T* logvar, const T* joint, const T* marginal,
                                  int64_t Q, int64_t B, int64_t D, MixtureWeights w, T* dx, T* dmu,
                                  T* dlogvar, int threads, int64_t scratch_bytes) {
  const Components<T> c(mu, logvar, B, D);
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, Q)));
  // Panel width: the per-thread dmu / dlogvar buffers (2 * D * width each) stay within
  // scratch_bytes, in whole blocks, at least one block.
  const int64_t per_column = int64_t(threads) * 2 * D * int64_t(sizeof(T));
  const int64_t width = std::min(B, std::max(kBlock, scratch_bytes / per_column / kBlock * kBlock));
  std::vector<T> scratch(size_t(threads) * 2 * D * width);
  std::fill(dx, dx + Q * D, T(0));
  for (int64_t p0 = 0; p0 < B; p0 += width) {
    const int64_t p1 = std::min(B, p0 + width), pw = p1 - p0;
    std::fill(scratch.begin(), scratch.end(), T(0));
    parallel_for(Q, threads, [&](int64_t begin, int64_t end, int t) {
      T* dmu_t = scratch.data() + size_t(t) * 2 * D * width;
      backward_rows(grad_joint, grad_marginal, x, joint, marginal, c, B, D, w, begin, end, p0, p1,
                    width, dx, dmu_t, dmu_t + D * width);
    });
    // Sum the thread buffers (stride `width`, first pw columns used) into [B, D] outputs.
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
                                                int64_t, MixtureWeights, T*, T*, T*, int,     \
                                                int64_t);
MSVAE_INSTANTIATE(float)
MSVAE_INSTANTIATE(double)
#undef MSVAE_INSTANTIATE

}  // namespace msvae::cpu
