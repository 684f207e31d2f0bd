"""Named formulations: each preset is a `Formulation` assembled from the parts in
`edm_space.parameterization`, with the constants of its paper.

    import presets
    f = presets.get("edm")            # or presets.get("sd3", shift=3.0)
    presets.names()                   # ['edm', 'vp', 've', 'iddpm', 'ddpm', 'ddim', 'flow', 'sd3']

A preset is data: a function that fills in a Formulation. Keyword arguments of
`get` override the paper's constants (sigma_data, beta_d, ...).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Dict, List

import torch

from edm_space.errors import ConfigError
from edm_space.registry import Option, Registry
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


@functools.lru_cache(maxsize=8)
def _iddpm_levels(M: int, C1: float, C2: float) -> torch.Tensor:
    """iDDPM's levels u_j (a loop over M; computed once per constants, never handed out uncopied)."""
    return iddpm_levels(M, C1, C2)


def iddpm(M: int = 1000, C1: float = 0.001, C2: float = 0.008) -> Formulation:
    """Improved DDPM (Nichol & Dhariwal 2021; EDM Table 1, "iDDPM" column): discrete levels u_j."""
    levels = _iddpm_levels(M, C1, C2).clone()  # the formulation's own copy
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


_PRESETS: Registry = Registry("preset", {
    "edm": edm,
    "vp": vp,
    "ve": ve,
    "iddpm": iddpm,
    "ddpm": ddpm,
    "ddim": ddim,
    "flow": flow,
    "sd3": sd3,
})


# What each paper constant may be, checked by get() before a preset is built (the presets share these names).
_INTEGER_STEPS = Option.integer(2, 10**7 - 1)
_CONSTANTS: Dict[str, Option] = {
    "sigma_data": Option.number(0.0, open_low=True),
    "p_mean": Option.number(),
    "p_std": Option.number(0.0, open_low=True),
    "beta_d": Option.number(0.0, open_low=True),
    "beta_min": Option.number(0.0),
    "epsilon_t": Option.number(0.0, 1.0, open_low=True, open_high=True),
    "M": _INTEGER_STEPS,
    "sigma_min": Option.number(0.0, open_low=True),
    "sigma_max": Option.number(0.0, open_low=True),
    "C1": Option.number(0.0, 1.0, open_low=True, open_high=True),
    "C2": Option.number(0.0),
    "num_timesteps": _INTEGER_STEPS,
    "beta_start": Option.number(0.0, 1.0, open_low=True, open_high=True),
    "beta_end": Option.number(0.0, 1.0, open_low=True, open_high=True),
    "shift": Option.number(0.0, open_low=True),
    "mean": Option.number(),
    "std": Option.number(0.0, open_low=True),
}
_CONSTANTS.update({
    "time_scale": Option.number(0.0, open_low=True),
    "beta_schedule": Option.name(*BETA_SCHEDULES),
    "prediction": Option.name(*_PREDICTIONS),
    "precision": Option.name(*SCHEDULE_PRECISIONS),
    "interpolation": Option.name(*INTERPOLATIONS),
})
for _build in _PRESETS.values():
    _build.OPTIONS = {key: _CONSTANTS[key] for key in inspect.signature(_build).parameters}


def parameters(name: str) -> List[str]:
    """The paper constants preset `name` lets `get` override."""
    return list(inspect.signature(_PRESETS.get(name)).parameters)


def names() -> List[str]:
    """The preset names, in the order of the design table."""
    return _PRESETS.names()


def get(name, **overrides) -> Formulation:
    """The formulation of preset `name`; keyword arguments override its paper constants.

    A Formulation passed as `name` is returned unchanged. Each call builds a new Formulation, so
    changing one (or one of its tensors) never reaches another caller.
    """
    if isinstance(name, Formulation):
        return name
    name = _PRESETS.resolve(name)
    build = _PRESETS[name]
    return build(**_PRESETS.check_options(name, overrides))
