"""Exact denoisers: the posterior mean D(x_hat; sigma) = E[x_0 | x_0 + sigma * eps = x_hat].

In the EDM view every trained model approximates this one function, so having it
in closed form gives ground truth for samplers, formulations and benchmarks.
Two data distributions have a closed-form posterior mean:

* a finite data set {y_1, ..., y_n} (the empirical distribution), for which

      D(x; sigma) = sum_i w_i(x, sigma) y_i,
      w_i = N(x; y_i, sigma^2 I) / sum_j N(x; y_j, sigma^2 I)
          = softmax_i(-|x - y_i|^2 / (2 sigma^2)),

  i.e. a softmax-weighted average of the data (`IdealDenoiser`);

* a Gaussian mixture p_0 = sum_k w_k N(mu_k, C_k). Adding noise gives
  p_sigma = sum_k w_k N(mu_k, C_k + sigma^2 I) and

      D(x; sigma) = sum_k r_k(x, sigma) [mu_k + C_k (C_k + sigma^2 I)^{-1} (x - mu_k)],
      r_k = w_k N(x; mu_k, C_k + sigma^2 I) / sum_j w_j N(x; mu_j, C_j + sigma^2 I),

  the responsibility-weighted Wiener filters of the components
  (`GaussianMixtureDenoiser`).

Both also have an exact class-conditional form. Built with class labels, the
finite set averages only over the points of the query's class, and the mixture
uses per-class component weights p(k | c); the null label gives the
unconditional D. The classifier-free-guided exact denoiser is then the closed
form D_uncond + w (D_cond - D_uncond) (see ``edm_space.guidance``).

Both follow the project's denoiser contract: ``denoiser(x_hat, sigma)`` with
``x_hat`` of shape ``[batch, *item_shape]`` and ``sigma`` a float64 tensor of
shape ``[batch]`` (a Python float or a 0-d / one-element tensor is broadcast).
All arithmetic is float64; the result has the dtype of ``x_hat`` (float64 for
non-floating input). The limits are handled exactly: ``sigma = inf`` gives the
data mean, ``sigma = 0`` gives the nearest data point (finite set) or ``x_hat``
itself (mixture). The conditional call is ``denoiser(x_hat, sigma, labels)``
with ``labels`` as in the network contract, a float one-hot ``[batch,
num_classes]`` whose all-zero rows are the null label, or integer class
indices ``[batch]`` with -1 as the null label.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from edm_space.errors import ConfigError

__all__ = ["IdealDenoiser", "GaussianMixtureDenoiser"]

SigmaLike = Union[float, int, Tensor]
#: Per-row labels: float one-hot [batch, num_classes] (all-zero row = null) or class indices [batch] (-1 = null).
LabelsLike = Optional[Tensor]

_F64 = torch.float64
_F64_MAX = torch.finfo(torch.float64).max
_DEFAULT_CHUNK_BYTES = 256 * 2**20


# --------------------------------------------------------------------------- helpers


def _shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _check_chunk_bytes(chunk_bytes: int) -> int:
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes <= 0:
        raise ConfigError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
    return chunk_bytes


def _as_real_tensor(value: object, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        # via NumPy, so that Python floats and lists keep float64 precision
        try:
            arr = np.asarray(value)
            if arr.dtype == object:
                raise TypeError("not numeric")
            value = torch.from_numpy(np.array(arr, copy=True))
        except Exception as exc:  # noqa: BLE001 - reported as one line
            raise ConfigError(f"{name} must be a tensor, got {type(value).__name__}: {exc}") from None
    if value.is_complex():
        raise ConfigError(f"{name} must be real, got dtype {value.dtype}")
    return value


def _output_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else _F64


def _check_batch(x_hat: object, item_shape: Tuple[int, ...], what: str, name: str = "x_hat") -> Tensor:
    """``x_hat`` as a tensor of shape [batch, *item_shape], else a one-line ConfigError."""
    x_hat = _as_real_tensor(x_hat, name)
    if x_hat.dim() != len(item_shape) + 1 or tuple(x_hat.shape[1:]) != item_shape:
        raise ConfigError(
            f"{name} has shape {_shape_str(x_hat.shape)} but {what} items have shape "
            f"{_shape_str(item_shape)}; expected [batch, {', '.join(map(str, item_shape))}]"
            if item_shape
            else f"{name} has shape {_shape_str(x_hat.shape)} but {what} items are scalars; "
            "expected [batch]"
        )
    return x_hat


def _sigma_vector(sigma: SigmaLike, batch: int, device: torch.device) -> Tensor:
    """Sigma as a float64 vector of length ``batch`` (broadcasting a single value)."""
    s = _as_real_tensor(sigma, "sigma").to(device=device, dtype=_F64)
    if s.numel() == 1:
        s = s.reshape(1).expand(batch)
    elif s.numel() == batch:
        s = s.reshape(batch)
    else:
        raise ConfigError(
            f"sigma has shape {_shape_str(s.shape)} but the batch has {batch} items; "
            f"expected a scalar or shape [{batch}]"
        )
    if batch and (torch.isnan(s).any() or (s < 0).any()):
        bad = s[torch.isnan(s) | (s < 0)][0].item()
        raise ConfigError(f"sigma must be >= 0 (inf allowed), got {bad}")
    return s


def _check_count(n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"n must be a non-negative int, got {n!r}")


def _data_labels(labels: object, n: int, num_classes: Optional[int]) -> Tuple[Tensor, int]:
    """The class of each data point as a LongTensor [n] and the number of classes."""
    labels = _as_real_tensor(labels, "labels")
    if labels.is_floating_point() or labels.dtype == torch.bool or tuple(labels.shape) != (n,):
        raise ConfigError(
            f"labels must be integer class indices of shape [{n}] (one per data point), "
            f"got dtype {labels.dtype} and shape {_shape_str(labels.shape)}"
        )
    labels = labels.detach().to(torch.long).cpu()
    if (labels < 0).any():
        raise ConfigError(f"labels must be >= 0, got {int(labels.min())}")
    found = int(labels.max()) + 1
    if num_classes is None:
        num_classes = found
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < found:
        raise ConfigError(f"num_classes must be an int >= {found} (the largest label + 1), got {num_classes!r}")
    return labels, num_classes


def _row_classes(labels: LabelsLike, batch: int, num_classes: int) -> Tensor:
    """The class of each query row as a LongTensor [batch] on the CPU, -1 for the null label.

    ``labels`` is None (every row null), integer class indices [batch] (-1 = null),
    or a float one-hot [batch, num_classes] whose all-zero rows are null (the
    network contract, so the same labels drive a network and an exact denoiser).
    """
    if labels is None:
        return torch.full((batch,), -1, dtype=torch.long)
    labels = _as_real_tensor(labels, "labels").detach().cpu()
    allowed = f"class indices in -1..{num_classes - 1}" if num_classes else "null labels (no classes)"
    if labels.is_floating_point():
        if labels.dim() != 2 or labels.shape[0] != batch or (num_classes and labels.shape[1] != num_classes):
            raise ConfigError(
                f"one-hot labels have shape {_shape_str(labels.shape)}; expected [{batch}, "
                f"{num_classes or 'num_classes'}] for a batch of {batch}"
            )
        hot = labels != 0
        rows_ok = (hot.sum(dim=1) <= 1) & ((labels == 0) | (labels == 1)).all(dim=1)
        if not rows_ok.all():
            bad = int(torch.nonzero(~rows_ok)[0])
            raise ConfigError(
                f"labels row {bad} is {labels[bad].tolist()}; each row must be one-hot or all zero (null)"
            )
        classes = torch.where(hot.any(dim=1), labels.argmax(dim=1), torch.full((batch,), -1, dtype=torch.long))
    elif labels.dtype != torch.bool and tuple(labels.shape) == (batch,):
        classes = labels.to(torch.long)
    else:
        raise ConfigError(
            f"labels must be one-hot floats [{batch}, num_classes] or class indices [{batch}], "
            f"got dtype {labels.dtype} and shape {_shape_str(labels.shape)}"
        )
    bad = (classes < -1) | (classes >= num_classes)
    if bad.any():
        raise ConfigError(f"label {int(classes[bad][0])} is out of range; this denoiser takes {allowed}")
    return classes


class _ExactDenoiser:
    """What both exact denoisers share: items of shape item_shape, d entries each, and the data law's mean."""

    item_shape: Tuple[int, ...]
    _mean_flat: Tensor  # [d]: the data mean (finite set) or sum_k w_k mu_k (mixture)

    @property
    def dim(self) -> int:
        """Flattened item dimension d = prod(item_shape)."""
        return int(math.prod(self.item_shape))

    @property
    def mean(self) -> Tensor:
        """The data law's mean, the denoiser's value at sigma = inf, shape ``item_shape``."""
        return self._mean_flat.reshape(self.item_shape)


