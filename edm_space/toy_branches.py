"""A 2-D class-conditional toy with thin branches, whose exact denoiser is known.

In the spirit of the toy example of Karras et al. 2024 ("Guiding a diffusion
model with a bad version of itself", Fig. 1): each class is a tree of thin,
elongated Gaussians. Most of the probability mass sits in narrow branches,
so a model that blurs the density (a weak model, a coarse sampler) puts
samples between them, and guidance has a visible job. Both classes grow from a
shared root, so near the root the classes overlap and the class label is
uncertain, while the outer twigs belong to one class each.

The law is a Gaussian mixture with per-class component weights, so
:func:`exact_denoiser` gives its exact class-conditional denoiser (and score,
density, sampler) through :class:`edm_space.ideal.GaussianMixtureDenoiser`.
Everything is deterministic: the tree has no random parameters, and
:func:`branches` draws from exactly that mixture. Like the other toy sets
(``edm_space.data``), the points come in the units the model trains on: each
coordinate has mean 0 and standard deviation 0.5, by a shift and scale fixed
from the mixture's exact moments.
"""

from __future__ import annotations

import functools
import math
from typing import List, NamedTuple, Tuple, Union

import numpy as np
import torch

from edm_space.errors import ConfigError
from edm_space.ideal import GaussianMixtureDenoiser

__all__ = ["NUM_CLASSES", "BranchesMixture", "mixture_parameters", "exact_denoiser", "branches"]

NUM_CLASSES = 2
TARGET_STD = 0.5  # per-coordinate std of the returned points (the project's default sigma_data)

_TRUNK_ANGLES = (math.pi / 2 + 0.45, math.pi / 2 - 0.45)  # direction of each class's trunk
_DEPTH = 5  # levels of branching: 2^5 - 1 = 31 branches per class
_LENGTH_RATIO = 0.72  # each child branch is this much shorter than its parent
_SPLIT_ANGLE = 0.6  # children turn by +-_SPLIT_ANGLE * _SPLIT_DECAY^depth radians
_SPLIT_DECAY = 0.85
_PIECES = 3  # Gaussians along each branch
_ALONG_STD = 0.4  # std along a branch, per unit of the length of one of its pieces
_ACROSS_STD = 0.014  # std across the trunk (its thickness)
_THICKNESS_DECAY = 0.8  # a child branch is this much thinner than its parent
_MASS_DECAY = 0.6  # a branch's mass is proportional to length * _MASS_DECAY^depth


class BranchesMixture(NamedTuple):
    """The exact law of :func:`branches`: a K-component 2-D Gaussian mixture with per-class weights."""

    means: torch.Tensor  #: [K, 2] float64
    covariances: torch.Tensor  #: [K, 2, 2] float64
    class_weights: torch.Tensor  #: [NUM_CLASSES, K] float64, the joint law P(class c, component k)


_Component = Tuple[np.ndarray, np.ndarray, float]  # (mean, covariance, weight)


def _grow(start: np.ndarray, angle: float, length: float, depth: int, out: List[_Component]) -> None:
    """Append (mean, covariance, weight) of the Gaussians of one branch and its subtree."""
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    along = _ALONG_STD * length / _PIECES
    across = _ACROSS_STD * _THICKNESS_DECAY**depth
    cov = along**2 * np.outer(direction, direction) + across**2 * np.outer(normal, normal)
    for i in range(_PIECES):
        centre = start + (i + 0.5) / _PIECES * length * direction
        out.append((centre, cov, length * _MASS_DECAY**depth / _PIECES))
    if depth + 1 < _DEPTH:
        end = start + length * direction
        turn = _SPLIT_ANGLE * _SPLIT_DECAY**depth
        for sign in (1.0, -1.0):
            _grow(end, angle + sign * turn, length * _LENGTH_RATIO, depth + 1, out)


@functools.lru_cache(maxsize=None)
def _parameters() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    pieces: List[List[_Component]] = []
    for angle in _TRUNK_ANGLES:
        pieces.append([])
        _grow(np.zeros(2), angle, 1.0, 0, pieces[-1])
    means = np.array([m for tree in pieces for m, _, _ in tree])
    covs = np.array([c for tree in pieces for _, c, _ in tree])
    joint = np.zeros((NUM_CLASSES, len(means)))
    start = 0
    for c, tree in enumerate(pieces):
        weights = np.array([w for _, _, w in tree])
        joint[c, start : start + len(tree)] = weights / weights.sum() / NUM_CLASSES  # equal class priors
        start += len(tree)
    # exact per-coordinate moments of the mixture: E[x] = sum_k w_k mu_k,
    # E[x_i^2] = sum_k w_k (C_k,ii + mu_k,i^2)
    w = joint.sum(axis=0)
    mean = w @ means
    second = w @ (np.diagonal(covs, axis1=1, axis2=2) + means**2)
    scale = TARGET_STD / np.sqrt(second - mean**2)
    means = (means - mean) * scale
    covs = covs * np.outer(scale, scale)[None]  # S C S with S = diag(scale)
    return means, covs, joint


def mixture_parameters() -> BranchesMixture:
    """The exact mixture (means, covariances, joint class weights) that :func:`branches` samples."""
    means, covs, joint = _parameters()
    return BranchesMixture(torch.tensor(means), torch.tensor(covs), torch.tensor(joint))


def exact_denoiser() -> GaussianMixtureDenoiser:
    """The exact class-conditional denoiser D(x; sigma[, labels]) of the branches law."""
    means, covs, joint = mixture_parameters()
    return GaussianMixtureDenoiser(means, covs, class_weights=joint)


def branches(n: int, seed: Union[int, np.random.Generator] = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw n labelled points: (points float32 [n, 2], labels int64 [n]).

    ``seed`` is an int >= 0 or a ``numpy.random.Generator`` (the only source of
    randomness). Each point draws (class, component) from the joint weights and
    then the component's Gaussian, so the points follow :func:`mixture_parameters` exactly.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(seed, np.random.Generator):
        rng = seed
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        rng = np.random.default_rng(int(seed))
    else:
        raise ConfigError(f"seed must be an integer >= 0 or a numpy Generator, got {seed!r}")
    means, covs, joint = _parameters()
    K = means.shape[0]
    pick = rng.choice(joint.size, size=int(n), p=joint.reshape(-1))
    labels, comp = pick // K, pick % K
    factors = np.linalg.cholesky(covs)  # C_k = L_k L_k^T
    eps = rng.standard_normal((int(n), 2))
    points = means[comp] + np.einsum("nij,nj->ni", factors[comp], eps)
    return torch.from_numpy(points.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))
