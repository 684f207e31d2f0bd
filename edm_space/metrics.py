"""Sample-quality metrics and model likelihood, each with a case whose answer is known (see tests).

- `sliced_wasserstein2`: sqrt(E_theta W2^2(theta.x, theta.y)) over random unit directions.
- `mmd2`: unbiased squared maximum mean discrepancy with Gaussian kernels (Gretton et al. 2012, eq. 3).
- `bootstrap`: an error bar for any two-sample metric.
- `log_likelihood`: log p(x) of a model by its probability-flow ODE (change of variables;
  Song et al. 2021, eq. 39; exact divergence up to 64 dimensions, Hutchinson's estimator above).
- `loss_floor`: the smallest possible training loss per sigma, reached by the training set's
  ideal denoiser, next to a model's loss on the same draws (EDM Fig. 5).
- `frechet_distance`: between Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import ConfigError
from .families import bits
from .parameterization import F64, Formulation, expand_per_item

Tensor = torch.Tensor


def _flat(x, name: str) -> Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(F64)
    if x.ndim < 2 or len(x) < 2:
        raise ConfigError(f"{name} must have shape [n, ...] with n >= 2; got {list(x.shape)}")
    return x.reshape(len(x), -1)


# ---------------------------------------------------------------------------
# Two-sample distances.


def sliced_wasserstein2(x, y, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance: sqrt of the mean over random unit directions theta of W2^2(theta.x, theta.y).

    One-dimensional W2 is computed exactly between the empirical quantile
    functions (sample sizes may differ). For N(a, I) against N(b, I) in d
    dimensions it tends to |a - b| / sqrt(d).
    """
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ConfigError(f"x and y differ in dimension: {x.shape[1]} and {y.shape[1]}")
    generator = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], num_projections, dtype=F64, generator=generator)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    if len(px) != len(py):
        # Both quantile functions on the union of their breakpoints, integrated exactly as step functions.
        levels = torch.unique(torch.cat([torch.arange(1, len(px) + 1, dtype=F64) / len(px), torch.arange(1, len(py) + 1, dtype=F64) / len(py)]))
        widths = torch.diff(torch.cat([torch.zeros(1, dtype=F64), levels]))
        ix = torch.clamp(torch.ceil(levels * len(px) - 1e-9).long() - 1, 0, len(px) - 1)
        iy = torch.clamp(torch.ceil(levels * len(py) - 1e-9).long() - 1, 0, len(py) - 1)
        w2 = (widths[:, None] * (px[ix] - py[iy]) ** 2).sum(dim=0)
    else:
        w2 = ((px - py) ** 2).mean(dim=0)
    return float(w2.mean().sqrt())


def median_bandwidth(x: Tensor, y: Tensor) -> float:
    """The median pairwise distance of the pooled samples (the usual kernel-width heuristic)."""
    pooled = torch.cat([x, y])[:2000]
    distances = torch.cdist(pooled, pooled)
    return float(distances[distances > 0].median())


def mmd2(x, y, bandwidths: Optional[Sequence[float]] = None) -> float:
    """Unbiased MMD^2 with the sum of Gaussian kernels exp(-|a - b|^2 / (2 h^2)) over `bandwidths`.

    Default bandwidths: the median heuristic times (0.5, 1, 2). Gretton et al. 2012, Lemma 6.
    """
    x, y = _flat(x, "x"), _flat(y, "y")
    if bandwidths is None:
        h = median_bandwidth(x, y)
        bandwidths = (0.5 * h, h, 2 * h)

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h**2)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def bootstrap(metric: Callable, x, y, num_resamples: int = 20, seed: int = 0) -> Tuple[float, float]:
    """(metric(x, y), its bootstrap standard deviation over resampled x and y)."""
    x, y = _flat(x, "x"), _flat(y, "y")
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_resamples):
        ix = torch.randint(len(x), (len(x),), generator=generator)
        iy = torch.randint(len(y), (len(y),), generator=generator)
        values.append(metric(x[ix], y[iy]))
    return float(metric(x, y)), float(np.std(values, ddof=1))


