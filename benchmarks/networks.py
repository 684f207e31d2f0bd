"""The network benchmark: the U-Net against the transformer denoiser (DiT) at equal training compute.

    pip install -e ".[data,plot]"
    python benchmarks/networks.py                   # 8x8 digits: edm and sd3, 3 seeds, U-Net vs DiT (25-55 min on one thread)
    python benchmarks/networks.py --data mnist --budget 300 --seeds 0,1   # 5,000 MNIST digits (28x28): about 45 CPU minutes
    python benchmarks/networks.py --quick           # a smoke run of the same code path in about a minute (temporary folder)
    python benchmarks/networks.py --report-only     # rebuild networks_DATA.md / .png from the committed .json

Both networks (`--net unet`, edm_space/networks/unet.py, and `--net dit`,
edm_space/networks/dit.py, sized to a comparable parameter count) train under
each preset with the same optimizer, batch, seeds and data, for the same CPU time:

1. Step cost. Each network trains a few steps twice from scratch (`timing_steps`,
   e.g. 4 and 24 steps); the CPU time of one step is the difference of the two
   runs' CPU times divided by the difference of their steps, which cancels the
   fixed cost of a run (data, network, checkpoint).
2. Equal budget. Each network trains for the most steps whose cost fits
   `budget_cpu_s` CPU seconds, rounded down so that every stage (on digits 1/4,
   1/2 and all of the budget) is a whole number of steps (`budget_steps`). The
   budget is counted in CPU seconds of this one-thread process, not wall time:
   on a machine shared with other processes the wall time of a step grows with
   their load, its CPU time much less.
3. Stages. Training runs in stages on one run directory (resuming is exact), and
   the EMA weights at the end of every stage are sampled with one sampler (Heun,
   edm time steps, N = 18, 35 NFE, each model on its own preset's ODE), the same
   latents (seeded per sample) for every network and stage.
4. Scores (edm_space.classifier.image_quality): the Frechet distance in the
   features of a small classifier of the data set, between the samples and real
   images held out of training (each seed trains on a seeded subset and is scored
   against the rest), the classifier's mean confidence, and class coverage (the
   smallest and largest fraction of samples given to one class). A set of real
   training images of the same size, scored the same way, is the floor.

Every (network, preset, seed) is one run; results are mean and standard deviation
over seeds, and U-Net against DiT is tested on paired (same seed) differences with
a 95 % t-interval. Finished runs are kept in --work-dir and reused when nothing
they depend on changed (--fresh retrains). Results: benchmarks/results/
networks_DATA.{json,md,png} (with --quick a temporary folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import torch  # noqa: E402

import formulations  # noqa: E402  (mean_std and the paired comparison of benchmarks/formulations.py)
import presets  # noqa: E402
from edm_space import networks  # noqa: E402
from edm_space.classifier import cached_classifier, image_quality  # noqa: E402
from edm_space.data import load  # noqa: E402
from edm_space.errors import ConfigError, unknown  # noqa: E402
from edm_space.generation import SamplerSettings, generate  # noqa: E402
from edm_space.optional import require  # noqa: E402
from edm_space.seeding import parse_seeds  # noqa: E402
from edm_space.training import TrainConfig, TrainingDiverged, load_trained, read_log, train  # noqa: E402

Tensor = torch.Tensor

DATA_CHOICES = ("digits", "mnist")
NETS = ("unet", "dit")
NET_LABELS = {"unet": "U-Net", "dit": "DiT"}
NET_COLORS = {"unet": "tab:blue", "dit": "tab:orange"}
NET_MARKERS = {"unet": "o", "dit": "s"}
#: The sampler every checkpoint is scored with: Heun on edm time steps, N = 18 (35 NFE), own ODE.
SAMPLER = ("heun", "edm", 18)
#: Scores of a sample set (edm_space.classifier.image_quality), lower FD is better.
METRICS = ("fd", "confidence", "min_class_fraction", "max_class_fraction")
METRIC_NAMES = {"fd": "FD (classifier features)", "confidence": "confidence", "min_class_fraction": "smallest class share",
                "max_class_fraction": "largest class share"}
#: First sample seed of the evaluation latents: sample i of seed s uses SeededNoise seed LATENT_SEED + 1000 s + i.
LATENT_SEED = 10_000
VERSION = 1  # of the runs' stored results; bump when run_one changes what it computes


DIGITS_WHY = (
    "Networks: the U-Net of benchmarks/training_quality.py's digits run (32 channels, levels 1 and 2, 1.04 M parameters) "
    "and the library's default DiT shape (depth 4, width 128, 4 heads) with 2x2 patches, 16 tokens per image (1.25 M "
    "parameters, 1.2x); 1x1 patches (64 tokens) cost 3.8x as much per step. Budget: 60 CPU s per run with three "
    "stages, not the 150-300 s first planned: sampling 256 images at 35 NFE costs 15-30 s per stage, so 2 presets x 2 "
    "networks x 3 seeds at 150 s would not fit about 35 minutes of wall time on the shared 2-core machine. Learning rate: "
    "one for both networks; in a probe of the training loss (edm, seed 0) both improved alike from 2e-3 to 4e-3 "
    "(U-Net after 100 steps 0.485 -> 0.479, DiT after 150 steps 0.563 -> 0.557) and both were worse at 1e-3 and 5e-4 "
    "(U-Net 0.512, 0.571; DiT 0.576, 0.582), so 2e-3 handicaps neither. Warm-up 2,000 images (31 steps): the runs are "
    "short."
)


@dataclass
class Settings:
    """Everything that defines one data set's benchmark; stored in the results."""

    data: str = "digits"
    quick: bool = False
    presets: Tuple[str, ...] = ("edm", "sd3")
    seeds: Tuple[int, ...] = (0, 1, 2)
    #: network name -> options; the DiT is sized to a parameter count close to the U-Net's
    nets: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {
        "unet": {"channels": 32, "channel_mult": [1, 2]},
        "dit": {"depth": 4, "width": 128, "heads": 4, "patch": 2},
    })
    #: real images held out of training (the reference of the scores); the rest is the training set
    holdout: int = 500
    batch: int = 64
    lr: float = 2e-3
    warmup_images: int = 2_000
    ema_halflife_images: float = 20_000.0
    ema_rampup_ratio: float = 0.05
    grad_clip: float = 1.0
    #: CPU seconds of training per run, the same for every network
    budget_cpu_s: float = 60.0
    #: the stages are total_steps / d for each d (the last must be 1)
    stage_divisors: Tuple[int, ...] = (4, 2, 1)
    #: steps of the two from-scratch runs whose CPU-time difference gives the cost of a step
    timing_steps: Tuple[int, int] = (4, 24)
    num_samples: int = 256
    sampler: Tuple[str, str, int] = SAMPLER
    threads: int = 1
    #: why these settings (shown in the report)
    why: Optional[str] = None

    def training_fingerprint(self) -> Dict[str, Any]:
        """The settings a step's cost and a run's result depend on (not the preset or seed lists, threads or quick)."""
        payload = dataclasses.asdict(self)
        for key in ("presets", "seeds", "threads", "quick", "why"):
            payload.pop(key)
        return payload


