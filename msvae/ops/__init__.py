"""Fused functional ops with a readable torch reference and CPU / Triton / CUDA backends."""
from msvae.ops.backends import BACKENDS, available_backends, select_backend
from msvae.ops.mixture_log_density import WEIGHT_SCHEMES, mixture_log_density, mixture_weights

__all__ = ["BACKENDS", "WEIGHT_SCHEMES", "available_backends", "mixture_log_density",
           "mixture_weights", "select_backend"]
