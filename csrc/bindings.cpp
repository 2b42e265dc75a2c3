// pybind11 bindings of msvae._C. Framework-free: tensors arrive as data pointers (integers) with
// their sizes and an element-type code, so the build needs no torch headers. Python validates
// shapes, dtypes, devices and contiguity before calling in (msvae/ops/mixture_log_density.py).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/affine_coupling.h"
#include "cpu/mixture_log_density.h"
#include "cpu/rq_spline.h"
#include "msvae/mixture_log_density.h"

namespace py = pybind11;
using msvae::DType;
using msvae::MixtureWeights;

namespace {

template <typename T>
const T* in(std::uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T>
T* out(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

void forward_cpu(int dtype, std::uintptr_t x, std::uintptr_t mu, std::uintptr_t logvar, int64_t Q,
                 int64_t B, int64_t D, MixtureWeights w, std::uintptr_t joint,
                 std::uintptr_t marginal, int threads) {
  py::gil_scoped_release release;
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      return msvae::cpu::mixture_log_density_forward(in<float>(x), in<float>(mu), in<float>(logvar),
                                                     Q, B, D, w, out<float>(joint),
                                                     out<float>(marginal), threads);
    case DType::Float64:
      return msvae::cpu::mixture_log_density_forward(in<double>(x), in<double>(mu),
                                                     in<double>(logvar), Q, B, D, w,
                                                     out<double>(joint), out<double>(marginal),
                                                     threads);
    default:
      throw std::invalid_argument("cpu backend supports float32 and float64 only");
  }
}

void backward_cpu(int dtype, std::uintptr_t grad_joint, std::uintptr_t grad_marginal,
                  std::uintptr_t x, std::uintptr_t mu, std::uintptr_t logvar, std::uintptr_t joint,
                  std::uintptr_t marginal, int64_t Q, int64_t B, int64_t D, MixtureWeights w,
                  std::uintptr_t dx, std::uintptr_t dmu, std::uintptr_t dlogvar, int threads,
                  int64_t scratch_bytes) {
  py::gil_scoped_release release;
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      return msvae::cpu::mixture_log_density_backward(
          in<float>(grad_joint), in<float>(grad_marginal), in<float>(x), in<float>(mu),
          in<float>(logvar), in<float>(joint), in<float>(marginal), Q, B, D, w, out<float>(dx),
          out<float>(dmu), out<float>(dlogvar), threads, scratch_bytes);
    case DType::Float64:
      return msvae::cpu::mixture_log_density_backward(
          in<double>(grad_joint), in<double>(grad_marginal), in<double>(x), in<double>(mu),
          in<double>(logvar), in<double>(joint), in<double>(marginal), Q, B, D, w,
          out<double>(dx), out<double>(dmu), out<double>(dlogvar), threads, scratch_bytes);
    default:
      throw std::invalid_argument("cpu backend supports float32 and float64 only");
  }
}

bool rq_spline_forward_cpu(int dtype, std::uintptr_t x, std::uintptr_t widths_raw,
                           std::uintptr_t heights_raw, std::uintptr_t derivs_raw, int64_t n,
                           int64_t K, double tail_bound, bool inverse, double min_bin_width,
                           double min_bin_height, double min_derivative, std::uintptr_t y,
                           std::uintptr_t logabsdet, int threads) {
  py::gil_scoped_release release;
  const msvae::cpu::RQSplineParams p{tail_bound, inverse, min_bin_width, min_bin_height, min_derivative};
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      return msvae::cpu::rq_spline_forward(in<float>(x), in<float>(widths_raw),
                                           in<float>(heights_raw), in<float>(derivs_raw), n, K, p,
                                           out<float>(y), out<float>(logabsdet), threads);
    case DType::Float64:
      return msvae::cpu::rq_spline_forward(in<double>(x), in<double>(widths_raw),
                                           in<double>(heights_raw), in<double>(derivs_raw), n, K,
                                           p, out<double>(y), out<double>(logabsdet), threads);
    default:
      throw std::invalid_argument("cpu backend supports float32 and float64 only");
  }
}

void rq_spline_backward_cpu(int dtype, std::uintptr_t grad_y, std::uintptr_t grad_logabsdet,
                            std::uintptr_t x, std::uintptr_t widths_raw, std::uintptr_t heights_raw,
                            std::uintptr_t derivs_raw, int64_t n, int64_t K, double tail_bound,
                            bool inverse, double min_bin_width, double min_bin_height,
                            double min_derivative, std::uintptr_t dx, std::uintptr_t dwidths_raw,
                            std::uintptr_t dheights_raw, std::uintptr_t dderivs_raw, int threads) {
  py::gil_scoped_release release;
  const msvae::cpu::RQSplineParams p{tail_bound, inverse, min_bin_width, min_bin_height, min_derivative};
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      return msvae::cpu::rq_spline_backward(
          in<float>(grad_y), in<float>(grad_logabsdet), in<float>(x), in<float>(widths_raw),
          in<float>(heights_raw), in<float>(derivs_raw), n, K, p, out<float>(dx),
          out<float>(dwidths_raw), out<float>(dheights_raw), out<float>(dderivs_raw), threads);
    case DType::Float64:
      return msvae::cpu::rq_spline_backward(
          in<double>(grad_y), in<double>(grad_logabsdet), in<double>(x), in<double>(widths_raw),
          in<double>(heights_raw), in<double>(derivs_raw), n, K, p, out<double>(dx),
          out<double>(dwidths_raw), out<double>(dheights_raw), out<double>(dderivs_raw), threads);
    default:
      throw std::invalid_argument("cpu backend supports float32 and float64 only");
  }
}

