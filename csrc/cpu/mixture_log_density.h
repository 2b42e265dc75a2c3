// CPU entry points of op 1 (see msvae/mixture_log_density.h for the math and the layouts).
#pragma once
#include <cstdint>

#include "msvae/mixture_log_density.h"

namespace msvae::cpu {

template <typename T>
void mixture_log_density_forward(const T* x, const T* mu, const T* logvar, int64_t Q, int64_t B,
                                 int64_t D, MixtureWeights w, T* joint, T* marginal, int threads);

// Writes dx [Q, D], dmu [B, D], dlogvar [B, D]. Per-thread scratch stays within scratch_bytes
// (or one block of components per thread, whichever is larger).
template <typename T>
void mixture_log_density_backward(const T* grad_joint, const T* grad_marginal, const T* x,
                                  const T* mu, const T* logvar, const T* joint, const T* marginal,
                                  int64_t Q, int64_t B, int64_t D, MixtureWeights w, T* dx, T* dmu,
                                  T* dlogvar, int threads, int64_t scratch_bytes);

}  // namespace msvae::cpu
