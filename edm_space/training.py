"""Diffusion training: any network under any preset's loss (EDM eq. 8), with EMA, checkpoints and resume.

    from edm_space.training import TrainConfig, train
    train(TrainConfig(preset="edm", data="moons", net="mlp", steps=2000, out="runs/moons"))

Randomness is drawn per step from a generator seeded by (seed, step): the global
batch's data indices, noise levels and noise. Resuming therefore needs no random
state beyond the step counter, and under torch.distributed each of K processes
takes its slice of the same global batch, so the result does not depend on K.

A run directory holds config.json (the options given), record.json (what the run derived: sigma_data,
item shape, classes, a latent run's latent space, parameters, step reached; edm_space.run_record),
checkpoints/checkpoint-STEP.pt (written to a temporary file, then renamed; loaded with weights_only=True)
and log.jsonl. The loop is edm_space.engine's; diffusion plugs into it as DiffusionTask.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

import presets

from . import devices, engine, init_from, latent, lr_schedule, networks, posthoc_ema, run_phases
from .data import TEST_SPLITS, StreamedPNGFolder, estimate_sigma_data, fixed_subset, load, streamed_sigma_data, worker_error
from .denoiser import Denoiser
from .errors import ConfigError
from .distributed import distributed_context
from .seeding import step_generator
from .monitor import EVAL_ITEMS, TrainingMonitor
from .parameterization import Formulation
from .run_record import Run, RunRecord, read_record, record_of_state, split_payload
from .weights import is_weights_run, read_weights_run
from .devices import make_optimizer  # noqa: F401 - benchmarks/speed.py imports it from here
from .rundir import (
    config_from_json,
    read_run_payload,
    MAX_BATCH,
    MAX_STEPS,
    CHECKPOINT_FORMAT,
    TrainingDiverged,
    CHECKPOINT_VERSION,
    training_run,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)

__all__ = [
    "TrainConfig", "TrainingDiverged", "train", "resolve_config", "load_trained", "read_run_config", "read_run", "read_log",
    "list_checkpoints", "load_checkpoint", "latest_checkpoint", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION",
]

# Edges of the sigma buckets in which log.jsonl reports the loss (EDM Fig. 5 style).
SIGMA_BUCKETS = (0.0, 0.01, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, math.inf)


@dataclass
class TrainConfig:
    """The options of a training run, as given; stored as the run's config.json. What the run derives from its data
    (sigma_data, item shape, classes, latent space) is its record (edm_space.run_record), never written in here."""

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
    label_dropout: float = 0.1
    latent: Optional[str] = None
    latent_mode: str = "mean"
    # Post-hoc EMA (edm_space/posthoc_ema.py): relative stds tracked, snapshot cadence in images (None: with checkpoints).
    ema_stds: List[float] = field(default_factory=lambda: list(posthoc_ema.DEFAULT_STDS))
    ema_snapshot_images: Optional[int] = None
    # Learning-rate schedule and optimizer (edm_space/lr_schedule.py).
    lr_schedule: str = "constant"
    lr_ref_images: Optional[int] = None
    optimizer: str = "adam"
    weight_decay: float = 0.0
    # Resuming with other settings, starting from another run (edm_space/run_phases.py, edm_space/init_from.py).
    phases: List[Dict[str, Any]] = field(default_factory=list)
    init_from: Optional[str] = None
    init_weights: str = "ema"
    # Watching the run in TensorBoard (edm_space/monitor.py); sample pictures every so many images (None: with checkpoints).
    tensorboard: bool = False
    sample_every_images: Optional[int] = None
    # Held-out loss per sigma bucket in TensorBoard every so many images (None: never).
    eval_every_images: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: Dict[str, Any]) -> "TrainConfig":
        """The options of a config.json payload; the derived facts an older one holds are left out (they are its record)."""
        return config_from_json(cls, split_payload(payload)[0])


# Settings that fix the network's tensors: a checkpoint must agree with its run on them.
NETWORK_KEYS = ("net", "net_options", "conditional", "item_shape", "num_classes")
# Facts a diffusion run derives from its data when it starts (its record; older runs kept them in config.json).
DERIVED = ("sigma_data", "item_shape", "num_classes", "latent_space")





# ---------------------------------------------------------------------------
# Building the pieces of a run.


def build_formulation(config) -> Formulation:
    """The run's Formulation (`config` a Run, or anything with preset, preset_options and sigma_data); a preset with a
    sigma_data constant takes the data's, unless the run's options set it."""
    options = dict(config.preset_options)
    if config.sigma_data is not None and "sigma_data" in presets.parameters(config.preset) and "sigma_data" not in options:
        options["sigma_data"] = config.sigma_data
    return presets.get(config.preset, **options)


def _import_module(module_name: str):
    """importlib.import_module, where a top-level package not on sys.path is also looked for in the working
    directory (the console script does not search it by itself); sys.path is left as it is."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        top = module_name.split(".")[0]
        spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()]) if error.name == top else None
        if spec is None or spec.loader is None:
            raise
    module = importlib.util.module_from_spec(spec)
    sys.modules[top] = module  # an import registers its module, as importlib.import_module would
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[top]
        raise
    return importlib.import_module(module_name)


