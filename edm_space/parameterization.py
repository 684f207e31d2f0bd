"""The parameterization of the diffusion / flow design space, in one module.

Every model in edm-space noises data as (Karras et al. 2022, "EDM", eq. 4 and
Table 1)

    x_t = s(t) * (x_0 + sigma(t) * eps),        eps ~ N(0, I),

and is trained as a denoiser D(x_hat; sigma) ~ E[x_0 | x_hat] written through a
preconditioning (EDM eq. 7)

    D(x_hat; sigma) = c_skip(sigma) x_hat + c_out(sigma) F(c_in(sigma) x_hat, c_noise(sigma)),

with loss (EDM eq. 8)  E_{sigma ~ p_train} lambda(sigma) |D(x_0 + sigma n; sigma) - x_0|^2.
Sampling integrates the probability-flow ODE (EDM eq. 4)

    dx/dt = (s'/s + sigma'/sigma) x - (s sigma' / sigma) D(x / s; sigma).

This module holds the parts (noise schedules sigma(t), scale schedules s(t),
preconditionings, loss weightings, training-noise distributions p_train) and
`Formulation`, which combines one of each. Presets (``presets/``) are instances
of `Formulation` built from these parts; nothing here knows about networks or
solvers.

All schedule functions take and return float64 tensors (python floats are
accepted and converted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional, Protocol, Tuple, Union

import torch

Tensor = torch.Tensor
TensorLike = Union[Tensor, float]
F64 = torch.float64

# What a network may predict, and the conversions to and from the denoised D (edm_space/predictions.py).
from .predictions import PREDICTION_KINDS, denoised_to_prediction, expand_per_item, prediction_to_denoised  # noqa: E402,F401


def as_f64(value: TensorLike) -> Tensor:
    """`value` as a float64 tensor (no copy when it already is one)."""
    return torch.as_tensor(value, dtype=F64)


# ---------------------------------------------------------------------------
# Noise schedules sigma(t), with sigma'(t) and sigma^-1.


class NoiseSchedule(Protocol):
    formula: str

    def sigma(self, t: Tensor) -> Tensor: ...
    def sigma_deriv(self, t: Tensor) -> Tensor: ...
    def sigma_inv(self, sigma: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class LinearSigma:
    """sigma(t) = t (EDM Table 1, "EDM" and "iDDPM" columns)."""

    formula: str = "t"

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def sigma_deriv(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return sigma


@dataclass(frozen=True)
class VPSigma:
    """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1, "VP"; Song et al. 2021, eq. 33)."""

    beta_d: float = 19.9
    beta_min: float = 0.1
    formula: str = "sqrt(exp(beta_d t^2/2 + beta_min t) - 1)"

    def sigma(self, t: Tensor) -> Tensor:
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def sigma_deriv(self, t: Tensor) -> Tensor:
        # EDM Table 1: sigma'(t) = (beta_d t + beta_min) (sigma + 1/sigma) / 2.
        sigma = self.sigma(t)
        return 0.5 * (self.beta_min + self.beta_d * t) * (sigma + 1 / sigma)

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        # EDM Table 1: t = (sqrt(beta_min^2 + 2 beta_d ln(sigma^2 + 1)) - beta_min) / beta_d.
        return ((self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)).sqrt() - self.beta_min) / self.beta_d


@dataclass(frozen=True)
class SqrtSigma:
    """sigma(t) = sqrt(t) (EDM Table 1, "VE"; Song et al. 2021)."""

    formula: str = "sqrt(t)"

    def sigma(self, t: Tensor) -> Tensor:
        return t.sqrt()

    def sigma_deriv(self, t: Tensor) -> Tensor:
        return 0.5 / t.sqrt()

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return sigma**2


@dataclass(frozen=True)
class FlowSigma:
    """sigma(t) = t / (1 - t): rectified flow x_t = (1 - t) x_0 + t eps written as s (x_0 + sigma eps).

    t = 1 is pure noise (sigma = inf); sigma^-1(inf) = 1 exactly.
    """

    formula: str = "t/(1 - t)"

    def sigma(self, t: Tensor) -> Tensor:
        return t / (1 - t)

    def sigma_deriv(self, t: Tensor) -> Tensor:
        return 1 / (1 - t) ** 2

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SCHEDULE_PRECISIONS = ("float64", "float32")
INTERPOLATIONS = ("log", "linear")


def ddpm_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, schedule: str = "linear",
               dtype: torch.dtype = F64) -> Tensor:
    """beta_1..beta_T of a DDPM chain, computed in `dtype`.

    linear:            beta_i linear from beta_start to beta_end (Ho et al. 2020, Sec. 4)
    scaled_linear:     sqrt(beta_i) linear from sqrt(beta_start) to sqrt(beta_end) (Rombach et al. 2022, LDM / SD)
    squaredcos_cap_v2: beta_i = min(1 - abar(i/T) / abar((i-1)/T), 0.999), abar(u) = cos((u + 0.008)/1.008 pi/2)^2
                       (Nichol & Dhariwal 2021, eq. 17 with s = 0.008); beta_start / beta_end do not apply.
    """
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=dtype)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=dtype) ** 2
    if schedule == "squaredcos_cap_v2":
        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), 0.999) for i in range(num_timesteps)]
        return torch.tensor(betas, dtype=dtype)
    raise _unknown_choice("beta schedule", schedule, BETA_SCHEDULES)


def ddpm_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, schedule: str = "linear",
                        precision: str = "float64") -> Tensor:
    """abar(t) for t = 0..T in Ho's 1-based time, abar(0) = 1 (Ho et al. 2020, Sec. 4), returned in float64.

    precision "float32" computes the betas, 1 - beta and their cumulative product in float32, as diffusers'
    schedulers do, so that an imported model sees exactly the levels it was trained on.
    """
    if precision not in SCHEDULE_PRECISIONS:
        raise _unknown_choice("schedule precision", precision, SCHEDULE_PRECISIONS)
    dtype = torch.float32 if precision == "float32" else F64
    alphas = 1.0 - ddpm_betas(num_timesteps, beta_start, beta_end, schedule, dtype)
    return torch.cat([torch.ones(1, dtype=F64), torch.cumprod(alphas, dim=0).to(F64)])


@dataclass(frozen=True)
class DiscreteSigma:
    """The DDPM chain as a continuous schedule: sigma(t) = sqrt(1/abar(t) - 1) at integer t = 0..T.

    Between integers t = k and k + 1 (k >= 1), log sigma is linear in t. On [0, 1],
    where sigma(0) = 0 has no logarithm, sigma = sigma_1 t^p with p the log-slope of
    the segment [1, 2], so sigma is smooth through t = 1. At an integer t = k >= 2,
    where the two segments meet at a kink, sigma'(k) is the mean of the two
    one-sided slopes: a sampler that steps along the integers then integrates a
    smooth schedule through the same levels, and keeps its order.

    interpolation "linear" makes sigma itself linear in t between the integers (on [0, 1] from
    sigma(0) = 0), as diffusers' EulerDiscreteScheduler interpolates its sigmas over timesteps.
    `beta_schedule` and `precision` choose the betas (see ddpm_betas, ddpm_alphas_cumprod).
    """

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    precision: str = "float64"
    interpolation: str = "log"
    formula: str = "sqrt(1/abar(t) - 1), abar(t) = prod_{i<=t}(1 - beta_i)"
    sigmas: Tensor = field(init=False, repr=False, compare=False)
    log_slopes: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise _unknown_choice("interpolation", self.interpolation, INTERPOLATIONS)
        abar = ddpm_alphas_cumprod(self.num_timesteps, self.beta_start, self.beta_end, self.beta_schedule, self.precision)
        sigmas = (1 / abar - 1).sqrt()
        log_sigmas = sigmas.clamp_min(1e-300).log()
        slopes = log_sigmas[1:] - log_sigmas[:-1]  # slope of segment [k, k+1], k = 0..T-1
        slopes[0] = slopes[1]  # [0, 1]: the power law's exponent p
        if self.interpolation == "linear":
            slopes = sigmas[1:] - sigmas[:-1]  # slope of sigma itself on [k, k+1], from sigma(0) = 0
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "log_slopes", slopes)

    def _segment(self, t: Tensor) -> Tensor:
        return torch.floor(t).clamp(0, self.num_timesteps - 1).long()

    def sigma(self, t: Tensor) -> Tensor:
        k = self._segment(t)
        frac = t - k
        if self.interpolation == "linear":
            return self.sigmas[k] + frac * self.log_slopes[k]
        # sigma_k (sigma_{k+1}/sigma_k)^frac, written so that integer t returns the table entry exactly.
        log_linear = self.sigmas[k] * torch.exp(frac * self.log_slopes[k])
        power_law = self.sigmas[1] * t.clamp_min(0) ** self.log_slopes[0]
        return torch.where(t < 1, power_law, log_linear)

    def sigma_deriv(self, t: Tensor) -> Tensor:
        k = self._segment(t)
        slope = self.log_slopes[k]
        at_kink = (t == k) & (k >= (1 if self.interpolation == "linear" else 2))
        slope = torch.where(at_kink, 0.5 * (slope + self.log_slopes[(k - 1).clamp_min(0)]), slope)
        if self.interpolation == "linear":
            return slope
        return torch.where(t < 1, self.log_slopes[0] / t, slope) * self.sigma(t)

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        low = 0 if self.interpolation == "linear" else 1
        k = (torch.searchsorted(self.sigmas, sigma.contiguous(), right=True) - 1).clamp(low, self.num_timesteps - 1)
        if self.interpolation == "linear":
            return k + (sigma - self.sigmas[k]) / self.log_slopes[k]
        log_linear = k + (sigma.log() - self.sigmas[k].log()) / self.log_slopes[k]
        power_law = (sigma / self.sigmas[1]) ** (1 / self.log_slopes[0])
        return torch.where(sigma < self.sigmas[1], power_law, log_linear)


def _unknown_choice(kind: str, value: object, valid) -> ValueError:
    from .errors import unknown

    return unknown(kind, value, valid)


# ---------------------------------------------------------------------------
# Scale schedules s(t), with s'(t). They may depend on the noise schedule.


class ScaleSchedule(Protocol):
    formula: str

    def scale(self, t: Tensor, noise: NoiseSchedule) -> Tensor: ...
    def scale_deriv(self, t: Tensor, noise: NoiseSchedule) -> Tensor: ...


@dataclass(frozen=True)
class UnitScale:
    """s(t) = 1 (EDM, VE, iDDPM)."""

    formula: str = "1"

    def scale(self, t: Tensor, noise: NoiseSchedule) -> Tensor:
        return torch.ones_like(t)

    def scale_deriv(self, t: Tensor, noise: NoiseSchedule) -> Tensor:
        return torch.zeros_like(t)


@dataclass(frozen=True)
class VPScale:
    """s(t) = 1 / sqrt(1 + sigma(t)^2), i.e. sqrt(abar): variance preserving (EDM Table 1, "VP"; DDPM)."""

    formula: str = "1/sqrt(1 + sigma(t)^2)"

    def scale(self, t: Tensor, noise: NoiseSchedule) -> Tensor:
        return 1 / (1 + noise.sigma(t) ** 2).sqrt()

    def scale_deriv(self, t: Tensor, noise: NoiseSchedule) -> Tensor:
        # EDM Table 1: s'(t) = -sigma(t) sigma'(t) s(t)^3.
        return -noise.sigma(t) * noise.sigma_deriv(t) * self.scale(t, noise) ** 3


@dataclass(frozen=True)
class FlowScale:
    """s(t) = 1 - t (rectified flow; s(t) = 1 / (1 + sigma(t)) for sigma = t / (1 - t))."""

    formula: str = "1 - t"

    def scale(self, t: Tensor, noise: NoiseSchedule) -> Tensor:
        return 1 - t

    def scale_deriv(self, t: Tensor, noise: NoiseSchedule) -> Tensor:
        return -torch.ones_like(t)


# ---------------------------------------------------------------------------
# The network's noise input c_noise(sigma) for the eps-predicting family.


@dataclass(frozen=True)
class ScaledTime:
    """c_noise = factor * sigma^-1(sigma) + offset: VP uses 999 t (EDM Table 1), DDPM the 0-based index t - 1."""

    factor: float = 1.0
    offset: float = 0.0

    @property
    def formula(self) -> str:
        text = "t" if self.factor == 1 else f"{self.factor:g} t"
        return text + (f" {'+' if self.offset > 0 else '-'} {abs(self.offset):g}" if self.offset else "")

    def __call__(self, sigma: Tensor, noise: NoiseSchedule) -> Tensor:
        return self.factor * noise.sigma_inv(sigma) + self.offset


def iddpm_levels(M: int = 1000, C1: float = 0.001, C2: float = 0.008) -> Tensor:
    """The iDDPM noise levels u_0 > u_1 > ... > u_M = 0 in float64 (EDM Table 1, iDDPM column).

    u_{j-1} = sqrt((u_j^2 + 1) / max(abar(j-1) / abar(j), C1) - 1),
    abar(j) = sin^2(pi/2 * j / (M (C2 + 1)))   (Nichol & Dhariwal 2021's cosine schedule).
    """
    u = torch.zeros(M + 1, dtype=F64)

    def alpha_bar(j: int) -> Tensor:
        return torch.sin(torch.tensor(0.5 * math.pi * j / M / (C2 + 1), dtype=F64)) ** 2

    for j in range(M, 0, -1):
        ratio = (alpha_bar(j - 1) / alpha_bar(j)).clamp(min=C1)
        u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
    return u


@dataclass(frozen=True)
class NearestLevelIndex:
    """c_noise = M - 1 - argmin_j |u_j - sigma| (EDM Table 1, iDDPM)."""

    levels: Tensor = field(repr=False)
    formula: str = "M-1-argmin_j|u_j - sigma|"

    def index(self, sigma: Tensor) -> Tensor:
        return (sigma.reshape(-1, 1) - self.levels.reshape(1, -1)).abs().argmin(dim=1).reshape(sigma.shape)

    def __call__(self, sigma: Tensor, noise: NoiseSchedule) -> Tensor:
        return (len(self.levels) - 2 - self.index(sigma)).to(sigma.dtype)


# ---------------------------------------------------------------------------
# Preconditionings: sigma -> (c_skip, c_out, c_in, c_noise)   (EDM eq. 7, Table 1).

Coefficients = Tuple[Tensor, Tensor, Tensor, Tensor]


class Preconditioning(Protocol):
    def __call__(self, sigma: Tensor, noise: NoiseSchedule) -> Coefficients: ...


@dataclass(frozen=True)
class EDMPrecond:
    """EDM Table 1, "EDM" column: the network's input and target have unit variance at every sigma."""

    sigma_data: float = 0.5

    @property
    def formulas(self) -> Tuple[str, str, str, str]:
        return ("sd^2/(sigma^2+sd^2)", "sigma*sd/sqrt(sigma^2+sd^2)", "1/sqrt(sigma^2+sd^2)", "ln(sigma)/4")

    def __call__(self, sigma: Tensor, noise: NoiseSchedule) -> Coefficients:
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise


@dataclass(frozen=True)
class NoiseInputPrecond:
    """A preconditioning whose c_noise is its `noise_input` (a function of sigma and the schedule, e.g. DDPM's
    timestep); a subclass gives c_skip, c_out, c_in as FORMULAS and in __call__."""

    noise_input: Callable[[Tensor, NoiseSchedule], Tensor]
    FORMULAS: ClassVar[Tuple[str, str, str]] = ("", "", "")

    @property
    def formulas(self) -> Tuple[str, str, str, str]:
        return (*self.FORMULAS, self.noise_input.formula)


class EpsPrecond(NoiseInputPrecond):
    """The network predicts eps: c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2 + 1) (EDM Table 1, VP and iDDPM)."""

    FORMULAS = ("1", "-sigma", "1/sqrt(sigma^2+1)")

    def __call__(self, sigma: Tensor, noise: NoiseSchedule) -> Coefficients:
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        return c_skip, c_out, c_in, self.noise_input(sigma, noise)


@dataclass(frozen=True)
class VEPrecond:
    """EDM Table 1, "VE" column: c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2)."""

    @property
    def formulas(self) -> Tuple[str, str, str, str]:
        return ("1", "sigma", "1", "ln(sigma/2)")

    def __call__(self, sigma: Tensor, noise: NoiseSchedule) -> Coefficients:
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()


@dataclass(frozen=True)
class FlowPrecond:
    """Rectified flow: F predicts the velocity eps - x_0 from x_t = x_hat / (1 + sigma) at time t.

    c_skip = 1/(1+sigma) = 1 - t, c_out = -sigma/(1+sigma) = -t, c_in = 1/(1+sigma), c_noise = t.
    Written through t = sigma/(1+sigma) so that sigma = inf (t = 1) stays finite.
    """

    time_scale: float = 1.0  # c_noise = time_scale t: diffusers' flow-matching models take the timestep 1000 t

    @property
    def formulas(self) -> Tuple[str, str, str, str]:
        return ("1/(1+sigma)", "-sigma/(1+sigma)", "1/(1+sigma)", "t" if self.time_scale == 1 else f"{self.time_scale:g} t")

    def __call__(self, sigma: Tensor, noise: NoiseSchedule) -> Coefficients:
        t = torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))
        return 1 - t, -t, 1 - t, t if self.time_scale == 1 else self.time_scale * t


