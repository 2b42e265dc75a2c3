"""Structured priors p(z) over a D-dimensional latent code, as ``torch.distributions`` objects.

Every prior has batch shape ``()`` and event shape ``[D]``: ``log_prob(z [..., D]) -> [...]`` and
``sample(shape) -> [*shape, D]``, plus ``rsample`` where a sample is a differentiable function of the
parameters. Parameters are scalars (shared by all dimensions) or tensors of the documented shape.

One pattern for learnable parameters: a ``LearnedPrior`` is an ``nn.Module`` holding unconstrained
parameters whose ``distribution()`` builds the prior from their current values — call it inside the
training step so gradients reach them. ``as_distribution`` accepts either form.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from msvae.ops import mixture_log_density

LOG_2PI = math.log(2.0 * math.pi)

__all__ = ["AnisotropicGaussian", "FactorizedAggregatePosterior", "GaussianMixture", "IsotropicGaussian",
           "LearnedAnisotropicGaussian", "LearnedGaussianMixture", "LearnedPrior", "SpikeAndSlab",
           "StudentTProduct", "as_distribution"]


def _normal_log_density(z: Tensor, loc: Tensor | float, scale: Tensor) -> Tensor:
    """Elementwise log N(z; loc, scale^2)."""
    return -0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    return dim


def _parameters(shape: tuple[int, ...], **values) -> list[Tensor]:
    """Each value (a float or a tensor of shape ``()`` or ``shape``) as a tensor expanded to ``shape``,
    all in one floating dtype and on one device; gradients flow through."""
    tensors = [v for v in values.values() if isinstance(v, Tensor)]
    dtype = tensors[0].dtype if tensors else torch.get_default_dtype()
    device = tensors[0].device if tensors else None
    for t in tensors:
        if not t.is_floating_point():
            raise ValueError(f"prior parameters must be floating-point tensors, got {t.dtype}")
        if t.device != device:
            raise ValueError(f"prior parameters must be on one device, got {device} and {t.device}")
        dtype = torch.promote_types(dtype, t.dtype)
    out = []
    for name, value in values.items():
        t = value.to(dtype) if isinstance(value, Tensor) else torch.tensor(float(value), dtype=dtype,
                                                                            device=device)
        if t.shape not in (torch.Size(), torch.Size(shape)):
            raise ValueError(f"{name} must be a scalar or have shape {list(shape)}, got {list(t.shape)}")
        out.append(t.expand(shape))
    return out


def _check_positive(**values: Tensor) -> None:
    """Every value is positive and finite (one host synchronisation for all of them)."""
    ok = torch.stack([(torch.isfinite(t) & (t > 0)).all() for t in values.values()])
    if not bool(ok.all()):
        name = list(values)[int((~ok).nonzero()[0, 0])]
        raise ValueError(f"{name} must be positive and finite")


class _Prior(Distribution):
    """Shared shape handling: batch shape ``()``, event shape ``[D]``."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, dim: int):
        super().__init__(torch.Size(), torch.Size([dim]), validate_args=False)

    @property
    def dim(self) -> int:
        return self.event_shape[0]

    def _check_codes(self, z: Tensor) -> None:
        if not isinstance(z, Tensor) or not z.is_floating_point():
            raise ValueError(f"z must be a floating-point tensor, got {type(z).__name__}")
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"z must have shape [..., {self.dim}], got {list(z.shape)}")

    def expand(self, batch_shape, _instance=None):
        raise NotImplementedError("msvae priors have batch shape (); sample a shape instead")


class AnisotropicGaussian(_Prior):
    """N(loc, diag(scale^2)) with per-dimension standard deviations ``scale`` (scalar or ``[D]``)."""

    has_rsample = True

    def __init__(self, dim: int, scale: Tensor | float, loc: Tensor | float = 0.0):
        super().__init__(_check_dim(dim))
        self.scale, self.loc = _parameters((dim,), scale=scale, loc=loc)
        _check_positive(scale=self.scale)
        if not bool(torch.isfinite(self.loc).all()):
            raise ValueError("loc must be finite")

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return self.scale ** 2

    def log_prob(self, z: Tensor) -> Tensor:
        self._check_codes(z)
        return _normal_log_density(z, self.loc, self.scale).sum(-1)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps


class IsotropicGaussian(AnisotropicGaussian):
    """N(0, scale^2 I) with one scalar standard deviation ``scale``."""

    def __init__(self, dim: int, scale: Tensor | float = 1.0):
        if isinstance(scale, Tensor) and scale.dim() != 0:
            raise ValueError(f"scale must be a scalar, got shape {list(scale.shape)}")
        super().__init__(dim, scale)


class StudentTProduct(_Prior):
    """Product of independent Student-t densities (heavy tails, Mathieu et al. 2019), per dimension

        log p(z_d) = lgamma((v+1)/2) - lgamma(v/2) - log(v pi)/2 - log s - (v+1)/2 log(1 + ((z_d-m)/s)^2 / v)

    with degrees of freedom ``df`` = v, ``scale`` = s and ``loc`` = m (each a scalar or ``[D]``).
    ``rsample``: ``m + s * eps / sqrt(tau)``, ``eps ~ N(0, 1)``, ``tau ~ Gamma(v/2, rate=v/2)``.
    """

    has_rsample = True

    def __init__(self, dim: int, df: Tensor | float, scale: Tensor | float = 1.0,
                 loc: Tensor | float = 0.0):
        super().__init__(_check_dim(dim))
        self.df, self.scale, self.loc = _parameters((dim,), df=df, scale=scale, loc=loc)
        _check_positive(df=self.df, scale=self.scale)
        if not bool(torch.isfinite(self.loc).all()):
            raise ValueError("loc must be finite")

    @property
    def mean(self) -> Tensor:
        """``loc`` where ``df > 1``, else NaN (undefined)."""
        return torch.where(self.df > 1, self.loc, torch.full_like(self.loc, math.nan))

    @property
    def variance(self) -> Tensor:
        """``scale^2 df / (df - 2)`` where ``df > 2``, infinite for ``1 < df <= 2``, else NaN."""
        variance = torch.where(self.df > 2, self.scale ** 2 * self.df / (self.df - 2), math.inf)
        return torch.where(self.df > 1, variance, math.nan)

    def log_prob(self, z: Tensor) -> Tensor:
        self._check_codes(z)
        v, u = self.df, (z - self.loc) / self.scale
        log_norm = (torch.lgamma((v + 1) / 2) - torch.lgamma(v / 2) - 0.5 * torch.log(v * math.pi)
                    - self.scale.log())
        return (log_norm - (v + 1) / 2 * torch.log1p(u ** 2 / v)).sum(-1)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        tau = torch.distributions.Gamma(self.df / 2, self.df / 2).rsample(shape[:-1])
        return self.loc + self.scale * eps * tau.rsqrt()