def make_settings(data: str = "digits", quick: bool = False, preset_names: Optional[Sequence[str]] = None,
                  seeds: Optional[Sequence[int]] = None, budget_cpu_s: Optional[float] = None, threads: int = 1) -> Settings:
    """The settings of the `data` benchmark ('digits' or 'mnist'); --quick is a digits smoke run of about a minute."""
    if data not in DATA_CHOICES:
        raise unknown("data", data, DATA_CHOICES)
    if data == "digits":
        s = Settings(why=DIGITS_WHY)
    else:
        # MNIST: the U-Net of benchmarks/training_quality.py (0.66 M parameters) and the DiT of the reference
        # model sd3-dit (0.96 M; 7x7 patches, 16 tokens, axial RoPE: the shape benchmarks/dit_ablation.py found to
        # learn MNIST, where 4x4 patches with sin-cos positions crowded into one class); batch 64, 5,000 digits of
        # which 1,000 are held out.
        s = Settings(data="mnist", nets={"unet": {"channels": 16, "channel_mult": [1, 2, 4], "blocks_per_level": 1},
                                         "dit": {"depth": 3, "width": 128, "heads": 4, "patch": 7, "pos": "rope"}},
                     holdout=1000, budget_cpu_s=600.0, warmup_images=5_000, ema_halflife_images=50_000.0,
                     timing_steps=(2, 8), seeds=(0,))
    if quick:
        s = dataclasses.replace(
            s, data="digits", quick=True, presets=("edm",), seeds=(0,), holdout=500,
            nets={"unet": {"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1},
                  "dit": {"depth": 1, "width": 32, "heads": 2, "patch": 2}},
            budget_cpu_s=1.5, stage_divisors=(2, 1), timing_steps=(2, 10), num_samples=64, sampler=("heun", "edm", 4),
            warmup_images=256, why=None,
        )
    if preset_names is not None:
        if not preset_names:
            raise ConfigError("--presets is empty; name at least one preset")
        for name in preset_names:
            if name not in presets.names():
                raise unknown("preset", name, presets.names())
        s = dataclasses.replace(s, presets=tuple(preset_names))
    if seeds is not None:
        if not seeds:
            raise ConfigError("--seeds is empty; give at least one seed")
        s = dataclasses.replace(s, seeds=tuple(int(v) for v in seeds))
    if budget_cpu_s is not None:
        if not (math.isfinite(budget_cpu_s) and budget_cpu_s > 0):
            raise ConfigError(f"--budget {budget_cpu_s} is invalid; it must be a number of CPU seconds > 0")
        s = dataclasses.replace(s, budget_cpu_s=float(budget_cpu_s))
    if threads < 1:
        raise ConfigError(f"--threads {threads} is invalid; need at least 1")
    return dataclasses.replace(s, threads=threads)


def fingerprint(payload: Any) -> str:
    """A short hash of JSON-able settings."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the equal budget


def budget_steps(budget_s: float, seconds_per_step: float, divisors: Sequence[int]) -> List[int]:
    """Cumulative optimizer steps at the end of each stage, for a network whose step costs `seconds_per_step`.

    The total is the largest multiple of lcm(divisors) whose cost fits `budget_s`, so that every
    stage total / d is a whole number of steps; stage k ends at total / divisors[k].
    """
    if not (seconds_per_step > 0 and math.isfinite(seconds_per_step)):
        raise ConfigError(f"a step cost of {seconds_per_step} s is invalid; it must be a finite number > 0")
    if not divisors or divisors[-1] != 1 or any(d < 1 for d in divisors) or list(divisors) != sorted(divisors, reverse=True):
        raise ConfigError(f"stage divisors {list(divisors)} are invalid; they must decrease to 1, e.g. 8, 4, 2, 1")
    unit = functools.reduce(math.lcm, divisors)
    fits = math.floor(budget_s / seconds_per_step * (1 + 1e-9))  # the factor: 0.9 / 0.3 is 2.9999999999999996 in floating point
    total = fits // unit * unit
    if total < unit:
        raise ConfigError(f"a budget of {budget_s:g} s fits {fits} steps of {seconds_per_step:.3g} s; "
                          f"the stages need at least {unit}")
    return [total // d for d in divisors]


def measure_step_cost(settings: Settings, net: str, work_dir: str) -> Dict[str, float]:
    """CPU and wall seconds of one training step of `net`: two fresh runs of timing_steps, differenced."""
    short, long = settings.timing_steps
    spent = {}
    for label, steps in (("discard", 1), ("short", short), ("long", long)):  # the first absorbs one-time costs of the process
        run_dir = os.path.join(work_dir, f"timing-{net}-{label}")
        shutil.rmtree(run_dir, ignore_errors=True)
        cpu, wall = time.process_time(), time.perf_counter()
        train(train_config(settings, net, settings.presets[0], settings.seeds[0], run_dir, steps), progress=False, echo=_quiet, device="cpu")
        spent[label] = (time.process_time() - cpu, time.perf_counter() - wall)
        shutil.rmtree(run_dir, ignore_errors=True)
    steps = long - short
    cpu_step = (spent["long"][0] - spent["short"][0]) / steps
    wall_step = (spent["long"][1] - spent["short"][1]) / steps
    if not cpu_step > 0:  # a long run measured as cheaper than a short one: timer noise at a tiny size
        cpu_step = spent["long"][0] / long
    return {"cpu_s_per_step": cpu_step, "wall_s_per_step": wall_step, "short_run_cpu_s": spent["short"][0], "long_run_cpu_s": spent["long"][0]}


def parameter_count(settings: Settings, net: str, item_shape: Sequence[int]) -> int:
    """Trainable parameters of the benchmark's `net` for items of `item_shape`."""
    return sum(p.numel() for p in networks.build(net, tuple(item_shape), **settings.nets[net]).parameters())


# --------------------------------------------------------------------------- data and scoring


@functools.lru_cache(maxsize=None)
def dataset_size(data: str) -> int:
    """Images in the built-in set `data`."""
    return len(load(common.data_set(data)))


def split(data: str, train_size: int, seed: int) -> Tuple[Tensor, Tensor]:
    """(training set, held-out images): the training set is what `train` loads for this seed
    (load(data, n=train_size, seed=seed)); the held-out images are every other image of the set."""
    full = load(common.data_set(data))
    train_x = load(common.data_set(data), n=train_size, seed=seed)
    seen = {row.numpy().tobytes() for row in train_x}
    keep = torch.tensor([row.numpy().tobytes() not in seen for row in full])
    return train_x, full[keep]


class Evaluation:
    """The held-out images of one seed in the classifier's features, and the real-data floor."""

    def __init__(self, settings: Settings, seed: int, classifier):
        self.settings = settings
        self.classifier = classifier
        train_x, heldout = split(settings.data, dataset_size(settings.data) - settings.holdout, seed)
        self.heldout_count = len(heldout)
        with torch.no_grad():  # computed once, passed to image_quality for every sample set of this seed
            self.heldout_features = classifier.features(heldout.to(torch.float32))
        pick = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(7000 + seed))[: settings.num_samples]
        self.training_sample = train_x[pick]

    def score(self, x: Tensor) -> Dict[str, Any]:
        """FD against the held-out images, confidence and class coverage; None for every score if a sample is not finite."""
        nonfinite = int((~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)).sum())
        if nonfinite:
            return {"nonfinite": nonfinite, **{m: None for m in METRICS}}
        quality = image_quality(x, None, self.classifier, real_features=self.heldout_features)
        return {"nonfinite": 0, "fd": quality["frechet_distance"], "confidence": quality["confidence"],
                "min_class_fraction": quality["min_class_fraction"], "max_class_fraction": quality["max_class_fraction"]}