class VPredictionPrecond(NoiseInputPrecond):
    """The network predicts v = (eps - sigma x_0) / sqrt(1 + sigma^2) (Salimans & Ho 2022, Sec. 4 and App. D), in EDM's terms:

    c_skip = 1/(1+sigma^2), c_out = -sigma/sqrt(1+sigma^2), c_in = 1/sqrt(1+sigma^2)
    (D = (x_hat - sigma sqrt(1+sigma^2) v) / (1+sigma^2), the inverse of denoised_to_prediction("v")).
    """

    FORMULAS = ("1/(sigma^2+1)", "-sigma/sqrt(sigma^2+1)", "1/sqrt(sigma^2+1)")

    def __call__(self, sigma: Tensor, noise: NoiseSchedule) -> Coefficients:
        root = (sigma**2 + 1).sqrt()
        return 1 / (sigma**2 + 1), -sigma / root, 1 / root, self.noise_input(sigma, noise)


class SamplePredictionPrecond(NoiseInputPrecond):
    """The network predicts x_0 itself (Ho et al. 2020, Sec. 3.2's alternative): c_skip = 0, c_out = 1, c_in = 1/sqrt(sigma^2+1)."""

    FORMULAS = ("0", "1", "1/sqrt(sigma^2+1)")

    def __call__(self, sigma: Tensor, noise: NoiseSchedule) -> Coefficients:
        return torch.zeros_like(sigma), torch.ones_like(sigma), 1 / (sigma**2 + 1).sqrt(), self.noise_input(sigma, noise)


