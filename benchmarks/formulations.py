"""The formulation benchmark: every preset trains the same network, then is sampled and scored alike.

    pip install -e ".[data,plot]"
    python benchmarks/formulations.py --data toy      # 7 presets x 3 seeds on 2-D moons (MLP)
    python benchmarks/formulations.py --data digits   # 7 presets x 3 seeds on 8x8 digits (small U-Net)
    python benchmarks/formulations.py --quick         # toy smoke run, 2 presets, 1 seed, under a minute
    python benchmarks/formulations.py --report-only --data all   # rebuild .md/.png from the committed .json

Every preset (edm, vp, ve, iddpm, ddpm, flow, sd3) trains the same network with
the same optimizer, the same number of training images and the same seeds; only
the formulation (sigma(t), s(t), preconditioning, p_train, lambda) differs. Each
trained model is then sampled

- with its own default sampler (the preset's solver, discretization and steps;
  where that is too expensive for the budget the steps are capped and the cap is
  written into the results),
- with one common sampler: Heun, edm time steps, N = 18 (35 NFE), each model on
  its own formulation's ODE,
- on an NFE sweep for Heun and Euler (edm time steps, each model's own ODE) at
  equal NFE, and
- cross-sampled: since every model is a denoiser D(x_hat; sigma), any model can
  integrate any formulation's ODE. Every model is sampled with edm's complete
  sampler settings (the edm ODE, Heun, edm steps, N = 18) and the edm model with
  flow's (the flow ODE, Euler, uniform-t, N = 50).

Scores (edm_space.metrics, edm_space.classifier): sliced W2 and MMD^2 against
reference data, each with a bootstrap error; the model's likelihood by the
probability-flow ODE on evaluation points; the loss floor (the loss of each model
against the ideal denoiser of its training set per sigma bucket, all presets under
one weighting, EDM's lambda, so the buckets compare across presets); for images
the Frechet distance in a small classifier's features, its confidence and class
coverage. The model is also scored with the common sampler at a few training
budgets (training is run in stages; resuming is exact, so the stages are points on
one run). Everything is repeated for every seed and reported as mean and standard
deviation over seeds; orderings are tested on paired (same seed) differences
with a 95 % t-interval.

Finished runs are kept in the work folder (--work-dir) and reused when the settings
match (--fresh retrains). Results go to --out-dir (default benchmarks/results; with
--quick a temporary folder, so a smoke run never overwrites real results):
formulations_DATA.{json,md} and formulations_DATA_{nfe,training,lossfloor}.png.
"""

from __future__ import annotations

import argparse
import dataclasses
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
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

import presets  # noqa: E402
import samplers  # noqa: E402
from edm_space.classifier import cached_classifier, image_quality  # noqa: E402
from edm_space.data import load  # noqa: E402
from edm_space.errors import ConfigError, unknown  # noqa: E402
from edm_space.metrics import bootstrap, log_likelihood, loss_floor, median_bandwidth, mmd2, sliced_wasserstein2  # noqa: E402
from edm_space.optional import require  # noqa: E402
from edm_space.seeding import parse_seeds  # noqa: E402
from edm_space.training import TrainConfig, load_trained, load_training_data, train  # noqa: E402

Tensor = torch.Tensor

PRESETS = ("edm", "vp", "ve", "iddpm", "ddpm", "flow", "sd3")
QUICK_PRESETS = ("edm", "flow")
DATA_CHOICES = ("toy", "digits")
#: Common sampler: Heun on edm time steps, N = 18 (35 NFE), every model on its own ODE.
COMMON = ("heun", "edm", 18)
#: Cross-sampling: (model, ode, solver, discretization, steps); None as model means every model.
CROSS: Tuple[Tuple[Optional[str], str, str, str, int], ...] = (
    (None, "edm", "heun", "edm", 18),  # every model with edm's sampler settings, edm's ODE included
    ("edm", "flow", "euler", "uniform-t", 50),  # the edm model with flow's sampler settings
)
#: Sections of the result rows.
SECTIONS = ("training", "own", "sweep", "cross", "data")
KEY_FIELDS = ("section", "model", "ode", "solver", "discretization", "steps", "nfe", "images")
#: A sample is counted as far from the data beyond this many times the reference's
#: 99th-percentile nearest-neighbour distance.
FAR_FACTOR = 2.0