def import_network_class(path: str) -> type:
    """The class named "package.module:Class" (a user's own network): the module is imported from sys.path or,
    failing that, from the working directory."""
    module_name, _, class_name = path.partition(":")
    try:
        target = _import_module(module_name)
        for part in class_name.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"network {path!r} cannot be imported ({type(error).__name__}: {error}); write it as package.module:Class") from None
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        raise ConfigError(f"network {path!r} is not a torch.nn.Module class")
    return target


def build_network(config: TrainConfig, item_shape, num_classes: int = 0) -> nn.Module:
    """The run's raw network F for items of `item_shape`: a registered name or a user's "package.module:Class".

    A user's class is constructed with the run's net_options, plus item_shape= and label_dim= when its
    constructor takes them; it must follow the network contract forward(x, c_noise, labels=None).
    """
    options = dict(config.net_options)
    if config.conditional:
        options["label_dim"] = num_classes
    if ":" not in config.net:
        return networks.build(config.net, item_shape, **options)
    cls = import_network_class(config.net)
    accepted = inspect.signature(cls).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in accepted.values())
    if "item_shape" in accepted or takes_any:
        options["item_shape"] = tuple(item_shape)
    if "label_dim" in options and "label_dim" not in accepted and not takes_any:
        raise ConfigError(f"network {config.net!r} takes no label_dim; it cannot be trained --conditional")
    try:
        network = cls(**options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"network {config.net!r}: {' '.join(str(error).split())}") from None
    check_network_contract(network, config.net)
    return network


def check_network_contract(network: nn.Module, name: str) -> None:
    """Refuse a network whose forward cannot be called as forward(x, c_noise, labels)."""
    try:
        inspect.signature(network.forward).bind(None, None, None)
    except TypeError:
        raise ConfigError(f"network {name!r}: forward must take (x, c_noise, labels=None), the network contract; it has forward{inspect.signature(network.forward)}") from None


def network_path(network: nn.Module) -> str:
    """The "package.module:Class" under which a run records a user's network instance."""
    cls = type(network)
    return f"{cls.__module__}:{cls.__qualname__}"


def load_training_data(config: TrainConfig) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The training set (float32) and its labels (or None); a latent run without a data set of its own takes
    the items its autoencoder trained on."""
    if latent.takes_autoencoder_data(config):
        x, labels, _ = latent.autoencoder_data(config.latent, config.seed, config.data_size)
    else:
        x, labels = load(config.data, n=config.data_size, seed=config.seed, with_labels=True)
    if config.conditional and labels is None:
        raise ConfigError(f"--conditional needs class labels; data set {config.data!r} has none")
    return x, labels


def monitor_reference(config: TrainConfig) -> Optional[torch.Tensor]:
    """The items of the TensorBoard held-out loss: as `edm-space eval` picks its reference items, the data set's
    test split when it has one (mnist -> mnist-test), else the training set; at most monitor.EVAL_ITEMS of them,
    chosen by a fixed seed. None for a latent run (its loss is not in pixel space)."""
    if config.latent_space is not None:
        return None
    test = TEST_SPLITS.get(config.data) if isinstance(config.data, str) else None
    items = load(test) if test is not None else load_training_data(config)[0]
    return fixed_subset(items, EVAL_ITEMS)


class StepIndices(torch.utils.data.Sampler):
    """The data indices of each step's batch (this process's slice), drawn as the training loop draws them:
    the first draw of step_generator(seed, step). A DataLoader with this batch sampler streams exactly the
    items an in-memory run indexes."""

    def __init__(self, seed: int, steps: Iterable[int], num_items: int, batch: int, part: slice):
        self.seed, self.steps, self.num_items, self.batch, self.part = seed, steps, num_items, batch, part

    def __iter__(self):
        for step in self.steps:
            index = torch.randint(self.num_items, (self.batch,), generator=step_generator(self.seed, step))
            yield index[self.part].tolist()

    def __len__(self) -> int:
        return len(self.steps)


def sigma_bucket(sigma: torch.Tensor) -> torch.Tensor:
    """Index of each sigma's bucket among SIGMA_BUCKETS."""
    edges = torch.tensor(SIGMA_BUCKETS[1:-1], dtype=sigma.dtype)
    return torch.bucketize(sigma, edges)


