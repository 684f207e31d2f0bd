"""Precision, recall, density and coverage of generated samples in a feature space (k-nearest-neighbour balls).

- Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-2, k = 3): each set's support is the
  union of balls around its points with radius the distance to the point's k-th nearest neighbour in
  its own set. Precision is the fraction of generated points inside the real support; recall the
  fraction of real points inside the generated support.
- Density and coverage (Naeem et al. 2020, eq. 3-4, k = 5 as they recommend): only real balls.
  Density = sum over generated points of the number of real balls holding it, / (k M); it is about
  1 when the two sets match and is not capped at 1. Coverage = fraction of real balls holding at least
  one generated point.

Distances are Euclidean, computed in float64 in chunks so that 10,000 x 10,000 pairs fit in memory.
"""

from __future__ import annotations

from typing import Dict

import torch

from .errors import ConfigError

Tensor = torch.Tensor
_CHUNK = 1024


def _as_features(x, name: str) -> Tensor:
    x = torch.as_tensor(x).to(torch.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ConfigError(f"{name} must be a feature matrix [n, d] with n >= 2; got shape {list(x.shape)}")
    return x


def knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance of each row of x to its k-th nearest other row (the row itself, at distance 0, is not counted)."""
    if not 1 <= k < len(x):
        raise ConfigError(f"k = {k} needs more points: k must lie in 1..{len(x) - 1} for {len(x)} points")
    out = []
    for start in range(0, len(x), _CHUNK):
        distances = torch.cdist(x[start : start + _CHUNK], x)
        out.append(distances.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _ball_counts(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """For each point, how many of the balls B(centre_i, radius_i) hold it."""
    out = []
    for start in range(0, len(points), _CHUNK):
        out.append((torch.cdist(points[start : start + _CHUNK], centres) <= radii[None, :]).sum(dim=1))
    return torch.cat(out)


def _precision_recall_points(real: Tensor, fake: Tensor, k: int) -> Dict[str, Tensor]:
    return {"precision": (_ball_counts(fake, real, knn_radii(real, k)) > 0).double(),
            "recall": (_ball_counts(real, fake, knn_radii(fake, k)) > 0).double()}


def _density_coverage_points(real: Tensor, fake: Tensor, k: int) -> Dict[str, Tensor]:
    radii = knn_radii(real, k)
    nearest_fake = torch.cat([torch.cdist(real[s : s + _CHUNK], fake).min(dim=1).values for s in range(0, len(real), _CHUNK)])
    return {"density": _ball_counts(fake, real, radii).double() / k, "coverage": (nearest_fake <= radii).double()}


def point_scores(real, fake, k: int = 3, k_density: int = 5) -> Dict[str, Tensor]:
    """Per-point terms whose means are the four metrics: precision and density per generated point
    (inside a real ball or not; real balls holding it / k), recall and coverage per real point."""
    real, fake = _as_features(real, "real features"), _as_features(fake, "generated features")
    return {**_precision_recall_points(real, fake, k), **_density_coverage_points(real, fake, k_density)}


def precision_recall(real, fake, k: int = 3) -> Dict[str, float]:
    """Improved precision and recall of `fake` against `real` (feature matrices [n, d], [m, d])."""
    real, fake = _as_features(real, "real features"), _as_features(fake, "generated features")
    return {name: float(values.mean()) for name, values in _precision_recall_points(real, fake, k).items()}


def density_coverage(real, fake, k: int = 5) -> Dict[str, float]:
    """Density and coverage of `fake` against `real` (feature matrices [n, d], [m, d])."""
    real, fake = _as_features(real, "real features"), _as_features(fake, "generated features")
    return {name: float(values.mean()) for name, values in _density_coverage_points(real, fake, k).items()}
