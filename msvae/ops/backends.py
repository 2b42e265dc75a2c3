"""Which implementations of the fused ops exist on this machine, and which one a call uses.

Backends: ``reference`` (plain torch, everywhere), ``cpu`` (C++ in ``msvae._C``), ``triton``
(CUDA tensors; CPU tensors too when ``TRITON_INTERPRET=1``) and ``cuda`` (hand-written CUDA in
``msvae._C``, built when nvcc was found). ``MSVAE_BACKEND`` in the environment overrides the
default choice; a ``backend=`` argument overrides both.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
_ALL_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
BACKEND_DTYPES = {"reference": _ALL_FLOATS, "cpu": (torch.float32, torch.float64),
                  "triton": _ALL_FLOATS, "cuda": _ALL_FLOATS}
# Element-type codes of msvae._C (msvae::DType in csrc/include/msvae/mixture_log_density.h).
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

try:
    _C = importlib.import_module("msvae._C")
except ImportError as error:  # e.g. importing the source tree, which holds no compiled module
    _C = None
    _C_IMPORT_ERROR = error
else:
    _C_IMPORT_ERROR = None


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, or None when it can."""
    if backend == "reference":
        return None
    if backend == "cpu":
        return None if _C is not None else f"msvae._C is not built ({_C_IMPORT_ERROR})"
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if not (torch.cuda.is_available() or _triton_interpreted()):
            return "no CUDA device (set TRITON_INTERPRET=1 to run Triton on CPU tensors)"
        return None
    if backend == "cuda":
        if _C is None or not _C.with_cuda:
            return "msvae._C was built without CUDA kernels"
        if not torch.cuda.is_available():
            return "no CUDA device"
        return None
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def available_backends() -> dict[str, str | None]:
    """Each backend mapped to None when it runs here, else to the reason it does not."""
    return {name: _unavailable_reason(name) for name in BACKENDS}


def _runs_on(backend: str, device: torch.device) -> bool:
    if backend == "reference":
        return True
    if backend == "triton":
        return device.type == "cuda" or (device.type == "cpu" and _triton_interpreted())
    return device.type == backend


def _default_backend(device: torch.device, supported: tuple[str, ...]) -> str:
    if device.type == "cpu":
        return "cpu" if _C is not None and "cpu" in supported else "reference"
    for candidate in ("triton", "cuda"):
        if device.type == "cuda" and candidate in supported and _unavailable_reason(candidate) is None:
            return candidate
    return "reference"


def select_backend(device: torch.device, backend: str | None, supported: tuple[str, ...] = BACKENDS) -> str:
    """The backend for tensors on ``device``: explicit choice, else ``MSVAE_BACKEND``, else the fastest.

    ``supported`` names the backends the calling op implements. An explicit ``backend`` that is
    unknown, unavailable, not implemented by the op or unable to run on ``device`` is a
    ``ValueError``; an ``MSVAE_BACKEND`` that names no backend is a ``ValueError``, and one that
    cannot serve this call (other op, other device) falls back to the default choice.
    """
    if backend is None:
        env = os.environ.get("MSVAE_BACKEND") or None
        if env is not None and env not in BACKENDS:
            raise ValueError(f"MSVAE_BACKEND must be one of {BACKENDS}, got {env!r}")
        if env is not None and env in supported and _unavailable_reason(env) is None and _runs_on(env, device):
            return env
        return _default_backend(device, supported)
    reason = _unavailable_reason(backend)
    if backend not in supported:
        raise ValueError(f"backend {backend!r} does not implement this op (it has {supported})")
    if reason is not None:
        raise ValueError(f"backend {backend!r} is not available: {reason}")
    if not _runs_on(backend, device):
        raise ValueError(f"backend {backend!r} cannot run on {device.type} tensors")
    return backend


def device_scope(t: torch.Tensor):
    """Makes ``t``'s GPU the current device (Triton and our CUDA launches use the current one)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
