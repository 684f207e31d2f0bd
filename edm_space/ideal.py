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

Both follow the project's denoiser contract: ``denoiser(x_hat, sigma)`` with
``x_hat`` of shape ``[batch, *item_shape]`` and ``sigma`` a float64 tensor of
shape ``[batch]`` (a Python float or a 0-d / one-element tensor is broadcast).
All arithmetic is float64; the result has the dtype of ``x_hat`` (float64 for
non-floating input). The limits are handled exactly: ``sigma = inf`` gives the
data mean, ``sigma = 0`` gives the nearest data point (finite set) or ``x_hat``
itself (mixture).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from edm_space.errors import ConfigError

__all__ = ["IdealDenoiser", "GaussianMixtureDenoiser"]

SigmaLike = Union[float, int, Tensor]

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


# --------------------------------------------------------------------------- finite set


class IdealDenoiser:
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

    Args:
        data: ``[n, *item_shape]`` real tensor with finite values, n >= 1.
        chunk_bytes: memory budget for the per-chunk temporaries.
    """

    def __init__(self, data: Tensor, chunk_bytes: int = _DEFAULT_CHUNK_BYTES) -> None:
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

    # -- basic properties -----------------------------------------------------
    @property
    def n(self) -> int:
        """Number of data points."""
        return int(self._flat.shape[0])

    @property
    def dim(self) -> int:
        """Flattened item dimension d."""
        return int(self._flat.shape[1])

    @property
    def mean(self) -> Tensor:
        """The data mean, the denoiser's value at sigma = inf, shape ``item_shape``."""
        return self._mean_flat.reshape(self.item_shape)

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
    def __call__(self, x_hat: Tensor, sigma: SigmaLike) -> Tensor:
        """D(x_hat; sigma) for ``x_hat`` of shape ``[batch, *item_shape]``; same shape out."""
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
        return f"IdealDenoiser(n={self.n}, item_shape={list(self.item_shape)})"


# --------------------------------------------------------------------------- Gaussian mixture


