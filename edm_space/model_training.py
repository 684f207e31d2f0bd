"""Training, resuming, evaluating and sampling the models that are not diffusion networks: the generative
families (edm_space.families: nice, gan, pixelcnn, vae) and the autoencoders (edm_space.autoencoders: kl, vq).

    from edm_space.model_training import ModelConfig, train_model, load_model
    train_model(ModelConfig(kind="autoencoder", name="kl", data="mnist", out="runs/ae", steps=2000))
    model, run, step = load_model("runs/ae")

A run directory is the one of diffusion training (edm_space.rundir): config.json (a ModelConfig,
told from a diffusion run by its field "kind"), record.json (edm_space.run_record: item shape, held-out
count, parameters, step reached), checkpoints/checkpoint-STEP.pt (the model, every
optimizer's state and the step, written atomically, loaded with weights_only=True) and log.jsonl.
One process at a time trains in it (rundir.RunLock). A checkpoint counts as good once the loss of
the next step is finite: the run is a task (ModelTask) of edm_space.engine, the loop diffusion shares.

Randomness. Step s draws everything from training's step generator of (seed, s): first the
batch's data indices, then, through the same generator handed to the model's step, its latents,
dequantization noise, posterior draws and codebook restarts. The weights are initialised under
torch.manual_seed(seed) in a forked RNG state. So a run resumed from a checkpoint continues
bit-exactly, and the caller's global RNG is left alone.

Data split. The data set is loaded whole (an image set or file: all its items; a toy set: its
default 10,000 points of the run's seed). `held_out` items (default: a tenth) are set aside by a
permutation of a fixed seed (HOLDOUT_SEED), the same for every run of the data set; the model
trains on the rest, or on `data_size` items drawn from the rest with the run's seed. Evaluation
scores only held-out items (split_indices has the exact rule).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import autoencoders, devices, engine, families
from .data import load
from .outputs import write_sample_files
from .errors import ConfigError, unknown
from .families.base import optimize
from .families.vae import generator_on, prior_samples
from .files import check_writable_file, read_json
from .devices import make_optimizer
from .registry import Registry
from .run_record import Run, RunRecord, read_record, record_of_state, split_payload
from .distributed import average_gradients_before_step, distributed_context, mean_over_processes
from .rundir import (
    config_from_json,
    read_run_payload,
    MAX_BATCH,
    MAX_STEPS,
    RESUMABLE,
    training_run,
    find_checkpoint,
    list_checkpoints,
)
from .seeding import step_generator

__all__ = [
    "ModelConfig", "KINDS", "train_model", "load_model", "autoencoder_checksum", "evaluate_autoencoder",
    "sample_model", "is_model_run", "read_model_config", "read_model_run", "resolve_model_config", "split_indices",
    "load_split", "training_items", "default_lr",
]

KINDS = ("family", "autoencoder")
# Seed of the permutation that sets the held-out items aside: fixed, so every run of a data set holds out the same items.
HOLDOUT_SEED = 20_240_601
# Settings that fix the model's tensors (item_shape from the run's record): a checkpoint must agree with its run on them.
MODEL_KEYS = ("kind", "name", "options", "item_shape")
# Facts derived from the data when a run starts (its record): the held-out count (held_out is an option too) and the item shape.
DERIVED = ("held_out", "item_shape")
# Adam's learning rate when none is given: DCGAN's 2e-4 for the GAN (Radford et al. 2016, Sec. 4), else 1e-3.
DEFAULT_LR = {("family", "gan"): 2e-4}
FALLBACK_LR = 1e-3
MAX_SAMPLES = 10**7
# Posterior draws of the IWAE bound per item: far past where the bound stops moving (Burda et al. 2016 use 5000).
MAX_IWAE_SAMPLES = 10_000


@dataclass
class ModelConfig:
    """The options of the training run of a family or an autoencoder, as given; stored as config.json (what the run
    derives, such as the item shape and the held-out count it used, is its record: edm_space.run_record)."""

    kind: str = "family"
    name: str = "nice"
    options: Dict[str, Any] = field(default_factory=dict)
    data: str = "mnist"
    out: str = "runs/model"
    data_size: Optional[int] = None
    held_out: Optional[int] = None
    steps: int = 2000
    batch: int = 64
    lr: float = FALLBACK_LR
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: Dict[str, Any]) -> "ModelConfig":
        """The options of a config.json payload (a stored run's); the derived facts an older one holds are left to
        its record, and an option whose default changed after the run was written takes the value it was trained with."""
        config = config_from_json(cls, split_payload(payload, keep=("held_out",))[0])
        return with_recorded_options(config, recorded_options(config, False))

    def describe(self) -> str:
        """'family nice' / 'autoencoder kl'."""
        return f"{self.kind} {self.name!r}"


def model_registry(kind: str) -> Registry:
    """The registry of a run's kind of model: the families, or the autoencoders."""
    return families.FAMILIES if kind == "family" else autoencoders.AUTOENCODERS


def recorded_options(config: ModelConfig, new_run: bool) -> Dict[str, Any]:
    """The options of the run's model whose default changed after runs were trained with the old one
    (Registry.recorded_defaults), with the value of a new run or of a stored run that does not record them."""
    return model_registry(config.kind).recorded_defaults(config.name, new_run)


def with_recorded_options(config: ModelConfig, values: Dict[str, Any]) -> ModelConfig:
    """`config` with every option of recorded_options that it lacks taken from `values` (the user's own are kept)."""
    if not isinstance(config.options, dict):
        return config
    options = model_registry(config.kind).with_recorded(config.name, config.options, values)
    return config if options == config.options else dataclasses.replace(config, options=options)


def default_lr(kind: str, name: str) -> float:
    """The learning rate a run of `kind` `name` gets when none is given."""
    return DEFAULT_LR.get((kind, name), FALLBACK_LR)


# ---------------------------------------------------------------------------
# Run configuration.


def is_model_run(run_dir: str) -> bool:
    """Whether `run_dir` (a run directory or one of its checkpoint files) holds a ModelConfig run."""
    if os.path.isfile(run_dir):
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(run_dir)))
    path = os.path.join(run_dir, "config.json")
    return os.path.isfile(path) and "kind" in read_json(path, "run config")


