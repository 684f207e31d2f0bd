"""`edm-space sample` as a library call: options -> checked settings -> generate() -> files.

`sample_to_file(SampleOptions(...))` is what the command runs: it validates every
option before any work, opens the model (a trained run, or the exact denoiser of a
built-in data set), samples through `edm_space.generation.generate` and writes the
samples (rank 0 under torchrun). Each step is a small function of its own.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

import presets
import samplers
from samplers.trajectory import TrajectoryRecorder

from . import data, devices, latent, posthoc_ema
from .denoiser import Denoiser
from .errors import ConfigError
from .files import StagedOutputs, check_writable_file, read_json, save_npz_atomic
from .generation import Generated, Guidance, SamplerSettings, check_finite, class_labels, generate
from .ideal import IdealDenoiser
from .model_training import is_model_run, read_model_config
from .outputs import write_sample_files
from .plotting import trajectory_png
from .seeding import parse_seeds
from .distributed import distributed_context
from .training import build_formulation, load_trained

__all__ = ["SampleOptions", "sample_options", "SamplingModel", "sample_to_file", "parse_interval", "TOY_REFERENCE_SIZE", "MAX_SAMPLES"]

MAX_SAMPLES = 10**7
TOY_REFERENCE_SIZE = 5000  # points the exact denoiser of a toy set averages over by default
MAX_RESULT_BYTES = 16 * 2**30


@dataclasses.dataclass
class SampleOptions:
    """The options of `edm-space sample`, named as the command's parameters (defaults as the command's), but for
    the sampler's: those are one `SamplerSettings` group, `sampler` (solver / num_steps None: the preset's own;
    its formulation is unused: --preset picks it). `sample_options(**values)` builds one from the command's values."""

    run_dir: Optional[str] = None
    checkpoint_step: Optional[int] = None
    ema: bool = True
    ema_std: Optional[float] = None
    class_label: Optional[int] = None
    guidance_weight: Optional[float] = None
    guidance_interval: Optional[str] = None
    guide_dir: Optional[str] = None
    guide_step: Optional[int] = None
    preset: Optional[str] = None
    preset_options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    sampler: SamplerSettings = dataclasses.field(default_factory=SamplerSettings)
    data_name: str = "moons"
    data_size: Optional[int] = None
    num_samples: Optional[int] = None
    seed: int = 0
    seeds: Optional[str] = None
    batch_size: int = 500
    trajectory: bool = False
    out_path: str = "samples.npz"
    device: str = "auto"
    precision: str = "fp32"
    compile_network: bool = False
    progress: bool = True


@dataclasses.dataclass
class SamplingModel:
    """What is sampled: the denoiser, the formulation whose ODE is integrated, and what the run records."""

    denoiser: Callable
    formulation: Any
    item_shape: Tuple[int, ...]
    num_classes: int
    source: str
    guide: Optional[Callable] = None
    decode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    reference: Optional[torch.Tensor] = None  # the exact denoiser's data, drawn beside 2-D samples
    config: Any = None
    name: str = ""  # short, for picture captions: "RUN step S" or "exact DATA"


# ---------------------------------------------------------------------------
# Checking the options.


