"""Named formulations: each preset is a `Formulation` assembled from the parts in
`edm_space.parameterization`, with the constants of its paper.

    import presets
    f = presets.get("edm")            # or presets.get("sd3", shift=3.0)
    presets.names()                   # ['edm', 'vp', 've', 'iddpm', 'ddpm', 'ddim', 'flow', 'sd3']

A preset is data: a function that fills in a Formulation. Keyword arguments of
`get` override the paper's constants (sigma_data, beta_d, ...).
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Dict, List

import torch

from edm_space.errors import ConfigError, unknown
from edm_space.parameterization import (
    DiscreteLevels,
    DiscreteSigma,
    DiscreteTimesteps,
    EDMPrecond,
    EDMWeight,
    EpsPrecond,
    FlowPrecond,
    FlowScale,
    FlowSigma,
    FlowWeight,
    Formulation,
    InverseSigmaSquared,
    LinearSigma,
    LogitNormalTime,
    LogNormalSigma,
    LogUniformSigma,
    NearestLevelIndex,
    SamplePredictionPrecond,
    ScaledTime,
    SqrtSigma,
    UniformTime,
    UnitScale,
    UnitWeight,
    VEPrecond,
    VPredictionPrecond,
    VPredictionWeight,
    VPScale,
    VPSigma,
    iddpm_levels,
    BETA_SCHEDULES,
    INTERPOLATIONS,
    SCHEDULE_PRECISIONS,
)

__all__ = ["get", "names", "parameters", "Formulation"]


def edm(sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2) -> Formulation:
    """EDM (Karras et al. 2022, Table 1, "EDM" column)."""
    return Formulation(
        name="edm",
        noise=LinearSigma(),
        scale_schedule=UnitScale(),
        preconditioning=EDMPrecond(sigma_data),
        loss_weighting=EDMWeight(sigma_data),
        p_train=LogNormalSigma(p_mean, p_std),
        sigma_min=0.002,
        sigma_max=80.0,
        default_solver="heun",
        default_discretization="edm",
        default_steps=18,
        description="EDM: sigma(t) = t, s = 1, unit-variance preconditioning",
    )


def vp(beta_d: float = 19.9, beta_min: float = 0.1, epsilon_t: float = 1e-5, M: int = 1000) -> Formulation:
    """Variance-preserving SDE (Song et al. 2021; EDM Table 1, "VP" column)."""
    noise = VPSigma(beta_d, beta_min)
    sigma_at = lambda t: float(noise.sigma(torch.tensor(t, dtype=torch.float64)))  # noqa: E731
    return Formulation(
        name="vp",
        noise=noise,
        scale_schedule=VPScale(),
        preconditioning=EpsPrecond(ScaledTime(factor=M - 1)),
        loss_weighting=InverseSigmaSquared(),
        p_train=UniformTime(epsilon_t, 1.0),
        sigma_min=sigma_at(1e-3),
        sigma_max=sigma_at(1.0),
        support=(sigma_at(epsilon_t), sigma_at(1.0)),
        default_solver="euler",
        default_discretization="vp",
        default_steps=256,
        description="VP SDE: DDPM's continuous limit, eps-prediction",
    )


def ve(sigma_min: float = 0.02, sigma_max: float = 100.0) -> Formulation:
    """Variance-exploding SDE (Song et al. 2021; EDM Table 1, "VE" column)."""
    if not sigma_min < sigma_max:
        raise ConfigError(f"preset 've': sigma_min = {sigma_min!r} must be below sigma_max = {sigma_max!r}")
    return Formulation(
        name="ve",
        noise=SqrtSigma(),
        scale_schedule=UnitScale(),
        preconditioning=VEPrecond(),
        loss_weighting=InverseSigmaSquared(),
        p_train=LogUniformSigma(sigma_min, sigma_max),
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        support=(sigma_min, sigma_max),
        default_solver="euler",
        default_discretization="ve",
        default_steps=256,
        description="VE SDE (NCSN++): sigma(t) = sqrt(t), score-prediction scaled by sigma",
    )


def iddpm(M: int = 1000, C1: float = 0.001, C2: float = 0.008) -> Formulation:
    """Improved DDPM (Nichol & Dhariwal 2021; EDM Table 1, "iDDPM" column): discrete levels u_j."""
    levels = iddpm_levels(M, C1, C2)
    return Formulation(
        name="iddpm",
        noise=LinearSigma(),
        scale_schedule=UnitScale(),
        preconditioning=EpsPrecond(NearestLevelIndex(levels)),
        loss_weighting=InverseSigmaSquared(),
        p_train=DiscreteLevels(levels),
        sigma_min=0.002,
        sigma_max=81.0,
        support=(float(levels[M - 1]), float(levels[0])),
        default_solver="euler",
        default_discretization="iddpm",
        default_steps=100,
        levels=levels,
        description="iDDPM: cosine schedule, M discrete noise levels, eps-prediction",
    )


def ddpm(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, beta_schedule: str = "linear",
         prediction: str = "epsilon", precision: str = "float64", interpolation: str = "log") -> Formulation:
    """DDPM (Ho et al. 2020): linear betas, T = 1000, eps-prediction with the 0-based timestep as input.

    The other constants express the DDPM-family models of diffusers (see `_ddpm_family`).
    """
    return _ddpm_family("ddpm", num_timesteps, beta_start, beta_end, beta_schedule, prediction, precision, interpolation,
                        solver="ancestral", steps=1000)


def ddim(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, beta_schedule: str = "linear",
         prediction: str = "epsilon", precision: str = "float64", interpolation: str = "log") -> Formulation:
    """DDPM's formulation sampled with deterministic DDIM (Song et al. 2021a; EDM Appendix)."""
    return _ddpm_family("ddim", num_timesteps, beta_start, beta_end, beta_schedule, prediction, precision, interpolation,
                        solver="ddim", steps=50)