class GaussianMixture(_Prior):
    """Mixture of K diagonal Gaussians (for clustering), ``p(z) = sum_k w_k N(z; loc_k, diag(scale_k^2))``.

    ``loc [K, D]``; ``scale`` a scalar or ``[K, D]``; ``logits [K]`` (weights ``w = softmax(logits)``,
    uniform when None). ``log_prob`` is a logsumexp over components. There is no ``rsample``: the
    discrete component choice is not reparameterisable, so ``sample`` returns draws without a
    gradient path to the parameters.
    """

    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor | float = 1.0, logits: Tensor | None = None):
        if not isinstance(loc, Tensor) or loc.dim() != 2 or loc.numel() == 0:
            raise ValueError(f"loc must be a non-empty [K, D] tensor, got "
                             f"{list(loc.shape) if isinstance(loc, Tensor) else type(loc).__name__}")
        K, D = loc.shape
        super().__init__(D)
        if logits is None:
            logits = torch.zeros(K, dtype=loc.dtype, device=loc.device)
        if not isinstance(logits, Tensor) or logits.shape != (K,):
            raise ValueError(f"logits must have shape [{K}] (one per component of loc), got "
                             f"{list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
        self.loc, self.scale = _parameters((K, D), loc=loc, scale=scale)
        _check_positive(scale=self.scale)
        if not bool(torch.isfinite(self.loc).all()) or not bool(torch.isfinite(logits).all()):
            raise ValueError("loc and logits must be finite")
        self.log_weights = torch.log_softmax(logits.to(self.loc.dtype), 0)

    @property
    def num_components(self) -> int:
        return self.loc.shape[0]

    @property
    def weights(self) -> Tensor:
        return self.log_weights.exp()

    @property
    def mean(self) -> Tensor:
        return self.weights @ self.loc

    @property
    def variance(self) -> Tensor:
        return self.weights @ (self.scale ** 2 + self.loc ** 2) - self.mean ** 2

    def component_log_prob(self, z: Tensor) -> Tensor:
        """``log w_k + log N(z; loc_k, diag(scale_k^2))`` for each component, ``[..., K]``."""
        self._check_codes(z)
        return self.log_weights + _normal_log_density(z[..., None, :], self.loc, self.scale).sum(-1)

    def log_prob(self, z: Tensor) -> Tensor:
        return torch.logsumexp(self.component_log_prob(z), -1)

    def responsibilities(self, z: Tensor) -> Tensor:
        """Posterior component probabilities ``p(k | z)``, ``[..., K]`` (soft cluster assignment)."""
        return torch.softmax(self.component_log_prob(z), -1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            k = torch.distributions.Categorical(logits=self.log_weights).sample(torch.Size(sample_shape))
            eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype,
                              device=self.loc.device)
            return self.loc[k] + self.scale[k] * eps


class FactorizedAggregatePosterior(_Prior):
    """The product of an encoder's aggregate-posterior marginals, fitted after training:
    ``p(z) = prod_d (1/N) sum_n N(z_d; mu_nd, exp(logvar_nd))`` over the posteriors
    ``q(z | x_n) = N(mu_n, diag(exp(logvar_n)))`` of ``N`` training rows.

    Its dimensions are independent (a factor stays a factor: holding ``z_d`` and drawing the rest
    is a traversal), and each has the shape the codes actually took, where ``N(0, 1)`` leaves
    holes and tails that the decoder never saw (an ex-post density estimate, cf. Ghosh et al.
    2020). A draw picks a row independently per dimension, so no training row's code is drawn
    whole. ``log_prob`` streams over the rows (``ops.mixture_log_density``, uniform weights).
    ``mu, logvar [N, D]``. No ``rsample`` (the row choice is discrete).
    """

    has_rsample = False

    def __init__(self, mu: Tensor, logvar: Tensor):
        if not isinstance(mu, Tensor) or mu.dim() != 2 or mu.numel() == 0 or not mu.is_floating_point():
            raise ValueError(f"mu must be a non-empty floating-point [N, D] tensor, got "
                             f"{list(mu.shape) if isinstance(mu, Tensor) else type(mu).__name__}")
        if not isinstance(logvar, Tensor) or logvar.shape != mu.shape:
            raise ValueError(f"logvar must have mu's shape {list(mu.shape)}, got "
                             f"{list(logvar.shape) if isinstance(logvar, Tensor) else type(logvar).__name__}")
        if not bool(torch.isfinite(mu).all() & torch.isfinite(logvar).all()):
            raise ValueError("mu and logvar must be finite")
        super().__init__(mu.shape[1])
        self.loc, self.logvar = mu.detach(), logvar.detach().to(mu.dtype)

    @property
    def num_components(self) -> int:
        return self.loc.shape[0]

    @property
    def mean(self) -> Tensor:
        return self.loc.mean(0)

    @property
    def variance(self) -> Tensor:
        return self.logvar.exp().mean(0) + self.loc.var(0, unbiased=False)

    def marginal_log_prob(self, z: Tensor) -> Tensor:
        """``log p_d(z_d)`` per dimension, ``[..., D]``."""
        self._check_codes(z)
        flat = z.reshape(-1, self.dim).to(self.loc.dtype)
        marginal = mixture_log_density(flat, self.loc, self.logvar, weights="uniform")[1]
        return marginal.reshape(z.shape).to(z.dtype)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.marginal_log_prob(z).sum(-1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            rows = torch.randint(self.num_components, shape, device=self.loc.device)
            dims = torch.arange(self.dim, device=self.loc.device).expand(shape)
            eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
            return self.loc[rows, dims] + (0.5 * self.logvar[rows, dims]).exp() * eps


class SpikeAndSlab(_Prior):
    """Sparse prior (Mathieu et al. 2019): per dimension, a two-component mixture

        p(z_d) = gamma N(z_d; 0, spike_scale^2) + (1 - gamma) N(z_d; 0, slab_scale^2)

    with ``0 < gamma < 1`` and ``0 < spike_scale < slab_scale`` (each a scalar or ``[D]``). No
    ``rsample`` (the spike/slab choice is discrete); ``sample`` draws without a gradient path.
    """

    has_rsample = False

    def __init__(self, dim: int, gamma: Tensor | float = 0.8, spike_scale: Tensor | float = 0.1,
                 slab_scale: Tensor | float = 1.0):
        super().__init__(_check_dim(dim))
        self.gamma, self.spike_scale, self.slab_scale = _parameters(
            (dim,), gamma=gamma, spike_scale=spike_scale, slab_scale=slab_scale)
        if not bool(((self.gamma > 0) & (self.gamma < 1)).all()):
            raise ValueError("gamma must lie strictly between 0 and 1")
        _check_positive(spike_scale=self.spike_scale, slab_scale=self.slab_scale)
        if not bool((self.spike_scale < self.slab_scale).all()):
            raise ValueError("spike_scale must be smaller than slab_scale")

    @property
    def mean(self) -> Tensor:
        return torch.zeros_like(self.gamma)

    @property
    def variance(self) -> Tensor:
        return self.gamma * self.spike_scale ** 2 + (1 - self.gamma) * self.slab_scale ** 2

    def log_prob(self, z: Tensor) -> Tensor:
        self._check_codes(z)
        spike = self.gamma.log() + _normal_log_density(z, 0.0, self.spike_scale)
        slab = torch.log1p(-self.gamma) + _normal_log_density(z, 0.0, self.slab_scale)
        return torch.logaddexp(spike, slab).sum(-1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            in_spike = torch.rand(shape, dtype=self.gamma.dtype, device=self.gamma.device) < self.gamma
            eps = torch.randn(shape, dtype=self.gamma.dtype, device=self.gamma.device)
            return torch.where(in_spike, self.spike_scale, self.slab_scale) * eps


class LearnedPrior(nn.Module):
    """A prior with learnable parameters: ``distribution()`` builds it from their current values."""

    def distribution(self) -> Distribution:
        raise NotImplementedError

    def forward(self, z: Tensor) -> Tensor:
        """``log p(z)``, ``[...]`` for ``z [..., D]``."""
        return self.distribution().log_prob(z)


class LearnedAnisotropicGaussian(LearnedPrior):
    """N(0, diag(exp(log_scale)^2)) with learned per-dimension scales, initialised to ``init_scale``."""

    def __init__(self, dim: int, init_scale: float = 1.0):
        super().__init__()
        if not init_scale > 0 or not math.isfinite(init_scale):
            raise ValueError(f"init_scale must be positive and finite, got {init_scale!r}")
        self.log_scale = nn.Parameter(torch.full((_check_dim(dim),), math.log(init_scale)))

    def distribution(self) -> AnisotropicGaussian:
        return AnisotropicGaussian(self.log_scale.shape[0], self.log_scale.exp())


class LearnedGaussianMixture(LearnedPrior):
    """Mixture of ``num_components`` diagonal Gaussians with learned means, scales and weights.

    Means start at ``init_spread * N(0, I)`` draws, scales at ``init_scale``, weights uniform.
    """

    def __init__(self, num_components: int, dim: int, init_spread: float = 1.0, init_scale: float = 1.0):
        super().__init__()
        if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
            raise ValueError(f"num_components must be a positive int, got {num_components!r}")
        if not init_scale > 0 or not math.isfinite(init_scale):
            raise ValueError(f"init_scale must be positive and finite, got {init_scale!r}")
        shape = (num_components, _check_dim(dim))
        self.loc = nn.Parameter(init_spread * torch.randn(shape))
        self.log_scale = nn.Parameter(torch.full(shape, math.log(init_scale)))
        self.logits = nn.Parameter(torch.zeros(num_components))

    def distribution(self) -> GaussianMixture:
        return GaussianMixture(self.loc, self.log_scale.exp(), self.logits)


def as_distribution(prior: Distribution | LearnedPrior) -> Distribution:
    """The distribution of a prior given either as a distribution or as a ``LearnedPrior``."""
    if isinstance(prior, Distribution):
        return prior
    if isinstance(prior, LearnedPrior):
        return prior.distribution()
    raise ValueError(f"prior must be a torch.distributions.Distribution or a LearnedPrior, "
                     f"got {type(prior).__name__}")