def float_or_none(value: Optional[str], name: str) -> Optional[float]:
    """`value` as a float (None stays None), or a one-line error naming the option."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} = {value!r} is not a number") from None


#: --sampler-dtype's choices: the sampler state's dtype (SamplerSettings.state_dtype).
STATE_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def sample_options(solver_options: Optional[Dict[str, Any]] = None, sampler_dtype: str = "float64", **values: Any) -> SampleOptions:
    """SampleOptions of the command's values by its parameter names: those named as a `SamplerSettings` field go into
    the `sampler` group (--sigma-min / --sigma-max as text, --solver-option as `options`, --sampler-dtype as
    `state_dtype`), the others stay as they are."""
    names = {field.name for field in dataclasses.fields(SamplerSettings)} - {"formulation", "data_mean", "state_dtype", "options"}
    group = {name: values.pop(name) for name in list(values) if name in names}
    for name in ("sigma_min", "sigma_max"):
        group[name] = float_or_none(group.get(name), "--" + name.replace("_", "-"))
    if sampler_dtype not in STATE_DTYPES:
        raise ConfigError(f"--sampler-dtype {sampler_dtype!r} is invalid; choose {' or '.join(STATE_DTYPES)}")
    sampler = SamplerSettings(**group, state_dtype=STATE_DTYPES[sampler_dtype], options=dict(solver_options or {}))
    return SampleOptions(sampler=sampler, **values)


def finite(value: float, name: str, low: float = -math.inf) -> float:
    """`value` if it is a finite number >= low, else a one-line error naming the option."""
    if not math.isfinite(value) or value < low:
        raise ConfigError(f"{name} {value!r} is invalid; it must be a finite number >= {low:g}")
    return value


def parse_interval(text: Optional[str]) -> Optional[Tuple[float, float]]:
    """--guidance-interval LO,HI as a pair of floats with 0 <= LO < HI."""
    if text is None:
        return None
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise ConfigError(f"--guidance-interval {text!r} must be SIGMA_LO,SIGMA_HI, e.g. 0.28,5.4") from None
    if not (0 <= lo < hi) or math.isnan(hi):
        raise ConfigError(f"--guidance-interval {text!r} is invalid; it needs 0 <= SIGMA_LO < SIGMA_HI")
    return lo, hi


def seed_list(o: SampleOptions) -> List[int]:
    """The seeds to sample: --seeds, or --n of them from --seed."""
    if o.seeds is not None:
        return parse_seeds(o.seeds, most=MAX_SAMPLES)
    n = (64 if o.run_dir else 1000) if o.num_samples is None else o.num_samples
    if not 1 <= n <= MAX_SAMPLES or o.seed < 0:
        raise ConfigError(f"--n {n} and --seed {o.seed} are invalid; need 1 <= n <= {MAX_SAMPLES:,} and seed >= 0")
    return list(range(o.seed, o.seed + n))


def check_options(o: SampleOptions) -> None:
    """Every check that needs no model: the output, the numbers, the guidance options."""
    if os.path.splitext(o.out_path)[1].lower() not in (".npz", ".png"):
        raise ConfigError(f"--out {o.out_path!r} must end in .npz or .png")
    check_writable_file(o.out_path, "--out", missing_folders=True)
    if o.batch_size < 1:
        raise ConfigError(f"--batch {o.batch_size} is invalid; it must be >= 1")
    finite(o.sampler.churn, "--churn", 0.0)
    finite(o.sampler.s_noise, "--s-noise", 0.0)
    for name, value in (("--s-tmin", o.sampler.s_tmin), ("--s-tmax", o.sampler.s_tmax), ("--rho", o.sampler.rho)):
        if math.isnan(value):
            raise ConfigError(f"{name} {value!r} is invalid; it must be a number")
    if o.guidance_weight is not None:
        finite(o.guidance_weight, "--guidance")
    elif o.guidance_interval is not None or o.guide_dir is not None:
        raise ConfigError("--guidance-interval and --guide need --guidance W")
    if o.guide_step is not None and o.guide_dir is None:
        raise ConfigError(f"--guide-step {o.guide_step} needs --guide RUN_DIR: it picks that run's checkpoint")
    parse_interval(o.guidance_interval)
    if o.run_dir is None and o.device not in ("auto", "cpu"):
        raise ConfigError(f"--device {o.device} needs --ckpt: the exact denoiser of --data runs on the CPU")
    if o.run_dir is None and o.compile_network:
        raise ConfigError("--compile needs --ckpt: the exact denoiser of --data has no network to compile")


#: What `sample` does with a family or autoencoder run: its own sampler takes only these options.
FAMILY_SAMPLE_OPTIONS = ("run_dir", "checkpoint_step", "num_samples", "seed", "seeds", "out_path", "device", "threads", "quiet")


def check_family_options(run_dir: str, given: Dict[str, str]) -> None:
    """Refuse options a family run's sampler cannot apply; `given` maps each option given to its flag."""
    ignored = [flag for name, flag in given.items() if name not in FAMILY_SAMPLE_OPTIONS]
    if ignored:
        raise ConfigError(f"{', '.join(ignored)} cannot apply to {run_dir!r}: it is a family or autoencoder run, sampled by its own "
                          f"sampler (options: --step, --n, --seed, --seeds, --out, --device)")


