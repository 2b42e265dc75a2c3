"""msvae: multi-stage disentangled generative modelling with fused kernels."""
from msvae import losses, ops

__version__ = "0.1.0"
__all__ = ["losses", "ops", "__version__"]
