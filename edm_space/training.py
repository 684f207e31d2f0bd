"""The training loop: any network under any preset's loss (EDM eq. 8), with EMA, checkpoints and resume.

    from edm_space.training import TrainConfig, train
    train(TrainConfig(preset="edm", data="moons", net="mlp", steps=2000, out="runs/moons"))

Randomness is drawn per step from a generator seeded by (seed, step): the global
batch's data indices, noise levels and noise. Resuming therefore needs no random
state beyond the step counter, and under torch.distributed each of K processes
takes its slice of the same global batch, so the result does not depend on K.

A run directory holds config.json, checkpoints/checkpoint-STEP.pt (written to a
temporary file, then renamed; loaded with weights_only=True) and log.jsonl.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .errors import ConfigError

CHECKPOINT_FORMAT = "edm-space-checkpoint"
CHECKPOINT_VERSION = 1
# Edges of the sigma buckets in which log.jsonl reports the loss (EDM Fig. 5 style).
SIGMA_BUCKETS = (0.0, 0.01, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, math.inf)


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored as the run's config.json."""

    preset: str = "edm"
    data: str = "moons"
    out: str = "runs/run"
    net: str = "mlp"
    net_options: Dict[str, Any] = field(default_factory=dict)
    preset_options: Dict[str, Any] = field(default_factory=dict)
    data_size: Optional[int] = None
    steps: int = 2000
    batch: int = 256
    lr: float = 2e-3
    warmup_images: int = 20_000
    grad_clip: float = 1.0
    ema_halflife_images: float = 50_000.0
    ema_rampup_ratio: Optional[float] = 0.05
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    conditional: bool = False
    sigma_data: Optional[float] = None
    item_shape: Optional[List[int]] = None
    num_classes: int = 0

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown_keys = sorted(set(payload) - known)
        if unknown_keys:
            raise ConfigError(f"config.json has unknown fields {unknown_keys}; was it written by another tool?")
        return cls(**payload)


# Settings a resumed run may change.
RESUMABLE = ("steps", "checkpoint_every", "log_every", "keep_checkpoints")


class TrainingDiverged(ConfigError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------
# Building the pieces of a run.


def build_formulation(config: TrainConfig):
    """The run's Formulation; edm's sigma_data follows the data when the config gives one."""
    import presets

    options = dict(config.preset_options)
    if config.preset == "edm" and config.sigma_data is not None and "sigma_data" not in options:
        options["sigma_data"] = config.sigma_data
    return presets.get(config.preset, **options)


def build_network(config: TrainConfig, item_shape, num_classes: int = 0) -> nn.Module:
    """The run's raw network F for items of `item_shape`."""
    from . import networks

    options = dict(config.net_options)
    if config.conditional:
        options["label_dim"] = num_classes
    return networks.build(config.net, item_shape, **options)


def load_training_data(config: TrainConfig) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The training set (float32) and its labels (or None)."""
    from .data import load

    x, labels = load(config.data, n=config.data_size, seed=config.seed, with_labels=True)
    if config.conditional and labels is None:
        raise ConfigError(f"--conditional needs class labels; data set {config.data!r} has none")
    return x, labels


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step's draws, a function of (seed, step) alone."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (1 << 63))


def sigma_bucket(sigma: torch.Tensor) -> torch.Tensor:
    """Index of each sigma's bucket among SIGMA_BUCKETS."""
    edges = torch.tensor(SIGMA_BUCKETS[1:-1], dtype=sigma.dtype)
    return torch.bucketize(sigma, edges)


def bucket_labels() -> List[str]:
    edges = SIGMA_BUCKETS
    return [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(len(edges) - 1)]


# ---------------------------------------------------------------------------
# Checkpoints.


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def list_checkpoints(run_dir: str) -> List[Tuple[int, str]]:
    """(step, path) of the run's checkpoints, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = re.fullmatch(r"checkpoint-(\d+)\.pt", name)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(found)


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename: never a half-written checkpoint."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint without executing code (weights_only=True) and check it is ours."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # torch.load does not check the CRCs torch.save writes
        if damaged is not None:
            raise ConfigError(f"{path!r} is corrupt: the CRC of its record {damaged!r} does not match")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path!r} does not exist") from None
    except Exception as error:  # truncated zip, foreign pickle, ...: never executed, always refused
        reason = " ".join(str(error).split())[:160]
        raise ConfigError(f"{path!r} is not a readable edm-space checkpoint ({type(error).__name__}: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path!r} is not an edm-space checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path!r} has checkpoint version {state.get('version')!r}; this edm-space reads version {CHECKPOINT_VERSION}")
    return state


def read_run_config(run_dir: str) -> TrainConfig:
    """The TrainConfig stored in a run directory."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{run_dir!r} is not a run directory (no config.json)")
    try:
        with open(path) as file:
            payload = json.load(file)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {path!r}: {error}") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"{path!r} does not hold a training config")
    return TrainConfig.from_json(payload)