# ---------------------------------------------------------------------------
# Opening the model.


def own_sigma_data(config) -> dict:
    """The data's sigma_data for a preset that takes one, as training used it."""
    if config.sigma_data is not None and "sigma_data" in presets.parameters(config.preset) and "sigma_data" not in config.preset_options:
        return {"sigma_data": config.sigma_data}
    return {}


def _integrated_formulation(o: SampleOptions, config, own) -> Any:
    """The formulation whose ODE is integrated: the model's own (with its constants) unless --preset names another."""
    if o.preset is None or o.preset == config.preset:
        if not o.preset_options:
            return own
        return presets.get(config.preset, **{**config.preset_options, **own_sigma_data(config), **o.preset_options})
    return presets.get(o.preset, **o.preset_options)


def open_run(o: SampleOptions, device: torch.device) -> SamplingModel:
    """A trained run's denoiser (on `device`, at --precision, compiled if asked), its guide and its decoder."""
    loaded, config, item_shape, num_classes, step = load_trained(o.run_dir, ema=o.ema, step=o.checkpoint_step, device=str(device))
    if o.ema_std is not None:  # post-hoc EMA of this std, rebuilt from the run's snapshots (EDM2 Sec. 3)
        loaded.network.load_state_dict(posthoc_ema.ema_weights(o.run_dir, o.ema_std, step))
    network = devices.compiled(loaded.network, o.compile_network)
    denoiser = Denoiser(network, loaded.formulation, precision=o.precision)
    weights = f"post-hoc EMA std {o.ema_std:g}" if o.ema_std is not None else ("EMA" if o.ema else "raw")
    source = f"{o.run_dir} (step {step}, {weights} weights)"
    decode = None
    if config.latent_space is not None:  # a latent model: its samples are latents, the images come from the decoder
        space = latent.open_latent_space(config.latent_space, o.run_dir)
        decode = space.decode
        source += f", decoded by {space.run}"
    model = SamplingModel(denoiser, _integrated_formulation(o, config, build_formulation(config)), item_shape, num_classes,
                          source, decode=decode, config=config, name=f"{os.path.basename(os.path.normpath(o.run_dir))} step {step}")
    if not config.conditional:  # a run on labelled data trained without --conditional records its classes, unused
        model.num_classes = 0
        if o.class_label is not None:
            raise ConfigError(f"--class {o.class_label}: the model in {o.run_dir!r} is not class-conditional (train it with --conditional)")
        if o.guidance_weight is not None and o.guide_dir is None:
            raise ConfigError(f"--guidance {o.guidance_weight:g} without --guide is classifier-free guidance, which needs a class-conditional model; "
                              f"the model in {o.run_dir!r} is unconditional: give --guide RUN_DIR (autoguidance) or train with --conditional")
    elif o.guidance_weight is not None and o.guide_dir is None and not config.label_dropout:
        raise ConfigError(f"--guidance without --guide needs the null label, which the model in {o.run_dir!r} never learned (trained with --label-dropout 0); give --guide RUN_DIR")
    if o.guide_dir is not None:
        model.guide, at = open_guide(o, config, item_shape, model.num_classes, device)
        model.source += f", guided by {o.guide_dir} (step {at})"
    return model


