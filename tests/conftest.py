"""Shared fixtures. Without a CUDA device, Triton kernels run in the interpreter on CPU tensors."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from msvae.ops import available_backends  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def fused_cases():
    """(backend, device) pairs the fused-op tests run on this machine."""
    available = available_backends()
    cases = []
    if available["cpu"] is None:
        cases.append(("cpu", "cpu"))
    if available["triton"] is None:
        cases.append(("triton", "cuda" if HAS_CUDA else "cpu"))
    if available["cuda"] is None:
        cases.append(("cuda", "cuda"))
    return cases


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
