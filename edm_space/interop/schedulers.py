"""diffusers schedulers as formulations of this project: which preset, with which constants, is the scheduler's denoiser.

A diffusers scheduler fixes how a network's output becomes a denoised estimate (its "formulas"); a
preset of edm-space fixes the same through c_skip, c_out, c_in, c_noise (EDM eq. 7). The map:

- DDPMScheduler, DDIMScheduler (linear / scaled_linear / squaredcos_cap_v2 betas; epsilon, v_prediction,
  sample): presets ddpm / ddim with num_timesteps, beta_start, beta_end, beta_schedule, prediction, and
  precision = float32 (diffusers computes its betas and abar in float32). diffusers' timestep k is Ho's
  t = k + 1, whose c_noise t - 1 = k is the network's timestep input.
- DPMSolverMultistepScheduler, UniPCMultistepScheduler: as DDIMScheduler (their own solvers are dpm++2m and
  unipc-N here); with karras / exponential / beta / lu / flow sigmas they are refused.
- EulerDiscreteScheduler: preset ddim (its deterministic Euler in sigma is the ddim solver), sigma interpolated
  linearly between timesteps as diffusers does (log-linearly when it picks karras/exponential/beta sigmas,
  which it maps back to timesteps in log sigma).
- FlowMatchEulerDiscreteScheduler: preset sd3 with its shift and time_scale = num_train_timesteps (the model's
  timestep is 1000 t, t = diffusers' sigma).
- EDMEulerScheduler (karras sigmas, epsilon): preset edm with its sigma_data.

Options that change only where a sampler steps (timestep_spacing, steps_offset, karras sigmas, dynamic
shifting) are the sampler's choice here. Options that change the denoiser in ways no preset expresses
(trained_betas, zero-terminal-SNR rescaling, continuous timesteps, inverted sigmas, the EDM exponential
schedule) are refused with one line; sampling-time clipping and thresholding are reported as not applied.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ..errors import ConfigError

# Multistep solvers of diffusers that feed the network x_t at integer DDPM timesteps, as DDIM does.
MULTISTEP = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler", "EDMEulerScheduler") + MULTISTEP
DDPM_LIKE = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler") + MULTISTEP


def _inexpressible(name: str, key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{name} with {key} = {value!r} cannot be expressed by a preset of edm-space: {why}")


def formulation_of(name: str, config: Dict[str, Any]) -> Tuple[str, Dict[str, Any], List[str]]:
    """(preset, preset options, notes) of the diffusers scheduler class `name` with `config`; a one-line error otherwise."""
    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler {name!r} is not supported; supported: {', '.join(SCHEDULERS)}")
    get = lambda key, default=None: config.get(key, default)  # noqa: E731
    notes: List[str] = []
    if name in DDPM_LIKE:
        if get("trained_betas") is not None:
            raise _inexpressible(name, "trained_betas", "[...]", "explicit betas are not a preset constant")
        if get("rescale_betas_zero_snr"):
            raise _inexpressible(name, "rescale_betas_zero_snr", True, "its last level has sigma = inf, which no discrete preset has")
        schedule = get("beta_schedule", "linear")
        if schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            raise _inexpressible(name, "beta_schedule", schedule, "supported: linear, scaled_linear, squaredcos_cap_v2")
        prediction = get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction", "sample"):
            raise _inexpressible(name, "prediction_type", prediction, "supported: epsilon, v_prediction, sample")
        options = {"num_timesteps": int(get("num_train_timesteps", 1000)), "beta_start": float(get("beta_start", 1e-4)),
                   "beta_end": float(get("beta_end", 0.02)), "beta_schedule": schedule, "prediction": prediction, "precision": "float32"}
        for key in ("clip_sample", "thresholding"):
            if get(key):
                notes.append(f"the scheduler's {key} is a sampling-time change of D that is not applied here")
        if name in MULTISTEP:
            for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas"):
                if get(key):
                    raise _inexpressible(name, key, True, "it feeds rounded timesteps with sigmas off the DDPM levels, so D is no function of sigma")
        if name != "EulerDiscreteScheduler":
            return ("ddpm" if name == "DDPMScheduler" else "ddim"), options, notes
        if get("timestep_type", "discrete") != "discrete":
            raise _inexpressible(name, "timestep_type", get("timestep_type"), "continuous timesteps feed c_noise = ln(sigma)/4 to a VP model")
        interpolated = get("interpolation_type", "linear") == "linear" and not any(
            get(key) for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"))
        options["interpolation"] = "linear" if interpolated else "log"
        return "ddim", options, notes
    if name == "FlowMatchEulerDiscreteScheduler":
        if get("invert_sigmas"):
            raise _inexpressible(name, "invert_sigmas", True, "t = 1 would be data, the reverse of flow's convention")
        if get("use_dynamic_shifting"):
            notes.append("dynamic shifting depends on the image size; the run samples with shift = "
                         f"{float(get('shift', 1.0)):g} unless --preset-option shift=... is given")
        return "sd3", {"shift": float(get("shift", 1.0)), "time_scale": float(get("num_train_timesteps", 1000))}, notes
    # EDMEulerScheduler
    if get("sigma_schedule", "karras") != "karras":
        raise _inexpressible(name, "sigma_schedule", get("sigma_schedule"), "its exponential schedule feeds c_noise = atan(sigma) 2/pi")
    if get("prediction_type", "epsilon") != "epsilon":
        raise _inexpressible(name, "prediction_type", get("prediction_type"), "the edm preset's c_out is +sigma sd / sqrt(sigma^2 + sd^2)")
    if (float(get("sigma_min", 0.002)), float(get("sigma_max", 80.0))) != (0.002, 80.0):
        notes.append(f"the scheduler samples sigma in [{get('sigma_min')}, {get('sigma_max')}]; give --sigma-min/--sigma-max to match")
    return "edm", {"sigma_data": float(get("sigma_data", 0.5))}, notes
