// Op 1 of DESIGN.md: batch Gaussian-mixture log-density.
// Shared declarations for the CPU (csrc/cpu) and CUDA (csrc/cuda) implementations.
// All arrays are contiguous row-major: x [Q, D], mu / logvar [B, D], joint [Q], marginal [Q, D].
#pragma once
#include <cstdint>

#include "msvae/math.h"

namespace msvae {

// Log-weights lw(i, j) of the mixture components.
//   scheme 0: lw = base everywhere (MWS: -log(B N); uniform: -log B).
//   scheme 1: MSS (requires Q == B): diag at j == i, next at j == (i + 1) mod B, base elsewhere;
//             the diagonal wins when B == 1.
struct MixtureWeights {
  int scheme;
  double base;
  double diag;
  double next;
};

MSVAE_HOST_DEVICE inline double log_weight(const MixtureWeights& w, int64_t i, int64_t j, int64_t B) {
  if (w.scheme == 1) {
    if (j == i) return w.diag;
    if (j == (i + 1) % B) return w.next;
  }
  return w.base;
}

// Element codes shared by the bindings and the CUDA entry points.
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// CUDA entry points (csrc/cuda/mixture_log_density.cu). Pointers are device pointers of element
// type `dtype`; `stream` is a cudaStream_t (torch's current stream). Accumulation is in float32
// (float64 for Float64). Return 0 on success, else a cudaError_t code.
int mixture_log_density_forward_cuda(DType dtype, const void* x, const void* mu, const void* logvar,
                                     int64_t Q, int64_t B, int64_t D, MixtureWeights w,
                                     void* joint, void* marginal, void* stream);
// grad_joint [Q], grad_marginal [Q, D] have `dtype`; dx [Q, D], dmu / dlogvar [B, D] are written
// (not accumulated into).
int mixture_log_density_backward_cuda(DType dtype, const void* grad_joint, const void* grad_marginal,
                                      const void* x, const void* mu, const void* logvar,
                                      const void* joint, const void* marginal,
                                      int64_t Q, int64_t B, int64_t D, MixtureWeights w,
                                      void* dx, void* dmu, void* dlogvar, void* stream);
const char* cuda_error_string(int code);

}  // namespace msvae