@dataclass
class Settings:
    """Everything that defines one data set's benchmark; stored in the results."""

    data: str = "toy"
    dataset: str = "moons"
    quick: bool = False
    presets: Tuple[str, ...] = PRESETS
    seeds: Tuple[int, ...] = (0, 1, 2)
    # the network and optimizer, the same for every preset
    net: str = "mlp"
    net_options: Dict[str, Any] = field(default_factory=lambda: {"width": 128, "depth": 3})
    batch: int = 256
    lr: float = 2e-3
    warmup_images: int = 20_000
    ema_halflife_images: float = 50_000.0
    grad_clip: float = 1.0
    #: cumulative optimizer steps at which the model is scored (the last is the full budget)
    stages: Tuple[int, ...] = (150, 300, 600, 1200)
    # sampling
    num_samples: int = 1000
    #: images: real digits in the reference of sliced W2 and MMD^2 (the Frechet distance uses all of them)
    reference_size: int = 512
    nfe_grid: Tuple[int, ...] = (9, 17, 35, 63)
    #: caps on a preset's own default steps: {preset: steps}
    own_steps_cap: Dict[str, int] = field(default_factory=dict)
    # scores
    projections: int = 256
    bootstrap: int = 8
    ll_points: int = 256
    ll_steps: int = 48
    ll_sigma_min: float = 0.02
    ll_sigma_max: float = 80.0
    ll_exact: Optional[bool] = True
    dequantize_bins: Optional[int] = None
    floor_draws: int = 2048
    floor_buckets: Tuple[float, ...] = (0.002, 0.01, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0)
    threads: int = 1

    @property
    def images(self) -> bool:
        return self.data == "digits"

    @property
    def primary(self) -> str:
        """The headline sample-quality metric."""
        return "fd" if self.images else "sw2"

    @property
    def quality_metrics(self) -> Tuple[str, ...]:
        return ("fd", "sw2", "mmd2") if self.images else ("sw2", "mmd2")

    def fingerprint(self, preset: str, seed: int) -> str:
        """What one run's result depends on (not the preset list, seed list, threads or quick flag)."""
        payload = dataclasses.asdict(self)
        for key in ("presets", "seeds", "threads", "quick"):
            payload.pop(key)
        payload.update(preset=preset, seed=seed, version=3)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_settings(data: str, quick: bool = False, preset_names: Optional[Sequence[str]] = None,
                  seeds: Optional[Sequence[int]] = None, threads: int = 1) -> Settings:
    """The settings of the `data` benchmark ('toy' or 'digits'); --quick is a toy-sized smoke run."""
    if data not in DATA_CHOICES:
        raise ConfigError(f"unknown data {data!r}; valid: {', '.join(DATA_CHOICES)}, all")
    if data == "toy":
        s = Settings()
    else:
        s = Settings(
            data="digits", dataset="digits", net="unet",
            net_options={"channels": 16, "channel_mult": [1, 2], "blocks_per_level": 1},
            batch=128, lr=2e-3, warmup_images=10_000, ema_halflife_images=20_000.0,
            stages=(100, 200, 400, 800), num_samples=256,
            # DDPM's own 1000 ancestral steps would cost more than the rest of the run together.
            own_steps_cap={"ddpm": 100},
            ll_points=128, ll_steps=24, ll_exact=False, dequantize_bins=17,  # pixel values 0..16
            floor_draws=1024,
        )
    if quick:
        s = dataclasses.replace(
            s, quick=True, presets=QUICK_PRESETS, seeds=(0,), stages=(40, 80), num_samples=256,
            nfe_grid=(9, 35), bootstrap=3, projections=64, ll_points=32, ll_steps=6, floor_draws=256,
            net_options={"width": 64, "depth": 2} if data == "toy" else {"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1},
            own_steps_cap={"vp": 32, "ve": 32, "iddpm": 32, "ddpm": 32},
        )
    if preset_names is not None:
        for name in preset_names:
            if name not in presets.names():
                raise unknown("preset", name, presets.names())
        if not preset_names:
            raise ConfigError("--presets is empty; name at least one preset")
        s = dataclasses.replace(s, presets=tuple(preset_names))
    if seeds is not None:
        if not seeds:
            raise ConfigError("--seeds is empty; give at least one seed")
        s = dataclasses.replace(s, seeds=tuple(int(v) for v in seeds))
    if threads < 1:
        raise ConfigError(f"--threads {threads} is invalid; need at least 1")
    return dataclasses.replace(s, threads=threads)


def steps_for_nfe(solver: str, nfe: int) -> int:
    """The steps of `solver` within `nfe` evaluations (exactly nfe on the grid's odd NFEs)."""
    return samplers.get(solver).steps_for_nfe(nfe)


def own_sampler(preset: str, settings: Settings) -> Dict[str, Any]:
    """The preset's own default sampler, with the step cap of `settings` applied."""
    f = presets.get(preset)
    steps = int(f.default_steps)
    cap = settings.own_steps_cap.get(preset)
    capped = cap is not None and steps > cap
    return {"solver": f.default_solver, "discretization": f.default_discretization, "steps": cap if capped else steps,
            "default_steps": steps, "capped": capped}


# --------------------------------------------------------------------------- evaluation data


class Evaluation:
    """Reference data and scorers for one seed: everything a sample set is compared with."""

    def __init__(self, settings: Settings, seed: int, work_dir: str):
        self.settings = settings
        self.seed = seed
        n = settings.num_samples
        if settings.images:
            self.classifier, images, _ = cached_classifier(settings.dataset, os.path.join(work_dir, "classifier"))
            self.all_real = images.to(torch.float64)  # every real digit (the training set; there is no other)
            with torch.no_grad():  # computed once, passed to edm_space.classifier.image_quality for every sample set
                self.real_features = self.classifier.features(images.to(torch.float32))
            # Per seed, disjoint random subsets: the reference of sliced W2 and MMD^2, the data-vs-data
            # row, and the likelihood points.
            pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(5000 + seed))
            m = settings.reference_size
            self.reference = self.all_real[pick[:m]]
            self.real_sample = self.all_real[pick[m : m + n]]
            self.ll_points = self.all_real[pick[m + n : m + n + settings.ll_points]]
        else:
            self.classifier = None
            self.reference = load(settings.dataset, n=n, seed=1000 + seed).to(torch.float64)
            self.real_sample = load(settings.dataset, n=n, seed=2000 + seed).to(torch.float64)
            self.ll_points = load(settings.dataset, n=settings.ll_points, seed=3000 + seed).to(torch.float64)
            self.all_real = self.reference
        flat = self.all_real.reshape(len(self.all_real), -1)
        h = median_bandwidth(flat[:2000], flat[:0])
        self.bandwidths = (0.5 * h, h, 2 * h)  # fixed per data set, so MMD^2 values compare across rows
        # A sample is 'far' when it is farther from every reference point than FAR_FACTOR times the
        # 99th percentile of the reference's own (leave-one-out) nearest-neighbour distances.
        own = torch.cdist(flat, flat)
        own.fill_diagonal_(math.inf)
        self.far_radius = FAR_FACTOR * float(torch.quantile(own.min(dim=1).values, 0.99))

    def score(self, x: Tensor) -> Dict[str, Any]:
        """Sliced W2 and MMD^2 (with bootstrap errors) and, for images, the classifier scores."""
        s = self.settings
        x = x.to(torch.float64)
        finite = torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
        out: Dict[str, Any] = {"nonfinite": int((~finite).sum())}
        if not bool(finite.all()):
            nan = float("nan")
            out.update(sw2=nan, sw2_boot=nan, mmd2=nan, mmd2_boot=nan, far=nan)
            if s.images:
                out.update(fd=nan, confidence=nan, min_class_fraction=nan, max_class_fraction=nan)
            return out
        sw = lambda a, b: sliced_wasserstein2(a, b, num_projections=s.projections, seed=0)  # noqa: E731
        mm = lambda a, b: mmd2(a, b, bandwidths=self.bandwidths)  # noqa: E731
        out["sw2"], out["sw2_boot"] = bootstrap(sw, x, self.reference, num_resamples=s.bootstrap, seed=self.seed)
        out["mmd2"], out["mmd2_boot"] = bootstrap(mm, x, self.reference, num_resamples=s.bootstrap, seed=self.seed)
        nearest = torch.cdist(x.reshape(len(x), -1), self.all_real.reshape(len(self.all_real), -1)).min(dim=1).values
        out["far"] = float((nearest > self.far_radius).double().mean())
        if s.images:
            quality = image_quality(x, None, self.classifier, real_features=self.real_features)
            out.update(fd=quality["frechet_distance"], confidence=quality["confidence"],
                       min_class_fraction=quality["min_class_fraction"], max_class_fraction=quality["max_class_fraction"])
        return out