# ---------------------------------------------------------------------------
# Likelihood by the probability-flow ODE.


def _divergence_exact(fn: Callable[[Tensor], Tensor], x: Tensor, step: float = 1e-5) -> Tuple[Tensor, Tensor]:
    """(fn(x), trace of its Jacobian per example): one backward pass per dimension, or central
    differences of step `step` when fn is not differentiable by autograd."""
    with torch.enable_grad():  # also inside a caller's torch.no_grad()
        x = x.detach().requires_grad_(True)
        out = fn(x)
        flat_out = out.reshape(len(x), -1)
        dim = flat_out.shape[1]
        trace = torch.zeros(len(x), dtype=out.dtype)
        if out.requires_grad:
            for i in range(dim):
                (grad,) = torch.autograd.grad(flat_out[:, i].sum(), x, retain_graph=i < dim - 1)
                trace = trace + grad.reshape(len(x), -1)[:, i]
            return out.detach(), trace.detach()
    base = x.detach().reshape(len(x), -1)
    for i in range(dim):
        bump = torch.zeros_like(base)
        bump[:, i] = step
        plus = fn((base + bump).reshape(x.shape)).reshape(len(x), -1)[:, i]
        minus = fn((base - bump).reshape(x.shape)).reshape(len(x), -1)[:, i]
        trace = trace + (plus - minus) / (2 * step)
    return out.detach(), trace