def sample_latest(run_dir: str, settings: Settings, seed: int) -> Tuple[Tensor, int, int]:
    """Samples of a run's newest checkpoint (EMA) with the benchmark's sampler: (samples, nfe, step).

    Sample i starts from its own seeded latent (LATENT_SEED + 1000 seed + i), the same for every network and stage.
    """
    denoiser, config, item_shape, _, step = load_trained(run_dir)
    solver, discretization, steps = settings.sampler
    first = LATENT_SEED + 1000 * seed
    sampler = SamplerSettings(formulation=denoiser.formulation, solver=solver, num_steps=steps, discretization=discretization)
    out = generate(denoiser, range(first, first + settings.num_samples), item_shape, sampler, batch_size=settings.num_samples)
    return out.samples, out.nfe, step


# --------------------------------------------------------------------------- one run


def _quiet(_: str) -> None:
    """Swallow the training loop's notices (a short first stage is mostly warm-up, as intended)."""


def train_config(settings: Settings, net: str, preset: str, seed: int, run_dir: str, steps: int, log_every: int = 1) -> TrainConfig:
    """The TrainConfig of one run up to `steps`: everything but the network is the same for both networks."""
    return TrainConfig(
        preset=preset, data=common.data_set(settings.data), out=run_dir, net=net, net_options=dict(settings.nets[net]),
        data_size=dataset_size(settings.data) - settings.holdout,
        steps=steps, batch=settings.batch, lr=settings.lr, warmup_images=settings.warmup_images, grad_clip=settings.grad_clip,
        ema_halflife_images=settings.ema_halflife_images, ema_rampup_ratio=settings.ema_rampup_ratio, seed=seed,
        checkpoint_every=steps, keep_checkpoints=1, log_every=log_every,
    )