# --------------------------------------------------------------------------- one run


def _train_config(settings: Settings, preset: str, seed: int, run_dir: str, steps: int) -> TrainConfig:
    return TrainConfig(
        preset=preset, data=settings.dataset, out=run_dir, net=settings.net, net_options=dict(settings.net_options),
        steps=steps, batch=settings.batch, lr=settings.lr, warmup_images=settings.warmup_images,
        grad_clip=settings.grad_clip, ema_halflife_images=settings.ema_halflife_images, seed=seed,
        checkpoint_every=max(settings.stages), keep_checkpoints=1, log_every=max(min(settings.stages) // 2, 1),
    )


def _sample(denoiser, latents: Tensor, ode: str, solver: str, discretization: str, steps: int, noise_seed: int) -> Tuple[Tensor, int]:
    generator = torch.Generator().manual_seed(noise_seed)
    randn_like = lambda x: torch.randn(x.shape, dtype=x.dtype, generator=generator)  # noqa: E731
    info: Dict[str, Any] = {}
    with torch.no_grad():
        x = samplers.sample(denoiser, latents, formulation=ode, solver=solver, num_steps=steps,
                            discretization=discretization, randn_like=randn_like, info=info)
    return x, int(info["nfe"])


def run_one(settings: Settings, preset: str, seed: int, work_dir: str, evaluation: Evaluation,
            log: Callable[[str], None] = print, reuse: bool = True) -> Dict[str, Any]:
    """Train `preset` with `seed` in stages and score it every way; a finished run with the same settings is reused."""
    root = os.path.join(work_dir, settings.data, f"{preset}-seed{seed}")
    result_path = os.path.join(root, "result.json")
    fingerprint = settings.fingerprint(preset, seed)
    if reuse and os.path.isfile(result_path):
        try:
            with open(result_path) as file:
                stored = json.load(file)
            if stored.get("fingerprint") == fingerprint:
                stored["reused"] = True
                log(f"  {preset} seed {seed}: reusing {result_path}")
                return stored
        except (OSError, ValueError):
            pass
    if os.path.isdir(root):
        shutil.rmtree(root)  # stale: other settings, or an unfinished run of this code
    run_dir = os.path.join(root, "run")
    os.makedirs(root, exist_ok=True)
    started = time.perf_counter()
    timing = {"train_s": 0.0, "sample_s": 0.0, "score_s": 0.0, "likelihood_s": 0.0, "loss_floor_s": 0.0}
    rows: List[Dict[str, Any]] = []
    item_shape = tuple(evaluation.reference.shape[1:])
    latents = torch.randn(settings.num_samples, *item_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(10_000 + seed))
    noise_seed = 20_000 + seed

    def add(section: str, denoiser, images: int, ode: str, solver: str, discretization: str, steps: int,
            cache: Dict[Tuple, Dict[str, Any]], **extra) -> Dict[str, Any]:
        key = (ode, solver, discretization, steps)
        if key not in cache:
            t0 = time.perf_counter()
            x, nfe = _sample(denoiser, latents, ode, solver, discretization, steps, noise_seed)
            t1 = time.perf_counter()
            scores = evaluation.score(x)
            t2 = time.perf_counter()
            timing["sample_s"] += t1 - t0
            timing["score_s"] += t2 - t1
            cache[key] = {"nfe": nfe, "sample_s": round(t1 - t0, 3), **scores}
        row = {"section": section, "model": preset, "ode": ode, "solver": solver, "discretization": discretization,
               "steps": steps, "images": images, "seed": seed, **cache[key], **extra}
        rows.append(row)
        return row

    denoiser = None
    common.refuse_legacy_run(run_dir)
    for stage in settings.stages:
        t0 = time.perf_counter()
        train(_train_config(settings, preset, seed, run_dir, stage), progress=False)
        timing["train_s"] += time.perf_counter() - t0
        denoiser, config, _, _, step = load_trained(run_dir)
        images = step * settings.batch
        cache: Dict[Tuple, Dict[str, Any]] = {}
        solver, discretization, n = COMMON
        add("training", denoiser, images, preset, solver, discretization, n, cache)
        log(f"  {preset} seed {seed}: {images} images, {settings.primary} {rows[-1].get(settings.primary, float('nan')):.4g}")
    # Full scoring of the final model (the cache shares identical sampler settings between sections).
    final_images = settings.stages[-1] * settings.batch
    own = own_sampler(preset, settings)
    add("own", denoiser, final_images, preset, own["solver"], own["discretization"], own["steps"], cache,
        capped_from=own["default_steps"] if own["capped"] else None)
    for nfe in settings.nfe_grid:
        for solver in ("heun", "euler"):
            add("sweep", denoiser, final_images, preset, solver, "edm", steps_for_nfe(solver, nfe), cache)
    for model, ode, solver, discretization, n in CROSS:
        if model is None or model == preset:
            add("cross", denoiser, final_images, ode, solver, discretization, n, cache)

    t0 = time.perf_counter()
    ll = log_likelihood(denoiser, evaluation.ll_points, sigma_min=settings.ll_sigma_min, sigma_max=settings.ll_sigma_max,
                        num_steps=settings.ll_steps, exact_divergence=settings.ll_exact, seed=seed,
                        dequantize_bins=settings.dequantize_bins)
    timing["likelihood_s"] = time.perf_counter() - t0
    unit = "bits_per_dim" if settings.images else "nats_per_dim"
    per_point = ll[unit].to(torch.float64)
    likelihood = {"unit": unit, "nll": float(per_point.mean()), "nll_se": float(per_point.std() / math.sqrt(len(per_point))),
                  "points": len(per_point), "sigma_min": settings.ll_sigma_min, "sigma_max": settings.ll_sigma_max,
                  "num_steps": settings.ll_steps, "divergence": "exact" if settings.ll_exact else "hutchinson"}

    t0 = time.perf_counter()
    train_data, _ = load_training_data(config)
    weighting = presets.get("edm", sigma_data=float(config.sigma_data))  # one weighting for every preset
    floor_rows = loss_floor(denoiser, weighting, train_data, num_draws=settings.floor_draws, buckets=settings.floor_buckets, seed=seed)
    timing["loss_floor_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - started
    timing = {k: round(v, 2) for k, v in timing.items()}
    result = {"preset": preset, "seed": seed, "fingerprint": fingerprint, "rows": rows, "likelihood": likelihood,
              "loss_floor": floor_rows, "sigma_data": config.sigma_data, "timing": timing, "reused": False}
    common.write_json(result_path, result, indent=1)
    log(f"  {preset} seed {seed}: done in {timing['total_s']:.0f} s (train {timing['train_s']:.0f}, sample {timing['sample_s']:.0f}, "
        f"score {timing['score_s']:.0f}, likelihood {timing['likelihood_s']:.0f}, loss floor {timing['loss_floor_s']:.0f})")
    return result


def data_rows(settings: Settings, evaluation: Evaluation, seed: int) -> List[Dict[str, Any]]:
    """The data-vs-data row: a second set of real data scored like the samples (the floor at this sample size)."""
    scores = evaluation.score(evaluation.real_sample)
    return [{"section": "data", "model": "data", "ode": "-", "solver": "-", "discretization": "-", "steps": 0, "nfe": 0,
             "images": 0, "seed": seed, **scores}]


# --------------------------------------------------------------------------- aggregation


def _finite(values: Sequence[Any]) -> List[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and v is not None and math.isfinite(float(v))]


def mean_std(values: Sequence[Any]) -> Dict[str, Any]:
    """Mean and sample standard deviation (ddof = 1; 0 for one value) of the finite values, with their count."""
    good = _finite(values)
    if not good:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(good)), "std": float(np.std(good, ddof=1)) if len(good) > 1 else 0.0, "n": len(good)}


