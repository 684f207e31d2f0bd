"""Guidance as a denoiser: D_w(x; sigma, c) = D_guide(x; sigma) + w (D(x; sigma, c) - D_guide(x; sigma)).

This is the guided denoiser of Karras et al. 2024 ("Guiding a diffusion model
with a bad version of itself", eq. 1, there written w D_1 + (1 - w) D_0). Two
guides are built in:

* classifier-free guidance (Ho & Salimans 2022): the guide is the same model
  with the null label. The conditional and the null rows go through ONE
  forward pass of 2B rows. Their eq. 6, eps~ = (1 + w') eps(z, c) - w' eps(z),
  is this formula with w = 1 + w' (D and eps are affine in each other).
* autoguidance (Karras et al. 2024): the guide is a weaker model of the
  same task (smaller, or trained for less long), called with the same labels.

A guidance interval (Kynkäänniemi et al. 2024) guides only the rows with
sigma_lo < sigma <= sigma_hi; elsewhere the result is the plain conditional
denoiser and the guide is not evaluated, so a call outside the interval costs
one row per item.

Every preset's model is a denoiser in sigma, so the guided denoiser is a
sampler's denoiser D(x_hat, sigma) like any other:

    guided = GuidedDenoiser(denoiser, weight=2.0, labels=one_hot)          # classifier-free
    guided = GuidedDenoiser(denoiser, weight=2.0, labels=one_hot, guide=small)  # autoguidance
    x = samplers.sample(guided, latents, formulation="vp", solver="heun")
    guided.forward_passes, guided.rows                                      # the honest cost
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .denoiser import Denoiser
from .errors import ConfigError
from .parameterization import F64

__all__ = ["GuidedDenoiser", "null_labels"]

#: A denoiser callable: D(x_hat, sigma) or D(x_hat, sigma, labels).
DenoiserFn = Callable[..., Tensor]


def null_labels(labels: Tensor) -> Tensor:
    """The null label for each row of ``labels``.

    One-hot float labels (the network contract) get all-zero rows, which a
    network's bias-free label embedding maps to no label at all; integer class
    indices (accepted by the exact denoisers of ``edm_space.ideal``) get -1.
    """
    if labels.is_floating_point():
        return torch.zeros_like(labels)
    return torch.full_like(labels, -1)


class GuidedDenoiser:
    """D_w(x; sigma, c) = D_guide(x; sigma) + w (D(x; sigma, c) - D_guide(x; sigma)), a sampler's denoiser.

    Args:
        denoiser: the conditional denoiser D(x_hat, sigma, labels), e.g. an
            ``edm_space.denoiser.Denoiser`` or an exact denoiser of ``edm_space.ideal``.
        weight: the guidance weight w (finite). w = 1 is the conditional
            denoiser, w = 0 the guide, w > 1 extrapolates away from the guide.
        labels: the labels of the rows (one-hot floats [batch, num_classes], or
            class indices for the exact denoisers); a call's own ``labels``
            argument overrides them. For a ``Denoiser`` the default is its
            bound labels. Autoguidance also works unconditionally (no labels).
        guide: None for classifier-free guidance (the same denoiser with the
            null label, batched with the conditional rows in one forward pass),
            or the guiding denoiser for autoguidance.
        interval: (sigma_lo, sigma_hi): guide only where sigma_lo < sigma <= sigma_hi.
            None guides at every sigma.

    Counters, for honest cost accounting (``reset()`` zeroes them):
        calls: evaluations of the guided denoiser (a solver's NFE);
        guided_calls: those of them in which at least one row was guided;
        forward_passes: calls of the underlying denoisers (classifier-free: one
            per call; autoguidance: two per guided call, one otherwise);
        rows: items evaluated by those passes (classifier-free: 2B for a guided
            call of B rows, B outside the interval).
    """

    def __init__(
        self,
        denoiser: DenoiserFn,
        weight: float,
        *,
        labels: Optional[Tensor] = None,
        guide: Optional[DenoiserFn] = None,
        interval: Optional[Tuple[float, float]] = None,
    ) -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"guidance weight must be a finite number, got {weight!r}")
        self.denoiser = denoiser
        self.weight = float(weight)
        self.labels = labels
        self.guide = guide
        self.interval = _check_interval(interval)
        self.reset()

    @property
    def kind(self) -> str:
        """'classifier-free' or 'autoguidance'."""
        return "classifier-free" if self.guide is None else "autoguidance"

    def reset(self) -> None:
        """Zero the cost counters."""
        self.calls = 0
        self.guided_calls = 0
        self.forward_passes = 0
        self.rows = 0

    def __call__(self, x_hat: Tensor, sigma, labels: Optional[Tensor] = None) -> Tensor:
        """D_w(x_hat; sigma, labels) for x_hat [batch, ...] and sigma float64 [batch] (or a scalar)."""
        batch = x_hat.shape[0]
        labels = self._labels_for(labels, batch)
        sigma = torch.as_tensor(sigma, dtype=F64, device=x_hat.device)
        sigma = sigma.expand(batch) if sigma.numel() == 1 else sigma.reshape(batch)
        if not bool(torch.isfinite(x_hat).all()):
            raise ConfigError(f"the sampler's state became non-finite at sigma = {float(sigma.max()):.4g} under the guidance weight "
                              f"w = {self.weight:g} (--guidance), which amplifies D - D_guide; use a smaller weight")
        lo, hi = self.interval
        inside = (sigma > lo) & (sigma <= hi)  # Kynkäänniemi et al. 2024: guide only in (sigma_lo, sigma_hi]
        self.calls += 1
        if not bool(inside.any()):
            return self._run(self.denoiser, x_hat, sigma, labels)
        self.guided_calls += 1
        every = bool(inside.all())
        rows = None if every else torch.nonzero(inside).flatten()

        def part(t: Optional[Tensor]) -> Optional[Tensor]:
            return t if t is None or every else t[rows]

        if self.guide is None:
            # classifier-free: [x, x] with [labels, null] in one pass, then split
            both = self._run(
                self.denoiser,
                torch.cat([x_hat, part(x_hat)]),
                torch.cat([sigma, part(sigma)]),
                torch.cat([labels, null_labels(part(labels))]),
            )
            conditional, guiding = both[:batch], both[batch:]
        else:
            conditional = self._run(self.denoiser, x_hat, sigma, labels)
            guiding = self._run(self.guide, part(x_hat), part(sigma), part(labels))
        # lerp(guide, D, w) = guide + w (D - guide), exactly D at w = 1 and the guide at w = 0
        if every:
            out = torch.lerp(guiding, conditional, self.weight)
        else:
            out = conditional.clone()
            out[rows] = torch.lerp(guiding, conditional[rows], self.weight)
        if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(conditional).all() and torch.isfinite(guiding).all()):
            raise ConfigError(f"the guidance weight w = {self.weight:g} (--guidance) takes D_guide + w (D - D_guide) beyond the "
                              f"float range at sigma = {float(sigma.max()):.4g}; use a smaller weight")
        return out

    def _run(self, denoiser: DenoiserFn, x_hat: Tensor, sigma: Tensor, labels: Optional[Tensor]) -> Tensor:
        """One forward pass of an underlying denoiser, counted."""
        self.forward_passes += 1
        self.rows += int(x_hat.shape[0])
        if labels is None:
            return denoiser(x_hat, sigma)
        return denoiser(x_hat, sigma, labels)

    def _labels_for(self, labels: Optional[Tensor], batch: int) -> Optional[Tensor]:
        if labels is None:
            labels = self.labels
        if labels is None and isinstance(self.denoiser, Denoiser):
            labels = self.denoiser.labels
        if labels is None:
            if self.guide is None:
                raise ConfigError(
                    "classifier-free guidance needs class labels: pass labels= (one-hot [batch, num_classes])"
                )
            return None
        if not isinstance(labels, Tensor) or labels.dim() < 1 or labels.shape[0] != batch:
            shape = list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ConfigError(f"labels have shape {shape}; expected one row per item of the batch of {batch}")
        return labels

    def __repr__(self) -> str:
        lo, hi = self.interval
        return f"GuidedDenoiser({self.kind}, weight={self.weight:g}, interval=({lo:g}, {hi:g}])"


def _check_interval(interval: Optional[Tuple[float, float]]) -> Tuple[float, float]:
    """(sigma_lo, sigma_hi) as floats with 0 <= sigma_lo < sigma_hi; None -> every sigma."""
    if interval is None:
        return (-math.inf, math.inf)
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ConfigError(f"guidance interval must be a pair (sigma_lo, sigma_hi), got {interval!r}") from None
    if not (0.0 <= lo < hi) or math.isnan(hi):
        raise ConfigError(f"guidance interval ({lo:g}, {hi:g}] is invalid; need 0 <= sigma_lo < sigma_hi (inf allowed)")
    return (lo, hi)