def bucket_labels() -> List[str]:
    """The names of the sigma buckets, as log.jsonl writes them."""
    edges = SIGMA_BUCKETS
    return [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(len(edges) - 1)]


# ---------------------------------------------------------------------------
# Run configuration: a new run, or resuming one.


def read_run(run_dir: str) -> Run:
    """The diffusion run in a run directory: its options (config.json) and record (record.json, or for a run written
    before records the facts its config.json holds); a family or autoencoder run is refused in one line naming its kind."""
    payload = read_run_payload(run_dir, ("diffusion",), "this needs a diffusion run")
    return Run(TrainConfig.from_json(payload), read_record(run_dir, payload))


def read_run_config(run_dir: str) -> Run:
    """read_run: the run's options, its derived facts (run.sigma_data, ...) read from its record."""
    return read_run(run_dir)


def resolve_config(out: str, given: Dict[str, Any], explicit: Iterable[str]) -> TrainConfig:
    """The configuration to train with: `given` for a new run; when `out` holds a run, its stored settings
    for every key not in `explicit` (the settings the user actually gave)."""
    return engine.resolve_run_config(TrainConfig, read_run_config, out, given, explicit)


def run_config(out: str, given: Dict[str, Any], explicit: Iterable[str], stream_data: bool = False) -> TrainConfig:
    """The configuration `edm-space train` trains with (resolve_config), the network and batch defaulting by the data:
    unet and 64 for images (a latent or streamed run included), mlp and 256 for vectors. A latent run without an
    explicit data set takes its autoencoder's training items (edm_space.latent.takes_autoencoder_data)."""
    given = dict(given)
    if given.get("latent") is not None and "data" not in set(explicit):
        given["data"] = None
    config = resolve_config(out, given, explicit)
    if config.net is None or config.batch is None:
        images = stream_data or config.latent is not None or load(config.data, n=1).ndim == 4
        config = dataclasses.replace(
            config,
            net=("unet" if images else "mlp") if config.net is None else config.net,
            batch=(64 if images else 256) if config.batch is None else config.batch,
        )
    return config


def check_config(config: TrainConfig) -> None:
    """Refuse impossible settings before any work."""
    for name in ("steps", "batch", "checkpoint_every", "log_every", "keep_checkpoints"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} = {value!r} is invalid; it must be an integer >= 1")
    if config.steps > MAX_STEPS:
        raise ConfigError(f"steps = {config.steps} is invalid; at most {MAX_STEPS:,} steps")
    if config.batch > MAX_BATCH:
        raise ConfigError(f"batch = {config.batch} is invalid; at most {MAX_BATCH:,} items per step")
    for name in ("lr", "grad_clip", "ema_halflife_images"):
        value = getattr(config, name)
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ConfigError(f"{name} = {value!r} is invalid; it must be a positive number")
    if not (isinstance(config.warmup_images, int) and config.warmup_images >= 0):
        raise ConfigError(f"warmup_images = {config.warmup_images!r} is invalid; it must be an integer >= 0")
    if isinstance(config.label_dropout, bool) or not (isinstance(config.label_dropout, (int, float)) and 0 <= config.label_dropout < 1):
        raise ConfigError(f"label_dropout = {config.label_dropout!r} is invalid; it must be a number in [0, 1)")
    if config.data_size is not None and (not isinstance(config.data_size, int) or config.data_size < 1):
        raise ConfigError(f"data_size = {config.data_size!r} is invalid; it must be an integer >= 1")
    if not isinstance(config.net, str) or not config.net:
        raise ConfigError(f"net = {config.net!r} is invalid; give a network name ({', '.join(networks.names())}) or package.module:Class")
    if ":" not in config.net:  # a registered network: its options against their declared bounds, before any work
        networks.NETWORKS.check_options(networks.NETWORKS.resolve(config.net), config.net_options, skip=("item_shape",))
    presets.get(config.preset, **config.preset_options)  # validates the preset and its constants
    posthoc_ema.check_settings(config.ema_stds, config.ema_snapshot_images)
    lr_schedule.check_settings(config.lr_schedule, config.lr_ref_images, config.optimizer, config.weight_decay)