def latest_checkpoint(run_dir: str) -> Optional[Tuple[int, Dict[str, Any]]]:
    """(step, state) of the newest checkpoint of the run, or None."""
    found = list_checkpoints(run_dir)
    if not found:
        return None
    step, path = found[-1]
    return step, load_checkpoint(path)


# ---------------------------------------------------------------------------
# Distributed helpers (torchrun sets RANK / WORLD_SIZE).


def _distributed() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ---------------------------------------------------------------------------
# The loop.


def ema_beta(config: TrainConfig, images_seen: int) -> float:
    """EMA decay per step from a half-life in images, with EDM's ramp-up (EDM training_loop.py, App. F)."""
    halflife = config.ema_halflife_images
    if config.ema_rampup_ratio is not None:
        halflife = min(halflife, images_seen * config.ema_rampup_ratio)
    return 0.5 ** (config.batch / max(halflife, 1e-8))


def check_config(config: TrainConfig) -> None:
    """Refuse impossible settings before any work."""
    for name in ("steps", "batch", "checkpoint_every", "log_every", "keep_checkpoints"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} = {value!r} is invalid; it must be an integer >= 1")
    for name in ("lr", "grad_clip", "ema_halflife_images"):
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} = {value!r} is invalid; it must be a positive number")
    if config.warmup_images < 0:
        raise ConfigError(f"warmup_images = {config.warmup_images!r} is invalid; it must be >= 0")