# What the network of a DDPM chain predicts -> (preconditioning, loss weighting lambda = 1/c_out^2), diffusers' names.
_PREDICTIONS = {
    "epsilon": (EpsPrecond, InverseSigmaSquared),
    "v_prediction": (VPredictionPrecond, VPredictionWeight),  # Salimans & Ho 2022
    "sample": (SamplePredictionPrecond, UnitWeight),
}


def _ddpm_family(name: str, num_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str, prediction: str,
                 precision: str, interpolation: str, solver: str, steps: int) -> Formulation:
    """The DDPM chain with `beta_schedule` betas (ddpm_betas), a network predicting eps, v or x_0 from the 0-based timestep,
    the schedule computed in `precision` and interpolated between timesteps in log sigma or sigma (DiscreteSigma)."""
    if not beta_start <= beta_end:
        raise ConfigError(f"preset {name!r}: beta_start = {beta_start!r} must not exceed beta_end = {beta_end!r}")
    noise = DiscreteSigma(num_timesteps, beta_start, beta_end, beta_schedule, precision, interpolation)
    precond, weight = _PREDICTIONS[prediction]
    what = "" if (beta_schedule, prediction) == ("linear", "epsilon") else f", {beta_schedule} betas, {prediction}"
    return Formulation(
        name=name,
        noise=noise,
        scale_schedule=VPScale(),
        preconditioning=precond(ScaledTime(factor=1.0, offset=-1.0)),
        loss_weighting=weight(),
        p_train=DiscreteTimesteps(num_timesteps),
        sigma_min=float(noise.sigmas[1]),
        sigma_max=float(noise.sigmas[-1]),
        support=(float(noise.sigmas[1]), float(noise.sigmas[-1])),
        default_solver=solver,
        default_discretization="ddpm",
        default_steps=min(steps, num_timesteps),
        description=f"DDPM chain, T = {num_timesteps}{what}, sampled with {solver}",
    )


def flow() -> Formulation:
    """Rectified flow / conditional-OT flow matching (Liu et al. 2023; Lipman et al. 2023)."""
    return _flow_family("flow", UniformTime(0.0, 1.0), 1.0, "rectified flow: x_t = (1-t) x_0 + t eps, velocity-prediction")


def sd3(shift: float = 1.0, mean: float = 0.0, std: float = 1.0, time_scale: float = 1.0) -> Formulation:
    """Flow with logit-normal training times and a time shift t' = a t / (1 + (a-1) t) for training and sampling (Esser et al. 2024, SD3).

    time_scale multiplies the network's time input: diffusers' flow-matching models take the timestep 1000 t
    (FlowMatchEulerDiscreteScheduler with num_train_timesteps = 1000).
    """
    return _flow_family("sd3", LogitNormalTime(mean, std, shift), shift, "SD3: flow with logit-normal t and time shift", time_scale)