def read_model_run(run_dir: str) -> Run:
    """The family or autoencoder run in a run directory: its options (config.json) and record (record.json, or for a run
    written before records the facts its config.json holds); a diffusion run or no run is refused in one line."""
    payload = read_run_payload(run_dir, KINDS, "this needs a family or autoencoder run")
    return Run(ModelConfig.from_json(payload), read_record(run_dir, payload))


def read_model_config(run_dir: str) -> ModelConfig:
    """The ModelConfig stored in a run directory (the options given); a diffusion run or no run is refused in one line."""
    return read_model_run(run_dir).config


def resolve_model_config(out: str, given: Dict[str, Any], explicit: Iterable[str]) -> ModelConfig:
    """The configuration to train with: `given` for a new run; when `out` holds a run, its stored
    settings for every key not in `explicit` (the settings the user actually gave)."""
    return engine.resolve_run_config(ModelConfig, read_model_config, out, given, explicit)


def _check_positive_int(name: str, value: Any, low: int = 1, high: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" + (f" and <= {high:,}" if high is not None else "")
        raise ConfigError(f"{name} = {value!r} is invalid; it must be {bound}")


def check_model_config(config: ModelConfig) -> None:
    """Refuse impossible settings before any work."""
    if config.kind not in KINDS:
        raise unknown("model kind", config.kind, KINDS)
    valid = families.names() if config.kind == "family" else autoencoders.names()
    if config.name not in valid:
        raise unknown(config.kind, config.name, valid)
    if not isinstance(config.options, dict):
        raise ConfigError(f"options = {config.options!r} is invalid; it must be a dict of the model's arguments")
    (families if config.kind == "family" else autoencoders).check_options(config.name, config.options)
    _check_positive_int("steps", config.steps, high=MAX_STEPS)
    _check_positive_int("batch", config.batch, high=MAX_BATCH)
    for name in ("checkpoint_every", "log_every", "keep_checkpoints"):
        _check_positive_int(name, getattr(config, name))
    _check_positive_int("seed", config.seed, low=0)
    if config.data_size is not None:
        _check_positive_int("data_size", config.data_size)
    if config.held_out is not None:
        _check_positive_int("held_out", config.held_out, low=0)
    if isinstance(config.lr, bool) or not (isinstance(config.lr, (int, float)) and config.lr > 0 and math.isfinite(config.lr)):
        raise ConfigError(f"lr = {config.lr!r} is invalid; it must be a positive number")


def _check_resumable(stored: Run, config: ModelConfig) -> None:
    """A run directory keeps its configuration: continuing it with other settings is refused. A held_out given is
    compared with the count the run used (its record's)."""
    run_dir = config.out
    if (stored.kind, stored.name) != (config.kind, config.name):
        raise ConfigError(f"run directory {run_dir!r} holds the {stored.describe()} run; it cannot continue as {config.describe()}")
    differing = [
        key for key, value in config.to_json().items()
        if key not in RESUMABLE + DERIVED + ("out",) and stored.to_json()[key] != value
    ]
    differing += [key for key in DERIVED if getattr(config, key, None) is not None and getattr(config, key) != getattr(stored, key)]
    if differing:
        raise ConfigError(f"run directory {run_dir!r} was made with other settings ({', '.join(differing)}); use a new --out")


# ---------------------------------------------------------------------------
# Data and models.


def split_indices(num_items: int, held_out: int, data_size: Optional[int], seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices), each sorted, of a data set of `num_items` items.

    held-out: the first `held_out` entries of np.random.default_rng(HOLDOUT_SEED).permutation(num_items);
    training: the other items, or, with `data_size`, the first `data_size` entries of
    np.random.default_rng(seed).permutation over the other items (in their sorted order).
    """
    if held_out >= num_items:
        raise ConfigError(f"held_out = {held_out} leaves no training item: the data set has {num_items} items")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(num_items)
    held, rest = np.sort(order[:held_out]), np.sort(order[held_out:])
    if data_size is None:
        return rest, held
    if data_size > len(rest):
        raise ConfigError(f"data_size = {data_size} is too many: the data set has {num_items} items, {held_out} of them held out, so at most {len(rest)}")
    return np.sort(rest[np.random.default_rng(seed).permutation(len(rest))[:data_size]]), held


def load_split(config: ModelConfig) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(training items, held-out items, held_out count) of the run's data (see split_indices); `config` may be a Run,
    whose recorded held-out count then holds (None: a tenth of the data set)."""
    x = load(config.data, seed=config.seed)
    held_out = len(x) // 10 if config.held_out is None else config.held_out
    train_index, held_index = split_indices(len(x), held_out, config.data_size, config.seed)
    return x[torch.from_numpy(train_index)], x[torch.from_numpy(held_index)], held_out


def training_items(config: ModelConfig) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(items, labels or None) the run trained on: its data set less the held-out items, as load_split draws them."""
    x, labels = load(config.data, seed=config.seed, with_labels=True)
    held_out = len(x) // 10 if config.held_out is None else config.held_out
    index = torch.from_numpy(split_indices(len(x), held_out, config.data_size, config.seed)[0])
    return x[index], None if labels is None else labels[index]


def build_model(config: ModelConfig, item_shape: Sequence[int]) -> nn.Module:
    """The run's family or autoencoder, its weights initialised from the run's seed (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.kind == "family":
            return families.build(config.name, item_shape, **config.options)
        return autoencoders.build(config.name, item_shape, **config.options)


def build_model_optimizers(model: nn.Module, config: ModelConfig) -> Dict[str, torch.optim.Optimizer]:
    """A family's optimizers (one Adam per group), or the one Adam of an autoencoder under the name "model"."""
    if config.kind == "family":
        return families.build_optimizers(model, config.lr)
    return {"model": make_optimizer(model, config.lr)}


def model_step(model: nn.Module, kind: str, optimizers: Dict[str, torch.optim.Optimizer], x: torch.Tensor,
               generator: torch.Generator) -> Dict[str, float]:
    """One optimization step on the batch `x`; every random draw comes from `generator`. Returns the logged values.

    A family runs its own train_step; an autoencoder zero_grad / loss(x)["total"].backward() / step
    (a VQ autoencoder's loss also moves its codebook, in training mode).
    """
    if kind == "family":
        return model.train_step(x, optimizers, generator)
    losses = model.loss(x, generator_on(x.device, generator))
    total = optimize(optimizers["model"], losses["total"])
    return {"total": total, **{name: float(value.detach()) for name, value in losses.items() if name != "total"}}


# ---------------------------------------------------------------------------
# The loop.


def train_model(config: ModelConfig, progress: bool = True, device: str = "auto", echo: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Train (or resume) the run in config.out; returns a summary dict.

    `device` (auto | cpu | cuda | cuda:N | mps) holds the model, its optimizer states and the
    training items; every draw is made on the CPU by the step generator. A fresh run that fails
    before its first checkpoint leaves no run directory; a non-finite loss ends the run with one
    line naming the step and the last good checkpoint (TrainingDiverged).
    """
    check_model_config(config)
    rank, world = distributed_context()
    if config.batch % world:
        raise ConfigError(f"batch = {config.batch} must divide by the number of processes ({world})")
    device = devices.resolve_device(device)
    echo = echo or tqdm.write
    run_dir = config.out
    with training_run(run_dir, owner=rank == 0):
        return _train_locked(config, progress, device, echo, rank, world)

def _train_locked(config: ModelConfig, progress: bool, device: torch.device, echo, rank: int, world: int) -> Dict[str, Any]:
    run_dir = config.out
    record = RunRecord()
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        stored = read_model_run(run_dir)
        config = with_recorded_options(config, stored.config.options)  # an option not given is the run's own
        _check_resumable(stored, config)
        config = dataclasses.replace(stored.config, out=config.out, **{key: getattr(config, key) for key in RESUMABLE})
        record = stored.record
    else:
        config = with_recorded_options(config, recorded_options(config, True))
    start_step, state = engine.newest_checkpoint(run_dir, config.steps)

    x_train, _, held_out = load_split(Run(config, record))
    task = ModelTask(config, dataclasses.replace(record, held_out=held_out, item_shape=list(x_train.shape[1:])), x_train, device,
                     rank, world)
    if state is not None:
        _load_states(task.model, task.optimizers, state, f"checkpoint of step {start_step} in {run_dir!r}")
    if start_step < config.steps and rank == 0:
        count = task.record.parameters
        echo(f"{config.describe()}: {count:,} parameters on {device}; {len(x_train):,} training items, {held_out:,} held out")
    cadence = engine.Cadence(config.steps, config.log_every, config.checkpoint_every, config.keep_checkpoints, config.batch)
    engine.run_steps(run_dir, task, start_step, cadence, device, rank, world, progress, desc=f"train {config.name} on {config.data}")
    found = list_checkpoints(run_dir)
    return {"run_dir": run_dir, "steps": config.steps, "start_step": start_step, "checkpoint": found[-1][1] if found else None,
            "held_out": held_out, "training_items": len(x_train)}


class ModelTask:
    """A family or autoencoder run as an engine task (edm_space.engine.Task): the options given (config) and what the
    run derived (record: item shape, held-out count; the parameter count is added here).

    Under torchrun process `rank` of `world` takes the equal part `rank` of each global batch, which is drawn
    by the step's generator as one process draws it; so are the step's other draws (seeding.BatchPartGenerator),
    and every optimizer averages the gradients over the processes before it steps. A model whose step reads
    the whole batch (its split_refusal) is refused in one line.
    """

    def __init__(self, config: ModelConfig, record: RunRecord, x_train: torch.Tensor, device: torch.device, rank: int = 0,
                 world: int = 1):
        self.config, self.rank, self.world = config, rank, world
        self.model = build_model(config, record.item_shape).to(device).train()
        self.record = dataclasses.replace(record, parameters=sum(p.numel() for p in self.model.parameters()))
        reason = self.model.split_refusal(config.batch, world) if world > 1 else None
        if reason:
            raise ConfigError(f"{config.describe()} cannot train in {world} processes: {reason}; run it without torchrun")
        self.optimizers = build_model_optimizers(self.model, config)
        if world > 1:
            for optimizer in self.optimizers.values():
                average_gradients_before_step(optimizer)
        self.x_train = x_train.to(device)  # kept on the device: no copy per step
        self.device = device
        local = config.batch // world
        self.part = slice(rank * local, rank * local + local)

    def _step(self, step: int) -> Dict[str, float]:
        generator = step_generator(self.config.seed, step, self.rank, self.world)
        index = torch.randint(len(self.x_train), (self.config.batch,), generator=generator)[self.part]
        losses = model_step(self.model, self.config.kind, self.optimizers, self.x_train[index.to(self.device)], generator)
        return mean_over_processes(losses) if self.world > 1 else losses

    def train_step(self, step: int, check) -> Dict[str, float]:
        losses = self._step(step)
        for name, value in losses.items():
            check(f"training loss {name!r}", value)
        return losses

    def final_check(self, step: int, check) -> None:
        # The updated weights are dropped: a later resume redoes the step from the checkpoint.
        for name, value in self._step(step).items():
            check(f"training loss of the final weights {name!r}", value)

    def images_seen(self, done: int) -> int:
        return done * self.config.batch

    def log_fields(self, done: int, means: Dict[str, float]) -> Dict[str, Any]:
        return {"losses": means, "lr": self.config.lr}

    def checkpoint_states(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(),
                "optimizers": {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}}


def _load_states(model: nn.Module, optimizers: Optional[Dict[str, torch.optim.Optimizer]], state: Dict[str, Any], what: str) -> None:
    """Weights (and optimizer states) of a checkpoint into the model (and optimizers), or a one-line error."""
    try:
        model.load_state_dict(state["model"])
        for name, optimizer in (optimizers or {}).items():
            optimizer.load_state_dict(state["optimizers"][name])
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        reason = " ".join(str(error).split())[:120]
        raise ConfigError(f"{what} does not fit this model ({type(error).__name__}: {reason}); it does not belong to this run") from None


# ---------------------------------------------------------------------------
# Loading, checksums.


def load_model(run_or_checkpoint: str, step: Optional[int] = None, device: str = "cpu") -> Tuple[nn.Module, Run, int]:
    """(model, run, step) of a run's checkpoint (newest, or that of `step`) or of a checkpoint file; `run` holds the
    checkpoint's options and record (run.kind, run.item_shape, run.held_out, ...).

    The model is in eval mode without gradients, on `device`; checkpoints are read to the CPU first.
    """
    unreadable = "has no readable model config; it is not a family or autoencoder checkpoint"
    _, step, path, config, state, payload = engine.open_checkpoint(run_or_checkpoint, step, read_model_run, unreadable)
    try:
        stored = Run(ModelConfig.from_json(payload), record_of_state(state, payload, f"checkpoint {path!r}"))
    except (TypeError, ValueError):
        raise ConfigError(f"checkpoint {path!r} {unreadable}") from None
    if (stored.kind, stored.name) != (config.kind, config.name):
        raise ConfigError(f"checkpoint {path!r} was trained as {stored.describe()}, but config.json says {config.describe()}; it does not belong to this run")
    differ = engine.differing({key: getattr(config, key) for key in MODEL_KEYS}, stored.facts(("item_shape",)))
    if differ:
        raise ConfigError(f"checkpoint {path!r} was trained with another model than the run's config.json ({', '.join(differ)} differ); it does not belong to this run")
    if stored.item_shape is None:
        raise ConfigError(f"checkpoint {path!r} does not record its item shape")
    model = build_model(stored, stored.item_shape)
    _load_states(model, None, state, f"checkpoint {path!r}")
    model.eval().requires_grad_(False).to(devices.resolve_device(device))
    return model, stored, step


def autoencoder_checksum(run_dir: str, step: Optional[int] = None) -> str:
    """SHA-256 (hex) of the bytes of the autoencoder checkpoint that load_model(run_dir, step) reads."""
    source_dir, _, path = find_checkpoint(run_dir, step)
    config = read_model_config(source_dir)
    if config.kind != "autoencoder":
        raise ConfigError(f"run {run_dir!r} holds the {config.describe()} model, not an autoencoder")
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Evaluation of an autoencoder on held-out items.


@torch.no_grad()
def evaluate_autoencoder(run: str, step: Optional[int] = None, n: int = 1000, iwae_samples: int = 32, batch: int = 250,
                         device: str = "cpu", seed: int = 0) -> Dict[str, Any]:
    """Reconstruction error of an autoencoder run on `n` held-out items drawn with `seed` (all of them, in order, if fewer).

    Returns step, n, mse (mean over every element), psnr = 10 log10(4 / mse) (data in [-1, 1], so
    the peak-to-peak range is 2), the originals and reconstructions (CPU tensors); for a KL
    autoencoder also elbo_bits_per_dim and iwae_bits_per_dim, from its bounds with `iwae_samples`
    posterior draws on uniformly dequantized data (families.bits); for a VQ autoencoder
    codebook_usage (fraction of codes used) and perplexity over the held-out latents (each
    autoencoder's `summarize`), and `details`, those numbers as text. The reconstruction decodes
    the default latents: a KL autoencoder's posterior mean; a VQ one's quantized latents.
    """
    _check_positive_int("--n", n, high=MAX_SAMPLES)
    _check_positive_int("--iwae-samples", iwae_samples, high=MAX_IWAE_SAMPLES)
    model, config, step = load_model(run, step, device)
    if config.kind != "autoencoder":
        raise ConfigError(f"run {run!r} holds the {config.describe()} model, not an autoencoder")
    _, held, _ = load_split(config)
    if not len(held):
        raise ConfigError(f"run {run!r} holds out no items (trained with held_out = 0), so it has nothing to evaluate on")
    # A seeded random subset: data sets may be sorted by class (MNIST is), so the first n would not be representative.
    subset = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed))[:n] if n < len(held) else slice(None)
    originals = held[subset]
    target = devices.resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    reconstructions, squared_error, collected = [], 0.0, {}
    for start in range(0, len(originals), batch):
        x = originals[start:start + batch].to(target)
        x_hat = model.reconstruct(x)  # the default latent mode: a KL posterior mean; a VQ decoder snaps z to the codebook
        squared_error += float(((x_hat.double() - x.double()) ** 2).sum())
        reconstructions.append(x_hat.cpu())
        for name, value in model.held_out_statistics(x, generator, iwae_samples).items():
            collected.setdefault(name, []).append(value.cpu())
    mse = squared_error / originals.numel()
    result: Dict[str, Any] = {
        "step": step, "n": len(originals), "mse": mse, "psnr": 10.0 * math.log10(4.0 / mse) if mse > 0 else math.inf,
        "originals": originals, "reconstructions": torch.cat(reconstructions),
    }
    result.update(model.summarize({name: torch.cat(values) for name, values in collected.items()}, iwae_samples))
    result["details"] = model.describe_evaluation(result)
    return result


# ---------------------------------------------------------------------------
# Sampling.


def _sampler(model: nn.Module, config: ModelConfig, run: str) -> Tuple[Callable[[torch.Generator], torch.Tensor], int]:
    """(draw one sample from a generator, network evaluations per sample) of a loaded run's model."""
    if config.kind == "family":
        return (lambda generator: model.sample(1, generator)), model.evaluations_per_sample
    if model.has_prior:
        return (lambda generator: prior_samples(model, 1, generator)), 1
    raise ConfigError(f"run {run!r} holds the {config.describe()} model, which has no prior to sample; train a generative model on its latents")


@torch.no_grad()
def draw_samples(model: nn.Module, config: ModelConfig, run: str, seeds: Sequence[int]) -> torch.Tensor:
    """Samples of a loaded family run (or a KL autoencoder's prior), float32 on the CPU: sample i drawn
    alone by a torch.Generator seeded with seeds[i], so it depends on its seed only."""
    draw, _ = _sampler(model, config, run)
    return torch.cat([draw(torch.Generator().manual_seed(int(s) % (1 << 63))).to("cpu", torch.float32) for s in seeds])


@torch.no_grad()
def sample_model(run: str, n: Optional[int] = None, seeds: Optional[Sequence[int]] = None, out: str = "samples.npz",
                 step: Optional[int] = None, device: str = "cpu", seed: int = 0) -> Dict[str, Any]:
    """Sample a family run (or a KL autoencoder's prior) and write FILE.npz (samples, seeds) with a PNG beside it, or FILE.png.

    Sample i is drawn by its own torch.Generator seeded with seeds[i] (default: seed .. seed + n - 1,
    n = 64), one sample per call, so it depends on its seed alone; the files replace their targets
    together or not at all. Returns written paths, step, seeds and the network evaluations spent.
    """
    extension = os.path.splitext(out)[1].lower()
    if extension not in (".npz", ".png"):
        raise ConfigError(f"--out {out!r} must end in .npz or .png")
    check_writable_file(out, "--out", missing_folders=True)
    if seeds is None:
        n = 64 if n is None else n
        _check_positive_int("--n", n, high=MAX_SAMPLES)
        _check_positive_int("--seed", seed, low=0)
        seeds = list(range(seed, seed + n))
    elif n is not None and n != len(seeds):
        raise ConfigError(f"--n {n} contradicts the {len(seeds)} seeds given; give one of them")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("no seeds given; give --n N or --seeds like 0-63")
    model, config, step = load_model(run, step, device)
    _, evaluations = _sampler(model, config, run)
    samples = draw_samples(model, config, run, seeds).numpy()
    if not np.isfinite(samples).all():
        raise ConfigError(f"the model of {run!r} (step {step}) produced non-finite samples")
    written = write_sample_files(out, samples, seeds)
    return {"written": written, "step": step, "seeds": seeds, "evaluations": evaluations * len(seeds), "config": config}