def _without_autograd(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def detached(z: Tensor) -> Tensor:
        with torch.no_grad():
            return fn(z.detach())

    return detached


def _divergence_hutchinson(fn: Callable[[Tensor], Tensor], x: Tensor, probe: Tensor, step: float = 1e-5) -> Tuple[Tensor, Tensor]:
    """(fn(x), probe^T J probe): Hutchinson's unbiased trace estimate with a Rademacher probe
    (a directional central difference when fn is not differentiable by autograd)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x)
        if out.requires_grad:
            (grad,) = torch.autograd.grad((out * probe).sum(), x)
            return out.detach(), (grad * probe).reshape(len(x), -1).sum(dim=1).detach()
    base = x.detach()
    directional = (fn(base + step * probe) - fn(base - step * probe)) / (2 * step)
    return out.detach(), (directional * probe).reshape(len(x), -1).sum(dim=1)


def log_likelihood(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    sigma_min: float = 1e-3,
    sigma_max: float = 80.0,
    num_steps: int = 128,
    prior_std: Optional[float] = None,
    prior_mean: "float | Tensor" = 0.0,
    exact_divergence: Optional[bool] = None,
    seed: int = 0,
    dequantize_bins: Optional[int] = None,
) -> Dict[str, Tensor]:
    """log p(x) per example, in nats and bits per dimension, by the probability-flow ODE.

    In u = ln sigma the ODE of the unscaled x_hat is dx/du = x - D(x; e^u) (EDM eq. 4
    with s = 1, sigma = t), valid for every formulation since all share the same
    marginals p(x_hat; sigma). Change of variables (Song et al. 2021, eq. 39):
        log p(x; sigma_min) = log p(x_T; sigma_max) + int_{ln sigma_min}^{ln sigma_max} div(x - D) du,
    integrated with the classical Runge-Kutta method (RK4) on a uniform grid in u.
    The prior p(.; sigma_max) is N(prior_mean, prior_std^2 I) with prior_std = sqrt(sigma_max^2 + var(x))
    by default; its error in nats per dimension is about |data mean - prior_mean| / sigma_max.
    With `dequantize_bins` = L (256 for 8-bit images in [-1, 1], 17 for the digits) x is rounded to
    its L levels and dequantized the one way every likelihood here is (edm_space.families.bits):
    y = (2 / L)(k + u) - 1, u ~ U[0, 1), and bits/dim count the cell's probability, an offset of
    log2(L / 2) bits (7 for 8-bit data; the convention of published 8-bit figures).
    """
    x = torch.as_tensor(x, dtype=F64)
    n = len(x)
    dim = x[0].numel()
    generator = torch.Generator().manual_seed(seed)
    if dequantize_bins:
        x = bits.dequantize(bits.to_levels(x, dequantize_bins), generator, F64, dequantize_bins)
    exact = dim <= 64 if exact_divergence is None else exact_divergence
    probe = (torch.randint(0, 2, x.shape, generator=generator) * 2 - 1).to(F64)
    if prior_std is None:
        prior_std = math.sqrt(sigma_max**2 + float(x.var()))

    def field(state: Tensor, u: float) -> Tuple[Tensor, Tensor]:
        sigma = torch.full((n,), math.exp(u), dtype=F64)
        fn = lambda z: z - denoiser(z, sigma).to(F64)  # noqa: E731
        if not differentiable:
            fn = _without_autograd(fn)
        return _divergence_exact(fn, state) if exact else _divergence_hutchinson(fn, state, probe)

    with torch.enable_grad():  # a denoiser that is not differentiable gets finite differences instead
        probe_x = x[:1].clone().requires_grad_(True)
        differentiable = denoiser(probe_x, torch.full((1,), sigma_min, dtype=F64)).requires_grad

    u_grid = np.linspace(math.log(sigma_min), math.log(sigma_max), num_steps + 1)
    state, integral = x.clone(), torch.zeros(n, dtype=F64)
    for u0, u1 in zip(u_grid[:-1], u_grid[1:]):
        h = u1 - u0
        k1, d1 = field(state, u0)
        k2, d2 = field(state + 0.5 * h * k1, u0 + 0.5 * h)
        k3, d3 = field(state + 0.5 * h * k2, u0 + 0.5 * h)
        k4, d4 = field(state + h * k3, u1)
        state = state + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        integral = integral + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    flat = (state - torch.as_tensor(prior_mean, dtype=F64)).reshape(n, -1)
    log_prior = -0.5 * (flat**2).sum(dim=1) / prior_std**2 - dim * math.log(prior_std) - 0.5 * dim * math.log(2 * math.pi)
    log_p = log_prior + integral
    result = {"log_p": log_p, "nats_per_dim": -log_p / dim}
    result["bits_per_dim"] = bits.bits_per_dim(log_p, dim, 2.0 / dequantize_bins) if dequantize_bins else -log_p / dim / math.log(2)
    return result


# ---------------------------------------------------------------------------
# The loss floor.


def loss_floor(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    formulation: Formulation,
    train_data: Tensor,
    num_draws: int = 4096,
    buckets: Sequence[float] = (0.002, 0.01, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0),
    seed: int = 0,
    batch: int = 512,
    held_out: Optional[Tensor] = None,
) -> List[Dict[str, float]]:
    """Per sigma bucket: the model's weighted loss, the floor reached by the ideal denoiser of `train_data`, and the excess.

    Both are evaluated on the same draws: x_0 from the training set, sigma
    log-uniform over the bucket, n ~ N(0, I), loss lambda(sigma) |D(x_0 + sigma n; sigma) - x_0|^2
    averaged over the item (EDM eq. 8). The ideal denoiser minimizes this loss
    for the training set, so no model can fall below the floor. With `held_out` items, each row
    also holds the model's loss on them ("held_out"), with the same sigma and noise draws, and its
    standard error over the draws ("held_out_se").
    """
    from .ideal import IdealDenoiser

    data = torch.as_tensor(train_data, dtype=F64)
    held = None if held_out is None else torch.as_tensor(held_out, dtype=F64)
    ideal = IdealDenoiser(data)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for lo, hi in zip(buckets[:-1], buckets[1:]):
        model_sum = floor_sum = 0.0
        held_values: List[Tensor] = []
        done = 0
        while done < num_draws:
            size = min(batch, num_draws - done)
            x0 = data[torch.randint(len(data), (size,), generator=generator)]
            sigma = torch.exp(math.log(lo) + torch.rand(size, dtype=F64, generator=generator) * (math.log(hi) - math.log(lo)))
            noise = expand_per_item(sigma, x0) * torch.randn(x0.shape, dtype=F64, generator=generator)
            weight = formulation.loss_weight(sigma)

            def weighted(out: Tensor, target: Tensor) -> Tensor:
                return weight * ((out.to(F64) - target) ** 2).reshape(size, -1).mean(dim=1)

            with torch.no_grad():
                model_sum += float(weighted(denoiser(x0 + noise, sigma), x0).sum())
                if held is not None:
                    h0 = held[torch.randint(len(held), (size,), generator=generator)]
                    held_values.append(weighted(denoiser(h0 + noise, sigma), h0))
            floor_sum += float(weighted(ideal(x0 + noise, sigma), x0).sum())
            done += size
        rows.append({"sigma_lo": lo, "sigma_hi": hi, "model": model_sum / num_draws, "floor": floor_sum / num_draws,
                     "excess": (model_sum - floor_sum) / num_draws, **_held_out_mean(held_values)})
    return rows


def _held_out_mean(values: List[Tensor]) -> Dict[str, float]:
    """{"held_out": mean, "held_out_se": its standard error} of per-draw losses ({} without any)."""
    if not values:
        return {}
    losses = torch.cat(values)
    return {"held_out": float(losses.sum()) / len(losses), "held_out_se": float(losses.std() / math.sqrt(len(losses)))}


# ---------------------------------------------------------------------------
# Frechet distance in a feature space.


def covariance_factor(features) -> Tuple[np.ndarray, float, np.ndarray]:
    """(mean, trace of the covariance C, a factor F with F F^T = C) of a feature set [n, d], in float64.

    F is the centred features over sqrt(n - 1), transposed ([d, n]), when n <= d, else the symmetric
    root of C ([d, d]): whichever is smaller.
    """
    a = _flat(features, "features").numpy()
    mean = a.mean(axis=0)
    centred = (a - mean) / math.sqrt(len(a) - 1)
    factor = centred.T if len(a) <= a.shape[1] else _psd_root(centred.T @ centred)
    return mean, float((centred**2).sum()), factor


def frechet_distance_from_factors(a: Tuple[np.ndarray, float, np.ndarray], b: Tuple[np.ndarray, float, np.ndarray]) -> float:
    """|mu_a - mu_b|^2 + Tr(C_a) + Tr(C_b) - 2 Tr((C_a C_b)^(1/2)) (Heusel et al. 2017, eq. 6), in float64.

    For any factors F F^T = C, the eigenvalues of C_a C_b are the squared singular values of F_a^T F_b
    (F_a^T F_b (F_a^T F_b)^T = F_a^T C_b F_a, similar to C_b C_a), so Tr((C_a C_b)^(1/2)) is the sum of
    those singular values. This stays real and accurate when the covariances are singular (fewer
    samples than features), where a general matrix root of C_a C_b needs pytorch-fid's eps offset.
    """
    (mu_a, trace_a, factor_a), (mu_b, trace_b, factor_b) = a, b
    if len(mu_a) != len(mu_b):
        raise ConfigError(f"the two feature sets differ in dimension: {len(mu_a)} and {len(mu_b)}")
    trace_root = np.linalg.svd(factor_a.T @ factor_b, compute_uv=False).sum()
    return float(((mu_a - mu_b) ** 2).sum() + trace_a + trace_b - 2 * trace_root)


def frechet_distance_from_statistics(mu_a, cov_a, mu_b, cov_b) -> float:
    """The Frechet distance between N(mu_a, cov_a) and N(mu_b, cov_b) (see frechet_distance_from_factors)."""
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    return frechet_distance_from_factors((np.asarray(mu_a, np.float64), float(np.trace(cov_a)), _psd_root(cov_a)),
                                         (np.asarray(mu_b, np.float64), float(np.trace(cov_b)), _psd_root(cov_b)))


def _psd_root(cov: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance matrix (negative rounding-level eigenvalues set to 0)."""
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(features_a, features_b) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (see frechet_distance_from_factors)."""
    return frechet_distance_from_factors(covariance_factor(features_a), covariance_factor(features_b))
