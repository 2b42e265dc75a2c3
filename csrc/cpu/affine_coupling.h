// CPU entry points of the soft-clamped affine transform (op 2 of DESIGN.md; the math is in
// msvae/ops/reference.py). All arrays are contiguous with n elements.
#pragma once
#include <cstdint>

namespace msvae::cpu {

// s = clamp tanh(scale_raw / clamp); forward y = x e^s + shift, logabsdet = s;
// inverse y = (x - shift) e^{-s}, logabsdet = -s. Returns whether every input value was finite.
template <typename T>
bool affine_coupling_forward(const T* x, const T* shift, const T* scale_raw, int64_t n, double clamp,
                             bool inverse, T* y, T* logabsdet, int threads);

// Writes the gradients of sum(grad_y * y + grad_logabsdet * logabsdet) with respect to x, shift
// and scale_raw.
template <typename T>
void affine_coupling_backward(const T* grad_y, const T* grad_logabsdet, const T* x, const T* shift,
                              const T* scale_raw, int64_t n, double clamp, bool inverse, T* dx,
                              T* dshift, T* dscale_raw, int threads);

}  // namespace msvae::cpu