def open_guide(o: SampleOptions, config, item_shape, num_classes: int, device: torch.device) -> Tuple[Denoiser, int]:
    """--guide's denoiser: a diffusion run of the same items, classes and latent space as --ckpt."""
    if is_model_run(o.guide_dir):
        try:
            kind = read_model_config(o.guide_dir).describe()
        except (ConfigError, OSError):
            kind = "family or autoencoder"
        raise ConfigError(f"--guide {o.guide_dir!r} is a {kind} run, not a diffusion run; autoguidance needs a weaker diffusion model of the same data")
    guide, guide_config, guide_shape, guide_classes, guide_at = load_trained(o.guide_dir, ema=o.ema, step=o.guide_step, device=str(device))
    guide_classes = guide_classes if guide_config.conditional else 0
    if guide_shape != item_shape or guide_classes != num_classes:
        raise ConfigError(f"--guide {o.guide_dir!r} models items {list(guide_shape)} with {guide_classes} classes; --ckpt has {list(item_shape)} with {num_classes}")
    mine, theirs = (c.latent_space["checksum"] if c.latent_space else None for c in (config, guide_config))
    if mine != theirs:
        describe = lambda c: f"the latents of {c.latent_space['run']!r}" if c.latent_space else "pixels"  # noqa: E731
        raise ConfigError(f"--guide {o.guide_dir!r} models {describe(guide_config)} (autoencoder checksum {str(theirs)[:12]}); "
                          f"--ckpt models {describe(config)} (checksum {str(mine)[:12]}): a guide must model the same space")
    return Denoiser(guide.network, guide.formulation, precision=o.precision), guide_at


def open_exact(o: SampleOptions) -> SamplingModel:
    """The exact denoiser of --data (class-conditional when --class or --guidance asks for one)."""
    if o.guide_dir is not None:
        raise ConfigError("--guide needs --ckpt: autoguidance guides one trained model by another")
    f = presets.get(o.preset or "edm", **o.preset_options)
    size = o.data_size if o.data_size is not None else (TOY_REFERENCE_SIZE if o.data_name in data.TOY_SETS else None)
    reference, labels = data.load(o.data_name, n=size, seed=o.seed, with_labels=True)
    conditional = o.class_label is not None or o.guidance_weight is not None
    if conditional and labels is None:
        raise ConfigError(f"--class and --guidance need a class-conditional model: --ckpt of a run trained --conditional, or --data with class labels (branches, digits); data set {o.data_name!r} has none")
    num_classes = int(labels.max()) + 1 if conditional else 0
    denoiser = IdealDenoiser(reference.to(torch.float64), labels=labels, num_classes=num_classes) if conditional else IdealDenoiser(reference.to(torch.float64))
    source = f"the exact {'class-conditional ' if conditional else ''}denoiser of {o.data_name}"
    return SamplingModel(denoiser, f, tuple(reference.shape[1:]), num_classes, source, reference=reference, name=f"exact {o.data_name}")


# ---------------------------------------------------------------------------
# Sampler settings.


def sampler_settings(o: SampleOptions, model: SamplingModel) -> SamplerSettings:
    """--sampler for the model's formulation (its solver and steps unless given), checked before any work."""
    settings = o.sampler.resolved(model.formulation)
    samplers.get(settings.solver).check_options(settings.options)
    # The time steps carry every range check; explicit levels (FILE.json) set N.
    t = samplers.time_steps(settings.formulation, settings.num_steps, settings.discretization, settings.sigma_min, settings.sigma_max, rho=settings.rho)
    data_mean = None
    if settings.analytic_first_step:  # D(x; sigma -> inf) is the mean of the data the model learned
        config = model.config
        training = model.reference if config is None else data.load(config.data, n=config.data_size, seed=config.seed)
        data_mean = training.to(torch.float64).mean(dim=0)
    return dataclasses.replace(settings, num_steps=len(t) - 1, data_mean=data_mean, options=dict(settings.options))


