"""Time discretizations: the steps t_0 > t_1 > ... > t_N = 0 of an N-step sampler.

Most discretizations are defined as N noise levels from sigma_max down to
sigma_min (EDM Table 1, "time steps" row), which are mapped to the
formulation's own time through its sigma^-1, with t_N = 0 appended. Any
discretization works with any formulation.

When sigma_min / sigma_max are not given they default to the discretization's
own range (as in EDM's ablation sampler); either way they are clipped to the
sigma range the formulation supports.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Dict, Optional, Tuple

import torch

from edm_space.errors import ConfigError, unknown
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


def vp_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """EDM Table 1, VP: t linear from 1 to epsilon_s under a VP schedule fitted to [sigma_min, sigma_max]."""
    # ln(sigma^2 + 1) = beta_d t^2 / 2 + beta_min t at t = epsilon_s and t = 1, solved for beta_d, beta_min.
    beta_d = 2 * (math.log(sigma_min**2 + 1) / EPSILON_S - math.log(sigma_max**2 + 1)) / (EPSILON_S - 1)
    beta_min = math.log(sigma_max**2 + 1) - 0.5 * beta_d
    t = 1 + _fraction(num_steps) * (EPSILON_S - 1)
    return VPSigma(beta_d, beta_min).sigma(t)


def ve_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """EDM Table 1, VE: geometric in sigma^2, t_i = sigma_max^2 (sigma_min^2 / sigma_max^2)^(i/(N-1)), sigma = sqrt(t)."""
    t = (sigma_max**2) * ((sigma_min**2 / sigma_max**2) ** _fraction(num_steps))
    return t.sqrt()


@lru_cache(maxsize=4)
def _iddpm_u(M: int = 1000, C1: float = 0.001, C2: float = 0.008) -> Tensor:
    return iddpm_levels(M, C1, C2)


def iddpm_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """EDM Table 1, iDDPM: u_j at indices round((L-1)/(N-1) i) among the L levels inside [sigma_min, sigma_max]."""
    u = _iddpm_u()
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
_LEVELS: Dict[str, SigmaLevels] = {
    "edm": edm_sigmas,
    "vp": vp_sigmas,
    "ve": ve_sigmas,
    "iddpm": iddpm_sigmas,
    "log-sigma": log_sigmas,
}
_NAMES = ("edm", "vp", "ve", "iddpm", "ddpm", "uniform-t", "log-sigma")


_CUSTOM: Dict[str, Tensor] = {}


def names() -> list:
    """The discretization names: the built-in ones and those added by `register_levels`."""
    return list(_NAMES) + list(_CUSTOM)


def register_levels(name: str, sigma_levels) -> None:
    """Add a named discretization given by explicit, strictly decreasing sigma levels (e.g. optimized steps).

    It is usable everywhere a discretization name is; its length, not num_steps, sets N.
    """
    if name in _NAMES:
        raise ConfigError(f"{name!r} is a built-in discretization; choose another name")
    _CUSTOM[name] = _check_levels(sigma_levels)


def load_levels(path: str) -> Tensor:
    """Sigma levels from a JSON file holding {"sigmas": [...]} (as the solver benchmark writes them)."""
    import json

    try:
        with open(path) as file:
            payload = json.load(file)
        return _check_levels(payload["sigmas"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"cannot read sigma levels from {path!r}: expected JSON with a 'sigmas' list ({type(error).__name__})") from None


def default_range(formulation: Formulation, discretization: str) -> Tuple[float, float]:
    """The discretization's own sigma range for this formulation, before clipping."""
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
    if isinstance(discretization, str) and discretization in _CUSTOM:
        return _explicit_levels(formulation, _CUSTOM[discretization])
    if isinstance(discretization, str) and discretization.endswith(".json"):
        return _explicit_levels(formulation, load_levels(discretization))
    name = formulation.default_discretization if discretization is None else discretization
    if name not in _NAMES:
        raise unknown("discretization", name, names() + ["FILE.json"])
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"num_steps = {num_steps!r} is invalid; it must be an integer >= 1")
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
        else:
            levels = _LEVELS[name](num_steps, *sigma_range(f, name, sigma_min, sigma_max))
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
    sigma = torch.as_tensor(levels, dtype=F64).flatten()
    if len(sigma) and sigma[-1] == 0:
        sigma = sigma[:-1]
    if len(sigma) < 1 or not bool((sigma > 0).all()) or not bool((sigma[1:] < sigma[:-1]).all()):
        raise ConfigError(f"explicit sigma levels must be positive and strictly decreasing (a final 0 allowed); got {levels!r}")
    return sigma


def _explicit_levels(f: Formulation, levels) -> Tensor:
    sigma = _check_levels(levels)
    t = torch.cat([f.sigma_inv(sigma), torch.zeros(1, dtype=F64)])
    if not torch.isfinite(f.sigma(t[0])):
        t[0] = f.sigma_inv(torch.tensor(SIGMA_INFINITY, dtype=F64))
    return t
