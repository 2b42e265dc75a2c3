"""The losses' global-batch estimators under torch.distributed: two CPU processes (gloo), the batch
split between them, give the one-process loss on the whole batch and its gradients (float64)."""
import math

import pytest
import torch

from gloo_ranks import on_ranks

from msvae.distributed import gather_rows, rank_and_size
from msvae.losses import BetaTCVAELoss, DecompositionLoss, DIPVAELoss, FactorVAELoss
from msvae.priors import AnisotropicGaussian

B, D, N, RANKS = 12, 3, 500, 2
LOSSES = {
    "tcvae_mss": lambda group: BetaTCVAELoss(N, beta=6.0, estimator="mss", process_group=group),
    "tcvae_mws": lambda group: BetaTCVAELoss(N, alpha=0.5, beta=3.0, estimator="mws", process_group=group),
    "dip_i": lambda group: DIPVAELoss("i", process_group=group),
    "dip_ii": lambda group: DIPVAELoss("ii", lambda_od=3.0, process_group=group),
    "decomposition_kl": lambda group: DecompositionLoss(ReplayPrior(), beta=2.0, alpha=1.5, process_group=group),
    "decomposition_mmd": lambda group: DecompositionLoss(ReplayPrior(), alpha=4.0, divergence="mmd_dim",
                                                         process_group=group),
}


class ReplayPrior(AnisotropicGaussian):
    """N(0, diag(scale^2)) whose draws are the rows of ``REPLAY`` in order: the one-process run
    draws the rows the ranks drew."""

    def __init__(self):
        super().__init__(D, torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64))

    def rsample(self, sample_shape=torch.Size()):
        n = int(torch.Size(sample_shape).numel())
        rows, REPLAY[:] = REPLAY[:n], REPLAY[n:]
        return torch.stack(rows)


REPLAY: list = []


def batch():
    """A fixed batch: Bernoulli targets, logits, codes and posteriors ``[B, ...]``, float64."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(B, 5, generator=g, dtype=torch.float64) > 0.5).double()
    logits = torch.randn(B, 5, generator=g, dtype=torch.float64)
    mu = torch.randn(B, D, generator=g, dtype=torch.float64)
    logvar = 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64)
    z = mu + (0.5 * logvar).exp() * torch.randn(B, D, generator=g, dtype=torch.float64)
    prior_draws = torch.randn(B, D, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.5, 2.0],
                                                                                      dtype=torch.float64)
    return x, logits, z, mu, logvar, prior_draws


def loss_and_gradients(name, rows, group):
    x, logits, z, mu, logvar, prior_draws = (t[rows].clone() for t in batch())
    REPLAY[:] = list(prior_draws)
    inputs = [t.requires_grad_() for t in (logits, z, mu, logvar)]
    loss, terms = LOSSES[name](group)(x, *inputs)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)  # DIP-VAE does not read z
    return loss.detach(), [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]


def discriminator_loss_and_gradients(rows, group, draw_order=True):
    """FactorVAE's discriminator loss on ``rows`` and its parameters' gradients; the permutation
    is drawn from seed 5 (under a group, on the first rank only: the others' draws must not
    matter, so they draw from another seed)."""
    torch.manual_seed(1)
    loss_fn = FactorVAELoss(D, discriminator=torch.nn.Sequential(
        torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double(), process_group=group)
    z = batch()[2][rows]
    torch.manual_seed(5 if draw_order else 6)
    loss = loss_fn.discriminator_loss(z)
    return loss.detach(), torch.autograd.grad(loss, list(loss_fn.discriminator.parameters()))


def _rank(rank, group, out):
    results = {}
    for name in LOSSES:
        rows = slice(rank * B // RANKS, (rank + 1) * B // RANKS)
        results[name] = loss_and_gradients(name, rows, group)
    results["factor_vae"] = discriminator_loss_and_gradients(
        slice(rank * B // RANKS, (rank + 1) * B // RANKS), group, draw_order=rank == 0)
    results["gathered"] = gather_rows(torch.arange(3.0) + 10 * rank, group)
    results["rank_and_size"] = rank_and_size(group)
    try:
        gather_rows(torch.zeros(rank + 1), group)
    except ValueError as error:
        results["unequal"] = str(error)
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return on_ranks(_rank, RANKS, tmp_path_factory.mktemp("distributed"))


@pytest.mark.parametrize("name", list(LOSSES))
def test_split_batch_gives_the_one_process_loss_and_gradients(ranks, name):
    """Mean over ranks of the ranks' losses = the one-process loss on the whole batch; a rank's
    gradient (its own rows, summed over every rank's loss by the gather's backward) divided by
    the number of ranks, as DistributedDataParallel averages = the one-process gradient rows."""
    loss, grads = loss_and_gradients(name, slice(None), None)
    losses = torch.stack([r[name][0] for r in ranks])
    torch.testing.assert_close(losses.mean(), loss, rtol=0, atol=1e-10)
    for k, grad in enumerate(grads):
        split = torch.cat([r[name][1][k] / RANKS for r in ranks])
        torch.testing.assert_close(split, grad, rtol=0, atol=1e-10)
    if name.startswith("tcvae"):  # not trivially so: a rank's estimate alone differs
        alone, _ = loss_and_gradients(name, slice(0, B // RANKS), None)
        assert not math.isclose(float(alone), float(ranks[0][name][0]), abs_tol=1e-6)


def test_factor_vae_discriminator_sees_one_permutation_of_the_global_batch(ranks):
    """The ranks' discriminator losses average to the one-process loss on the whole batch with
    the same permutation, and so do their parameter gradients (DDP's average)."""
    loss, grads = discriminator_loss_and_gradients(slice(None), None)
    torch.testing.assert_close(torch.stack([r["factor_vae"][0] for r in ranks]).mean(), loss,
                               rtol=0, atol=1e-10)
    for k, grad in enumerate(grads):
        mean = torch.stack([r["factor_vae"][1][k] for r in ranks]).mean(0)
        torch.testing.assert_close(mean, grad, rtol=0, atol=1e-10)


def test_gather_rows_concatenates_in_rank_order_and_refuses_unequal_shards(ranks):
    for rank, result in enumerate(ranks):
        assert torch.equal(result["gathered"], torch.tensor([0.0, 1, 2, 10, 11, 12]))
        assert result["rank_and_size"] == (rank, RANKS)
        assert "same number of rows" in result["unequal"]


def test_a_group_without_torch_distributed_is_a_clear_error():
    assert rank_and_size(None) == (0, 1)
    with pytest.raises(ValueError, match="not initialised"):
        BetaTCVAELoss(N, process_group=object())(*(t[:4] for t in batch()[:5]))