# ---------------------------------------------------------------------------
# Loss weightings lambda(sigma). In every preset lambda = 1 / c_out^2, so the
# loss of F against its effective target has unit weight (EDM eq. 8-9).


@dataclass(frozen=True)
class EDMWeight:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (EDM Table 1)."""

    sigma_data: float = 0.5
    formula: str = "(sigma^2+sd^2)/(sigma*sd)^2"

    def __call__(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


@dataclass(frozen=True)
class InverseSigmaSquared:
    """lambda(sigma) = 1 / sigma^2 (EDM Table 1, VP, VE, iDDPM; the eps-MSE of Ho et al.)."""

    formula: str = "1/sigma^2"

    def __call__(self, sigma: Tensor) -> Tensor:
        return 1 / sigma**2


@dataclass(frozen=True)
class FlowWeight:
    """lambda(sigma) = ((1 + sigma) / sigma)^2 = 1/t^2: the plain velocity MSE of flow matching."""

    formula: str = "((1+sigma)/sigma)^2"

    def __call__(self, sigma: Tensor) -> Tensor:
        return ((1 + sigma) / sigma) ** 2


@dataclass(frozen=True)
class VPredictionWeight:
    """lambda(sigma) = (sigma^2 + 1) / sigma^2 = 1 / c_out^2 of v-prediction: the plain v-MSE (Salimans & Ho 2022)."""

    formula: str = "(sigma^2+1)/sigma^2"

    def __call__(self, sigma: Tensor) -> Tensor:
        return (sigma**2 + 1) / sigma**2


@dataclass(frozen=True)
class UnitWeight:
    """lambda(sigma) = 1 = 1 / c_out^2 of x_0-prediction: the plain x_0-MSE."""

    formula: str = "1"

    def __call__(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)


# ---------------------------------------------------------------------------
# Training noise distributions p_train: draw a float64 sigma per example.


class TrainingNoise(Protocol):
    formula: str

    def sample(self, batch: int, noise: NoiseSchedule, generator: Optional[torch.Generator] = None) -> Tensor: ...


@dataclass(frozen=True)
class LogNormalSigma:
    """ln sigma ~ N(p_mean, p_std^2) (EDM Table 1: p_mean = -1.2, p_std = 1.2)."""

    p_mean: float = -1.2
    p_std: float = 1.2

    @property
    def formula(self) -> str:
        return f"ln sigma ~ N({self.p_mean:g}, {self.p_std:g}^2)"

    def sample(self, batch: int, noise: NoiseSchedule, generator: Optional[torch.Generator] = None) -> Tensor:
        return (self.p_mean + self.p_std * torch.randn(batch, dtype=F64, generator=generator)).exp()


@dataclass(frozen=True)
class UniformTime:
    """t ~ U(t_min, t_max), sigma = sigma(t) (VP: t in [1e-5, 1]; flow: t in [0, 1])."""

    t_min: float = 1e-5
    t_max: float = 1.0

    @property
    def formula(self) -> str:
        return f"t ~ U({self.t_min:g}, {self.t_max:g})"

    def sample(self, batch: int, noise: NoiseSchedule, generator: Optional[torch.Generator] = None) -> Tensor:
        t = self.t_min + (self.t_max - self.t_min) * torch.rand(batch, dtype=F64, generator=generator)
        return noise.sigma(t)


@dataclass(frozen=True)
class LogUniformSigma:
    """ln sigma ~ U(ln sigma_min, ln sigma_max) (EDM Table 1, VE: [0.02, 100])."""

    sigma_min: float = 0.02
    sigma_max: float = 100.0

    @property
    def formula(self) -> str:
        return f"ln sigma ~ U(ln {self.sigma_min:g}, ln {self.sigma_max:g})"

    def sample(self, batch: int, noise: NoiseSchedule, generator: Optional[torch.Generator] = None) -> Tensor:
        u = torch.rand(batch, dtype=F64, generator=generator)
        return (math.log(self.sigma_min) + u * (math.log(self.sigma_max) - math.log(self.sigma_min))).exp()


@dataclass(frozen=True)
class DiscreteLevels:
    """sigma = u_j, j ~ U{0, ..., M-1} (EDM Table 1, iDDPM)."""

    levels: Tensor = field(repr=False)
    formula: str = "sigma = u_j, j ~ U{0..M-1}"

    def sample(self, batch: int, noise: NoiseSchedule, generator: Optional[torch.Generator] = None) -> Tensor:
        j = torch.randint(0, len(self.levels) - 1, (batch,), generator=generator)
        return self.levels[j]


@dataclass(frozen=True)
class DiscreteTimesteps:
    """index ~ U{0, ..., T-1}, Ho's t = index + 1, sigma = sigma(t) (Ho et al. 2020, Algorithm 1)."""

    num_timesteps: int = 1000
    formula: str = "index ~ U{0..T-1}"

    def sample(self, batch: int, noise: NoiseSchedule, generator: Optional[torch.Generator] = None) -> Tensor:
        index = torch.randint(0, self.num_timesteps, (batch,), generator=generator)
        return noise.sigma((index + 1).to(F64))


