"""The probability-flow ODE of a formulation with a denoiser: what every solver integrates."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

import torch

from edm_space.parameterization import F64, Formulation

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]
Time = Union[float, Tensor]


class ProbabilityFlow:
    """dx/dt = (s'/s + sigma'/sigma) x - (s sigma'/sigma) D(x/s; sigma)  (EDM eq. 4), in the formulation's t and x.

    Solvers see the network only through `denoise`, which counts evaluations in `nfe`.
    The scalars sigma(t), s(t) and the drift coefficients are computed once per time
    and kept, so that a step costs little beyond the denoiser itself.

    With `first_denoised` (the data mean), the first call of `denoise` returns it
    instead of calling the network and is not counted: the analytical first step
    (Zhou et al. 2024, AMED, "AFS"), exact in the limit sigma -> inf, where the
    posterior mean E[x_0 | x_0 + sigma n = x_hat] tends to E[x_0].
    """

    def __init__(self, formulation: Formulation, denoiser: Denoiser, first_denoised: Optional[Tensor] = None):
        self.formulation = formulation
        self.denoiser = denoiser
        self.nfe = 0
        self._first_denoised = first_denoised
        self._scalars: Dict[float, Tuple[float, float, float, float]] = {}

    def scalars(self, t: Time) -> Tuple[float, float, float, float]:
        """(sigma, s, a, b) at time t as Python floats, with dx/dt = a x - b D."""
        key = float(t)
        found = self._scalars.get(key)
        if found is None:
            f = self.formulation
            t64 = torch.tensor(key, dtype=F64)
            a, b = f.drift_coefficients(t64)
            found = (float(f.sigma(t64)), float(f.scale(t64)), float(a), float(b))
            self._scalars[key] = found
        return found

    def precompute(self, t_steps: Tensor) -> None:
        """Fill the scalar cache for all times t > 0 of a discretization in one vectorized pass."""
        t = t_steps[t_steps > 0].to(F64)
        f = self.formulation
        a, b = f.drift_coefficients(t)
        rows = zip(t.tolist(), f.sigma(t).tolist(), f.scale(t).tolist(), a.tolist(), b.tolist())
        self._scalars.update({key: (sigma, s, a_i, b_i) for key, sigma, s, a_i, b_i in rows})

    def denoise(self, x: Tensor, t: Time) -> Tensor:
        """D(x / s(t); sigma(t)) for the scaled state x at time t, in the state's dtype (float64 by default)."""
        if self._first_denoised is not None:
            mean, self._first_denoised = self._first_denoised, None
            return mean.to(device=x.device, dtype=x.dtype).expand_as(x).clone()
        sigma, s, _, _ = self.scalars(t)
        x_hat = x if s == 1.0 else x / s
        denoised = self.denoiser(x_hat, torch.full((x.shape[0],), sigma, dtype=F64, device=x.device))
        self.nfe += 1
        return denoised if denoised.dtype == x.dtype else denoised.to(x.dtype)  # in the state's dtype

    def derivative(self, x: Tensor, t: Time) -> Tuple[Tensor, Tensor]:
        """(dx/dt, D) at state x and time t."""
        denoised = self.denoise(x, t)
        _, _, a, b = self.scalars(t)
        return torch.mul(x, a).sub_(denoised, alpha=b), denoised
