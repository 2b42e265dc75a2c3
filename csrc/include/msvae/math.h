// Elementwise math shared by CPU and CUDA code as inline host+device functions.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MSVAE_HOST_DEVICE __host__ __device__
#else
#define MSVAE_HOST_DEVICE
#endif

namespace msvae {

constexpr double kLog2Pi = 1.8378770664093454835606594728112;

// f_d(i, j) = log N(x; mu, exp(logvar)) written with the per-component constants
// inv_var = exp(-logvar) and norm = logvar + log(2 pi) precomputed once per (j, d).
template <typename T>
MSVAE_HOST_DEVICE inline T gaussian_log_density(T x, T mu, T inv_var, T norm) {
  const T diff = x - mu;
  return T(-0.5) * (diff * diff * inv_var + norm);
}

}  // namespace msvae