class GaussianMixtureDenoiser:
    r"""Exact denoiser (and density, score, sampler) of a Gaussian mixture.

    Data law p_0 = sum_k w_k N(mu_k, C_k). With x = x_0 + sigma * eps the noised law
    is p_sigma = sum_k w_k N(mu_k, C_k + sigma^2 I), and the posterior mean is

        D(x; sigma) = sum_k r_k [mu_k + C_k (C_k + sigma^2 I)^{-1} (x - mu_k)],
        r_k ∝ w_k N(x; mu_k, C_k + sigma^2 I)        (computed in the log domain).

    Each C_k = U_k diag(lam_k) U_k^T is eigendecomposed once in float64, so for any
    per-sample sigma, C_k + sigma^2 I = U_k diag(lam_k + sigma^2) U_k^T and all
    inverses and determinants reduce to elementwise work in the eigenbasis
    (diagonal and isotropic covariances skip the rotation altogether).

    Args:
        means: ``[K, d]`` or ``[K, *item_shape]`` component means.
        covariances: ``[K, d, d]`` full (symmetric PSD), ``[K, d]`` (or
            ``[K, *item_shape]``) diagonal variances, or ``[K]`` isotropic variances.
            Zero variances are allowed (degenerate components, e.g. point masses).
        weights: ``[K]`` non-negative, not all zero; normalized internally.
            ``None`` means equal weights.
        item_shape: shape of one item when ``means`` is ``[K, d]`` with d = prod(item_shape).
        chunk_bytes: memory budget for per-chunk temporaries (chunks over the batch).
    """

    def __init__(
        self,
        means: Tensor,
        covariances: Tensor,
        weights: Optional[Tensor] = None,
        *,
        item_shape: Optional[Sequence[int]] = None,
        chunk_bytes: int = _DEFAULT_CHUNK_BYTES,
    ) -> None:
        means = _as_real_tensor(means, "means").detach().to(_F64)
        if means.dim() < 2 or means.shape[0] == 0:
            raise ConfigError(f"means must have shape [K, d] with K >= 1, got {_shape_str(means.shape)}")
        K = int(means.shape[0])
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
        self.item_shape: Tuple[int, ...] = item_shape
        self.chunk_bytes = _check_chunk_bytes(chunk_bytes)
        self.means_flat = means.reshape(K, d).contiguous()

        # weights ---------------------------------------------------------------
        if weights is None:
            w = torch.full((K,), 1.0 / K, dtype=_F64)
        else:
            w = _as_real_tensor(weights, "weights").detach().to(_F64)
            if tuple(w.shape) != (K,):
                raise ConfigError(f"weights must have shape [{K}] (one per mean), got {_shape_str(w.shape)}")
            if not torch.isfinite(w).all() or (w < 0).any():
                raise ConfigError(f"weights must be finite and >= 0, got {w.tolist()}")
            total = w.sum()
            if total <= 0:
                raise ConfigError("weights sum to 0; at least one weight must be positive")
            w = w / total
        self.weights: Tensor = w
        self._log_w = torch.log(w)  # -inf for zero weights, harmless in log-sum-exp

        # covariances -------------------------------------------------------------
        cov = _as_real_tensor(covariances, "covariances").detach().to(_F64)
        if not torch.isfinite(cov).all():
            raise ConfigError("covariances contain non-finite values; all values must be finite")
        self._U: Optional[Tensor] = None
        if cov.dim() == 3 and tuple(cov.shape) == (K, d, d) and not (
            d == 1 and tuple(cov.shape[1:]) == tuple(item_shape)
        ):
            self.kind = "full"
            asym = (cov - cov.transpose(1, 2)).abs().amax()
            scale = cov.abs().amax()
            if asym > 1e-6 * scale:
                raise ConfigError(
                    f"full covariances must be symmetric; max |C - C^T| = {asym.item():.3g} "
                    f"(max |C| = {scale.item():.3g})"
                )
            cov = 0.5 * (cov + cov.transpose(1, 2))
            lam, U = torch.linalg.eigh(cov)
            tol = 1e-6 * scale.item()  # round-off of float32-made inputs, far from a real negative
            if (lam < -tol).any():
                k = int(torch.nonzero((lam < -tol).any(dim=1))[0])
                raise ConfigError(
                    f"covariances must be positive semi-definite; component {k} has eigenvalue "
                    f"{lam[k].min().item():.3g}"
                )
            self._lam = lam.clamp_min(0.0)
            self._U = U.contiguous()
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
                f"[{K}, {d}] (diagonal) or [{K}] (isotropic) for means of shape {_shape_str(means.shape)}"
            )
        self._mixture_mean = (w[:, None] * self.means_flat).sum(dim=0)

    # -- basic properties -------------------------------------------------------
    @property
    def num_components(self) -> int:
        return int(self.means_flat.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means_flat.shape[1])

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

    @property
    def mean(self) -> Tensor:
        """Mixture mean sum_k w_k mu_k, the denoiser's value at sigma = inf."""
        return self._mixture_mean.reshape(self.item_shape)

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

    def _components(self, x: Tensor, var: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """For a chunk x [b, d] and sigma^2 [b]: (z, v, logits) in the eigenbasis.

        z_k = U_k^T (x - mu_k) and v_k = lam_k + sigma^2, both [b, K, d];
        logits_k = log w_k + log N(x; mu_k, C_k + sigma^2 I), [b, K]: their softmax
        over k is the responsibilities, their log-sum-exp the log density.
        """
        diff = x[:, None, :] - self.means_flat[None]  # [b, K, d]
        z = diff if self._U is None else torch.einsum("bkd,kde->bke", diff, self._U)
        v = self._lam[None] + var[:, None, None]
        log_norm = -0.5 * ((z * z / v).sum(-1) + torch.log(v).sum(-1) + self.dim * math.log(2 * math.pi))
        return z, v, self._log_w[None] + log_norm

    def _back(self, coeffs: Tensor) -> Tensor:
        """sum_k U_k coeffs_k for coeffs [b, K, d] -> [b, d]."""
        if self._U is None:
            return coeffs.sum(dim=1)
        return torch.einsum("bke,kde->bd", coeffs, self._U)

    def _evaluate(self, x: Tensor, sig: Tensor, what: str) -> Tensor:
        batch = x.shape[0]
        var = sig * sig
        if what == "log_density":
            out = torch.empty(batch, dtype=_F64, device=x.device)
        else:
            out = torch.empty(batch, self.dim, dtype=_F64, device=x.device)
        step = self._rows_per_chunk(batch)
        for b0 in range(0, batch, step):
            xc, vc = x[b0 : b0 + step], var[b0 : b0 + step]
            z, v, logits = self._components(xc, vc)
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
    def __call__(self, x_hat: Tensor, sigma: SigmaLike) -> Tensor:
        """D(x_hat; sigma) = E[x_0 | x_hat], shape ``[batch, *item_shape]``.

        sigma = 0 returns x_hat; sigma = inf returns the mixture mean.
        """
        x_hat = _as_real_tensor(x_hat, "x_hat")
        out_dtype, out_device = _output_dtype(x_hat), x_hat.device
        x, batch = self._flatten(x_hat, "x_hat")
        sig = _sigma_vector(sigma, batch, x.device)
        out = torch.empty_like(x)
        var = sig * sig
        at_inf = torch.isinf(var)
        at_zero = var == 0
        out[at_inf] = self._mixture_mean.to(x.device)
        out[at_zero] = x[at_zero]
        rows = torch.nonzero(~(at_inf | at_zero)).flatten()
        if rows.numel():
            xs = x[rows]
            if not torch.isfinite(xs).all():
                raise ConfigError("x_hat contains non-finite values at a finite sigma")
            out[rows] = self._evaluate(xs, sig[rows], "denoise")
        return out.reshape(batch, *self.item_shape).to(device=out_device, dtype=out_dtype)

    def score(self, x_hat: Tensor, sigma: SigmaLike) -> Tensor:
        """grad_x log p_sigma(x) = (D(x; sigma) - x) / sigma^2, float64 ``[batch, *item_shape]``.

        Computed directly as -sum_k r_k (C_k + sigma^2 I)^{-1} (x - mu_k), which has
        no cancellation at small sigma; 0 at sigma = inf.
        """
        x, batch = self._flatten(x_hat, "x_hat")
        sig = _sigma_vector(sigma, batch, x.device)
        self._need_positive_variance(sig, "score")
        out = torch.zeros_like(x)
        rows = torch.nonzero(~torch.isinf(sig * sig)).flatten()
        if rows.numel():
            out[rows] = self._evaluate(x[rows], sig[rows], "score")
        return out.reshape(batch, *self.item_shape)

    def log_density(self, x: Tensor, sigma: SigmaLike = 0.0) -> Tensor:
        """log p_sigma(x) = log sum_k w_k N(x; mu_k, C_k + sigma^2 I), float64 ``[batch]``."""
        xf, batch = self._flatten(x, "x")
        sig = _sigma_vector(sigma, batch, xf.device)
        self._need_positive_variance(sig, "log_density")
        if torch.isinf(sig).any():
            raise ConfigError("log_density needs a finite sigma (the noised density vanishes at sigma = inf)")
        return self._evaluate(xf, sig, "log_density")

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Draw n samples x_0 ~ sum_k w_k N(mu_k, C_k): float64 ``[n, *item_shape]``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"n must be a non-negative int, got {n!r}")
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator) if n else (
            torch.zeros(0, dtype=torch.long)
        )
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
            f"covariance={self.kind})"
        )
