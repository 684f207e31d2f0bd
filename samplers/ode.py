"""The probability-flow ODE of a formulation with a denoiser: what every solver integrates."""

from __future__ import annotations

from typing import Callable, Tuple

import torch

from edm_space.parameterization import F64, Formulation

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]


class ProbabilityFlow:
    """dx/dt = (s'/s + sigma'/sigma) x - (s sigma'/sigma) D(x/s; sigma)  (EDM eq. 4), in the formulation's t and x.

    Solvers see the network only through `denoise`, which counts evaluations in `nfe`.
    """

    def __init__(self, formulation: Formulation, denoiser: Denoiser):
        self.formulation = formulation
        self.denoiser = denoiser
        self.nfe = 0

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """D(x / s(t); sigma(t)) for the scaled state x at time t, in float64."""
        f = self.formulation
        sigma = f.sigma(t).to(x.device)
        x_hat = x / f.scale(t).to(x.device)
        denoised = self.denoiser(x_hat, sigma.expand(x.shape[0]).contiguous())
        self.nfe += 1
        return denoised.to(F64)

    def derivative(self, x: Tensor, t: Tensor) -> Tuple[Tensor, Tensor]:
        """(dx/dt, D) at state x and time t."""
        denoised = self.denoise(x, t)
        a, b = self.formulation.drift_coefficients(t)
        return a.to(x.device) * x - b.to(x.device) * denoised, denoised