def aggregate_rows(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows grouped by KEY_FIELDS; every numeric non-key field becomes {mean, std, n} over the group's seeds."""
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in KEY_FIELDS), []).append(row)
    out = []
    for key, members in groups.items():
        entry: Dict[str, Any] = dict(zip(KEY_FIELDS, key))
        entry["seeds"] = [m["seed"] for m in members]
        fields = [f for f in members[0] if f not in KEY_FIELDS and f != "seed"]
        for name in fields:
            values = [m.get(name) for m in members]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None) and any(v is not None for v in values):
                entry[name] = mean_std(values)
            else:
                entry[name] = values[0]
        out.append(entry)
    return out


def aggregate_runs(runs: Sequence[Dict[str, Any]], data: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean and spread over seeds of every row, of the likelihood and of the loss floor per bucket."""
    rows = [row for run in runs for row in run["rows"]] + list(data)
    likelihood: Dict[str, Any] = {}
    floor: Dict[str, List[Dict[str, Any]]] = {}
    timing: Dict[str, Any] = {}
    for preset in dict.fromkeys(run["preset"] for run in runs):
        mine = [run for run in runs if run["preset"] == preset]
        likelihood[preset] = {"unit": mine[0]["likelihood"]["unit"], "nll": mean_std([r["likelihood"]["nll"] for r in mine]),
                              "nll_se": mean_std([r["likelihood"]["nll_se"] for r in mine])}
        buckets = []
        for i, bucket in enumerate(mine[0]["loss_floor"]):
            buckets.append({"sigma_lo": bucket["sigma_lo"], "sigma_hi": bucket["sigma_hi"],
                            **{k: mean_std([r["loss_floor"][i][k] for r in mine]) for k in ("model", "floor", "excess")}})
        floor[preset] = buckets
        timing[preset] = mean_std([r["timing"]["total_s"] for r in mine if not r.get("reused")] or [r["timing"]["total_s"] for r in mine])
    return {"rows": aggregate_rows(rows), "likelihood": likelihood, "loss_floor": floor, "run_seconds": timing}


# --------------------------------------------------------------------------- orderings


def compare(a: Dict[int, float], b: Dict[int, float], a_boot: Optional[Dict[int, float]] = None,
            b_boot: Optional[Dict[int, float]] = None) -> Dict[str, Any]:
    """Is a < b? Paired over the seeds both have (a 95 % t-interval of the mean difference a - b).

    With one seed the interval comes from the bootstrap errors instead (1.96 sigma).
    verdict: 'a lower', 'b lower', or 'not resolved' (the interval contains 0).
    """
    seeds = sorted(s for s in set(a) & set(b) if _finite([a[s], b[s]]) and len(_finite([a[s], b[s]])) == 2)
    if not seeds:
        return {"diff": None, "half_width": None, "n": 0, "a_lower_in": 0, "verdict": "no data"}
    d = np.array([a[s] - b[s] for s in seeds])
    n = len(d)
    if n >= 2:
        half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    else:
        ea = (a_boot or {}).get(seeds[0])
        eb = (b_boot or {}).get(seeds[0])
        half = 1.96 * math.sqrt((ea or 0.0) ** 2 + (eb or 0.0) ** 2) if ea is not None or eb is not None else float("inf")
    mean = float(d.mean())
    verdict = "a lower" if mean + half < 0 else "b lower" if mean - half > 0 else "not resolved"
    return {"diff": mean, "half_width": half, "n": n, "a_lower_in": int((d < 0).sum()), "verdict": verdict}


def _by_seed(rows: Sequence[Dict[str, Any]], metric: str, **match) -> Tuple[Dict[int, float], Dict[int, float]]:
    values, boots = {}, {}
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            values[row["seed"]] = row.get(metric)
            if f"{metric}_boot" in row:
                boots[row["seed"]] = row[f"{metric}_boot"]
    return values, boots


def orderings(settings: Settings, runs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """EDM's orderings tested on these runs: edm <= vp and ve in sample quality; Heun beats Euler at equal NFE."""
    rows = [row for run in runs for row in run["rows"]]
    present = {run["preset"] for run in runs}
    claims = []
    heun, disc, n = COMMON
    for other in ("vp", "ve"):
        if "edm" not in present or other not in present:
            continue
        for sampler in ("own", "common"):
            for metric in settings.quality_metrics + ("far",):
                if sampler == "own":
                    a = _by_seed(rows, metric, section="own", model="edm")
                    b = _by_seed(rows, metric, section="own", model=other)
                else:
                    a = _by_seed(rows, metric, section="sweep", model="edm", solver=heun, steps=n)
                    b = _by_seed(rows, metric, section="sweep", model=other, solver=heun, steps=n)
                result = compare(a[0], b[0], a[1], b[1])
                claims.append({"claim": f"edm <= {other}", "sampler": sampler, "metric": metric, **result,
                               "holds": _holds(result)})
    for preset in settings.presets:
        if preset not in present:
            continue
        for nfe in settings.nfe_grid:
            for metric in settings.quality_metrics:
                a = _by_seed(rows, metric, section="sweep", model=preset, solver="heun", steps=steps_for_nfe("heun", nfe))
                b = _by_seed(rows, metric, section="sweep", model=preset, solver="euler", steps=steps_for_nfe("euler", nfe))
                result = compare(a[0], b[0], a[1], b[1])
                claims.append({"claim": f"heun < euler ({preset})", "preset": preset, "nfe": nfe, "metric": metric,
                               **result, "holds": _holds(result)})
    return claims


def _holds(result: Dict[str, Any]) -> str:
    return {"a lower": "holds", "b lower": "reversed", "not resolved": "not resolved"}.get(result["verdict"], "no data")


# --------------------------------------------------------------------------- the benchmark


def run_benchmark(settings: Settings, out_dir: str, work_dir: Optional[str] = None, plot: bool = True,
                  reuse: bool = True, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run (or reuse) every preset x seed, aggregate, and write formulations_DATA.{json,md} and the plots."""
    for name in settings.presets:
        presets.get(name)
    work_dir = work_dir or default_work_dir()
    os.makedirs(out_dir, exist_ok=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    machine = common.machine_info()
    try:
        runs: List[Dict[str, Any]] = []
        data: List[Dict[str, Any]] = []
        for seed in settings.seeds:
            evaluation = Evaluation(settings, seed, work_dir)
            data += data_rows(settings, evaluation, seed)
            for preset in settings.presets:
                log(f"[{settings.data}] {preset}, seed {seed} ({time.perf_counter() - started:.0f} s so far)")
                runs.append(run_one(settings, preset, seed, work_dir, evaluation, log=log, reuse=reuse))
    finally:
        torch.set_num_threads(previous_threads)
    wall = time.perf_counter() - started
    results = {
        "benchmark": "formulations",
        "data": settings.data,
        "settings": dataclasses.asdict(settings),
        "common_sampler": {"solver": COMMON[0], "discretization": COMMON[1], "steps": COMMON[2], "nfe": samplers.get(COMMON[0]).nfe(COMMON[2])},
        "own_samplers": {p: own_sampler(p, settings) for p in settings.presets},
        "cross": [{"model": m or "every", "ode": o, "solver": s, "discretization": d, "steps": n} for m, o, s, d, n in CROSS],
        "wall_s": round(wall, 1),
        "reused_runs": sum(1 for r in runs if r.get("reused")),
        "runs_compute_s": round(sum(r["timing"]["total_s"] for r in runs), 1),  # when they were run, reused or not
        "machine": machine,
        "summary": aggregate_runs(runs, data),
        "orderings": orderings(settings, runs),
        "runs": runs,
        "data_rows": data,
    }
    write_results(results, out_dir, plot=plot, log=log)
    return results


def settings_from_json(payload: Dict[str, Any]) -> Settings:
    """The Settings stored in a results file."""
    known = {f.name: f for f in dataclasses.fields(Settings)}
    values = {}
    for key, value in payload.items():
        if key in known:
            values[key] = tuple(value) if isinstance(value, list) and key != "net_options" else value
    return Settings(**values)


def rebuild_report(json_path: str, out_dir: Optional[str] = None, plot: bool = True,
                   log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Recompute the summary and orderings of a results file from its runs and rewrite its JSON, Markdown and plots.

    Nothing is trained or sampled; the wall time and machine of the original run are kept.
    """
    try:
        with open(json_path) as file:
            results = json.load(file)
        settings = settings_from_json(results["settings"])
        runs, data = results["runs"], results["data_rows"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{json_path!r} is not a formulations results file ({type(error).__name__}: {error})") from None
    results["summary"] = aggregate_runs(runs, data)
    results["orderings"] = orderings(settings, runs)
    results["runs_compute_s"] = round(sum(r["timing"]["total_s"] for r in runs), 1)
    write_results(results, out_dir or os.path.dirname(os.path.abspath(json_path)), plot=plot, log=log)
    return results


def default_work_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "edm-space-bench-formulations")


def stem(settings_or_data) -> str:
    data = settings_or_data if isinstance(settings_or_data, str) else settings_or_data["data"]
    return f"formulations_{data}"


def write_results(results: Dict[str, Any], out_dir: str, plot: bool = True, log: Callable[[str], None] = print) -> List[str]:
    """formulations_DATA.json / .md and, with matplotlib, the _nfe, _training and _lossfloor PNGs."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem(results))
    paths = []
    images = []
    if plot and common.have_matplotlib():
        images = write_plots(results, base)
        paths += images
    common.write_json(base + ".json", results, indent=1)
    common.write_markdown(base + ".md", format_markdown(results, [os.path.basename(p) for p in images]))
    paths += [base + ".json", base + ".md"]
    for path in paths:
        log(f"wrote {path}")
    return paths


# --------------------------------------------------------------------------- Markdown


METRIC_NAMES = {"fd": "Frechet dist.", "sw2": "sliced W2", "mmd2": "MMD^2", "far": "far samples", "confidence": "confidence",
                "min_class_fraction": "min class", "nll": "NLL"}


def _fmt(value: Optional[float]) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude < 1e-12:
        return "0"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1e-3:
        return f"{value:.4f}" if magnitude < 1 else f"{value:.3f}"
    return f"{value:.2e}"


def _pm(stat: Any) -> str:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return "n/a"
    if stat["n"] < 2:
        return _fmt(stat["mean"])
    return f"{_fmt(stat['mean'])} ± {_fmt(stat['std'])}"


def _find(rows: Sequence[Dict[str, Any]], **match) -> Optional[Dict[str, Any]]:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def format_markdown(results: Dict[str, Any], images: Sequence[str] = ()) -> str:
    s = results["settings"]
    summary = results["summary"]
    rows = summary["rows"]
    is_images = s["data"] == "digits"
    metrics = ("fd", "sw2", "mmd2") if is_images else ("sw2", "mmd2")
    primary = metrics[0]
    seeds = s["seeds"]
    heun, disc, n_common = COMMON
    nfe_common = samplers.get(heun).nfe(n_common)
    unit = "bits/dim" if is_images else "nats/dim"
    lines = [f"# Formulation benchmark: {s['data']} ({s['dataset']})", ""]
    if s["quick"]:
        lines += ["**--quick smoke run: tiny budgets, one seed; these numbers say nothing about the formulations.**", ""]
    lines += [
        f"Command: `python benchmarks/formulations.py --data {s['data']}" + (" --quick" if s["quick"] else "") + "`"
        + f". Wall time {results['wall_s']:.0f} s"
        + (f" ({results['reused_runs']} of {len(results['runs'])} runs reused from the work folder; the runs took "
           f"{results.get('runs_compute_s', float('nan')):.0f} s in all when they were trained and scored)" if results["reused_runs"] else "")
        + f"; torch threads {s['threads']}; machine: {results['machine']['cpu_count']} CPUs, load average at start "
        + f"{results['machine']['load_average_at_start']} (shared).",
        "",
        f"Every preset trains the same network (`{s['net']}` {json.dumps(s['net_options'])}) with Adam (lr {s['lr']}, "
        f"warm-up {s['warmup_images']} images, gradient clip {s['grad_clip']}, EMA half-life {s['ema_halflife_images']:g} images), "
        f"batch {s['batch']}, {s['stages'][-1]} steps = {s['stages'][-1] * s['batch']:,} training images, seeds {', '.join(map(str, seeds))}. "
        f"Mean ± standard deviation over the {len(seeds)} seed(s); each seed has its own training seed, latents, "
        f"reference set and likelihood points. {s['num_samples']} samples per row.",
        "",
        "Scores (lower is better unless marked): "
        + ("Frechet distance in the features of the cached digit classifier (edm_space.classifier), " if is_images else "")
        + f"sliced W2 ({s['projections']} directions) and MMD^2 (Gaussian kernels, bandwidths fixed per data set) against "
        + (f"{s['reference_size']} real digits (the Frechet distance: against all 1,797; all are training images, there is no held-out set)"
           if is_images else "a fresh draw of the data")
        + "; far samples: the fraction farther from every " + ("real digit" if is_images else "reference point")
        + f" than {FAR_FACTOR:g}x the 99th percentile of the data's own nearest-neighbour distances"
        + f"; NLL in {unit} by the probability-flow ODE from sigma = {s['ll_sigma_min']} to {s['ll_sigma_max']} "
        + f"(RK4, {s['ll_steps']} steps in ln sigma, {'Hutchinson' if s['ll_exact'] is False else 'exact'} divergence) on "
        + f"{s['ll_points']} " + ("real digits, dequantized over 17 levels" if is_images else "fresh points") + " per seed.",
        "",
    ]
    data_row = _find(rows, section="data")
    if data_row:
        lines += ["Data vs data (a second " + ("random subset of real digits" if is_images else "fresh draw")
                  + " scored like the samples; no model can be expected below this at this sample size): "
                  + ", ".join(f"{METRIC_NAMES[m]} {_pm(data_row.get(m))}" for m in metrics + ("far",))
                  + (f", confidence {_pm(data_row.get('confidence'))}" if is_images else "") + ".", ""]

    # main table
    lines += ["## Equal training budget", ""]
    shown = metrics + ("far",)
    headers = ["preset", "own sampler", "NFE"] + [f"{METRIC_NAMES[m]} (own)" for m in shown] \
        + [f"{METRIC_NAMES[m]} (heun/edm, {nfe_common} NFE)" for m in shown] + [f"NLL {unit}"]
    if is_images:
        headers += ["confidence (own)", "min class (own)"]
    body = []
    for preset in s["presets"]:
        own = _find(rows, section="own", model=preset)
        common_row = _find(rows, section="sweep", model=preset, solver=heun, steps=n_common)
        if own is None:
            continue
        sampler = f"{own['solver']}, {own['discretization']}, N={own['steps']}"
        if results["own_samplers"].get(preset, {}).get("capped"):
            sampler += f" (capped from {results['own_samplers'][preset]['default_steps']})"
        ll = summary["likelihood"].get(preset, {}).get("nll")
        line = [preset, sampler, own["nfe"]] + [_pm(own.get(m)) for m in shown] \
            + [_pm(common_row.get(m)) if common_row else "n/a" for m in shown] + [_pm(ll)]
        if is_images:
            line += [_pm(own.get("confidence")), _pm(own.get("min_class_fraction"))]
        body.append(line)
    lines += [common.markdown_table(headers, body), ""]
    if is_images:
        lines += ["Confidence (higher is better): the classifier's mean top-class probability; min class: the fraction "
                  "of samples in the rarest class (0.1 is perfectly even over 10 classes).", ""]

    # orderings
    lines += ["## EDM's orderings", "",
              "Paired over seeds (same training data, latents and reference per seed): the difference of means and a "
              "95 % t-interval (with one seed: 1.96 bootstrap errors). 'holds' / 'reversed' need the interval to "
              "exclude 0; otherwise 'not resolved'. 'k/n' counts the seeds in which the claimed order held.", ""]
    body = []
    for c in results["orderings"]:
        if not c["claim"].startswith("edm"):
            continue
        sampler = "own samplers" if c["sampler"] == "own" else f"heun/edm, {nfe_common} NFE"
        body.append([c["claim"], sampler, METRIC_NAMES[c["metric"]], _fmt(c["diff"]), _fmt(c["half_width"]),
                     f"{c['a_lower_in']}/{c['n']}", c["holds"]])
    lines += [common.markdown_table(["claim", "sampler", "metric", "diff (edm - other)", "± 95 %", "k/n", "verdict"], body), ""]
    lines += [f"Heun < Euler at equal NFE (edm time steps, each model on its own ODE), {METRIC_NAMES[primary]}:", ""]
    body = []
    for preset in s["presets"]:
        line = [preset]
        for nfe in s["nfe_grid"]:
            c = next((c for c in results["orderings"] if c.get("preset") == preset and c.get("nfe") == nfe and c["metric"] == primary), None)
            line.append("n/a" if c is None else f"{c['holds']} ({c['a_lower_in']}/{c['n']})")
        body.append(line)
    lines += [common.markdown_table(["preset"] + [f"NFE {v}" for v in s["nfe_grid"]], body), ""]
    held = [c for c in results["orderings"] if c["claim"].startswith("heun")]
    if held:
        counts = {v: sum(1 for c in held if c["holds"] == v) for v in ("holds", "reversed", "not resolved")}
        lines += [f"Over all presets, NFEs and metrics ({len(held)} comparisons): holds {counts['holds']}, "
                  f"reversed {counts['reversed']}, not resolved {counts['not resolved']}.", ""]

    # NFE sweep
    lines += ["## Metric against NFE", "", f"{METRIC_NAMES[primary]}, edm time steps, each model on its own ODE:", ""]
    body = []
    for preset in s["presets"]:
        for solver in ("heun", "euler"):
            line = [preset, solver]
            for nfe in s["nfe_grid"]:
                r = _find(rows, section="sweep", model=preset, solver=solver, steps=steps_for_nfe(solver, nfe))
                line.append(_pm(r.get(primary)) if r else "n/a")
            body.append(line)
    lines += [common.markdown_table(["preset", "solver"] + [f"NFE {v}" for v in s["nfe_grid"]], body), ""]

    # training budget
    lines += ["## Metric against training images", "", f"{METRIC_NAMES[primary]} with the common sampler (heun/edm, {nfe_common} NFE):", ""]
    budgets = [st * s["batch"] for st in s["stages"]]
    body = []
    for preset in s["presets"]:
        line = [preset]
        for budget in budgets:
            r = _find(rows, section="training", model=preset, images=budget)
            line.append(_pm(r.get(primary)) if r else "n/a")
        body.append(line)
    lines += [common.markdown_table(["preset"] + [f"{b:,} images" for b in budgets], body), ""]

    # cross-sampling
    lines += ["## Cross-sampling", "",
              "A trained model is a denoiser D(x_hat; sigma), so it can integrate any formulation's ODE. 'own ODE' rows "
              "integrate the model's own formulation; 'edm ODE' rows use edm's complete sampler settings "
              "(sigma(t) = t, s = 1, Heun, edm steps, N = 18); the edm model is also run with flow's settings "
              "(flow ODE, Euler, uniform-t, N = 50).", ""]
    headers = ["model", "ODE", "solver", "steps", "NFE"] + [METRIC_NAMES[m] for m in shown]
    body = []
    for preset in s["presets"]:
        candidates = [r for r in rows if r["model"] == preset and (r["section"] in ("own", "cross")
                      or (r["section"] == "sweep" and r["solver"] == heun and r["steps"] == n_common))]
        seen = set()
        for r in candidates:
            key = (r["ode"], r["solver"], r["discretization"], r["steps"])
            if key in seen:
                continue
            seen.add(key)
            label = "own ODE" if r["ode"] == preset else f"{r['ode']} ODE"
            tag = " (own sampler)" if r["section"] == "own" else ""
            body.append([preset, label + tag, f"{r['solver']}, {r['discretization']}", r["steps"], r["nfe"]] + [_pm(r.get(m)) for m in shown])
    lines += [common.markdown_table(headers, body), ""]

    # loss floor
    lines += ["## Loss floor", "",
              "Excess of each model's loss over the ideal denoiser of its training set (the floor no model can beat), per "
              "sigma bucket, on the same draws; every preset under EDM's weighting lambda(sigma) = (sigma^2 + sd^2)/(sigma sd)^2, "
              f"so 1 is the loss of D = c_skip x. {s['floor_draws']} draws per bucket (EDM Fig. 5 style).", ""]
    floor = summary["loss_floor"]
    any_preset = next(iter(floor), None)
    if any_preset:
        labels = [f"{b['sigma_lo']:g}-{b['sigma_hi']:g}" for b in floor[any_preset]]
        body = [[preset] + [_pm(b["excess"]) for b in floor[preset]] for preset in s["presets"] if preset in floor]
        body.append(["floor (ideal denoiser)"] + [_pm(b["floor"]) for b in floor[any_preset]])
        lines += [common.markdown_table(["preset"] + [f"sigma {l}" for l in labels], body), ""]

    caps = [f"{p}: {v['solver']} N={v['steps']} instead of its default {v['default_steps']}" for p, v in results["own_samplers"].items() if v.get("capped")]
    lines += ["## Notes", ""]
    if caps:
        lines += ["- Own samplers capped to fit the time budget: " + "; ".join(caps) + "."]
    lines += [
        "- The common sampler and the sweep use edm time steps on every formulation's own ODE, with sigma in [0.002, 80] "
        "clipped to what the formulation supports.",
        "- Stochastic samplers (ddpm's ancestral) draw from a generator seeded per seed, so reruns reproduce.",
        "- Run time per run (mean over presets; seconds): "
        + ", ".join(f"{p} {_pm(v)}" for p, v in summary["run_seconds"].items()) + ".",
    ]
    for path in images:
        lines += ["", f"![{path}]({path})"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots

#: Axis labels with units: sliced W2 is in data units (coordinates of the toy set, pixels in [-1, 1]);
#: MMD^2 is a difference of kernel means (kernel values are unitless); the Frechet distance is in
#: squared classifier-feature units.
METRIC_AXIS = {"fd": "Frechet distance (classifier features^2)", "sw2": "sliced W2 (data units)", "mmd2": "MMD^2 (unitless)"}


def write_plots(results: Dict[str, Any], base: str) -> List[str]:
    """base_nfe.png, base_training.png, base_lossfloor.png (matplotlib)."""
    plt = common.pyplot("the formulation benchmark's plots")
    ticker = require("matplotlib.ticker", "the formulation benchmark's plots")

    s = results["settings"]
    rows = results["summary"]["rows"]
    is_images = s["data"] == "digits"
    metrics = ("fd", "sw2") if is_images else ("sw2", "mmd2")
    shown = list(s["presets"])
    colors = {p: plt.get_cmap("tab10")(i) for i, p in enumerate(PRESETS)}
    data_row = _find(rows, section="data")
    data_label = "data vs data (a second " + ("subset of real digits" if is_images else "draw of the data") + ")"
    reference = f"{s['reference_size']} real digits" if is_images else "a fresh draw of the data"
    seeds = f"mean ± std over {len(s['seeds'])} seed(s)"
    paths = []

    def save(fig, suffix):
        path = common.save_png(fig, f"{base}_{suffix}.png")
        paths.append(path)

    def stat(row, metric):
        value = row.get(metric) if row else None
        if isinstance(value, dict) and value.get("mean") is not None:
            return value["mean"], value["std"] or 0.0
        return float("nan"), 0.0

    def scale(ax, metric, ticks=None, labels=None):
        ax.set_xscale("log")
        if ticks is not None:
            ax.set_xticks(list(ticks))
            ax.set_xticklabels(labels or [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(ticker.NullLocator())
        if metric == "mmd2":
            ax.set_yscale("symlog", linthresh=1e-4)
        else:
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)

    # metric against NFE, one column per preset
    fig, axes = plt.subplots(len(metrics), len(shown), figsize=(2.8 * len(shown) + 0.8, 2.6 * len(metrics) + 1.0),
                             dpi=100, squeeze=False, sharey="row")
    for j, preset in enumerate(shown):
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            for solver, style in (("heun", "-"), ("euler", "--")):
                pts = [(nfe, *stat(_find(rows, section="sweep", model=preset, solver=solver, steps=steps_for_nfe(solver, nfe)), metric)) for nfe in s["nfe_grid"]]
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], linestyle=style, marker="o",
                            markersize=3, capsize=2, color=colors[preset], label=f"{preset} samples, {solver}")
            if data_row:
                ax.axhline(stat(data_row, metric)[0], color="gray", linestyle=":", linewidth=1, label=data_label)
            scale(ax, metric, s["nfe_grid"])
            if i == 0:
                ax.set_title(f"{preset} model", fontsize=9)
            ax.set_xlabel("NFE (denoiser evaluations)", fontsize=8)
            if j == 0:
                ax.set_ylabel(METRIC_AXIS[metric], fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle(f"{s['data']}: samples of each trained model against {reference}, by NFE (edm steps, own ODE; {seeds}); "
                 "lower is better", fontsize=10)
    fig.tight_layout()
    save(fig, "nfe")

    # metric against training images, one line per preset
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.4 * len(metrics), 4.3), dpi=100, squeeze=False)
    budgets = [st * s["batch"] for st in s["stages"]]
    for i, metric in enumerate(metrics):
        ax = axes[0][i]
        for preset in shown:
            pts = [(b, *stat(_find(rows, section="training", model=preset, images=b), metric)) for b in budgets]
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", markersize=3,
                        capsize=2, color=colors[preset], label=f"{preset} samples")
        if data_row:
            ax.axhline(stat(data_row, metric)[0], color="gray", linestyle=":", linewidth=1, label=data_label)
        scale(ax, metric, budgets, [f"{b / 1000:g}k" for b in budgets])
        ax.set_xlabel("training images seen (optimizer steps x batch)")
        ax.set_ylabel(f"{METRIC_AXIS[metric]}, heun/edm 35 NFE")
        ax.legend(fontsize=7)
    fig.suptitle(f"{s['data']}: samples against {reference}, by training budget ({seeds}); lower is better", fontsize=10)
    fig.tight_layout()
    save(fig, "training")

    # loss floor: excess loss against sigma per preset (EDM Fig. 5 style)
    floor = results["summary"]["loss_floor"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), dpi=100)
    for preset in shown:
        if preset not in floor:
            continue
        buckets = floor[preset]
        centers = [math.sqrt(b["sigma_lo"] * b["sigma_hi"]) for b in buckets]
        for ax, key in ((axes[0], "excess"), (axes[1], "model")):
            ax.errorbar(centers, [b[key]["mean"] for b in buckets], yerr=[b[key]["std"] for b in buckets], marker="o",
                        markersize=3, capsize=2, color=colors[preset], label=f"{preset} model")
    if floor:
        buckets = floor[next(iter(floor))]
        centers = [math.sqrt(b["sigma_lo"] * b["sigma_hi"]) for b in buckets]
        axes[1].plot(centers, [b["floor"]["mean"] for b in buckets], color="black", linestyle="--",
                     label="floor (ideal denoiser of the training data)")
    axes[0].set_title("model loss minus the floor", fontsize=9)
    axes[1].set_title("model loss and the floor", fontsize=9)
    axes[0].set_ylabel("excess loss (EDM weighting, unitless)")
    axes[1].set_ylabel("loss (EDM weighting, unitless)")
    for ax in axes:
        # symlog: the floor can be 0 (a memorized training set) and a small excess can come out negative
        ax.set_yscale("symlog", linthresh=1e-3)
        lowest = min((line.get_ydata().min() for line in ax.get_lines() if len(line.get_ydata())), default=0.0)
        if lowest >= 0:
            ax.set_ylim(bottom=0)
        ax.set_xscale("log")
        ax.set_xlabel("noise level sigma (bucket centre, data units)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{s['data']}: training loss on noisy training data per sigma under EDM's weighting ({seeds})", fontsize=10)
    fig.tight_layout()
    save(fig, "lossfloor")
    return paths


# --------------------------------------------------------------------------- command line


def _parse_list(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/formulations.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train every preset with the same network and budget; sample with own and common samplers; score.",
        epilog="Writes formulations_DATA.json, .md and _nfe/_training/_lossfloor.png under --out-dir.",
    )
    parser.add_argument("--data", default="all", choices=list(DATA_CHOICES) + ["all"],
                        help="data set: toy (2-D moons, MLP), digits (8x8 digits, U-Net) or both [default: all; toy with --quick]")
    parser.add_argument("--quick", action="store_true", help="toy smoke run (2 presets, 1 seed, tiny budgets; under a minute): what the tests run")
    parser.add_argument("--presets", dest="preset_list", default=None, help=f"comma-separated presets [default: {','.join(PRESETS)}]")
    parser.add_argument("--seeds", default=None, help="seeds, e.g. 0-2 or 0,1,2 [default: 0-2; 0 with --quick]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine) [default: 1]")
    parser.add_argument("--out-dir", default=None,
                        help="where formulations_*.{json,md,png} go [default: benchmarks/results; with --quick "
                             "TMPDIR/edm-space-formulations-quick, so a smoke run never overwrites real results]")
    parser.add_argument("--work-dir", default=None, help="where runs are trained and kept for reuse [default: TMPDIR/edm-space-bench-formulations]")
    parser.add_argument("--fresh", action="store_true", help="retrain every run instead of reusing finished ones")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the Markdown, plots and summary of existing formulations_DATA.json files under --out-dir from their runs; train nothing")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; bad input ends with one line `error: ...` on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    with common.one_line_errors():
        datasets = ["toy"] if args.quick and args.data == "all" else list(DATA_CHOICES) if args.data == "all" else [args.data]
        out_dir = args.out_dir
        if out_dir is None:
            out_dir = os.path.join(tempfile.gettempdir(), "edm-space-formulations-quick") if args.quick else common.RESULTS
        if args.report_only:
            for name in datasets:
                path = os.path.join(out_dir, f"{stem(name)}.json")
                if not os.path.isfile(path):
                    raise ConfigError(f"--report-only: {path!r} does not exist; run the benchmark first")
                rebuild_report(path, out_dir, plot=not args.no_plot)
            return 0
        seed_list = parse_seeds(args.seeds) if args.seeds is not None else None
        all_settings = [make_settings(name, quick=args.quick, preset_names=_parse_list(args.preset_list), seeds=seed_list,
                                      threads=args.threads) for name in datasets]  # every setting checked before any training
        for settings in all_settings:
            run_benchmark(settings, out_dir, work_dir=args.work_dir, plot=not args.no_plot, reuse=not args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