def _flow_family(name: str, p_train, shift: float, description: str, time_scale: float = 1.0) -> Formulation:
    return Formulation(
        name=name,
        noise=FlowSigma(),
        scale_schedule=FlowScale(),
        preconditioning=FlowPrecond(time_scale),
        loss_weighting=FlowWeight(),
        p_train=p_train,
        sigma_min=0.0,
        sigma_max=math.inf,
        default_solver="euler",
        default_discretization="uniform-t",
        default_steps=50,
        time_shift=shift,
        description=description,
    )


_PRESETS: Dict[str, Callable[..., Formulation]] = {
    "edm": edm,
    "vp": vp,
    "ve": ve,
    "iddpm": iddpm,
    "ddpm": ddpm,
    "ddim": ddim,
    "flow": flow,
    "sd3": sd3,
}
_CACHE: Dict[str, Formulation] = {}


# What each paper constant may be, checked by get() before a preset is built: (kind, low, high, open at low).
_CONSTANTS = {
    "sigma_data": ("number", 0.0, math.inf, True),
    "p_mean": ("number", -math.inf, math.inf, True),
    "p_std": ("number", 0.0, math.inf, True),
    "beta_d": ("number", 0.0, math.inf, True),
    "beta_min": ("number", 0.0, math.inf, False),
    "epsilon_t": ("number", 0.0, 1.0, True),
    "M": ("integer", 2, 10**7, False),
    "sigma_min": ("number", 0.0, math.inf, True),
    "sigma_max": ("number", 0.0, math.inf, True),
    "C1": ("number", 0.0, 1.0, True),
    "C2": ("number", 0.0, math.inf, False),
    "num_timesteps": ("integer", 2, 10**7, False),
    "beta_start": ("number", 0.0, 1.0, True),
    "beta_end": ("number", 0.0, 1.0, True),
    "shift": ("number", 0.0, math.inf, True),
    "mean": ("number", -math.inf, math.inf, True),
    "std": ("number", 0.0, math.inf, True),
    "time_scale": ("number", 0.0, math.inf, True),
}
# Constants that are names: the allowed ones.
_CHOICES = {
    "beta_schedule": BETA_SCHEDULES,
    "prediction": tuple(_PREDICTIONS),
    "precision": SCHEDULE_PRECISIONS,
    "interpolation": INTERPOLATIONS,
}


def _checked_constant(preset: str, key: str, value):
    """`value` as the number (or name) preset constant `key` must be, or a one-line ConfigError saying what is allowed."""
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise ConfigError(f"preset {preset!r}: {key} = {value!r} is invalid; valid: {', '.join(_CHOICES[key])}")
        return value
    kind, low, high, open_low = _CONSTANTS[key]
    bound = f"{'>' if open_low else '>='} {low:g}" + (f" and < {high:g}" if math.isfinite(high) else "")
    article = "an" if kind == "integer" else "a"
    allowed = f"{article} {kind} {bound}" if math.isfinite(low) else f"a finite {kind}"
    integral = kind == "integer" and isinstance(value, int) and not isinstance(value, bool)
    number = kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (integral or number) or not math.isfinite(value) or value < low or (open_low and value == low) or value >= high:
        raise ConfigError(f"preset {preset!r}: {key} = {value!r} is invalid; it must be {allowed}")
    return value


def parameters(name: str) -> List[str]:
    """The paper constants preset `name` lets `get` override."""
    if name not in _PRESETS:
        raise unknown("preset", name, names())
    return list(inspect.signature(_PRESETS[name]).parameters)


def names() -> List[str]:
    """The preset names, in the order of the design table."""
    return list(_PRESETS)


def get(name, **overrides) -> Formulation:
    """The formulation of preset `name`; keyword arguments override its paper constants.

    A Formulation passed as `name` is returned unchanged.
    """
    if isinstance(name, Formulation):
        return name
    if name not in _PRESETS:
        raise unknown("preset", name, names())
    build = _PRESETS[name]
    if overrides:
        allowed = parameters(name)
        bad = [key for key in overrides if key not in allowed]
        if bad:
            raise ConfigError(f"preset {name!r} has no parameter {bad[0]!r}; valid: {', '.join(allowed) or 'none'}")
        return build(**{key: _checked_constant(name, key, value) for key, value in overrides.items()})
    if name not in _CACHE:
        _CACHE[name] = build()
    return _CACHE[name]
