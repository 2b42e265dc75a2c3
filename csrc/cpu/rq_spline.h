// CPU entry points of the rational-quadratic spline (op 2 of DESIGN.md; the math is in
// msvae/ops/reference.py). Arrays are contiguous row-major over n elements: x, y, logabsdet [n],
// widths_raw / heights_raw [n, K], derivs_raw [n, K - 1].
#pragma once
#include <cstdint>

namespace msvae::cpu {

struct RQSplineParams {
  double tail_bound;
  bool inverse;
  double min_bin_width;
  double min_bin_height;
  double min_derivative;
};

// Returns whether every input value was finite (the outputs are meaningless otherwise).
template <typename T>
bool rq_spline_forward(const T* x, const T* widths_raw, const T* heights_raw, const T* derivs_raw,
                       int64_t n, int64_t K, const RQSplineParams& p, T* y, T* logabsdet,
                       int threads);

// Writes the gradients of sum(grad_y * y + grad_logabsdet * logabsdet) with respect to x and the
// raw parameters (shaped like them; not accumulated into).
template <typename T>
void rq_spline_backward(const T* grad_y, const T* grad_logabsdet, const T* x, const T* widths_raw,
                        const T* heights_raw, const T* derivs_raw, int64_t n, int64_t K,
                        const RQSplineParams& p, T* dx, T* dwidths_raw, T* dheights_raw,
                        T* dderivs_raw, int threads);

}  // namespace msvae::cpu
