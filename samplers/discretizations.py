"""Time discretizations: the steps t_0 > t_1 > ... > t_N = 0 of an N-step sampler.

Most discretizations are defined as N noise levels from sigma_max down to
sigma_min (EDM Table 1, "time steps" row), which are mapped to the
formulation's own time through its sigma^-1, with t_N = 0 appended. Any
discretization works with any formulation.

When sigma_min / sigma_max are not given they default to the discretization's
own range (as in EDM's ablation sampler); either way they are clipped to the
sigma range the formulation supports.

Three names are aliases: `karras` is `edm` (k-diffusion's get_sigmas_karras), `time-uniform` is `vp` (DPM-Solver's time-uniform steps,
Lu et al. 2022: t uniform between 1 and epsilon_s = 1e-3 under a VP
schedule, which is EDM Table 1's VP discretization), and `logsnr` is `log-sigma`
(logSNR = ln(alpha^2 / sigma_vp^2) = -2 ln sigma, so uniform logSNR, uniform
lambda = -ln sigma and uniform ln sigma are the same levels). `time-quadratic`
is DPM-Solver's time-quadratic steps: uniform in sqrt(t) instead of t.

The last step. Every discretization ends at t_N = 0; how a sampler gets from
sigma_min = sigma(t_{N-1}) to 0 is `final_step` (see FINAL_STEPS):
"solver" lets the solver take that step itself, "denoise" integrates to
sigma_min and ends with x = D(x; sigma_min), one more denoiser call. How the
reference codebases end:

- EDM (Karras et al. 2022, Alg. 1-2) appends t_N = 0 and takes an Euler step
  into it (its second-order correction skipped); on EDM's ODE that Euler step
  from sigma_min to 0 is exactly x = D(x; sigma_min).
- k-diffusion appends sigma = 0 (get_sigmas_karras and friends); its Euler,
  Heun and DPM-Solver++ samplers end with an Euler / first-order step into it,
  which again returns D(x; sigma_min).
- diffusers has `final_sigmas_type`: "zero" steps into sigma = 0 (its
  multistep schedulers drop to first order there with `lower_order_final`,
  returning the data prediction), "sigma_min" ends at the last training sigma
  and returns the still slightly noisy x; DDIM's `set_alpha_to_one` ends at
  alpha-bar = 1. Its DEIS scheduler never steps into sigma = 0.
- DPM-Solver (Lu et al. 2022) integrates from T to epsilon and returns x at
  epsilon; `denoise_to_zero=True` adds one data-prediction call at the end,
  which is final_step="denoise" here.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple

import torch

from edm_space.errors import ConfigError, unknown
from edm_space.files import read_json
from edm_space.registry import Registry
from edm_space.parameterization import F64, DiscreteSigma, Formulation, VPSigma, iddpm_levels

Tensor = torch.Tensor

# A sigma level that stands for infinity: flow's t = 1 (pure noise) is started at
# sigma = 1e9, i.e. t = 1 - 1e-9, so that no step divides by s(t) = 0.
SIGMA_INFINITY = 1e9

EPSILON_S = 1e-3  # EDM Table 1: the VP discretization ends at t = epsilon_s.


def _vp_default(t: float) -> float:
    return float(VPSigma(19.9, 0.1).sigma(torch.tensor(t, dtype=F64)))


# The discretizations' own sigma ranges (EDM's ablation sampler defaults).
OWN_RANGE: Dict[str, Tuple[float, float]] = {
    "edm": (0.002, 80.0),
    "vp": (_vp_default(EPSILON_S), _vp_default(1.0)),
    "time-quadratic": (_vp_default(EPSILON_S), _vp_default(1.0)),
    "ve": (0.02, 100.0),
    "iddpm": (0.002, 81.0),
}
_EDM_RANGE = OWN_RANGE["edm"]


def _fraction(num_steps: int) -> Tensor:
    """i / (N - 1) for i = 0..N-1 (0 for N = 1: one level, sigma_max)."""
    step_indices = torch.arange(num_steps, dtype=F64)
    return step_indices / (num_steps - 1) if num_steps > 1 else step_indices


def edm_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    return (sigma_max ** (1 / rho) + _fraction(num_steps) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def fitted_vp_schedule(sigma_min: float, sigma_max: float) -> VPSigma:
    """The VP schedule with sigma(epsilon_s) = sigma_min and sigma(1) = sigma_max (EDM's ablation sampler)."""
    # ln(sigma^2 + 1) = beta_d t^2 / 2 + beta_min t at t = epsilon_s and t = 1, solved for beta_d, beta_min.
    beta_d = 2 * (math.log(sigma_min**2 + 1) / EPSILON_S - math.log(sigma_max**2 + 1)) / (EPSILON_S - 1)
    beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
    return VPSigma(beta_d, beta_min)


def vp_time_power_sigmas(num_steps: int, sigma_min: float, sigma_max: float, power: float) -> Tensor:
    """t^(1/power) linear from 1 to epsilon_s^(1/power) under the VP schedule fitted to [sigma_min, sigma_max].

    power = 1 is EDM Table 1's VP discretization and DPM-Solver's time-uniform steps; power = 2 is
    DPM-Solver's time-quadratic steps (Lu et al. 2022; zju-pi/diff-sampler's time_uniform exponent).
    """
    u = 1 + _fraction(num_steps) * (EPSILON_S ** (1 / power) - 1)
    return fitted_vp_schedule(sigma_min, sigma_max).sigma(u if power == 1 else u**power)


def vp_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """EDM Table 1, VP: t linear from 1 to epsilon_s under a VP schedule fitted to [sigma_min, sigma_max]."""
    return vp_time_power_sigmas(num_steps, sigma_min, sigma_max, 1)


def time_quadratic_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """DPM-Solver's time-quadratic steps: sqrt(t) linear from 1 to sqrt(epsilon_s) under the fitted VP schedule."""
    return vp_time_power_sigmas(num_steps, sigma_min, sigma_max, 2)


def ve_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """EDM Table 1, VE: geometric in sigma^2, t_i = sigma_max^2 (sigma_min^2 / sigma_max^2)^(i/(N-1)), sigma = sqrt(t)."""
    t = (sigma_max**2) * ((sigma_min**2 / sigma_max**2) ** _fraction(num_steps))
    return t.sqrt()


@lru_cache(maxsize=4)
def _iddpm_u(M: int = 1000, C1: float = 0.001, C2: float = 0.008) -> Tensor:
    return iddpm_levels(M, C1, C2)


def iddpm_sigmas(num_steps: int, sigma_min: float, sigma_max: float, levels: Optional[Tensor] = None) -> Tensor:
    """EDM Table 1, iDDPM: u_j at indices round((L-1)/(N-1) i) among the L levels inside [sigma_min, sigma_max].

    `levels` are the u_0 > ... > u_M of the formulation being sampled (an iddpm preset with
    other M, C1, C2); by default those of the paper's constants (M = 1000).
    """
    u = _iddpm_u() if levels is None else levels
    inside = u[(u >= sigma_min) & (u <= sigma_max)]
    if len(inside) == 0:
        raise ConfigError(f"no iDDPM level lies in [sigma_min, sigma_max] = [{sigma_min:g}, {sigma_max:g}]; levels span [{float(u[-2]):g}, {float(u[0]):g}]")
    index = ((len(inside) - 1) / (num_steps - 1) * torch.arange(num_steps, dtype=F64)).round() if num_steps > 1 else torch.zeros(1, dtype=F64)
    return inside[index.to(torch.int64)]


def log_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in ln sigma from sigma_max down to sigma_min."""
    return (math.log(sigma_max) + _fraction(num_steps) * (math.log(sigma_min) - math.log(sigma_max))).exp()


def ddpm_timesteps(num_steps: int, num_timesteps: int = 1000) -> Tensor:
    """DDIM's "leading" stride in Ho's 1-based t: t_i = (N - 1 - i) floor(T / N) + 1 (Song et al. 2021a)."""
    stride = num_timesteps // num_steps
    return (torch.arange(num_steps - 1, -1, -1, dtype=F64) * stride + 1)


def time_shift(t: Tensor, shift: float) -> Tensor:
    """SD3's shift t' = a t / (1 + (a - 1) t) (Esser et al. 2024, eq. 23); multiplies flow's sigma by a."""
    if shift == 1:
        return t
    return shift * t / (1 + (shift - 1) * t)


SigmaLevels = Callable[[int, float, float], Tensor]
# Name -> the sigma levels of N steps (None: ddpm and uniform-t are built from the formulation's own time).
DISCRETIZATIONS: Registry = Registry("discretization", {
    "edm": edm_sigmas,
    "vp": vp_sigmas,
    "ve": ve_sigmas,
    "iddpm": iddpm_sigmas,
    "ddpm": None,
    "uniform-t": None,
    "log-sigma": log_sigmas,
    "time-quadratic": time_quadratic_sigmas,
})
# Other names of the same levels (see the module docstring), and k-diffusion's name of EDM's.
DISCRETIZATIONS.alias("time-uniform", "vp", "DPM-Solver's time-uniform steps are EDM's VP discretization")
DISCRETIZATIONS.alias("logsnr", "log-sigma", "uniform logSNR = uniform ln sigma")
DISCRETIZATIONS.alias("karras", "edm", "k-diffusion's get_sigmas_karras, EDM eq. 5")
ALIASES: Dict[str, str] = {alias: target for alias, (target, _) in DISCRETIZATIONS.aliases.items()}

# How a sampler ends (see the module docstring): the solver's own step into t = 0, or a jump x = D(x; sigma_min).
FINAL_STEPS = ("solver", "denoise")


def names() -> list:
    """The discretization names (explicit levels, a tensor or a FILE.json, work everywhere a name does)."""
    return DISCRETIZATIONS.names() + list(DISCRETIZATIONS.aliases)


def check_final_step(final_step: str) -> str:
    """`final_step` if it is one of FINAL_STEPS, else a ConfigError naming the valid ones."""
    if final_step not in FINAL_STEPS:
        raise unknown("final_step", final_step, FINAL_STEPS)
    return final_step


def load_levels(path: str) -> Tensor:
    """Sigma levels from a JSON file holding {"sigmas": [...]} (as samplers.optimize.save_levels writes them)."""
    payload = read_json(path, "sigma levels file")
    if not isinstance(payload.get("sigmas"), list):
        raise ConfigError(f"cannot read sigma levels from {path!r}: expected JSON with a 'sigmas' list")
    try:
        return _check_levels(payload["sigmas"])
    except ConfigError as error:
        raise ConfigError(f"sigma levels in {path!r}: {error}") from None


def default_range(formulation: Formulation, discretization: str) -> Tuple[float, float]:
    """The discretization's own sigma range for this formulation, before clipping."""
    discretization = DISCRETIZATIONS.aliases.get(discretization, (discretization,))[0]
    if discretization in OWN_RANGE:
        return OWN_RANGE[discretization]
    lo, hi = formulation.sigma_min, formulation.sigma_max
    if discretization == "log-sigma" and not (lo > 0 and math.isfinite(hi)):
        return _EDM_RANGE
    return lo, hi


def sigma_range(
    formulation: Formulation, discretization: str, sigma_min: Optional[float] = None, sigma_max: Optional[float] = None
) -> Tuple[float, float]:
    """The [sigma_min, sigma_max] a sampler uses: given or the discretization's own, clipped to the formulation's support."""
    own_min, own_max = default_range(formulation, discretization)
    lo = own_min if sigma_min is None else float(sigma_min)
    hi = own_max if sigma_max is None else float(sigma_max)
    for name, value in (("sigma_min", lo), ("sigma_max", hi)):
        if math.isnan(value) or value < 0:
            raise ConfigError(f"{name} = {value:g} is invalid; it must be a non-negative number")
    lo, hi = max(lo, formulation.support[0]), min(hi, formulation.support[1])
    if not lo < hi:
        raise ConfigError(
            f"sigma_min = {lo:g} must be below sigma_max = {hi:g} (after clipping to the {formulation.name} "
            f"preset's supported range [{formulation.support[0]:g}, {formulation.support[1]:g}])"
        )
    needs_finite = discretization != "uniform-t"
    if needs_finite and not (lo > 0 and math.isfinite(hi)):
        raise ConfigError(
            f"the {discretization} discretization needs 0 < sigma_min < sigma_max < inf; got [{lo:g}, {hi:g}]"
        )
    return lo, hi


#: The most steps a sampler takes: refused before any level is allocated (DDPM's chain has 1,000).
MAX_STEPS = 1_000_000


def time_steps(
    formulation: Formulation,
    num_steps: int,
    discretization: Optional[str] = None,
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
    rho: float = 7.0,
) -> Tensor:
    """The N + 1 times t_0 > ... > t_N = 0 (float64) of an N-step sampler in the formulation's own t.

    `discretization` is a registered name (default: the formulation's own) or an
    explicit decreasing sequence of sigma levels (then its length, not num_steps,
    sets N; a final 0 is appended when missing). A first level of infinite sigma
    (flow's t = 1) is moved to sigma = 1e9.
    """
    if isinstance(discretization, (torch.Tensor, list, tuple)):
        return _explicit_levels(formulation, discretization)
    if isinstance(discretization, str) and discretization.endswith(".json"):
        return _explicit_levels(formulation, load_levels(discretization))
    name = formulation.default_discretization if discretization is None else discretization
    if not (isinstance(name, str) and (name in DISCRETIZATIONS or name in DISCRETIZATIONS.aliases)):
        raise unknown("discretization", name, names() + ["FILE.json"])
    name = DISCRETIZATIONS.resolve(name)
    if not isinstance(num_steps, int) or not 1 <= num_steps <= MAX_STEPS:
        raise ConfigError(f"num_steps = {num_steps!r} is invalid; it must be an integer >= 1 and <= {MAX_STEPS:,}")
    f = formulation
    zero = torch.zeros(1, dtype=F64)
    if name == "ddpm":
        t = _ddpm_steps(f, num_steps, sigma_min, sigma_max)
    elif name == "uniform-t":
        lo, hi = sigma_range(f, name, sigma_min, sigma_max)
        t_hi, t_lo = f.sigma_inv(hi), f.sigma_inv(lo)
        if lo == 0:  # N steps of equal length ending at t = 0 itself (flow's own).
            t = t_hi + torch.arange(num_steps + 1, dtype=F64) / num_steps * (t_lo - t_hi)
        else:
            t = torch.cat([t_hi + _fraction(num_steps) * (t_lo - t_hi), zero])
        t = time_shift(t, f.time_shift)
    else:
        if name == "edm":
            if not rho > 0:
                raise ConfigError(f"rho = {rho!r} is invalid; it must be > 0")
            levels = edm_sigmas(num_steps, *sigma_range(f, name, sigma_min, sigma_max), rho=rho)
        elif name == "iddpm" and f.levels is not None:  # the sampled model's own discrete levels
            levels = iddpm_sigmas(num_steps, *sigma_range(f, name, sigma_min, sigma_max), levels=f.levels)
        else:
            levels = DISCRETIZATIONS[name](num_steps, *sigma_range(f, name, sigma_min, sigma_max))
        t = torch.cat([f.sigma_inv(f.round_sigma(levels)), zero])
    if not torch.isfinite(f.sigma(t[0])):
        t = t.clone()
        t[0] = f.sigma_inv(torch.tensor(SIGMA_INFINITY, dtype=F64))
    return t


def _ddpm_steps(f: Formulation, num_steps: int, sigma_min: Optional[float], sigma_max: Optional[float]) -> Tensor:
    if sigma_min is not None or sigma_max is not None:
        raise ConfigError("the ddpm discretization takes its levels from the DDPM timesteps; sigma_min/sigma_max do not apply")
    chain = f.noise if isinstance(f.noise, DiscreteSigma) else DiscreteSigma()
    if num_steps > chain.num_timesteps:
        raise ConfigError(f"num_steps = {num_steps} exceeds the DDPM chain's T = {chain.num_timesteps} timesteps")
    ho_t = ddpm_timesteps(num_steps, chain.num_timesteps)
    levels = chain.sigmas[ho_t.long()]
    return torch.cat([f.sigma_inv(levels), torch.zeros(1, dtype=F64)])


def _check_levels(levels) -> Tensor:
    try:
        sigma = torch.as_tensor(levels, dtype=F64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"explicit sigma levels must be a list of numbers; got {levels!r}") from None
    if len(sigma) == 0:
        raise ConfigError("explicit sigma levels are empty; give at least one positive level")
    if bool(torch.isnan(sigma).any()) or not bool(torch.isfinite(sigma[1:]).all()):  # +inf only as the first level (flow's t = 1)
        raise ConfigError(f"explicit sigma levels hold NaN, or inf after the first level; got {levels!r}")
    if sigma[-1] == 0:
        sigma = sigma[:-1]
    if len(sigma) < 1 or not bool((sigma > 0).all()):
        raise ConfigError(f"explicit sigma levels must be positive (a final 0 allowed); got {levels!r}")
    if not bool((sigma[1:] < sigma[:-1]).all()):
        raise ConfigError(f"explicit sigma levels must be strictly decreasing (a final 0 allowed); got {levels!r}")
    return sigma


def _explicit_levels(f: Formulation, levels) -> Tensor:
    sigma = _check_levels(levels)
    t = torch.cat([f.sigma_inv(sigma), torch.zeros(1, dtype=F64)])
    if not torch.isfinite(f.sigma(t[0])):
        t[0] = f.sigma_inv(torch.tensor(SIGMA_INFINITY, dtype=F64))
    return t