def warmup_notice(config: TrainConfig) -> Optional[str]:
    """A line to show when the learning-rate warm-up covers more than half of the run, else None."""
    images = config.steps * config.batch
    if config.warmup_images > images / 2:
        return (f"note: the learning-rate warm-up ({config.warmup_images:,} images) covers "
                f"{min(config.warmup_images / images, 1):.0%} of this run's {images:,} images; --warmup sets it")
    return None


# ---------------------------------------------------------------------------
# The loop.


def ema_beta(config: TrainConfig, images_seen: int) -> float:
    """EMA decay per step from a half-life in images, with EDM's ramp-up (EDM training_loop.py, App. F)."""
    halflife = config.ema_halflife_images
    if config.ema_rampup_ratio is not None:
        halflife = min(halflife, images_seen * config.ema_rampup_ratio)
    return 0.5 ** (config.batch / max(halflife, 1e-8))



def train(config: TrainConfig, progress: bool = True, resume: bool = True, network: Optional[nn.Module] = None,
          echo=None, device: str = "auto", precision: str = "fp32", compile: bool = False, stream_data: bool = False,
          workers: int = 2) -> Dict[str, Any]:
    """Train (or resume) the run in config.out; returns a summary dict. Safe under torchrun.

    `device` (auto | cpu | cuda | cuda:N | mps; auto = CUDA if available, under torchrun the GPU of
    LOCAL_RANK) holds the network, EMA, optimizer state and the data set; every random draw is made
    on the CPU and moved, so the draws do not depend on the device. `precision` (fp32 | bf16 | fp16)
    is the autocast precision of the network's forward and backward; weights, EMA and optimizer
    state stay float32 (fp16 adds loss scaling). `compile` runs the network through torch.compile.
    `stream_data` reads a PNG folder image by image in `workers` DataLoader processes (pinned memory on
    CUDA) instead of holding it in memory; the per-step indices, and hence the run, are the same.

    `network` may be a user's own nn.Module (forward(x, c_noise, labels=None)); the run then records its
    class as "package.module:Class" with config.net_options, so that `edm-space sample --ckpt` can rebuild
    it when that class is importable and constructible from those options. `echo` receives notices
    (default: tqdm.write).
    """
    if network is not None:
        if not isinstance(network, nn.Module):
            raise ConfigError(f"network must be a torch.nn.Module; got {type(network).__name__}")
        config = dataclasses.replace(config, net=network_path(network))
        check_network_contract(network, config.net)
    check_config(config)
    rank, world = distributed_context()
    if config.batch % world:
        raise ConfigError(f"batch = {config.batch} must divide by the number of processes ({world})")
    run_dir = config.out
    echo = echo or tqdm.write

    # Weights are initialised under torch.manual_seed(config.seed); the fork gives the caller's RNG state back afterwards.
    with training_run(run_dir, owner=rank == 0), torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        return _train_locked(config, rank, world, progress, resume, network, echo, device, precision, compile, stream_data, workers)

def _train_locked(config: TrainConfig, rank: int, world: int, progress: bool, resume: bool,
                  network: Optional[nn.Module], echo, device_name: str, precision: str, compile: bool,
                  stream_data: bool, workers: int) -> Dict[str, Any]:
    run_dir = config.out
    device = devices.resolve_device(device_name)
    devices.check_precision(precision, device)
    config, start_step, state, stored_record = _resumed_config(config, resume)
    record, data = _training_data(config, stored_record, rank, stream_data, workers)
    task = DiffusionTask(Run(config, record), data, network, state, start_step, rank, world, device, precision, compile, workers, echo)
    if rank == 0 and start_step < config.steps:
        echo(f"network {config.net}: {task.record.parameters:,} parameters on {device}")
        notice = warmup_notice(config)
        if notice:
            echo(notice)
    cadence = engine.Cadence(config.steps, config.log_every, config.checkpoint_every, config.keep_checkpoints, config.batch)
    engine.run_steps(run_dir, task, start_step, cadence, device, rank, world, progress,
                     desc=f"train {config.preset} on {task.run.data}", logged=task.logged)
    found = list_checkpoints(run_dir)
    return {"run_dir": run_dir, "steps": config.steps, "start_step": start_step, "sigma_data": record.sigma_data,
            "checkpoint": found[-1][1] if found else None}