@dataclass(frozen=True)
class LogitNormalTime:
    """t = sigmoid(n), n ~ N(mean, std^2) (Esser et al. 2024, SD3, eq. 19), then the shift t' = a t / (1 + (a-1) t)."""

    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0

    @property
    def formula(self) -> str:
        shifted = f", shift {self.shift:g}" if self.shift != 1 else ""
        return f"t = sigmoid(n), n ~ N({self.mean:g}, {self.std:g}^2){shifted}"

    def sample(self, batch: int, noise: NoiseSchedule, generator: Optional[torch.Generator] = None) -> Tensor:
        t = torch.sigmoid(self.mean + self.std * torch.randn(batch, dtype=F64, generator=generator))
        if self.shift != 1:
            t = self.shift * t / (1 + (self.shift - 1) * t)
        return noise.sigma(t)


# ---------------------------------------------------------------------------
# Formulation: one of each part, plus sampling defaults.


@dataclass(frozen=True)
class Formulation:
    """A point of the design space: sigma(t), s(t), preconditioning, lambda(sigma), p_train.

    The sampling defaults (`sigma_min`, `sigma_max`, `default_solver`,
    `default_discretization`, `default_steps`) are the paper's; `support` is the
    sigma range a network of this formulation was trained on (EDM's
    net.sigma_min / net.sigma_max), to which every sampler clips its range.
    """

    name: str
    noise: NoiseSchedule
    scale_schedule: ScaleSchedule
    preconditioning: Preconditioning
    loss_weighting: Callable[[Tensor], Tensor]
    p_train: TrainingNoise
    sigma_min: float
    sigma_max: float
    support: Tuple[float, float] = (0.0, math.inf)
    default_solver: str = "heun"
    default_discretization: str = "edm"
    default_steps: int = 18
    time_shift: float = 1.0
    levels: Optional[Tensor] = field(default=None, repr=False)
    description: str = ""

    # -- schedules --------------------------------------------------------
    def sigma(self, t: TensorLike) -> Tensor:
        """Noise level sigma(t)."""
        return self.noise.sigma(as_f64(t))

    def sigma_deriv(self, t: TensorLike) -> Tensor:
        """d sigma / dt."""
        return self.noise.sigma_deriv(as_f64(t))

    def sigma_inv(self, sigma: TensorLike) -> Tensor:
        """The time t at which sigma(t) = sigma."""
        return self.noise.sigma_inv(as_f64(sigma))

    def scale(self, t: TensorLike) -> Tensor:
        """Scale s(t)."""
        return self.scale_schedule.scale(as_f64(t), self.noise)

    def scale_deriv(self, t: TensorLike) -> Tensor:
        """d s / dt."""
        return self.scale_schedule.scale_deriv(as_f64(t), self.noise)

    def round_sigma(self, sigma: TensorLike) -> Tensor:
        """Snap sigma to the levels a discrete-level network knows (iDDPM); identity otherwise (EDM's round_sigma)."""
        sigma = as_f64(sigma)
        if self.levels is None:
            return sigma
        return self.levels[NearestLevelIndex(self.levels).index(sigma)]

    # -- network side -----------------------------------------------------
    def precond(self, sigma: TensorLike) -> Coefficients:
        """(c_skip, c_out, c_in, c_noise) at sigma (EDM eq. 7)."""
        return self.preconditioning(as_f64(sigma), self.noise)

    def loss_weight(self, sigma: TensorLike) -> Tensor:
        """lambda(sigma) (EDM eq. 8)."""
        return self.loss_weighting(as_f64(sigma))

    def sample_training_sigma(self, batch: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Draw `batch` float64 noise levels from p_train."""
        return self.p_train.sample(batch, self.noise, generator)

    def training_target(self, x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
        """The effective target of F: (x_0 - c_skip x_hat) / c_out with x_hat = x_0 + sigma n (EDM eq. 8)."""
        c_skip, c_out, _, _ = self.precond(sigma)
        x_hat = x0 + expand_per_item(sigma, x0) * noise
        return (x0 - expand_per_item(c_skip, x0) * x_hat) / expand_per_item(c_out, x0)

    def loss(
        self,
        network: Callable[..., Tensor],
        x0: Tensor,
        sigma: Optional[Tensor] = None,
        noise: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        labels: Optional[Tensor] = None,
    ) -> Tensor:
        """Per-example loss lambda c_out^2 |F(c_in x_hat, c_noise, labels) - target|^2, averaged over the item (EDM eq. 8).

        `network` is the raw F with the one network contract F(x, c_noise, labels) (labels None: unconditional);
        sigma ~ p_train and n ~ N(0, I) are drawn when not given.
        """
        batch = x0.shape[0]
        if sigma is None:
            sigma = self.sample_training_sigma(batch, generator)
        sigma = as_f64(sigma).to(x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, dtype=x0.dtype, generator=generator).to(x0.device)
        _, c_out, c_in, c_noise = self.precond(sigma)
        target = self.training_target(x0, noise, sigma)
        x_hat = x0 + expand_per_item(sigma, x0) * noise
        output = network(expand_per_item(c_in, x0) * x_hat, c_noise.to(x0.dtype), labels)
        weight = (self.loss_weight(sigma) * c_out**2).to(x0.dtype)
        return weight * ((output - target) ** 2).flatten(1).mean(dim=1)

    # -- sampling side ----------------------------------------------------
    def drift_coefficients(self, t: TensorLike) -> Tuple[Tensor, Tensor]:
        """(a, b) with dx/dt = a x - b D(x/s; sigma): a = sigma'/sigma + s'/s, b = sigma' s / sigma (EDM eq. 4)."""
        t = as_f64(t)
        sigma, sigma_deriv = self.sigma(t), self.sigma_deriv(t)
        s, s_deriv = self.scale(t), self.scale_deriv(t)
        return sigma_deriv / sigma + s_deriv / s, sigma_deriv * s / sigma

    def drift(self, x: Tensor, t: TensorLike, denoised: Tensor) -> Tensor:
        """dx/dt of the probability-flow ODE at state x and time t, given D(x / s(t); sigma(t))."""
        a, b = self.drift_coefficients(t)
        return a * x - b * denoised

    def score(self, x_hat: Tensor, sigma: TensorLike, denoised: Tensor) -> Tensor:
        """grad log p(x_hat; sigma) = (D - x_hat) / sigma^2 (EDM eq. 3)."""
        return (denoised - x_hat) / expand_per_item(sigma, x_hat) ** 2

    def describe(self) -> dict:
        """The preset's formulas as strings, for the `edm-space presets` table."""
        c_skip, c_out, c_in, c_noise = self.preconditioning.formulas
        return {
            "preset": self.name,
            "s(t)": self.scale_schedule.formula,
            "sigma(t)": self.noise.formula,
            "c_skip": c_skip,
            "c_out": c_out,
            "c_in": c_in,
            "c_noise": c_noise,
            "lambda(sigma)": self.loss_weighting.formula,
            "p_train": self.p_train.formula,
            "sampler": f"{self.default_solver}, {self.default_discretization}, {self.default_steps} steps",
            "sigma range": f"[{self.sigma_min:.4g}, {self.sigma_max:.4g}]",
        }