def make_optimizer(net: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam with one fused kernel over all weights where the device has it, else the multi-tensor (foreach) path.

    Same update rule either way; the fused step saves about a tenth of a small MLP's step time on CPU
    (benchmarks/speed.py).
    """
    try:
        return torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)


def train(config: TrainConfig, progress: bool = True, resume: bool = True) -> Dict[str, Any]:
    """Train (or resume) the run in config.out; returns a summary dict. Safe under torchrun."""
    check_config(config)
    rank, world = _distributed()
    if config.batch % world:
        raise ConfigError(f"batch = {config.batch} must divide by the number of processes ({world})")
    run_dir = config.out

    # A run directory keeps its configuration: resuming with other settings is refused.
    stored = None
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        stored = read_run_config(run_dir)
        if stored.preset != config.preset:
            raise ConfigError(f"run directory {run_dir!r} holds a {stored.preset!r} run; it cannot continue as {config.preset!r}")
        derived = ("sigma_data", "item_shape", "num_classes")
        differing = [k for k, v in config.to_json().items() if k not in RESUMABLE + derived + ("out",) and stored.to_json()[k] != v and v is not None]
        if differing:
            raise ConfigError(f"run directory {run_dir!r} was made with other settings ({', '.join(differing)}); use a new --out")
        if not resume:
            raise ConfigError(f"run directory {run_dir!r} exists; remove it or resume")
        config = dataclasses.replace(stored, out=config.out, **{k: getattr(config, k) for k in RESUMABLE})

    x_data, labels = load_training_data(config)
    if config.sigma_data is None:
        from .data import estimate_sigma_data

        config = dataclasses.replace(config, sigma_data=round(estimate_sigma_data(x_data), 6))
    num_classes = int(labels.max()) + 1 if labels is not None else 0
    config = dataclasses.replace(config, item_shape=list(x_data.shape[1:]), num_classes=num_classes)
    formulation = build_formulation(config)
    torch.manual_seed(config.seed)  # weight initialisation
    net = build_network(config, tuple(x_data.shape[1:]), num_classes)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = make_optimizer(net, config.lr)

    start_step = 0
    found = latest_checkpoint(run_dir) if resume else None
    if found is not None:
        start_step, state = found
        try:
            net.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise ConfigError(f"checkpoint of step {start_step} in {run_dir!r} does not fit this network ({type(error).__name__})") from None

    if rank == 0:
        os.makedirs(checkpoint_dir(run_dir), exist_ok=True)
        if stored is None:
            from .files import write_atomic

            write_atomic(os.path.join(run_dir, "config.json"), (json.dumps(config.to_json(), indent=2) + "\n").encode())

    ema_params, net_params = list(ema.parameters()), [p.detach() for p in net.parameters()]
    model = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(net)
    local = config.batch // world
    lo = rank * local
    buckets = bucket_labels()
    log_path = os.path.join(run_dir, "log.jsonl")
    if rank == 0 and os.path.exists(log_path):
        # A crashed run may have logged steps past its last checkpoint; they are about to be redone.
        from .files import write_atomic

        with open(log_path) as file:
            kept = [line.rstrip("\n") + "\n" for line in file if line.strip() and _logged_step(line) <= start_step]
        write_atomic(log_path, "".join(kept).encode())

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start_step, desc=f"train {config.preset} on {config.data}", unit="step", dynamic_ncols=True)

    last_good = list_checkpoints(run_dir)[-1][1] if list_checkpoints(run_dir) else None
    bucket_sum = torch.zeros(len(buckets), dtype=torch.float64)
    bucket_count = torch.zeros(len(buckets), dtype=torch.float64)
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    step = start_step
    try:
        for step in range(start_step, config.steps):
            # One generator per step draws the whole global batch; this process takes its slice.
            generator = step_generator(config.seed, step)
            index = torch.randint(len(x_data), (config.batch,), generator=generator)
            sigma = formulation.sample_training_sigma(config.batch, generator)
            noise = torch.randn((config.batch, *x_data.shape[1:]), generator=generator)
            part = slice(lo, lo + local)
            x0 = x_data[index[part]]
            batch_labels = None
            if config.conditional:
                batch_labels = nn.functional.one_hot(labels[index[part]], num_classes).float()
            network = (lambda x, c: model(x, c, batch_labels)) if config.conditional else model
            per_example = formulation.loss(network, x0, sigma=sigma[part], noise=noise[part])
            loss = per_example.mean()

            images_seen = (step + 1) * config.batch
            for group in optimizer.param_groups:
                group["lr"] = config.lr * (min(images_seen / config.warmup_images, 1.0) if config.warmup_images else 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            global_loss = loss.detach().clone()
            if world > 1:
                torch.distributed.all_reduce(global_loss)
                global_loss /= world
            if not torch.isfinite(global_loss):
                where = f"; the last good checkpoint is {last_good}" if last_good else "; no checkpoint was written yet"
                raise TrainingDiverged(f"training loss became {float(global_loss)} at step {step}{where}")
            grad_norm = nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip, foreach=True)
            if not torch.isfinite(grad_norm):
                where = f"; the last good checkpoint is {last_good}" if last_good else "; no checkpoint was written yet"
                raise TrainingDiverged(f"gradient norm became {float(grad_norm)} at step {step}{where}")
            optimizer.step()
            with torch.no_grad():
                beta = ema_beta(config, images_seen)
                # EDM's ema <- net + beta (ema - net), as one fused pass over all tensors.
                torch._foreach_lerp_(ema_params, net_params, 1.0 - beta)

            # Logging: mean loss and loss per sigma bucket since the last entry (this process's slice).
            with torch.no_grad():
                which = sigma_bucket(sigma[part])
                bucket_sum.index_add_(0, which, per_example.detach().to(torch.float64))
                bucket_count.index_add_(0, which, torch.ones_like(which, dtype=torch.float64))
            window_loss += float(global_loss)
            window_steps += 1
            done = step + 1
            if bar is not None:
                bar.update(1)
            if done % config.log_every == 0 or done == config.steps:
                elapsed = time.perf_counter() - window_start
                entry = {
                    "step": done,
                    "images": done * config.batch,
                    "loss": window_loss / window_steps,
                    "lr": optimizer.param_groups[0]["lr"],
                    "images_per_s": window_steps * config.batch / max(elapsed, 1e-9),
                    "loss_by_sigma": {b: (float(s / c) if c else None) for b, s, c in zip(buckets, bucket_sum, bucket_count)},
                }
                if bar is not None:
                    bar.set_postfix(loss=f"{entry['loss']:.4f}", img_s=f"{entry['images_per_s']:.0f}")
                if rank == 0:
                    with open(log_path, "a") as file:
                        file.write(json.dumps(entry) + "\n")
                bucket_sum.zero_()
                bucket_count.zero_()
                window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            if done % config.checkpoint_every == 0 or done == config.steps:
                if rank == 0:
                    last_good = _write_checkpoint(run_dir, done, net, ema, optimizer, config)
                if world > 1:
                    torch.distributed.barrier()
    finally:
        if bar is not None:
            bar.close()
    return {"run_dir": run_dir, "steps": config.steps, "start_step": start_step, "sigma_data": config.sigma_data, "checkpoint": last_good}


def _logged_step(line: str) -> float:
    """The step of one log.jsonl line; a line cut off by a crash counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _write_checkpoint(run_dir: str, step: int, net: nn.Module, ema: nn.Module, optimizer, config: TrainConfig) -> str:
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        "model": net.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": json.dumps(config.to_json()),
    }
    path = os.path.join(checkpoint_dir(run_dir), f"checkpoint-{step:08d}.pt")
    save_checkpoint(path, state)
    for _, old in list_checkpoints(run_dir)[: -config.keep_checkpoints]:
        os.unlink(old)
    return path


