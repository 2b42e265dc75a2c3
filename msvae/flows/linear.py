"""A full-covariance Gaussian layer: an affine map with a lower-triangular matrix."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from msvae.flows.base import Transform, check_tensor


class TriangularAffine(Transform):
    """``y = A (x - shift)`` for ``[B, C]`` vectors, ``A`` lower-triangular with diagonal
    ``exp(log_diag)``; log-det ``sum(log_diag)``. Starts at the identity. ``fit_gaussian(x)`` sets
    it, in closed form, to the whitening of ``x`` (``shift`` the mean, ``A`` the inverse Cholesky
    factor of a Ledoit-Wolf-shrunk covariance): the maximum-likelihood Gaussian, so a flow that
    begins with this layer and otherwise identity layers starts as a Gaussian copula of its input;
    ``fitted`` (a buffer, saved with the weights) says whether it has been. Any ``context`` is
    ignored.
    """

    def __init__(self, features: int):
        super().__init__()
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features}")
        self.features = features
        self.shift = nn.Parameter(torch.zeros(features))
        self.lower = nn.Parameter(torch.zeros(features, features))  # its strictly lower part is used
        self.log_diag = nn.Parameter(torch.zeros(features))
        self.register_buffer("mask", torch.tril(torch.ones(features, features), -1))
        self.register_buffer("fitted_flag", torch.tensor(False))
        self._known_fitted = False  # host copy of the flag once it is True: no device sync per call

    @property
    def fitted(self) -> bool:
        """Whether ``fit_gaussian`` has set the layer (here or in the weights it was loaded from)."""
        if not self._known_fitted:
            self._known_fitted = bool(self.fitted_flag)
        return self._known_fitted

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_fitted = False  # re-read the loaded flag

    def matrix(self) -> Tensor:
        """``A [C, C]``."""
        return self.lower * self.mask + torch.diag(self.log_diag.exp())

    @torch.no_grad()
    def fit_gaussian(self, x: Tensor) -> None:
        """Sets the layer to whiten ``x [N, C]`` (``N >= 2``)."""
        from sklearn.covariance import ledoit_wolf

        check_tensor(x, "x", 2, self.features, f"[N, {self.features}]")
        if len(x) < 2:
            raise ValueError(f"fit_gaussian needs at least 2 rows, got {len(x)}")
        values = x.detach().double().cpu().numpy()
        covariance, _ = ledoit_wolf(values)
        cholesky = np.linalg.cholesky(covariance + 1e-9 * np.eye(self.features))
        whitening = torch.linalg.inv(torch.from_numpy(cholesky))  # lower-triangular
        self.shift.copy_(torch.from_numpy(values.mean(0)))
        self.lower.copy_(whitening.tril(-1))
        self.log_diag.copy_(whitening.diagonal().log())
        self.fitted_flag.fill_(True)
        self._known_fitted = True

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_tensor(x, "x", 2, self.features, f"[B, {self.features}]")
        y = (x - self.shift) @ self.matrix().T
        return y, self.log_diag.sum().expand(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_tensor(y, "y", 2, self.features, f"[B, {self.features}]")
        x = torch.linalg.solve_triangular(self.matrix(), y.T, upper=False).T + self.shift
        return x, -self.log_diag.sum().expand(y.shape[0])