def _resumed_config(config: TrainConfig, resume: bool) -> Tuple[TrainConfig, int, Optional[Dict[str, Any]], Optional[RunRecord]]:
    """(config, start step, checkpoint state or None, the run's record or None): a run in config.out continues from its
    newest checkpoint with its stored settings (run_phases says which may change); a new run starts at step 0."""
    run_dir = config.out
    stored, record = None, None
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        stored_run = read_run(run_dir)
        stored, record = network_options_for_loading(stored_run.config), stored_run.record
    # A new run records the network options whose default changed (networks.recorded_defaults); a resumed one keeps its own.
    config = with_recorded_defaults(config, stored.net_options if stored is not None else networks.recorded_defaults(config.net, True))
    if stored is not None:
        run_phases.check_resumable(Run(stored, record), config)
        if not resume:
            raise ConfigError(f"run directory {run_dir!r} exists; remove it or resume")
    start_step, state = engine.newest_checkpoint(run_dir, config.steps) if resume else (0, None)
    if stored is not None:
        config = run_phases.resumed_config(stored, config, start_step)
    return config, start_step, state, record


@dataclass
class TrainingData:
    """A run's training set: in memory (x, labels) or streamed from a PNG folder."""

    x: Optional[torch.Tensor]
    labels: Optional[torch.Tensor]
    streamed: Optional[StreamedPNGFolder]
    num_items: int
    item_shape: Tuple[int, ...]


def _training_data(config: TrainConfig, stored: Optional[RunRecord], rank: int, stream_data: bool,
                   workers: int) -> Tuple[RunRecord, TrainingData]:
    """The run's training set, and its record: what the data determines (sigma_data, item_shape, num_classes, a latent
    run's latent_space). A resumed run keeps its `stored` sigma_data and latent space; the rest is measured again."""
    record = stored if stored is not None else RunRecord()
    if stream_data:
        if config.conditional or config.latent is not None:
            raise ConfigError("--stream-data reads PNG folders image by image; it trains neither --conditional (no labels) nor --latent")
        if not isinstance(workers, int) or workers < 0:
            raise ConfigError(f"workers = {workers!r} is invalid; it must be an integer >= 0")
        streamed = StreamedPNGFolder(config.data, n=config.data_size, seed=config.seed)
        data = TrainingData(None, None, streamed, len(streamed), tuple(streamed.item_shape))
    else:
        x_data, labels = load_training_data(Run(config, record))
        if config.latent is not None or record.latent_space is not None:
            # Latent diffusion: the data set encoded once by the autoencoder run, normalized per channel.
            x_data, labels, space = latent.training_latents(config.out, Run(config, record), x_data, labels, write_cache_file=rank == 0)
            data_name = None if config.data is not None else (record.data or latent.autoencoder_data_name(config.latent))
            record = dataclasses.replace(record, latent_space=space, sigma_data=space["sigma_data"], data=data_name)
        data = TrainingData(x_data, labels, None, len(x_data), tuple(x_data.shape[1:]))
    if record.sigma_data is None:
        sigma_data = round(streamed_sigma_data(data.streamed) if stream_data else estimate_sigma_data(data.x), 6)
        if not sigma_data > 0:
            raise ConfigError(f"data set {config.data!r} has standard deviation {sigma_data}: every value is the same, there is nothing to learn")
        record = dataclasses.replace(record, sigma_data=sigma_data)
    num_classes = int(data.labels.max()) + 1 if data.labels is not None else 0
    return dataclasses.replace(record, item_shape=list(data.item_shape), num_classes=num_classes), data


