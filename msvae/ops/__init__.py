"""Fused functional ops with a readable torch reference and CPU / Triton / CUDA backends."""
from msvae.ops.affine_coupling import affine_coupling
from msvae.ops.backends import BACKENDS, available_backends, select_backend
from msvae.ops.mixture_log_density import WEIGHT_SCHEMES, mixture_log_density, mixture_weights
from msvae.ops.rq_spline import rq_spline

__all__ = ["BACKENDS", "WEIGHT_SCHEMES", "affine_coupling", "available_backends",
           "mixture_log_density", "mixture_weights", "rq_spline", "select_backend"]