def check_guidance_levels(o: SampleOptions, settings: SamplerSettings, warn: Callable[[str], None]) -> None:
    """Warn when --guidance-interval contains none of the noise levels the sampler evaluates: it would guide nothing."""
    interval = parse_interval(o.guidance_interval)
    if interval is None or o.guidance_weight is None:
        return
    f = settings.formulation
    t = samplers.time_steps(f, settings.num_steps, settings.discretization, settings.sigma_min, settings.sigma_max, rho=settings.rho)
    levels = [float(s) for s in f.sigma(t[:-1])]
    lo, hi = interval
    if not any(lo < s <= hi for s in levels):
        warn(f"--guidance-interval {o.guidance_interval} contains none of the sampler's noise levels "
             f"({levels[-1]:.4g} .. {levels[0]:.4g}), so the guidance would guide nothing: these samples are unguided")


def check_fitted_levels(o: SampleOptions, settings: SamplerSettings, warn: Callable[[str], None]) -> None:
    """Warn when --discretization FILE.json was fitted (edm-space optimize-steps) for another solver or NFE."""
    if not (isinstance(settings.discretization, str) and settings.discretization.endswith(".json")):
        return
    fitted = read_json(settings.discretization, "sigma levels file")
    nfe = samplers.get(settings.solver).nfe(settings.num_steps) - (1 if settings.analytic_first_step else 0)
    solver, fitted_nfe = fitted.get("solver"), fitted.get("nfe")
    if (solver is not None and solver != settings.solver) or (fitted_nfe is not None and fitted_nfe != nfe):
        warn(f"--discretization {settings.discretization} was fitted for {solver} at {fitted_nfe} NFE; "
             f"it is used here with {settings.solver} at {nfe} NFE, where it is not optimal")


def _labels_and_guidance(o: SampleOptions, model: SamplingModel, seeds: List[int]) -> Tuple[Optional[torch.Tensor], Optional[Guidance]]:
    """One-hot labels of the seeds (a conditional model) and the guidance, from --class, --guidance and --guide."""
    if o.class_label is not None and not 0 <= o.class_label < max(model.num_classes, 1):
        raise ConfigError(f"--class {o.class_label} is invalid; the model knows classes 0..{model.num_classes - 1}")
    labels = class_labels(seeds, model.num_classes, o.class_label) if model.num_classes else None
    guidance = None
    if o.guidance_weight is not None and (labels is not None or model.guide is not None):
        guidance = Guidance(o.guidance_weight, guide=model.guide, interval=parse_interval(o.guidance_interval))
    return labels, guidance


# ---------------------------------------------------------------------------
# The command.


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def sample_to_file(o: SampleOptions, echo: Callable[[str], None] = print, warn: Callable[[str], None] = _warn) -> Optional[Generated]:
    """Check the options, sample, write --out (rank 0 under torchrun) and echo one line; returns the samples."""
    check_options(o)
    seeds = seed_list(o)
    device = devices.resolve_device(o.device) if o.run_dir is not None else torch.device("cpu")  # exact denoisers run on the CPU
    devices.check_precision(o.precision, device)
    model = open_run(o, device) if o.run_dir is not None else open_exact(o)
    settings = sampler_settings(o, model)
    check_guidance_levels(o, settings, warn)
    check_fitted_levels(o, settings, warn)
    labels, guidance = _labels_and_guidance(o, model, seeds)
    if o.compile_network:
        probe_compiled(model, settings, labels, device)
    result_bytes = len(seeds) * math.prod(model.item_shape) * 8
    if result_bytes > MAX_RESULT_BYTES:
        raise ConfigError(f"{len(seeds):,} samples of shape {list(model.item_shape)} need {result_bytes / 2**30:.1f} GiB; at most {MAX_RESULT_BYTES / 2**30:.0f} GiB: sample fewer per command")
    rank, world = distributed_context()
    recorder = TrajectoryRecorder() if o.trajectory else None
    try:
        generated = generate(model.denoiser, seeds, model.item_shape, settings, batch_size=o.batch_size, labels=labels,
                             guidance=guidance, decode=model.decode, device=device, progress=o.progress, callback=recorder)
    finally:
        if world > 1:  # no collective follows; a process must not exit with the group alive
            torch.distributed.destroy_process_group()
    if rank != 0:
        return None
    what = f"{settings.formulation.name} + {settings.solver}, {settings.num_steps} steps"
    check_finite(generated, what, guidance)
    written = write_outputs(o.out_path, generated, model, recorder, caption(o, model, settings, generated, guidance))
    echo(summary_line(generated, model, what, guidance, written))
    return generated