def run_one(settings: Settings, net: str, preset: str, seed: int, stages: Sequence[int], work_dir: str,
            evaluation: Evaluation, log: Callable[[str], None] = print, reuse: bool = True,
            probe: Optional[Callable[[str], Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Train one (network, preset, seed) through `stages` (cumulative steps) and score the EMA weights after each.

    `probe(run_dir)`, if given, adds its entries to each stage's row (e.g. benchmarks/dit_ablation.py's sensitivity of D to x).
    """
    root = os.path.join(work_dir, settings.data, f"{net}-{preset}-seed{seed}")
    result_path = os.path.join(root, "result.json")
    key = fingerprint({"settings": settings.training_fingerprint(), "net": net, "preset": preset, "seed": seed,
                       "stages": list(stages), "version": VERSION})
    if reuse and os.path.isfile(result_path):
        try:
            with open(result_path) as file:
                stored = json.load(file)
            if stored.get("fingerprint") == key and not common.legacy_defaults(os.path.join(root, "run")):
                log(f"  {net} {preset} seed {seed}: reusing {result_path}")
                return {**stored, "reused": True}
        except (OSError, ValueError):
            pass
    shutil.rmtree(root, ignore_errors=True)  # stale: other settings, or an unfinished run
    run_dir = os.path.join(root, "run")
    os.makedirs(root)
    rows: List[Dict[str, Any]] = []
    train_cpu = train_wall = 0.0
    diverged = None
    for k, steps in enumerate(stages):
        row: Dict[str, Any] = {"net": net, "preset": preset, "seed": seed, "stage": k, "steps": steps, "images": steps * settings.batch}
        if diverged is None:
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                train(train_config(settings, net, preset, seed, run_dir, steps, log_every=max(stages[0] // 2, 1)),
                      progress=False, echo=_quiet, device="cpu")
            except TrainingDiverged as error:
                diverged = str(error)
            train_cpu += time.process_time() - cpu
            train_wall += time.perf_counter() - wall
        row.update(train_cpu_s=round(train_cpu, 3), train_wall_s=round(train_wall, 3))
        if diverged is not None:
            row.update(diverged=True, nonfinite=None, **{m: None for m in METRICS})
            rows.append(row)
            continue
        entries = read_log(run_dir)
        t0 = time.perf_counter()
        x, nfe, step = sample_latest(run_dir, settings, seed)
        assert step == steps, (step, steps)
        t1 = time.perf_counter()
        row.update(loss=entries[-1]["loss"] if entries else None, nfe=nfe, sample_s=round(t1 - t0, 3), **evaluation.score(x))
        if probe is not None:
            row.update(probe(run_dir))
        rows.append(row)
        fd = row["fd"]
        log(f"  {net} {preset} seed {seed}: {row['images']:>7,} images ({train_cpu:6.1f} s CPU, {train_wall:6.1f} s wall), "
            f"FD {fd if fd is None else f'{fd:.3f}'}, confidence {row['confidence'] if row['confidence'] is None else round(row['confidence'], 3)}")
    result = {"net": net, "preset": preset, "seed": seed, "fingerprint": key, "rows": rows, "diverged": diverged, "reused": False}
    common.write_json(result_path, result, indent=1)
    shutil.rmtree(run_dir, ignore_errors=True)  # the checkpoints are not needed once scored
    return result


def data_row(settings: Settings, evaluation: Evaluation, seed: int) -> Dict[str, Any]:
    """Real training images (as many as the samples) scored like the samples: the floor at this sample size."""
    return {"net": "data", "preset": "-", "seed": seed, "stage": None, "steps": 0, "images": 0, **evaluation.score(evaluation.training_sample)}


# --------------------------------------------------------------------------- summary


def interpolate_loglog(xs: Sequence[float], ys: Sequence[Optional[float]], x: float) -> Optional[float]:
    """y at x by linear interpolation of log y against log x between the given points; None outside their range
    or where a neighbour is missing or not positive (exact for a power law y = a x^b)."""
    pts = sorted((a, b) for a, b in zip(xs, ys))
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            if y0 is None or y1 is None or y0 <= 0 or y1 <= 0:
                return None
            if x1 == x0:
                return y0
            w = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return math.exp((1 - w) * math.log(y0) + w * math.log(y1))
    return None


def crossings(values: Sequence[Optional[float]]) -> List[int]:
    """Indices k where the sign of values[k] differs from that of values[k + 1] (a zero or None is no sign)."""
    out = []
    for k in range(len(values) - 1):
        a, b = values[k], values[k + 1]
        if a is not None and b is not None and a * b < 0:
            out.append(k)
    return out


def summarize(settings: Dict[str, Any], runs: Sequence[Dict[str, Any]], data: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean and std over seeds per (network, preset, stage); paired U-Net - DiT differences per (preset, stage)."""
    curves: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    paired: Dict[str, List[Dict[str, Any]]] = {}
    for preset in settings["presets"]:
        curves[preset] = {}
        for net in NETS:
            mine = [run for run in runs if run["net"] == net and run["preset"] == preset]
            if not mine:
                continue
            points = []
            for k in range(len(mine[0]["rows"])):
                rows = [run["rows"][k] for run in mine]
                point = {"stage": k, "steps": rows[0]["steps"], "images": rows[0]["images"], "seeds": [run["seed"] for run in mine],
                         "diverged": sum(bool(r.get("diverged")) for r in rows)}
                for name in METRICS + ("train_cpu_s", "train_wall_s", "sample_s", "loss"):
                    point[name] = formulations.mean_std([r.get(name) for r in rows])
                points.append(point)
            curves[preset][net] = points
        if not all(net in curves[preset] for net in NETS):
            continue
        comparisons = []
        for k in range(len(curves[preset]["unet"])):
            entry: Dict[str, Any] = {"stage": k}
            for metric in ("fd", "confidence"):
                a = {run["seed"]: run["rows"][k].get(metric) for run in runs if run["net"] == "unet" and run["preset"] == preset}
                b = {run["seed"]: run["rows"][k].get(metric) for run in runs if run["net"] == "dit" and run["preset"] == preset}
                entry[metric] = formulations.compare(a, b)  # diff = U-Net - DiT; 'a lower' = U-Net lower
            comparisons.append(entry)
        paired[preset] = comparisons
    # U-Net and DiT at the same number of training images: the DiT's mean FD curve interpolated (log-log)
    # at the U-Net's images, where the DiT's stages span them.
    equal_images: Dict[str, List[Dict[str, Any]]] = {}
    for preset, nets in curves.items():
        if not all(net in nets for net in NETS):
            continue
        dit = nets["dit"]
        equal_images[preset] = [
            {"images": p["images"], "unet_fd": p["fd"]["mean"],
             "dit_fd": interpolate_loglog([q["images"] for q in dit], [q["fd"]["mean"] for q in dit], p["images"])}
            for p in nets["unet"]
        ]
    floor = {metric: formulations.mean_std([row.get(metric) for row in data]) for metric in METRICS}
    return {"curves": curves, "paired": paired, "equal_images": equal_images, "data_floor": floor}


# --------------------------------------------------------------------------- report


def _pm(stat: Optional[Dict[str, Any]], digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    if stat.get("n", 2) < 2:  # one seed: no spread to show
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _diff(c: Dict[str, Any], digits: int = 3) -> str:
    if c.get("diff") is None:
        return "n/a"
    if c.get("half_width") is None or not math.isfinite(c["half_width"]):  # one seed: no interval
        return f"{c['diff']:+.{digits}f}"
    return f"{c['diff']:+.{digits}f} ± {c['half_width']:.{digits}f}"


VERDICT_WORDS = {"fd": {"a lower": "U-Net better", "b lower": "DiT better"},
                 "confidence": {"a lower": "DiT higher", "b lower": "U-Net higher"}}


def _verdict(metric: str, c: Dict[str, Any]) -> str:
    if c.get("n", 2) < 2:
        return "one seed, no interval"
    return VERDICT_WORDS[metric].get(c["verdict"], c["verdict"])


def findings(results: Dict[str, Any]) -> List[str]:
    """The sentences of 'What the numbers support', read off the summary (stage by stage, with intervals)."""
    s, summary = results["settings"], results["summary"]
    fractions = [f"1/{d}" if d > 1 else "all" for d in s["stage_divisors"]]
    lines = []
    for preset, comparisons in summary["paired"].items():
        curves = summary["curves"][preset]
        u, d = curves["unet"][-1], curves["dit"][-1]
        last = comparisons[-1]["fd"]
        lines.append(
            f"- **{preset}, full budget** ({s['budget_cpu_s']:g} CPU s): FD U-Net {_pm(u['fd'])} after {u['images']:,} images, "
            f"DiT {_pm(d['fd'])} after {d['images']:,} images; paired difference U-Net - DiT {_diff(last)} "
            f"(95 % t-interval, {last['n']} seed{'s' if last['n'] != 1 else ''}): **{_verdict('fd', last)}**."
        )
        by_stage = ", ".join(f"{fractions[c['stage']]} of the budget {_diff(c['fd'])} ({_verdict('fd', c['fd'])})" for c in comparisons)
        lines.append(f"  FD difference U-Net - DiT at equal compute: {by_stage}.")
        signs = crossings([c["fd"]["diff"] for c in comparisons])
        if signs:
            where = "; ".join(f"between {fractions[k]} and {fractions[k + 1]} of the budget" for k in signs)
            resolved = any(comparisons[k]["fd"]["verdict"] not in ("not resolved", "no data")
                           and comparisons[k + 1]["fd"]["verdict"] not in ("not resolved", "no data") for k in signs)
            lines.append(f"  The mean FD curves cross {where}" + (" (both sides resolved)." if resolved else
                         " (at least one side not resolved, so the crossing is within the noise)."))
        else:
            lines.append("  The mean FD curves do not cross within the budget.")
        matched = [e for e in summary["equal_images"][preset] if e["dit_fd"] is not None and e["unet_fd"] is not None]
        if matched:
            text = ", ".join(f"{e['images']:,} images: U-Net {e['unet_fd']:.3f}, DiT {e['dit_fd']:.3f}" for e in matched)
            lines.append(f"  At equal training images (DiT mean FD interpolated log-log between its stages): {text}.")
    return lines


def markdown(results: Dict[str, Any], plot_name: Optional[str]) -> str:
    """The Markdown report of one data set's results."""
    s, summary, info = results["settings"], results["summary"], results["networks"]
    solver, discretization, n = s["sampler"]
    nfe = next((p["nfe"] for run in results["runs"] for p in run["rows"] if p.get("nfe")), None)
    quick = " (--quick smoke run: tiny networks and budget; nothing to conclude)" if s["quick"] else ""
    lines = [f"# Networks on {s['data']}: U-Net against DiT at equal training compute{quick}", "",
             f"Command: `python benchmarks/networks.py --data {s['data']}{' --quick' if s['quick'] else ''}` "
             "(`--report-only` rebuilds this page and the plot from the JSON).", ""]
    lines += ["## What the numbers support", "",
              f"Lower FD is better. Each run trains for {s['budget_cpu_s']:g} CPU seconds (one thread); U-Net and DiT are "
              f"compared at equal compute, stage by stage, on paired seeds ({len(s['seeds'])} seed{'s' if len(s['seeds']) != 1 else ''}, 95 % t-interval of the mean "
              "difference; 'not resolved' when it contains 0). FD of real training images against the held-out ones "
              f"(the floor at {s['num_samples']} images): {_pm(summary['data_floor']['fd'])}.", ""]
    lines += findings(results) + [""]

    lines += ["## Networks", ""]
    rows = []
    for net in NETS:
        i = info[net]
        runs = [run for run in results["runs"] if run["net"] == net]
        final = [run["rows"][-1] for run in runs if run["rows"][-1].get("train_cpu_s")]
        realized = formulations.mean_std([r["images"] / r["train_cpu_s"] for r in final])
        wall = formulations.mean_std([r["images"] / r["train_wall_s"] for r in final if r.get("train_wall_s")])
        rows.append([f"{NET_LABELS[net]} (`--net {net}`)", f"`{json.dumps(i['options'])}`", f"{i['parameters']:,}",
                     f"{i['cpu_s_per_step'] * 1000:.0f}", f"{s['batch'] / i['cpu_s_per_step']:.0f}",
                     f"{i['stages'][-1]:,}", f"{i['stages'][-1] * s['batch']:,}", _pm(realized, 0), _pm(wall, 0)])
    lines += [common.markdown_table(["network", "options", "parameters", "CPU ms / step (warm-up)", "images / CPU s (warm-up)",
                                     "steps in budget", "images seen", "images / CPU s (whole runs)", "images / wall s (whole runs)"], rows), ""]
    ratio = info["dit"]["parameters"] / info["unet"]["parameters"]
    lines += [f"DiT / U-Net parameters: {ratio:.2f}. Step cost: two fresh runs of {s['timing_steps'][0]} and {s['timing_steps'][1]} "
              "steps, CPU-time difference divided by the step difference. 'Whole runs' divides the images of a run by all "
              "the CPU (wall) time of its training calls, fixed costs of each stage included; mean ± std over presets and seeds.", ""]

    lines += ["## Quality against training images", "",
              f"EMA weights after each stage, {s['num_samples']} samples ({solver}, {discretization} time steps, N = {n}, "
              f"{nfe} NFE, each model on its preset's ODE), scored against {results['heldout_count']} held-out real images; "
              f"mean ± std over seeds {', '.join(map(str, s['seeds']))}.", ""]
    body = []
    for preset in s["presets"]:
        for net in NETS:
            for p in summary["curves"].get(preset, {}).get(net, []):
                body.append([preset, NET_LABELS[net], f"{p['steps']:,}", f"{p['images']:,}", _pm(p["train_cpu_s"], 1),
                             _pm(p["fd"]), _pm(p["confidence"]), _pm(p["min_class_fraction"]), _pm(p["max_class_fraction"]),
                             _pm(p["loss"], 4)] + (["**diverged in %d**" % p["diverged"]] if p["diverged"] else []))
    floor = summary["data_floor"]
    body.append(["real training images", "-", "-", "-", "-", _pm(floor["fd"]), _pm(floor["confidence"]),
                 _pm(floor["min_class_fraction"]), _pm(floor["max_class_fraction"]), "-"])
    lines += [common.markdown_table(["preset", "network", "steps", "images seen", "training CPU s", "FD", "confidence",
                                     "smallest class share", "largest class share", "training loss (last log window)"], body), ""]

    lines += ["## Paired differences (U-Net - DiT, same seed)", ""]
    fractions = [f"1/{d}" if d > 1 else "all" for d in s["stage_divisors"]]
    body = []
    for preset, comparisons in summary["paired"].items():
        for c in comparisons:
            body.append([preset, fractions[c["stage"]], _diff(c["fd"]), _verdict("fd", c["fd"]),
                         _diff(c["confidence"]), _verdict("confidence", c["confidence"])])
    lines += [common.markdown_table(["preset", "budget used", "FD difference", "FD verdict", "confidence difference",
                                     "confidence verdict"], body), ""]
    if plot_name:
        lines += [f"![FD, confidence and class coverage against training images, U-Net and DiT]({plot_name})", ""]

    lines += ["## Settings", "",
              f"- data: {s['data']}, {results['heldout_count']} images held out per seed (the rest is the training set, a seeded "
              "subset per seed); the feature classifier (edm_space.classifier) is trained on all images of the set",
              f"- optimizer, the same for both networks: Adam lr {s['lr']:g} after a {s['warmup_images']:,}-image warm-up, batch "
              f"{s['batch']}, gradient clip {s['grad_clip']:g}, EMA half-life {s['ema_halflife_images']:,.0f} images with ramp-up "
              f"ratio {s['ema_rampup_ratio']:g} (so about {s['ema_rampup_ratio']:.0%} of the images seen in these short runs); "
              "no per-network tuning (see why)",
              f"- budget: {s['budget_cpu_s']:g} CPU seconds of training per run, torch threads {s['threads']}; stages at "
              f"{', '.join(fractions)} of the steps",
              f"- wall time of the whole benchmark: {results['wall_s'] / 60:.1f} min"
              + (f" (CPU time of the process {results['cpu_s'] / 60:.1f} min; the rest is waiting for a core held by other processes)"
                 if results.get("cpu_s") else
                 f"; training took {sum(run['rows'][-1]['train_cpu_s'] for run in results['runs']) / 60:.1f} min of it in CPU time, "
                 "the rest is sampling, scoring and waiting for a core held by other processes")]
    if s.get("why"):
        lines += [f"- why: {s['why']}"]
    lines += ["", "## Machine", "", common.machine_markdown(results["machine"])]
    return "\n".join(lines)


METRIC_AXIS = {"fd": "FD in classifier features (lower is better)", "confidence": "classifier confidence (mean top prob.)",
               "min_class_fraction": "smallest class share of samples"}


def write_plot(results: Dict[str, Any], path: str) -> str:
    """One row per preset: FD against images seen and against training CPU seconds, confidence, class coverage."""
    plt = common.pyplot("the network benchmark's plot")
    ticker = require("matplotlib.ticker", "the network benchmark's plot")
    s, summary, info = results["settings"], results["summary"], results["networks"]
    panels = [("fd", "images"), ("fd", "train_cpu_s"), ("confidence", "images"), ("min_class_fraction", "images")]
    shown = [p for p in s["presets"] if p in summary["curves"]]
    fig, axes = plt.subplots(len(shown), len(panels), figsize=(4.2 * len(panels), 3.4 * len(shown) + 0.6), dpi=100, squeeze=False)
    floor = summary["data_floor"]
    for i, preset in enumerate(shown):
        for j, (metric, axis) in enumerate(panels):
            ax = axes[i][j]
            for net, points in summary["curves"][preset].items():
                xs = [p[axis]["mean"] if axis != "images" else p["images"] for p in points]
                ys = [p[metric]["mean"] if p[metric]["mean"] is not None else float("nan") for p in points]
                es = [p[metric]["std"] or 0.0 for p in points]
                ax.errorbar(xs, ys, yerr=es, marker=NET_MARKERS[net], markersize=4, capsize=3, color=NET_COLORS[net],
                            label=f"{NET_LABELS[net]} ({info[net]['parameters'] / 1e6:.2f} M params)")
            if floor[metric]["mean"] is not None:
                ax.axhline(floor[metric]["mean"], color="gray", linestyle=":", linewidth=1, label="real training images")
            # Log axes spanning less than a decade: label 1, 2, 3 and 5 times powers of ten, as plain numbers.
            axes_to_label = [ax.xaxis]
            ax.set_xscale("log")
            if metric == "fd":
                ax.set_yscale("log")
                axes_to_label.append(ax.yaxis)
            for scale in axes_to_label:
                scale.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
                scale.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
                scale.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel("training images seen" if axis == "images" else "training CPU seconds (one thread)")
            ax.set_ylabel(METRIC_AXIS[metric], fontsize=8)
            ax.set_title(f"{preset}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    solver, discretization, _ = s["sampler"]
    nfe = next((row["nfe"] for run in results["runs"] for row in run["rows"] if row.get("nfe")), "?")
    fig.suptitle(f"{s['data']}: U-Net vs DiT at equal training compute ({s['budget_cpu_s']:g} CPU s per run); mean ± std over "
                 f"{len(s['seeds'])} seed(s); {s['num_samples']} samples, {solver}/{discretization} {nfe} NFE, vs held-out images",
                 fontsize=10)
    fig.tight_layout()
    return common.save_png(fig, path)


def stem(data: str) -> str:
    return f"networks_{data}"


def write_report(results: Dict[str, Any], out_dir: str, plot: bool = True) -> List[str]:
    """networks_DATA.json, .md and (with plot) .png under out_dir; the summary is recomputed from the runs."""
    results["summary"] = summarize(results["settings"], results["runs"], results["data_rows"])
    base = os.path.join(out_dir, stem(results["settings"]["data"]))
    os.makedirs(out_dir, exist_ok=True)
    plot_path = write_plot(results, base + ".png") if plot and common.have_matplotlib() else None
    paths = common.write_results(stem(results["settings"]["data"]), results, markdown(results, os.path.basename(plot_path) if plot_path else None), out_dir)
    return paths + ([plot_path] if plot_path else [])


def rebuild_report(json_path: str, out_dir: str, plot: bool = True) -> List[str]:
    """Rewrite the Markdown, plot and summary from an existing results JSON; trains nothing."""
    with open(json_path) as file:
        results = json.load(file)
    return write_report(results, out_dir, plot)


# --------------------------------------------------------------------------- the benchmark


def run_benchmark(settings: Settings, out_dir: str, work_dir: Optional[str] = None, plot: bool = True, reuse: bool = True,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Measure step costs, train and score every (network, preset, seed), write the report; returns the results."""
    started, started_cpu = time.perf_counter(), time.process_time()
    common.set_threads(settings.threads)
    machine = common.machine_info()
    work_dir = work_dir or os.path.join(tempfile.gettempdir(), "edm-space-bench-networks")
    os.makedirs(os.path.join(work_dir, settings.data), exist_ok=True)
    item_shape = tuple(load(common.data_set(settings.data), n=1).shape[1:])

    # Step costs: measured once per data set and kept, so that an interrupted benchmark resumes with the same stages.
    timing_path = os.path.join(work_dir, settings.data, "step_costs.json")
    timing_key = fingerprint(settings.training_fingerprint())
    costs = None
    if reuse and os.path.isfile(timing_path):
        with open(timing_path) as file:
            stored = json.load(file)
        costs = stored["costs"] if stored.get("fingerprint") == timing_key else None
    if costs is None:
        costs = {}
        for net in NETS:
            costs[net] = measure_step_cost(settings, net, os.path.join(work_dir, settings.data))
            log(f"[{settings.data}] {net}: {costs[net]['cpu_s_per_step'] * 1000:.0f} ms CPU "
                f"({costs[net]['wall_s_per_step'] * 1000:.0f} ms wall) per step of batch {settings.batch}")
        common.write_json(timing_path, {"fingerprint": timing_key, "costs": costs})
    info = {}
    for net in NETS:
        stages = budget_steps(settings.budget_cpu_s, costs[net]["cpu_s_per_step"], settings.stage_divisors)
        info[net] = {"options": settings.nets[net], "parameters": parameter_count(settings, net, item_shape), **costs[net], "stages": stages}
        log(f"[{settings.data}] {net}: {info[net]['parameters']:,} parameters, stages {stages} steps")

    classifier, _, _ = cached_classifier(settings.data, os.path.join(work_dir, "classifier"))
    runs, data = [], []
    heldout_count = None
    for seed in settings.seeds:
        evaluation = Evaluation(settings, seed, classifier)
        heldout_count = evaluation.heldout_count
        data.append(data_row(settings, evaluation, seed))
        for preset in settings.presets:
            for net in NETS:
                runs.append(run_one(settings, net, preset, seed, info[net]["stages"], work_dir, evaluation, log, reuse))
        log(f"[{settings.data}] seed {seed} done after {(time.perf_counter() - started) / 60:.1f} min")
    results = {"data": settings.data, "settings": dataclasses.asdict(settings), "networks": info, "heldout_count": heldout_count,
               "runs": runs, "data_rows": data, "machine": machine, "wall_s": time.perf_counter() - started,
               "cpu_s": time.process_time() - started_cpu}
    paths = write_report(results, out_dir, plot)
    log(f"[{settings.data}] wrote {', '.join(paths)}")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/networks.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="U-Net against DiT at equal training CPU time: quality against training images, paired over seeds.",
        epilog="Writes networks_DATA.json, .md and .png under --out-dir.",
    )
    parser.add_argument("--data", default="digits", choices=list(DATA_CHOICES), help="data set [default: digits]")
    parser.add_argument("--quick", action="store_true", help="digits smoke run (tiny networks, 1 preset, 1 seed; about a minute)")
    parser.add_argument("--presets", dest="preset_list", default=None, help="comma-separated presets [default: edm,sd3]")
    parser.add_argument("--seeds", default=None, help="seeds, e.g. 0-2 or 0,1,2 [default: 0-2 on digits, 0 on mnist]")
    parser.add_argument("--budget", type=float, default=None, help="training CPU seconds per run [default: 60 on digits, 600 on mnist]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads [default: 1]")
    parser.add_argument("--out-dir", default=None, help="where networks_DATA.{json,md,png} go [default: benchmarks/results; "
                        "with --quick TMPDIR/edm-space-networks-quick]")
    parser.add_argument("--work-dir", default=None, help="where runs are trained and kept [default: TMPDIR/edm-space-bench-networks]")
    parser.add_argument("--fresh", action="store_true", help="measure step costs and retrain every run instead of reusing")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--report-only", action="store_true", help="rewrite the Markdown and plot of networks_DATA.json under --out-dir; train nothing")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; bad input ends with one line `error: ...` on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    with common.one_line_errors():
        data = "digits" if args.quick else args.data
        out_dir = args.out_dir
        if out_dir is None:
            out_dir = os.path.join(tempfile.gettempdir(), "edm-space-networks-quick") if args.quick else common.RESULTS
        if args.report_only:
            path = os.path.join(out_dir, f"{stem(data)}.json")
            if not os.path.isfile(path):
                raise ConfigError(f"--report-only: {path!r} does not exist; run the benchmark first")
            for written in rebuild_report(path, out_dir, plot=not args.no_plot):
                print(f"wrote {written}")
            return 0
        presets_given = [v.strip() for v in args.preset_list.split(",") if v.strip()] if args.preset_list is not None else None
        settings = make_settings(data, quick=args.quick, preset_names=presets_given,
                                 seeds=parse_seeds(args.seeds) if args.seeds is not None else None,
                                 budget_cpu_s=args.budget, threads=args.threads)
        run_benchmark(settings, out_dir, work_dir=args.work_dir, plot=not args.no_plot, reuse=not args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