# ---------------------------------------------------------------------------
# Loading a trained model for sampling.


def load_trained(run_dir: str, ema: bool = True):
    """(Denoiser, config, item_shape, num_classes) from a run directory's newest checkpoint."""
    from .denoiser import Denoiser

    config = read_run_config(run_dir)
    found = latest_checkpoint(run_dir)
    if found is None:
        raise ConfigError(f"run directory {run_dir!r} has no checkpoint yet")
    step, state = found
    stored = json.loads(state.get("config", "{}"))
    if stored.get("preset") != config.preset:
        raise ConfigError(f"checkpoint in {run_dir!r} was trained as {stored.get('preset')!r}, but config.json says {config.preset!r}")
    config = TrainConfig.from_json(stored)
    key = "ema" if ema else "model"
    weights = state.get(key)
    if not isinstance(weights, dict):
        raise ConfigError(f"checkpoint of step {step} in {run_dir!r} has no {key!r} weights; it is damaged")
    if config.item_shape is None:
        raise ConfigError(f"checkpoint in {run_dir!r} does not record its item shape")
    item_shape, num_classes = tuple(config.item_shape), config.num_classes
    net = build_network(config, item_shape, num_classes)
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        raise ConfigError(f"checkpoint in {run_dir!r} does not fit a {config.net!r} network ({' '.join(str(error).split())[:120]})") from None
    net.eval().requires_grad_(False)
    return Denoiser(net, build_formulation(config)), config, item_shape, num_classes, step


def read_log(run_dir: str) -> List[Dict[str, Any]]:
    """The entries of a run's log.jsonl."""
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]