def probe_compiled(model: SamplingModel, settings: SamplerSettings, labels: Optional[torch.Tensor], device: torch.device) -> None:
    """One call of the compiled network before sampling: a compiler that fails becomes one line (as train --compile)."""
    x = torch.zeros((1, *model.item_shape), dtype=torch.float64, device=device)
    sigma = torch.ones(1, dtype=torch.float64, device=device)
    try:
        with torch.no_grad():
            model.denoiser(x, sigma, None if labels is None else labels[:1].to(device))
    except Exception as error:  # noqa: BLE001 - torch.compile compiles at the first call
        if isinstance(error, ConfigError):
            raise
        raise devices.compile_error(error) from None


def caption(o: SampleOptions, model: SamplingModel, settings: SamplerSettings, generated: Generated, guidance: Optional[Guidance]) -> str:
    """A picture's caption: run and step, preset, solver, NFE, class and guidance weight."""
    parts = [f"{len(generated.seeds)} samples of {model.name}", f"{settings.formulation.name} + {settings.solver}, {generated.nfe} NFE"]
    if model.num_classes:
        parts.append(f"class {o.class_label}" if o.class_label is not None else f"class = seed mod {model.num_classes}")
    if guidance is not None:
        parts.append(f"w = {guidance.weight:g}")
    return ", ".join(parts)


def write_outputs(out_path: str, generated: Generated, model: SamplingModel, recorder: Optional[TrajectoryRecorder],
                  picture_caption: Optional[str] = None) -> List[str]:
    """--out (and the trajectory files), staged and replaced together."""
    stem = os.path.splitext(out_path)[0] + "_trajectory"
    more = None if recorder is None else (lambda stage: write_trajectory(stage, stem, recorder, model.decode))
    return write_sample_files(out_path, generated.samples.numpy(), generated.seeds, model.reference, picture_caption, more)


def summary_line(generated: Generated, model: SamplingModel, what: str, guidance: Optional[Guidance], written: List[str]) -> str:
    """'N samples of SOURCE with PRESET + SOLVER, S steps, COST -> FILES'."""
    cost = f"{generated.nfe} denoiser evaluations"
    if guidance is not None:
        kind = "classifier-free" if guidance.guide is None else "autoguidance"
        cost += (f" of the guided denoiser (w = {guidance.weight:g}, {kind}): {generated.forward_passes} network forward passes"
                 f" of {generated.rows} rows in all")
    processes = f" over {generated.processes} processes" if generated.processes > 1 else ""
    return f"{len(generated.seeds)} samples of {model.source} with {what}, {cost}{processes} -> {', '.join(written)}"


def write_trajectory(stage: StagedOutputs, stem: str, recorder: TrajectoryRecorder, decode=None) -> List[str]:
    """STEM.npz (t, sigma, x, denoised stacked over steps) and, for points or images, STEM.png (a latent
    model's denoised estimates decoded to images)."""
    arrays = recorder.arrays()
    save_npz_atomic(stage.path(stem + ".npz"), arrays)
    written = [stem + ".npz"]
    denoised = arrays["denoised"]
    if decode is not None:
        steps, batch = denoised.shape[:2]
        decoded = decode(torch.from_numpy(denoised.reshape(steps * batch, *denoised.shape[2:])))
        denoised = decoded.numpy().reshape(steps, batch, *decoded.shape[1:])
    if (denoised.ndim == 3 and denoised.shape[2] == 2) or (denoised.ndim == 5 and denoised.shape[2] in (1, 3)):
        trajectory_png(stage.path(stem + ".png"), arrays["sigma"], np.clip(denoised, -1, 1) if denoised.ndim == 5 else denoised)
        written.append(stem + ".png")
    return written
