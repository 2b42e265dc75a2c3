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


@pytest.fixture(autouse=True, scope="session")
def _classifier_cache(tmp_path_factory):
    """Factor classifiers trained by the tests are cached in a temporary folder, not the user's."""
    previous = os.environ.get("MSVAE_CACHE")
    os.environ["MSVAE_CACHE"] = str(tmp_path_factory.mktemp("msvae_cache"))
    yield
    if previous is None:
        os.environ.pop("MSVAE_CACHE", None)
    else:
        os.environ["MSVAE_CACHE"] = previous


def toy_images(n=256, seed=0):
    """Binary 64x64 images of a square at a random position: one easy factor of variation."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 64, 64)
    pos = torch.randint(4, 44, (n, 2), generator=g)
    for k, (r, c) in enumerate(pos.tolist()):
        images[k, 0, r:r + 16, c:c + 16] = 1.0
    return images


def loss_batch(B=16, D=4, pixels=(1, 6, 6), dtype=torch.float64):
    """Binary data, decoder logits and a reparametrised posterior sample: (x, logits, z, mu, logvar)."""
    x = torch.rand(B, *pixels, dtype=dtype).round()
    logits = torch.randn(B, *pixels, dtype=dtype, requires_grad=True)
    mu = torch.randn(B, D, dtype=dtype, requires_grad=True)
    logvar = (0.5 * torch.randn(B, D, dtype=dtype)).requires_grad_()
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    return x, logits, z, mu, logvar
