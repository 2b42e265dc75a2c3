"""msvae: multi-stage disentangled generative modelling with fused kernels.

Subpackages load on first use (``msvae.metrics`` pulls in scikit-learn, for example):
``ops``, ``losses``, ``priors``, ``models``, ``flows``, ``data``, ``metrics``, ``evaluation``, ``plotting``;
the main classes are also top-level names: ``msvae.MultiStageModel``, ``msvae.DisentangledVAE``,
``msvae.TabularSynthesizer``.
"""
import importlib

__version__ = "0.1.0"
_SUBMODULES = ("data", "evaluation", "flows", "losses", "metrics", "models", "ops", "plotting", "priors")
_CLASSES = {"DisentangledVAE": "models", "MultiStageModel": "models", "TabularSynthesizer": "models"}
__all__ = [*_SUBMODULES, *_CLASSES, "__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"msvae.{name}")
    if name in _CLASSES:
        return getattr(importlib.import_module(f"msvae.{_CLASSES[name]}"), name)
    raise AttributeError(f"module 'msvae' has no attribute {name!r}")