class DiffusionTask:
    """Diffusion training as an engine task (edm_space.engine.Task): the preset's loss (EDM eq. 8) on the network,
    its EMA, optimizer, post-hoc EMA profiles and TensorBoard monitor. `run` holds the options (config.json) and the
    record (record.json) with what the data determined; the record gains the parameter count."""

    def __init__(self, run: Run, data: TrainingData, network: Optional[nn.Module], state: Optional[Dict[str, Any]],
                 start_step: int, rank: int, world: int, device: torch.device, precision: str, compile: bool, workers: int, echo):
        config = run.config
        self.run, self.config, self.data, self.rank, self.world, self.device = run, config, data, rank, world, device
        self.precision, self.compile, self.start_step = precision, compile, start_step
        self.formulation = build_formulation(run)
        self._build_modules(network, state, echo)
        self.record = dataclasses.replace(run.record, parameters=sum(p.numel() for p in self.net.parameters()))
        self.item_shape, self.num_classes = data.item_shape, run.num_classes
        self.x_data = data.x.to(device) if data.x is not None else None  # kept on the device: no copy per step
        self.labels = data.labels.to(device) if data.labels is not None else None
        local = config.batch // world
        self.part = slice(rank * local, rank * local + local)
        self.streamed_batches = None
        if data.streamed is not None:
            loader = torch.utils.data.DataLoader(
                data.streamed, batch_sampler=StepIndices(config.seed, range(start_step, config.steps + 1), data.num_items, config.batch, self.part),
                num_workers=workers, pin_memory=device.type == "cuda",
            )
            self.streamed_batches = iter(loader)
        self.buckets = bucket_labels()
        self.bucket_sum = torch.zeros(len(self.buckets), dtype=torch.float64)
        self.bucket_count = torch.zeros(len(self.buckets), dtype=torch.float64)
        self.grad_norm = math.nan

    def _build_modules(self, network: Optional[nn.Module], state: Optional[Dict[str, Any]], echo) -> None:
        """The network (initialised under torch.manual_seed(seed), inside train()'s fork of the global RNG, or from
        --init-from), its EMA, optimizer and loss scaler, the post-hoc EMA profiles and the monitor; a checkpoint's states."""
        config, device = self.config, self.device
        torch.manual_seed(config.seed)  # weight initialisation (and dropout), inside train()'s fork of the global RNG
        net = network if network is not None else build_network(config, self.data.item_shape, self.run.num_classes)
        self.net = net.to(device)
        if state is None and config.init_from is not None:
            loaded = init_from.load_initial_weights(self.net, config.init_from, config.init_weights)
            if self.rank == 0:
                echo(loaded)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.optimizer = lr_schedule.build_optimizer(self.net, config)
        self.scaler = devices.grad_scaler(device, self.precision)
        if state is not None:
            try:
                self.net.load_state_dict(state["model"])
                self.ema.load_state_dict(state["ema"])
                self.optimizer.load_state_dict(state["optimizer"])
            except (KeyError, RuntimeError, ValueError) as error:
                raise ConfigError(f"checkpoint of step {self.start_step} in {config.out!r} does not fit this network ({type(error).__name__})") from None
        self.profiles = posthoc_ema.TrainingProfiles(config.out, self.net, config.ema_stds, config.ema_snapshot_images, state, self.start_step, self.rank == 0)
        self.monitor = TrainingMonitor(config.out, config.tensorboard and self.rank == 0, config.sample_every_images, self.formulation,
                                       self.data.item_shape, config.eval_every_images, lambda: monitor_reference(self.run))
        self.ema_params, self.net_params = list(self.ema.parameters()), [p.detach() for p in self.net.parameters()]
        model = nn.parallel.DistributedDataParallel(self.net) if self.world > 1 else self.net
        self.model = devices.compiled(model, self.compile)

    def _batch(self, index: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(clean items, one-hot labels or None) of this process's slice of the global batch `index`."""
        config, part = self.config, self.part
        if self.streamed_batches is None:
            x0 = self.x_data[index[part]]
        else:  # the loader read exactly index[part] (StepIndices draws it the same way)
            try:
                x0 = next(self.streamed_batches).to(self.device, non_blocking=True)
            except ConfigError as error:  # e.g. an image removed while the run reads the folder
                raise worker_error(error) from None
        batch_labels = None
        if config.conditional:
            batch_labels = nn.functional.one_hot(self.labels[index[part]], self.num_classes).float()
            if config.label_dropout > 0:
                # Classifier-free guidance training (Ho & Salimans 2022): a fraction of rows get the null label
                # (an all-zero row). Drawn last, so that the other draws do not depend on the option.
                keep = (torch.rand(config.batch, generator=generator)[part] >= config.label_dropout).to(self.device)
                batch_labels = batch_labels * keep[:, None].to(batch_labels.dtype)
        return x0, batch_labels

    def batch_loss(self, step: int, forward) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-example loss of this process's slice, its sigmas, the global mean loss) of step `step`'s batch."""
        config, part, device = self.config, self.part, self.device
        generator = step_generator(config.seed, step)  # one generator per step draws the whole global batch
        index = torch.randint(self.data.num_items, (config.batch,), generator=generator).to(device)
        sigma = self.formulation.sample_training_sigma(config.batch, generator).to(device)
        noise = torch.randn((config.batch, *self.item_shape), generator=generator).to(device)
        x0, batch_labels = self._batch(index, generator)
        with devices.autocast(device, self.precision):
            per_example = self.formulation.loss(forward, x0, sigma=sigma[part], noise=noise[part], labels=batch_labels)
        per_example = per_example.float()
        global_loss = per_example.mean().detach().clone()
        if self.world > 1:
            dist.all_reduce(global_loss)
            global_loss /= self.world
        return per_example, sigma[part], global_loss

    def train_step(self, step: int, check) -> Dict[str, float]:
        config, optimizer = self.config, self.optimizer
        try:
            per_example, sigma, global_loss = self.batch_loss(step, self.model)
        except Exception as error:  # noqa: BLE001 - torch.compile compiles at the first call
            if self.compile and step == self.start_step and not isinstance(error, ConfigError):
                raise devices.compile_error(error) from None
            raise
        check("training loss", float(global_loss))
        images_seen = run_phases.images_seen(config, step + 1)
        for group in optimizer.param_groups:
            group["lr"] = lr_schedule.run_learning_rate(config, images_seen)
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            per_example.mean().backward()
        else:  # fp16: scale the loss so that small gradients do not underflow, unscale before clipping
            self.scaler.scale(per_example.mean()).backward()
            self.scaler.unscale_(optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.net.parameters(), config.grad_clip, foreach=True)
        check("gradient norm", float(grad_norm))
        self.grad_norm = float(grad_norm)
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()
        with torch.no_grad():
            # EDM's ema <- net + beta (ema - net), as one fused pass over all tensors.
            torch._foreach_lerp_(self.ema_params, self.net_params, 1.0 - ema_beta(config, images_seen))
        at_checkpoint = (step + 1) % config.checkpoint_every == 0
        self.profiles.after_step(step + 1, images_seen, config.batch, at_checkpoint, step + 1 == config.steps)
        self.monitor.after_step(step + 1, images_seen, config.batch, at_checkpoint, self.ema, self.run.latent_space is not None)
        with torch.no_grad():  # the loss per sigma bucket since the last log entry (this process's slice)
            which = sigma_bucket(sigma.cpu())
            self.bucket_sum.index_add_(0, which, per_example.detach().to("cpu", torch.float64))
            self.bucket_count.index_add_(0, which, torch.ones_like(which, dtype=torch.float64))
        return {"loss": float(global_loss)}

    def final_check(self, step: int, check) -> None:
        with torch.no_grad():
            _, _, global_loss = self.batch_loss(step, self.net)
        check("training loss of the final weights", float(global_loss))

    def images_seen(self, done: int) -> int:
        return run_phases.images_seen(self.config, done)

    def log_fields(self, done: int, means: Dict[str, float]) -> Dict[str, Any]:
        by_sigma = {b: (float(s / c) if c else None) for b, s, c in zip(self.buckets, self.bucket_sum, self.bucket_count)}
        self.bucket_sum.zero_()
        self.bucket_count.zero_()
        return {"loss": means["loss"], "lr": self.optimizer.param_groups[0]["lr"], "loss_by_sigma": by_sigma}

    def logged(self, entry: Dict[str, Any]) -> None:
        self.monitor.log(entry, self.grad_norm)

    def checkpoint_states(self) -> Dict[str, Any]:
        return {"model": self.net.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                **self.profiles.checkpoint_state()}


# ---------------------------------------------------------------------------
# Loading a trained model for sampling.


def load_trained(run_dir: str, ema: bool = True, step: Optional[int] = None, network: Optional[nn.Module] = None,
                 device: str = "cpu"):
    """(Denoiser, run, item_shape, num_classes, step) from a run's checkpoint, on `device` (any device:
    checkpoints are read to the CPU first). `run` is the checkpoint's Run: its options and its record
    (run.preset, run.sigma_data, run.latent_space, ...).

    `run_dir` is a run directory (its newest checkpoint, or that of `step`) or a checkpoint file.
    `network` supplies the network object for a run trained on a user's instance whose class
    cannot be rebuilt from the recorded options; its weights are loaded into it. A weights run
    (edm_space.weights: config.json + weights.safetensors, exported or imported) loads the same way.
    """
    if os.path.isdir(run_dir) and is_weights_run(run_dir):
        if step is not None:
            raise ConfigError(f"{run_dir!r} holds one set of weights (safetensors); --step does not apply")
        return _load_weights_run(run_dir, ema, network, device)
    run_dir, step, path, run, state, stored = engine.open_checkpoint(run_dir, step, read_run, "has an unreadable config; it is damaged")
    if stored.get("preset") != run.preset:
        raise ConfigError(f"checkpoint {path!r} was trained as {stored.get('preset')!r}, but config.json says {run.preset!r}")
    stored_run = Run(TrainConfig.from_json(stored), record_of_state(state, stored, f"checkpoint {path!r}"))
    run_network = {key: getattr(network_options_for_loading(run), key) for key in NETWORK_KEYS}
    checkpoint_network = {key: getattr(stored_run, key) for key in NETWORK_KEYS}
    if isinstance(stored.get("net_options"), dict):
        checkpoint_network["net_options"] = {**networks.recorded_defaults(str(stored.get("net")), False), **stored["net_options"]}
    differ = engine.differing(run_network, checkpoint_network)
    if differ:
        raise ConfigError(f"checkpoint {path!r} was trained with another network than the run's config.json ({', '.join(differ)} differ); it does not belong to this run")
    key = "ema" if ema else "model"
    weights = state.get(key)
    if not isinstance(weights, dict):
        raise ConfigError(f"checkpoint {path!r} has no {key!r} weights; it is damaged")
    return (*_denoiser(stored_run, weights, network, device, f"checkpoint {path!r}"), step)


def _denoiser(config: Run, weights: Dict[str, torch.Tensor], network: Optional[nn.Module], device: str, what: str):
    """(Denoiser, run, item_shape, num_classes) of a stored run: its network rebuilt (or `network`), `weights` loaded strictly."""
    if config.item_shape is None:
        raise ConfigError(f"{what} does not record its item shape")
    item_shape, num_classes = tuple(config.item_shape), config.num_classes
    net = network if network is not None else build_network(network_options_for_loading(config), item_shape, num_classes)
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        raise ConfigError(f"{what} does not fit a {config.net!r} network ({' '.join(str(error).split())[:160]})") from None
    net.eval().requires_grad_(False).to(devices.resolve_device(device))
    return Denoiser(net, build_formulation(config)), config, item_shape, num_classes


def _load_weights_run(run_dir: str, ema: bool, network: Optional[nn.Module], device: str):
    """load_trained of a weights run (edm_space.weights): config.json and weights.safetensors."""
    payload, tensors, metadata = read_weights_run(run_dir)
    kind = metadata.get("weights", "imported")
    if kind != "imported" and (kind == "ema") != ema:
        raise ConfigError(f"{run_dir!r} holds only the {kind} weights; sample it {'with --ema' if kind == 'ema' else 'with --no-ema'}")
    what = f"the weights in {run_dir!r}"
    run = Run(TrainConfig.from_json(payload), read_record(run_dir, payload))
    return (*_denoiser(run, tensors, network, device, what), int(metadata.get("step", "0")))


def with_recorded_defaults(config, values: Dict[str, Any]):
    """`config` (a TrainConfig or a Run) with every option of networks.recorded_defaults that its net_options lack
    taken from `values` (the user's own are kept)."""
    net_options = networks.NETWORKS.with_recorded(config.net, config.net_options, values)
    if net_options == config.net_options:
        return config
    if isinstance(config, Run):
        return Run(with_recorded_defaults(config.config, values), config.record)
    return dataclasses.replace(config, net_options=net_options)


def network_options_for_loading(config):
    """The config to rebuild a stored run's network from: an option whose default changed after the run was
    written takes the value the run was trained with (a DiT's legacy convention, a U-Net's instance norm)."""
    return with_recorded_defaults(config, networks.recorded_defaults(config.net, False))


def read_log(run_dir: str) -> List[Dict[str, Any]]:
    """The entries of a run's log.jsonl."""
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]