# --------------------------------------------------------------------------- finite set


class IdealDenoiser(_ExactDenoiser):
    r"""Exact denoiser of a finite data set (the posterior mean of its empirical law).

    For data points y_1..y_n (each of shape ``item_shape``) and x = x_0 + sigma*eps
    with x_0 uniform on the data and eps ~ N(0, I),

        D(x; sigma) = E[x_0 | x] = sum_i w_i y_i,
        w = softmax_i(-|x - y_i|^2 / (2 sigma^2)) = softmax_i((x . y_i - |y_i|^2 / 2) / sigma^2),

    the second form dropping the row-constant |x|^2 term. The logits come from one
    float64 matmul per chunk and go through a streaming log-sum-exp (the row max is
    subtracted *before* dividing by sigma^2), so the weights are exact down to
    one-hot at tiny sigma (sigma = 0 returns the nearest point, ties averaged) and
    uniform at huge sigma; sigma = inf returns the data mean exactly.

    Queries, and data points when needed, are processed in chunks so that the
    largest temporary stays near ``chunk_bytes``.

    With ``labels`` (the class of each data point) the denoiser is also the exact
    class-conditional one: ``D(x; sigma, c) = E[x_0 | x, class c]`` is the same
    softmax average taken over the points of class c only, and a null label
    gives the unconditional D over all the data.

    Args:
        data: ``[n, *item_shape]`` real tensor with finite values, n >= 1.
        chunk_bytes: memory budget for the per-chunk temporaries.
        labels: optional integer class indices ``[n]`` of the data points.
        num_classes: the number of classes (default: the largest label + 1);
            a class without points can be named but not queried.
    """

    def __init__(
        self,
        data: Tensor,
        chunk_bytes: int = _DEFAULT_CHUNK_BYTES,
        *,
        labels: Optional[Tensor] = None,
        num_classes: Optional[int] = None,
    ) -> None:
        data = _as_real_tensor(data, "data")
        if data.dim() < 1 or data.shape[0] == 0:
            raise ConfigError(
                f"data must have shape [n, *item_shape] with n >= 1, got {_shape_str(data.shape)}"
            )
        data = data.detach().to(_F64)
        if not torch.isfinite(data).all():
            raise ConfigError("data contains non-finite values (nan or inf); all values must be finite")
        self.chunk_bytes = _check_chunk_bytes(chunk_bytes)
        self.item_shape: Tuple[int, ...] = tuple(data.shape[1:])
        self.data: Tensor = data
        self._flat = data.reshape(data.shape[0], -1).contiguous()  # [n, d]
        self._half_sq = 0.5 * (self._flat * self._flat).sum(dim=1)  # [n]
        self._mean_flat = self._flat.mean(dim=0)  # [d]
        self._cache: dict = {}
        # class-conditional form: one unconditional denoiser per class, on that class's points
        self.data_labels: Optional[Tensor] = None
        self.num_classes = 0
        self._per_class: List[Optional[IdealDenoiser]] = []
        if labels is not None:
            self.data_labels, self.num_classes = _data_labels(labels, self.n, num_classes)
            on_device = self.data_labels.to(data.device)
            self._per_class = [
                IdealDenoiser(data[on_device == c], chunk_bytes) if (self.data_labels == c).any() else None
                for c in range(self.num_classes)
            ]
        elif num_classes is not None:
            raise ConfigError("num_classes needs labels (the class of each data point)")

    @property
    def n(self) -> int:
        """Number of data points."""
        return int(self._flat.shape[0])

    def _on(self, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
        if device == self._flat.device:
            return self._flat, self._half_sq, self._mean_flat
        key = str(device)
        if key not in self._cache:
            self._cache[key] = (
                self._flat.to(device),
                self._half_sq.to(device),
                self._mean_flat.to(device),
            )
        return self._cache[key]

    def _plan(self, batch: int) -> Tuple[int, int]:
        """(queries per chunk, data points per chunk) keeping temporaries near the budget.

        Per query row the live float64 temporaries are about two rows of logits
        (length nc) and three rows of length d (the query, the accumulator and
        the product of weights and data).
        """
        n, d, budget = self.n, self.dim, self.chunk_bytes
        row_full = 8 * (2 * n + 3 * d)
        if row_full <= budget:
            return max(1, min(batch, budget // row_full)), n
        bq = max(1, min(batch, budget // (2 * 8 * 3 * d)))
        nc = max(1, min(n, (budget // 2) // (8 * 2 * bq)))
        return bq, nc

    # -- evaluation -----------------------------------------------------------
    def __call__(self, x_hat: Tensor, sigma: SigmaLike, labels: LabelsLike = None) -> Tensor:
        """D(x_hat; sigma[, labels]) for ``x_hat`` of shape ``[batch, *item_shape]``; same shape out.

        Each row with a class label averages over that class's points only; rows
        with the null label (or ``labels=None``) over all the data.
        """
        if labels is None:
            return self._denoise(x_hat, sigma)
        x_hat = _check_batch(x_hat, self.item_shape, "the data")
        batch = x_hat.shape[0]
        classes = _row_classes(labels, batch, self.num_classes)
        sig = _sigma_vector(sigma, batch, x_hat.device)
        out = torch.empty(batch, *self.item_shape, dtype=_output_dtype(x_hat), device=x_hat.device)
        for c in classes.unique().tolist():
            rows = torch.nonzero(classes == c).flatten().to(x_hat.device)
            out[rows] = self._class_denoiser(c)._denoise(x_hat[rows], sig[rows])
        return out

    def _class_denoiser(self, c: int) -> "IdealDenoiser":
        """The unconditional denoiser of class c's points (c = -1: of all the data)."""
        if c < 0:
            return self
        found = self._per_class[c]
        if found is None:
            raise ConfigError(f"class {c} has no data points, so its conditional denoiser is undefined")
        return found

    def _denoise(self, x_hat: Tensor, sigma: SigmaLike) -> Tensor:
        """The unconditional D(x_hat; sigma) over all of this denoiser's data."""
        x_hat = _check_batch(x_hat, self.item_shape, "the data")
        batch = x_hat.shape[0]
        device = x_hat.device
        out_dtype = _output_dtype(x_hat)
        sig = _sigma_vector(sigma, batch, device)
        flat, half_sq, mean = self._on(device)
        x = x_hat.detach().reshape(batch, -1).to(_F64)
        out = torch.empty(batch, self.dim, dtype=_F64, device=device)

        # sigma^2 overflowing to inf (sigma > ~1e154) is indistinguishable from inf.
        var = sig * sig
        at_inf = torch.isinf(var)
        out[at_inf] = mean
        # 1/sigma^2 clamped to the largest float so that sigma = 0 (or an
        # underflowing sigma^2) yields one-hot weights without 0 * inf = nan.
        inv_var = torch.clamp(1.0 / var, max=_F64_MAX)
        if not at_inf.any():  # the common case: no gather/scatter copies
            if not torch.isfinite(x).all():
                raise ConfigError("x_hat contains non-finite values at a finite sigma")
            self._posterior_mean(x, inv_var, flat, half_sq, out)
        else:
            rows = torch.nonzero(~at_inf).flatten()
            if rows.numel():
                xs = x[rows]
                if not torch.isfinite(xs).all():
                    raise ConfigError("x_hat contains non-finite values at a finite sigma")
                out[rows] = self._posterior_mean(xs, inv_var[rows], flat, half_sq, torch.empty_like(xs))
        return out.reshape(batch, *self.item_shape).to(out_dtype)

    def _posterior_mean(
        self, x: Tensor, inv_var: Tensor, flat: Tensor, half_sq: Tensor, result: Tensor
    ) -> Tensor:
        """Write sum_i softmax_i(raw_i / sigma^2) y_i for each row of x into ``result``."""
        batch = x.shape[0]
        n = flat.shape[0]
        bq, nc = self._plan(batch)
        for q0 in range(0, batch, bq):
            xq = x[q0 : q0 + bq]
            iv = inv_var[q0 : q0 + bq, None]
            run_max = torch.full((xq.shape[0], 1), -math.inf, dtype=_F64, device=x.device)
            run_sum = torch.zeros((xq.shape[0], 1), dtype=_F64, device=x.device)
            acc = torch.zeros_like(xq)
            for p0 in range(0, n, nc):
                yc = flat[p0 : p0 + nc]
                # raw_i = x . y_i - |y_i|^2 / 2 = (logit_i) * sigma^2, in place from here on.
                raw = torch.addmm(half_sq[p0 : p0 + nc], xq, yc.T, beta=-1.0)
                new_max = torch.maximum(run_max, raw.amax(dim=1, keepdim=True))
                # exp((old_max - new_max) / sigma^2); exactly 0 before the first chunk.
                shrink = torch.where(
                    torch.isinf(run_max),
                    torch.zeros_like(run_max),
                    torch.exp((run_max - new_max) * iv),
                )
                weights = raw.sub_(new_max).mul_(iv).exp_()
                run_sum.mul_(shrink).add_(weights.sum(dim=1, keepdim=True))
                acc.mul_(shrink).addmm_(weights, yc)
                run_max = new_max
                del raw, weights
            result[q0 : q0 + bq] = acc / run_sum
        return result

    def nearest_index(self, x: Tensor) -> Tensor:
        """Index of the nearest data point (Euclidean) for each item: LongTensor ``[batch]``.

        Uses argmax_i (x . y_i - |y_i|^2 / 2), which equals argmin_i |x - y_i|^2.
        """
        x = _check_batch(x, self.item_shape, "the data", "x")
        batch = x.shape[0]
        flat, half_sq, _ = self._on(x.device)
        xf = x.detach().reshape(batch, -1).to(_F64)
        if not torch.isfinite(xf).all():
            raise ConfigError("x contains non-finite values; nearest_index needs finite input")
        bq, nc = self._plan(batch)
        best_idx = torch.zeros(batch, dtype=torch.long, device=x.device)
        for q0 in range(0, batch, bq):
            xq = xf[q0 : q0 + bq]
            best_val = torch.full((xq.shape[0],), -math.inf, dtype=_F64, device=x.device)
            idx = torch.zeros(xq.shape[0], dtype=torch.long, device=x.device)
            for p0 in range(0, flat.shape[0], nc):
                raw = torch.addmm(half_sq[p0 : p0 + nc], xq, flat[p0 : p0 + nc].T, beta=-1.0)
                val, arg = raw.max(dim=1)
                better = val > best_val
                best_val = torch.where(better, val, best_val)
                idx = torch.where(better, arg + p0, idx)
            best_idx[q0 : q0 + bq] = idx
        return best_idx

    def __repr__(self) -> str:
        classes = f", num_classes={self.num_classes}" if self.num_classes else ""
        return f"IdealDenoiser(n={self.n}, item_shape={list(self.item_shape)}{classes})"


# --------------------------------------------------------------------------- Gaussian mixture


def _checked_means(means: Tensor, item_shape: Optional[Sequence[int]]) -> Tuple[Tensor, Tuple[int, ...]]:
    """(means as float64, the item shape): [K, d] or [K, *item_shape] means with K >= 1, finite, d >= 1."""
    means = _as_real_tensor(means, "means").detach().to(_F64)
    if means.dim() < 2 or means.shape[0] == 0:
        raise ConfigError(f"means must have shape [K, d] with K >= 1, got {_shape_str(means.shape)}")
    d = int(math.prod(means.shape[1:]))
    if item_shape is None:
        item_shape = tuple(int(s) for s in means.shape[1:])
    else:
        item_shape = tuple(int(s) for s in item_shape)
        if math.prod(item_shape) != d:
            raise ConfigError(
                f"item_shape {_shape_str(item_shape)} has {math.prod(item_shape)} elements "
                f"but means have {d} per component (shape {_shape_str(means.shape)})"
            )
    if d == 0:
        raise ConfigError(f"means must have at least one dimension per item, got {_shape_str(means.shape)}")
    if not torch.isfinite(means).all():
        raise ConfigError("means contain non-finite values; all values must be finite")
    return means, item_shape


def _normalized_weights(weights: Optional[Tensor], K: int) -> Tensor:
    """Mixture weights [K] summing to 1: equal weights for None, else `weights` checked and normalized."""
    if weights is None:
        return torch.full((K,), 1.0 / K, dtype=_F64)
    w = _as_real_tensor(weights, "weights").detach().to(_F64)
    if tuple(w.shape) != (K,):
        raise ConfigError(f"weights must have shape [{K}] (one per mean), got {_shape_str(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ConfigError(f"weights must be finite and >= 0, got {w.tolist()}")
    total = w.sum()
    if total <= 0:
        raise ConfigError("weights sum to 0; at least one weight must be positive")
    return w / total


def _eigen_covariances(cov: Tensor) -> Tuple[Tensor, Tensor]:
    """(eigenvalues clamped at 0, eigenvectors) of full covariances [K, d, d], checked symmetric and PSD."""
    asym = (cov - cov.transpose(1, 2)).abs().amax()
    scale = cov.abs().amax()
    if asym > 1e-6 * scale:
        raise ConfigError(f"full covariances must be symmetric; max |C - C^T| = {asym.item():.3g} (max |C| = {scale.item():.3g})")
    cov = 0.5 * (cov + cov.transpose(1, 2))
    lam, U = torch.linalg.eigh(cov)
    tol = 1e-6 * scale.item()  # round-off of float32-made inputs, far from a real negative
    if (lam < -tol).any():
        k = int(torch.nonzero((lam < -tol).any(dim=1))[0])
        raise ConfigError(f"covariances must be positive semi-definite; component {k} has eigenvalue {lam[k].min().item():.3g}")
    return lam.clamp_min(0.0), U.contiguous()


class GaussianMixtureDenoiser(_ExactDenoiser):
    r"""Exact denoiser (and density, score, sampler) of a Gaussian mixture.

    Data law p_0 = sum_k w_k N(mu_k, C_k). With x = x_0 + sigma * eps the noised law
    is p_sigma = sum_k w_k N(mu_k, C_k + sigma^2 I), and the posterior mean is

        D(x; sigma) = sum_k r_k [mu_k + C_k (C_k + sigma^2 I)^{-1} (x - mu_k)],
        r_k ∝ w_k N(x; mu_k, C_k + sigma^2 I)        (computed in the log domain).

    Each C_k = U_k diag(lam_k) U_k^T is eigendecomposed once in float64, so for any
    per-sample sigma, C_k + sigma^2 I = U_k diag(lam_k + sigma^2) U_k^T and all
    inverses and determinants reduce to elementwise work in the eigenbasis
    (diagonal and isotropic covariances skip the rotation altogether).

    Class-conditional form: with ``class_weights`` (a [C, K] matrix proportional to
    the joint law P(class c, component k)), class c's data law is
    sum_k p(k | c) N(mu_k, C_k), and D(x; sigma, c) is the formula above with
    w_k replaced by the row p(k | c). The null label gives the marginal weights
    w_k = sum_c P(c, k), so the unconditional law is the mixture of the classes.

    Args:
        means: ``[K, d]`` or ``[K, *item_shape]`` component means.
        covariances: ``[K, d, d]`` full (symmetric PSD), ``[K, d]`` (or
            ``[K, *item_shape]``) diagonal variances, or ``[K]`` isotropic variances.
            Zero variances are allowed (degenerate components, e.g. point masses).
        weights: ``[K]`` non-negative, not all zero; normalized internally.
            ``None`` means equal weights (or, with ``class_weights``, their column sums).
        class_weights: optional ``[C, K]`` non-negative joint weights P(c, k),
            normalized internally, every row with a positive sum; excludes ``weights``.
        item_shape: shape of one item when ``means`` is ``[K, d]`` with d = prod(item_shape).
        chunk_bytes: memory budget for per-chunk temporaries (chunks over the batch).
    """

    def __init__(
        self,
        means: Tensor,
        covariances: Tensor,
        weights: Optional[Tensor] = None,
        *,
        class_weights: Optional[Tensor] = None,
        item_shape: Optional[Sequence[int]] = None,
        chunk_bytes: int = _DEFAULT_CHUNK_BYTES,
    ) -> None:
        means, item_shape = _checked_means(means, item_shape)
        K, d = int(means.shape[0]), int(math.prod(item_shape))
        self.item_shape: Tuple[int, ...] = item_shape
        self.chunk_bytes = _check_chunk_bytes(chunk_bytes)
        self.means_flat = means.reshape(K, d).contiguous()

        # per-class weights: the null label's weights are the marginal sum_c P(c, k)
        joint = None if class_weights is None else self._joint_weights(class_weights, weights, K)
        if joint is not None:
            weights = joint.sum(dim=0)
        w = _normalized_weights(weights, K)
        self.weights: Tensor = w
        self._log_w = torch.log(w)  # -inf for zero weights, harmless in log-sum-exp
        self._set_covariances(covariances, K, d, tuple(means.shape))
        self._mean_flat = (w[:, None] * self.means_flat).sum(dim=0)
        self._set_class_tables(joint)

    def _set_covariances(self, covariances: Tensor, K: int, d: int, means_shape: Tuple[int, ...]) -> None:
        """kind ("full", "diag", "isotropic"), the eigenvalues _lam [K, d] and, for full covariances, the eigenvectors _U."""
        item_shape = self.item_shape
        cov = _as_real_tensor(covariances, "covariances").detach().to(_F64)
        if not torch.isfinite(cov).all():
            raise ConfigError("covariances contain non-finite values; all values must be finite")
        self._U: Optional[Tensor] = None
        if cov.dim() == 3 and tuple(cov.shape) == (K, d, d) and not (
            d == 1 and tuple(cov.shape[1:]) == tuple(item_shape)
        ):
            self.kind = "full"
            self._lam, self._U = _eigen_covariances(cov)
        elif cov.dim() >= 2 and cov.shape[0] == K and cov[0].numel() == d and (
            cov.dim() == 2 or tuple(cov.shape[1:]) == tuple(item_shape)
        ):
            self.kind = "diag"
            lam = cov.reshape(K, d)
            if (lam < 0).any():
                raise ConfigError(f"diagonal variances must be >= 0, got min {lam.min().item():.3g}")
            self._lam = lam.contiguous()
        elif cov.dim() == 1 and cov.shape[0] == K:
            self.kind = "isotropic"
            if (cov < 0).any():
                raise ConfigError(f"isotropic variances must be >= 0, got {cov.tolist()}")
            self._lam = cov[:, None].expand(K, d).contiguous()
        else:
            raise ConfigError(
                f"covariances have shape {_shape_str(cov.shape)}; expected [{K}, {d}, {d}] (full), "
                f"[{K}, {d}] (diagonal) or [{K}] (isotropic) for means of shape {_shape_str(means_shape)}"
            )

    def _set_class_tables(self, joint: Optional[Tensor]) -> None:
        """p(c) and p(k | c); row 0 of the tables is the null label, row c + 1 class c."""
        self.num_classes = 0 if joint is None else int(joint.shape[0])
        self.class_priors: Optional[Tensor] = None if joint is None else joint.sum(dim=1)
        self.class_weights: Optional[Tensor] = None if joint is None else joint / joint.sum(dim=1, keepdim=True)
        log_w, mean = self._log_w[None], self._mean_flat[None]
        if self.class_weights is not None:
            cw = self.class_weights.to(self.means_flat.device)
            class_means = (cw[:, :, None] * self.means_flat[None]).sum(dim=1)
            log_w = torch.cat([log_w, torch.log(cw).to(log_w.device)])
            mean = torch.cat([mean, class_means])
        self._log_w_table, self._mean_table = log_w, mean

    @staticmethod
    def _joint_weights(class_weights: Tensor, weights: Optional[Tensor], K: int) -> Tensor:
        """``class_weights`` checked and normalized to the joint law P(c, k), [C, K]."""
        if weights is not None:
            raise ConfigError(
                "give weights or class_weights, not both: with class_weights the null label's "
                "weights are its column sums"
            )
        joint = _as_real_tensor(class_weights, "class_weights").detach().to(_F64)
        if joint.dim() != 2 or joint.shape[0] == 0 or joint.shape[1] != K:
            raise ConfigError(
                f"class_weights must have shape [num_classes, {K}] (one column per mean), "
                f"got {_shape_str(joint.shape)}"
            )
        if not torch.isfinite(joint).all() or (joint < 0).any():
            raise ConfigError("class_weights must be finite and >= 0")
        empty = joint.sum(dim=1) <= 0
        if empty.any():
            row = int(torch.nonzero(empty)[0])
            raise ConfigError(f"class_weights row {row} sums to 0; every class needs a positive weight")
        return joint / joint.sum()

    @property
    def num_components(self) -> int:
        """Number of mixture components K."""
        return int(self.means_flat.shape[0])

    @property
    def means(self) -> Tensor:
        """Component means, ``[K, *item_shape]``."""
        return self.means_flat.reshape(self.num_components, *self.item_shape)

    @property
    def covariances(self) -> Tensor:
        """Full covariance matrices ``[K, d, d]`` (rebuilt from the eigendecomposition)."""
        if self._U is None:
            return torch.diag_embed(self._lam)
        return (self._U * self._lam[:, None, :]) @ self._U.transpose(1, 2)

    # -- core ---------------------------------------------------------------------
    def _flatten(self, x: Tensor, name: str) -> Tuple[Tensor, int]:
        """[batch, *item_shape] -> float64 [batch, d] on the mixture's device."""
        x = _check_batch(x, self.item_shape, "the mixture", name)
        batch = x.shape[0]
        # Not detached: the closed form is differentiable, so autograd gives exact divergences of D.
        return x.reshape(batch, -1).to(device=self.means_flat.device, dtype=_F64), batch

    def _rows_per_chunk(self, batch: int) -> int:
        per_row = 8 * self.num_components * self.dim * 5
        return max(1, min(max(batch, 1), self.chunk_bytes // per_row))

    def _row_tables(self, labels: LabelsLike, batch: int, device: torch.device) -> Tuple[Tensor, Tensor]:
        """Per-row (log weights [batch, K], mean at sigma = inf [batch, d]) for the rows' labels."""
        if labels is None:
            null = torch.zeros(1, dtype=torch.long)
            log_w, mean = self._log_w_table[null].to(device), self._mean_table[null].to(device)
            return log_w.expand(batch, -1), mean.expand(batch, -1)
        rows = _row_classes(labels, batch, self.num_classes) + 1
        return self._log_w_table[rows].to(device), self._mean_table[rows].to(device)

    def _components(self, x: Tensor, var: Tensor, log_w: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """For a chunk x [b, d], sigma^2 [b] and log weights [b, K]: (z, v, logits) in the eigenbasis.

        z_k = U_k^T (x - mu_k) and v_k = lam_k + sigma^2, both [b, K, d];
        logits_k = log w_k + log N(x; mu_k, C_k + sigma^2 I), [b, K]: their softmax
        over k is the responsibilities, their log-sum-exp the log density.
        """
        diff = x[:, None, :] - self.means_flat[None]  # [b, K, d]
        z = diff if self._U is None else torch.einsum("bkd,kde->bke", diff, self._U)
        v = self._lam[None] + var[:, None, None]
        log_norm = -0.5 * ((z * z / v).sum(-1) + torch.log(v).sum(-1) + self.dim * math.log(2 * math.pi))
        return z, v, log_w + log_norm

    def _back(self, coeffs: Tensor) -> Tensor:
        """sum_k U_k coeffs_k for coeffs [b, K, d] -> [b, d]."""
        if self._U is None:
            return coeffs.sum(dim=1)
        return torch.einsum("bke,kde->bd", coeffs, self._U)

    def _evaluate(self, x: Tensor, sig: Tensor, what: str, log_w: Tensor) -> Tensor:
        batch = x.shape[0]
        var = sig * sig
        if what == "log_density":
            out = torch.empty(batch, dtype=_F64, device=x.device)
        else:
            out = torch.empty(batch, self.dim, dtype=_F64, device=x.device)
        step = self._rows_per_chunk(batch)
        for b0 in range(0, batch, step):
            xc, vc = x[b0 : b0 + step], var[b0 : b0 + step]
            z, v, logits = self._components(xc, vc, log_w[b0 : b0 + step])
            if what == "log_density":
                out[b0 : b0 + step] = torch.logsumexp(logits, dim=1)
                continue
            r = torch.softmax(logits, dim=1)[:, :, None]  # [b, K, 1]
            if torch.isnan(r).any():  # every component's density underflowed to 0
                raise ConfigError(
                    "responsibilities underflowed (x_hat too far from every component at this sigma); "
                    f"smallest sigma in the chunk: {sig[b0 : b0 + step].min().item():.3g}"
                )
            if what == "denoise":
                out[b0 : b0 + step] = (r * self.means_flat[None]).sum(1) + self._back(r * (self._lam[None] / v) * z)
            else:  # score = -sum_k r_k (C_k + sigma^2 I)^{-1} (x - mu_k)
                out[b0 : b0 + step] = -self._back(r * z / v)
        return out

    def _need_positive_variance(self, sig: Tensor, name: str) -> None:
        if (sig == 0).any() and (self._lam[self.weights > 0] <= 0).any():
            raise ConfigError(
                f"{name} at sigma = 0 needs positive definite covariances; this mixture has a "
                "zero variance, so use sigma > 0"
            )

    # -- public API -----------------------------------------------------------------
    def __call__(self, x_hat: Tensor, sigma: SigmaLike, labels: LabelsLike = None) -> Tensor:
        """D(x_hat; sigma[, labels]) = E[x_0 | x_hat(, class)], shape ``[batch, *item_shape]``.

        sigma = 0 returns x_hat; sigma = inf returns the mean of the row's class
        (of the whole mixture for the null label).
        """
        x_hat = _as_real_tensor(x_hat, "x_hat")
        out_dtype, out_device = _output_dtype(x_hat), x_hat.device
        x, batch = self._flatten(x_hat, "x_hat")
        sig = _sigma_vector(sigma, batch, x.device)
        log_w, mean = self._row_tables(labels, batch, x.device)
        out = torch.empty_like(x)
        var = sig * sig
        at_inf = torch.isinf(var)
        at_zero = var == 0
        out[at_inf] = mean[at_inf]
        out[at_zero] = x[at_zero]
        rows = torch.nonzero(~(at_inf | at_zero)).flatten()
        if rows.numel():
            xs = x[rows]
            if not torch.isfinite(xs).all():
                raise ConfigError("x_hat contains non-finite values at a finite sigma")
            out[rows] = self._evaluate(xs, sig[rows], "denoise", log_w[rows])
        return out.reshape(batch, *self.item_shape).to(device=out_device, dtype=out_dtype)

    def score(self, x_hat: Tensor, sigma: SigmaLike, labels: LabelsLike = None) -> Tensor:
        """grad_x log p_sigma(x[ | class]) = (D(x; sigma) - x) / sigma^2, float64 ``[batch, *item_shape]``.

        Computed directly as -sum_k r_k (C_k + sigma^2 I)^{-1} (x - mu_k), which has
        no cancellation at small sigma; 0 at sigma = inf.
        """
        x, batch = self._flatten(x_hat, "x_hat")
        sig = _sigma_vector(sigma, batch, x.device)
        log_w, _ = self._row_tables(labels, batch, x.device)
        self._need_positive_variance(sig, "score")
        out = torch.zeros_like(x)
        rows = torch.nonzero(~torch.isinf(sig * sig)).flatten()
        if rows.numel():
            out[rows] = self._evaluate(x[rows], sig[rows], "score", log_w[rows])
        return out.reshape(batch, *self.item_shape)

    def log_density(self, x: Tensor, sigma: SigmaLike = 0.0, labels: LabelsLike = None) -> Tensor:
        """log p_sigma(x[ | class]) = log sum_k w_k N(x; mu_k, C_k + sigma^2 I), float64 ``[batch]``."""
        xf, batch = self._flatten(x, "x")
        sig = _sigma_vector(sigma, batch, xf.device)
        log_w, _ = self._row_tables(labels, batch, xf.device)
        self._need_positive_variance(sig, "log_density")
        if torch.isinf(sig).any():
            raise ConfigError("log_density needs a finite sigma (the noised density vanishes at sigma = inf)")
        return self._evaluate(xf, sig, "log_density", log_w)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Draw n samples x_0 ~ sum_k w_k N(mu_k, C_k): float64 ``[n, *item_shape]``."""
        _check_count(n)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator) if n else (
            torch.zeros(0, dtype=torch.long)
        )
        return self._draw(comp, generator)

    def sample_labeled(self, n: int, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """Draw n pairs (x_0, c) from the joint law: float64 ``[n, *item_shape]`` and long ``[n]``.

        (c, k) ~ P(c, k), then x_0 ~ N(mu_k, C_k); so c ~ p(c) and x_0 | c follows class c's mixture.
        """
        _check_count(n)
        if self.class_weights is None:
            raise ConfigError("sample_labeled needs a class-conditional mixture (build it with class_weights)")
        K = self.num_components
        joint = (self.class_priors[:, None] * self.class_weights).reshape(-1)
        pick = torch.multinomial(joint, n, replacement=True, generator=generator) if n else (
            torch.zeros(0, dtype=torch.long)
        )
        return self._draw(pick % K, generator), pick // K

    def _draw(self, comp: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """One draw from N(mu_k, C_k) for each component index in ``comp``."""
        n = int(comp.shape[0])
        eps = torch.randn(n, self.dim, dtype=_F64, generator=generator)
        coeff = torch.sqrt(self._lam[comp]) * eps
        if self._U is not None:  # rotate out of each component's eigenbasis
            for k in range(self.num_components):
                sel = comp == k
                if sel.any():
                    coeff[sel] = coeff[sel] @ self._U[k].T
        return (self.means_flat[comp] + coeff).reshape(n, *self.item_shape)

    def __repr__(self) -> str:
        return (
            f"GaussianMixtureDenoiser(K={self.num_components}, item_shape={list(self.item_shape)}, "
            f"covariance={self.kind}{f', num_classes={self.num_classes}' if self.num_classes else ''})"
        )