bool affine_coupling_forward_cpu(int dtype, std::uintptr_t x, std::uintptr_t shift,
                                 std::uintptr_t scale_raw, int64_t n, double clamp, bool inverse,
                                 std::uintptr_t y, std::uintptr_t logabsdet, int threads) {
  py::gil_scoped_release release;
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      return msvae::cpu::affine_coupling_forward(in<float>(x), in<float>(shift),
                                                 in<float>(scale_raw), n, clamp, inverse,
                                                 out<float>(y), out<float>(logabsdet), threads);
    case DType::Float64:
      return msvae::cpu::affine_coupling_forward(in<double>(x), in<double>(shift),
                                                 in<double>(scale_raw), n, clamp, inverse,
                                                 out<double>(y), out<double>(logabsdet), threads);
    default:
      throw std::invalid_argument("cpu backend supports float32 and float64 only");
  }
}

void affine_coupling_backward_cpu(int dtype, std::uintptr_t grad_y, std::uintptr_t grad_logabsdet,
                                  std::uintptr_t x, std::uintptr_t shift, std::uintptr_t scale_raw,
                                  int64_t n, double clamp, bool inverse, std::uintptr_t dx,
                                  std::uintptr_t dshift, std::uintptr_t dscale_raw, int threads) {
  py::gil_scoped_release release;
  switch (static_cast<DType>(dtype)) {
    case DType::Float32:
      return msvae::cpu::affine_coupling_backward(
          in<float>(grad_y), in<float>(grad_logabsdet), in<float>(x), in<float>(shift),
          in<float>(scale_raw), n, clamp, inverse, out<float>(dx), out<float>(dshift),
          out<float>(dscale_raw), threads);
    case DType::Float64:
      return msvae::cpu::affine_coupling_backward(
          in<double>(grad_y), in<double>(grad_logabsdet), in<double>(x), in<double>(shift),
          in<double>(scale_raw), n, clamp, inverse, out<double>(dx), out<double>(dshift),
          out<double>(dscale_raw), threads);
    default:
      throw std::invalid_argument("cpu backend supports float32 and float64 only");
  }
}

#ifdef MSVAE_WITH_CUDA
void check_cuda(int code) {
  if (code != 0) throw std::runtime_error(std::string("CUDA error: ") + msvae::cuda_error_string(code));
}

void forward_cuda(int dtype, std::uintptr_t x, std::uintptr_t mu, std::uintptr_t logvar, int64_t Q,
                  int64_t B, int64_t D, MixtureWeights w, std::uintptr_t joint,
                  std::uintptr_t marginal, std::uintptr_t stream) {
  py::gil_scoped_release release;
  check_cuda(msvae::mixture_log_density_forward_cuda(
      static_cast<DType>(dtype), in<void>(x), in<void>(mu), in<void>(logvar), Q, B, D, w,
      out<void>(joint), out<void>(marginal), reinterpret_cast<void*>(stream)));
}

void backward_cuda(int dtype, std::uintptr_t grad_joint, std::uintptr_t grad_marginal,
                   std::uintptr_t x, std::uintptr_t mu, std::uintptr_t logvar,
                   std::uintptr_t joint, std::uintptr_t marginal, int64_t Q, int64_t B, int64_t D,
                   MixtureWeights w, std::uintptr_t dx, std::uintptr_t dmu,
                   std::uintptr_t dlogvar, std::uintptr_t stream) {
  py::gil_scoped_release release;
  check_cuda(msvae::mixture_log_density_backward_cuda(
      static_cast<DType>(dtype), in<void>(grad_joint), in<void>(grad_marginal), in<void>(x),
      in<void>(mu), in<void>(logvar), in<void>(joint), in<void>(marginal), Q, B, D, w,
      out<void>(dx), out<void>(dmu), out<void>(dlogvar), reinterpret_cast<void*>(stream)));
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "msvae fused kernels (CPU, and CUDA when built with it)";
  py::class_<MixtureWeights>(m, "MixtureWeights")
      .def(py::init([](int scheme, double base, double diag, double next) {
             return MixtureWeights{scheme, base, diag, next};
           }),
           py::arg("scheme"), py::arg("base"), py::arg("diag"), py::arg("next"));
  m.def("mixture_log_density_forward_cpu", &forward_cpu);
  m.def("mixture_log_density_backward_cpu", &backward_cpu);
  m.def("rq_spline_forward_cpu", &rq_spline_forward_cpu);
  m.def("rq_spline_backward_cpu", &rq_spline_backward_cpu);
  m.def("affine_coupling_forward_cpu", &affine_coupling_forward_cpu);
  m.def("affine_coupling_backward_cpu", &affine_coupling_backward_cpu);
#ifdef MSVAE_WITH_CUDA
  m.attr("with_cuda") = true;
  m.def("mixture_log_density_forward_cuda", &forward_cuda);
  m.def("mixture_log_density_backward_cuda", &backward_cuda);
#else
  m.attr("with_cuda") = false;
#endif
}
