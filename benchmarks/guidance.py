"""The guidance benchmark: classifier-free guidance and autoguidance against the guidance weight.

    pip install -e ".[data,plot]"
    python benchmarks/guidance.py toy         # 2-D branches: exact model, trained MLPs, 3 training seeds
    python benchmarks/guidance.py digits      # 8x8 digits: a conditional U-Net and a weaker guide
    python benchmarks/guidance.py all         # both
    python benchmarks/guidance.py --quick     # smoke run of both at toy sizes (about a minute), temporary folder
    python benchmarks/guidance.py all --report-only   # rebuild .md/.png from the committed .json

Guided denoiser (edm_space.guidance.GuidedDenoiser; Karras et al. 2024, eq. 1):
D_w(x; sigma, c) = D_guide(x; sigma, c) + w (D(x; sigma, c) - D_guide(x; sigma, c)), where the
guide is the same model with the null label (classifier-free guidance, Ho & Salimans
2022) or a weaker model of the same task (autoguidance, Karras et al. 2024). w = 1 is
the unguided conditional model.

toy -- the two-class branches of edm_space.toy_branches, whose exact class-conditional
law is a known Gaussian mixture (EDM2's toy setting, with our own tree). Sampled:
the exact conditional denoiser with classifier-free guidance (what guidance does to a
perfect model), a conditional MLP trained with label dropout 0.1 with classifier-free
guidance, and the same MLP guided by a smaller, shorter-trained MLP (autoguidance).
Scores per class, then averaged over the two classes:

- outside: the fraction of samples whose exact class-conditional log-density
  log p(x | c) lies below the level that holds 99 % of the true class-c samples
  (the 1 % quantile of log p(X | c) over many exact draws X ~ p(. | c)); exact
  samples score 1 % by construction, up to the sampler's error;
- sw2: sliced Wasserstein-2 distance (edm_space.metrics) to exact draws of the class.

digits -- scikit-learn's 8x8 digits. A class-conditional U-Net (channels 32, label
dropout 0.1) sampled with classifier-free guidance everywhere, with classifier-free
guidance limited to a noise interval (Kynkaanniemi et al. 2024; EDM2's (0.28, 5.4]
for sigma_data = 0.5, scaled by the digits' sigma_data), and with autoguidance by
a smaller U-Net trained for a quarter of the steps. Scores from the feature
classifier of edm_space.classifier: the Frechet distance of the samples to all
real digits in its features, its mean top-class probability (confidence), the
fraction of samples it assigns to the class they were drawn for (accuracy), and
the smallest class fraction (coverage; 0.1 is even).

Error bars are standard deviations over training seeds (toy; the exact model over
sample seeds) or over training x sample seeds (digits). Changes against w = 1 and
autoguidance against classifier-free guidance are paired (same seeds, same latents)
and come with 95 % t-intervals; a change whose interval holds 0 is "not resolved".

Trained runs are kept in --work-dir and reused when their settings match.
Results: --out-dir (default benchmarks/results; with --quick a temporary folder)
gets guidance_TARGET.{json,md,png} (and guidance_toy_samples.png).
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
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

import samplers  # noqa: E402
from edm_space.classifier import cached_classifier, image_quality  # noqa: E402
from edm_space.errors import ConfigError  # noqa: E402
from edm_space.generation import Guidance, SamplerSettings, generate  # noqa: E402
from edm_space.metrics import sliced_wasserstein2  # noqa: E402
from edm_space.toy_branches import NUM_CLASSES as BRANCH_CLASSES  # noqa: E402
from edm_space.toy_branches import exact_denoiser  # noqa: E402
from edm_space.training import TrainConfig, load_trained, train  # noqa: E402

Tensor = torch.Tensor
F64 = torch.float64

TARGETS = ("toy", "digits")
#: EDM2's guidance interval (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself",
#: Table 1; after Kynkaanniemi et al. 2024) for latents of sigma_data = 0.5.
EDM2_INTERVAL = (0.28, 5.4)
EDM2_SIGMA_DATA = 0.5
#: Method names in the results, and how the Markdown and plots name them.
METHODS = {
    "none": "unguided",
    "cfg": "classifier-free",
    "cfg-interval": "classifier-free, interval",
    "auto": "autoguidance",
}


@dataclass
class NetSpec:
    """One network and its training budget."""

    net: str
    net_options: Dict[str, Any]
    steps: int
    batch: int
    lr: float = 2e-3
    warmup_images: int = 20_000
    ema_halflife_images: float = 50_000.0


@dataclass
class Settings:
    """Everything one target's benchmark depends on; stored in its results."""

    target: str
    dataset: str
    model: NetSpec
    guide: NetSpec
    quick: bool = False
    label_dropout: float = 0.1
    train_seeds: Tuple[int, ...] = (0, 1, 2)
    #: toy: the exact model's sample seeds; digits: sample seeds of every trained model
    sample_seeds: Tuple[int, ...] = (0, 1, 2)
    weights: Tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)
    solver: str = "heun"
    num_steps: int = 32
    #: toy: samples per class; digits: samples per set (classes in turn, seed mod 10)
    num_samples: int = 1000
    #: digits: classifier-free guidance is also run on this interval (None: EDM2's, scaled by sigma_data)
    interval: Optional[Tuple[float, float]] = None
    # toy scores
    level_draws: int = 20_000
    reference_draws: int = 4000
    projections: int = 256
    threads: int = 1

    def run_fingerprint(self, role: str, seed: int) -> str:
        """What a trained run depends on."""
        spec = dataclasses.asdict(self.model if role == "model" else self.guide)
        payload = {"dataset": self.dataset, "label_dropout": self.label_dropout, "seed": seed, "role": role, **spec, "version": 1}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def make_settings(target: str, quick: bool = False, threads: int = 1) -> Settings:
    """The settings of the 'toy' or 'digits' benchmark; --quick shrinks every budget to a smoke run."""
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}, all")
    if threads < 1:
        raise ConfigError(f"--threads {threads} is invalid; need at least 1")
    if target == "toy":
        s = Settings(
            target="toy", dataset="branches",
            model=NetSpec("mlp", {"width": 128, "depth": 3}, steps=2000, batch=256),
            guide=NetSpec("mlp", {"width": 64, "depth": 2}, steps=500, batch=256),
            num_samples=1500, reference_draws=10_000,
        )
        if quick:
            s = dataclasses.replace(
                s, quick=True, train_seeds=(0,), sample_seeds=(0,), weights=(1.0, 2.0, 3.0), num_steps=8,
                num_samples=200, level_draws=2000, reference_draws=500, projections=64,
                model=NetSpec("mlp", {"width": 32, "depth": 2}, steps=100, batch=128, warmup_images=1280),
                guide=NetSpec("mlp", {"width": 16, "depth": 1}, steps=30, batch=128, warmup_images=1280),
            )
    else:
        s = Settings(
            target="digits", dataset="digits",
            model=NetSpec("unet", {"channels": 32, "channel_mult": [1, 2], "blocks_per_level": 1}, steps=1500, batch=64,
                          warmup_images=10_000, ema_halflife_images=20_000.0),
            guide=NetSpec("unet", {"channels": 16, "channel_mult": [1, 2], "blocks_per_level": 1}, steps=400, batch=64,
                          warmup_images=10_000, ema_halflife_images=5_000.0),
            train_seeds=(0,), sample_seeds=(0, 1), weights=(1.0, 2.0, 3.0), num_steps=10, num_samples=250,
        )
        if quick:
            s = dataclasses.replace(
                s, quick=True, sample_seeds=(0,), weights=(1.0, 2.0), num_steps=3, num_samples=40,
                model=NetSpec("unet", {"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1}, steps=12, batch=32,
                              warmup_images=64),
                guide=NetSpec("unet", {"channels": 8, "channel_mult": [1], "blocks_per_level": 1}, steps=4, batch=32,
                              warmup_images=64),
            )
    return dataclasses.replace(s, threads=threads)


def settings_from_json(payload: Dict[str, Any]) -> Settings:
    """The Settings stored in a results file."""
    values = dict(payload)
    values["model"], values["guide"] = NetSpec(**values["model"]), NetSpec(**values["guide"])
    for key in ("train_seeds", "sample_seeds", "weights"):
        values[key] = tuple(values[key])
    if values.get("interval") is not None:
        values["interval"] = tuple(values["interval"])
    return Settings(**values)


# --------------------------------------------------------------------------- training


def trained_run(settings: Settings, role: str, seed: int, work_dir: str, log: Callable[[str], None], reuse: bool = True) -> Tuple[str, float]:
    """The run directory of `role` ('model' or 'guide') for a training seed, trained unless a matching one is kept.

    Returns (run directory, training seconds when it was trained).
    """
    spec = settings.model if role == "model" else settings.guide
    root = os.path.join(work_dir, settings.target + ("-quick" if settings.quick else ""), f"{role}-seed{seed}")
    marker = os.path.join(root, "finished.json")
    fingerprint = settings.run_fingerprint(role, seed)
    if reuse and os.path.isfile(marker):
        try:
            with open(marker) as file:
                done = json.load(file)
            if done.get("fingerprint") == fingerprint and not common.legacy_defaults(os.path.join(root, "run")):
                log(f"  reusing the {role} of seed {seed} in {root}")
                return os.path.join(root, "run"), float(done["train_s"])
        except (OSError, ValueError, KeyError):
            pass
    if os.path.isdir(root):
        shutil.rmtree(root)  # other settings, or unfinished
    os.makedirs(root)
    config = TrainConfig(
        preset="edm", data=settings.dataset, out=os.path.join(root, "run"), net=spec.net, net_options=dict(spec.net_options),
        steps=spec.steps, batch=spec.batch, lr=spec.lr, warmup_images=spec.warmup_images,
        ema_halflife_images=spec.ema_halflife_images, seed=seed, checkpoint_every=spec.steps, keep_checkpoints=1,
        log_every=max(1, spec.steps // 20), conditional=True, label_dropout=settings.label_dropout,
    )
    log(f"  training the {role} of seed {seed}: {spec.net} {spec.net_options}, {spec.steps} steps of batch {spec.batch}")
    started = time.perf_counter()
    train(config, progress=False)
    seconds = time.perf_counter() - started
    common.write_json(marker, {"fingerprint": fingerprint, "train_s": seconds})
    return config.out, seconds


# --------------------------------------------------------------------------- sampling


def one_hot(classes: Sequence[int], num_classes: int) -> Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(list(classes)), num_classes).to(F64)


def draw(denoiser, formulation, labels: Tensor, seeds: Sequence[int], item_shape: Sequence[int], settings: Settings,
         method: str = "none", weight: float = 1.0, guide=None, interval=None) -> Tuple[Tensor, Dict[str, Any]]:
    """Samples of seeds (seed i's latent, as `edm-space sample` draws it) for the rows' labels, and their cost.

    method: none (the conditional denoiser), cfg / cfg-interval (null-label guide) or auto (`guide`).
    """
    guidance = None
    if method != "none":
        guidance = Guidance(weight, guide=guide if method == "auto" else None, interval=interval if method == "cfg-interval" else None)
    sampler = SamplerSettings(formulation=formulation, solver=settings.solver, num_steps=settings.num_steps)
    started = time.perf_counter()
    out = generate(denoiser, seeds, item_shape, sampler, batch_size=len(seeds), labels=labels, guidance=guidance)
    cost = {"nfe": out.nfe, "sample_s": round(time.perf_counter() - started, 3), "forward_passes": out.forward_passes, "rows": out.rows}
    return out.samples, cost


def configurations(settings: Settings, has_guide: bool, interval: bool) -> List[Tuple[str, float]]:
    """(method, weight) pairs: w = 1 unguided once, every other weight with every guidance method."""
    methods = ["cfg"] + (["cfg-interval"] if interval else []) + (["auto"] if has_guide else [])
    out = [("none", 1.0)]
    for w in settings.weights:
        if w != 1.0:
            out += [(m, float(w)) for m in methods]
    return out


# --------------------------------------------------------------------------- toy


class ToyScorer:
    """Exact references of the branches law: the 99 % log-density level and exact draws of each class."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.mixture = exact_denoiser()
        self.levels: List[float] = []
        self.references: List[Tensor] = []
        self.baselines: List[float] = []
        for c in range(BRANCH_CLASSES):
            draws = self.class_draws(c, settings.level_draws, seed=900 + c)
            # The level that holds 99 % of the class's mass: the 1 % quantile of log p(X | c), X ~ p(. | c).
            self.levels.append(float(torch.quantile(self.log_density(draws, c), 0.01)))
            self.references.append(self.class_draws(c, settings.reference_draws, seed=800 + c))
            fresh = self.class_draws(c, settings.num_samples, seed=700 + c)
            self.baselines.append(self.sw2(fresh, c))

    def class_draws(self, c: int, n: int, seed: int) -> Tensor:
        """n exact draws of class c: the joint law's draws of that class (rejection on the label)."""
        generator = torch.Generator().manual_seed(seed)
        kept: List[Tensor] = []
        have = 0
        while have < n:
            x, labels = self.mixture.sample_labeled(2 * n, generator)
            kept.append(x[labels == c])
            have += int((labels == c).sum())
        return torch.cat(kept)[:n]

    def log_density(self, x: Tensor, c: int) -> Tensor:
        return self.mixture.log_density(x, 0.0, torch.full((len(x),), c, dtype=torch.long))

    def sw2(self, x: Tensor, c: int) -> float:
        return sliced_wasserstein2(x, self.references[c], num_projections=self.settings.projections, seed=0)

    def score(self, x: Tensor, c: int) -> Dict[str, float]:
        x = x.to(F64)
        if not bool(torch.isfinite(x).all()):
            return {"outside": math.nan, "sw2": math.nan}
        outside = float((self.log_density(x, c) < self.levels[c]).double().mean())
        return {"outside": outside, "sw2": self.sw2(x, c)}


def run_toy(settings: Settings, work_dir: str, log: Callable[[str], None], reuse: bool = True) -> Dict[str, Any]:
    """Every (model, method, weight, seed) of the toy; rows of scores and costs, and samples for the figure."""
    scorer = ToyScorer(settings)
    rows: List[Dict[str, Any]] = []
    shown: Dict[str, np.ndarray] = {}
    n = settings.num_samples
    show_weight = 3.0 if 3.0 in settings.weights else max(settings.weights)

    def evaluate(model_name: str, denoiser, formulation, configs, train_seed, sample_seed, guide=None):
        for method, weight in configs:
            scores: Dict[str, List[float]] = {"outside": [], "sw2": []}
            cost_total: Dict[str, float] = {}
            points = []
            for c in range(BRANCH_CLASSES):
                seeds = [sample_seed * 1_000_000 + c * 100_000 + i for i in range(n)]
                x, cost = draw(denoiser, formulation, one_hot([c] * n, BRANCH_CLASSES), seeds, (2,), settings,
                               method, weight, guide)
                for key, value in scorer.score(x, c).items():
                    scores[key].append(value)
                for key, value in cost.items():
                    cost_total[key] = cost_total.get(key, 0) + value if key != "nfe" else value
                points.append(x.numpy())
            rows.append({"model": model_name, "method": method, "weight": weight, "train_seed": train_seed,
                         "sample_seed": sample_seed, **{k: float(np.mean(v)) for k, v in scores.items()},
                         "per_class": scores, **cost_total})
            if train_seed in (None, settings.train_seeds[0]) and sample_seed == settings.sample_seeds[0] and weight in (1.0, show_weight):
                shown[f"{model_name} {METHODS[method]} w={weight:g}"] = np.concatenate(points)
            last = rows[-1]
            log(f"    {model_name} {method} w={weight:g} seed {train_seed}/{sample_seed}: outside {last['outside']:.4f}, sw2 {last['sw2']:.4f}")

    log("  exact class-conditional model")
    exact = scorer.mixture
    train_s: Dict[str, float] = {}
    for sample_seed in settings.sample_seeds:
        evaluate("exact", exact, "edm", configurations(settings, has_guide=False, interval=False), None, sample_seed)
    for seed in settings.train_seeds:
        model_dir, train_s[f"model-seed{seed}"] = trained_run(settings, "model", seed, work_dir, log, reuse)
        guide_dir, train_s[f"guide-seed{seed}"] = trained_run(settings, "guide", seed, work_dir, log, reuse)
        model, guide = load_trained(model_dir)[0], load_trained(guide_dir)[0]
        evaluate("trained", model, model.formulation, configurations(settings, has_guide=True, interval=False), seed, seed, guide)
        evaluate("guide", guide, guide.formulation, [("none", 1.0)], seed, seed)
    # exact draws for scale: the distance of fresh exact samples (the floor of sw2 at this sample size)
    data_rows = [{"model": "data", "method": "none", "weight": 1.0, "train_seed": None, "sample_seed": None,
                  "outside": 0.01, "sw2": float(np.mean(scorer.baselines)), "per_class": {"sw2": scorer.baselines}}]
    shown["exact draws"] = np.concatenate([scorer.class_draws(c, n, seed=700 + c).numpy() for c in range(BRANCH_CLASSES)])
    return {"rows": rows + data_rows, "levels": scorer.levels, "train_s": train_s, "_shown": shown,
            "shown_labels": [c for c in range(BRANCH_CLASSES) for _ in range(n)]}


# --------------------------------------------------------------------------- digits


class DigitScorer:
    """The cached feature classifier of edm_space.classifier and the real digits' features."""

    def __init__(self, work_dir: str):
        self.classifier, self.images, self.labels = cached_classifier("digits", os.path.join(work_dir, "classifier"))
        with torch.no_grad():
            self.real_features = self.classifier.features(self.images.to(torch.float32))

    def score(self, x: Tensor, labels: Sequence[int]) -> Dict[str, float]:
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            return {"fd": math.nan, "confidence": math.nan, "accuracy": math.nan, "coverage": math.nan}
        quality = image_quality(x, None, self.classifier, real_features=self.real_features)
        with torch.no_grad():
            predicted = self.classifier(x.clamp(-1, 1)).argmax(dim=1)
        accuracy = float((predicted == torch.as_tensor(list(labels))).double().mean())
        return {"fd": quality["frechet_distance"], "confidence": quality["confidence"], "accuracy": accuracy,
                "coverage": quality["min_class_fraction"]}


def digits_interval(settings: Settings, sigma_data: float) -> Tuple[float, float]:
    """The guidance interval: the settings' own, or EDM2's scaled from sigma_data 0.5 to the data's (same SNR)."""
    if settings.interval is not None:
        return tuple(settings.interval)
    scale = sigma_data / EDM2_SIGMA_DATA
    return (round(EDM2_INTERVAL[0] * scale, 3), round(EDM2_INTERVAL[1] * scale, 3))


def run_digits(settings: Settings, work_dir: str, log: Callable[[str], None], reuse: bool = True) -> Dict[str, Any]:
    scorer = DigitScorer(work_dir)
    rows: List[Dict[str, Any]] = []
    n = settings.num_samples
    classes = [i % 10 for i in range(n)]
    labels = one_hot(classes, 10)
    train_s: Dict[str, float] = {}
    interval = None
    for seed in settings.train_seeds:
        model_dir, train_s[f"model-seed{seed}"] = trained_run(settings, "model", seed, work_dir, log, reuse)
        guide_dir, train_s[f"guide-seed{seed}"] = trained_run(settings, "guide", seed, work_dir, log, reuse)
        (model, config, *_), guide = load_trained(model_dir), load_trained(guide_dir)[0]
        interval = interval or digits_interval(settings, config.sigma_data)  # the data's sigma_data, as training measured it
        for sample_seed in settings.sample_seeds:
            seeds = [sample_seed * 1_000_000 + i for i in range(n)]
            jobs = [("trained", model, method, weight) for method, weight in configurations(settings, True, True)]
            jobs.append(("guide", guide, "none", 1.0))
            for name, denoiser, method, weight in jobs:
                x, cost = draw(denoiser, denoiser.formulation, labels, seeds, (1, 8, 8), settings, method, weight, guide, interval)
                rows.append({"model": name, "method": method, "weight": weight, "train_seed": seed, "sample_seed": sample_seed,
                             **scorer.score(x, classes), **cost})
                r = rows[-1]
                log(f"    {name} {method} w={weight:g} seed {seed}/{sample_seed}: fd {r['fd']:.2f}, confidence {r['confidence']:.3f}, "
                    f"accuracy {r['accuracy']:.3f}, coverage {r['coverage']:.3f} ({cost['sample_s']:.0f} s)")
    return {"rows": rows + real_rows(scorer, settings), "interval": interval, "train_s": train_s, "_shown": {}}


def real_rows(scorer: DigitScorer, settings: Settings) -> List[Dict[str, Any]]:
    """Real digits for scale, one set per sample seed: as many as a sample set, with its classes (seed mod 10), scored alike.

    The classes match the samples' because the Frechet distance also measures class balance:
    an unbalanced random pick of real digits would score worse than balanced samples.
    """
    classes = [i % 10 for i in range(settings.num_samples)]
    rows = []
    for sample_seed in settings.sample_seeds:
        generator = torch.Generator().manual_seed(4000 + sample_seed)
        pick = []
        for k in range(10):
            members = torch.nonzero(scorer.labels == k).flatten()
            shuffled = members[torch.randperm(len(members), generator=generator)]
            pick.append(shuffled[: classes.count(k)])
        index = torch.cat(pick)
        rows.append({"model": "data", "method": "none", "weight": 1.0, "train_seed": None, "sample_seed": sample_seed,
                     **scorer.score(scorer.images[index], scorer.labels[index].tolist())})
    return rows


# --------------------------------------------------------------------------- aggregation


def metric_names(target: str) -> Tuple[str, ...]:
    return ("fd", "confidence", "accuracy", "coverage") if target == "digits" else ("outside", "sw2")


#: Lower is better for these metrics; higher for the others.
LOWER_IS_BETTER = ("fd", "outside", "sw2")


def mean_std(values: Sequence[float]) -> Dict[str, Any]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Dict[str, Any]:
    """Mean of a_i - b_i and its 95 % t-interval (None with fewer than 2 pairs)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    if len(d) < 2:
        return {"mean": float(d.mean()), "lo": None, "hi": None, "n": 1}
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return {"mean": float(d.mean()), "lo": float(d.mean() - half), "hi": float(d.mean() + half), "n": int(len(d))}


def verdict(diff: Dict[str, Any]) -> str:
    """'up', 'down' or 'not resolved' from a paired difference's 95 % interval."""
    if diff["lo"] is None:
        return "not resolved"
    if diff["lo"] > 0:
        return "up"
    if diff["hi"] < 0:
        return "down"
    return "not resolved"


def pair_key(row: Dict[str, Any]) -> Tuple[Any, Any]:
    return (row["train_seed"], row["sample_seed"])


def series(rows: List[Dict[str, Any]], model: str, method: str) -> Dict[float, List[Dict[str, Any]]]:
    """Rows of one guidance series by weight; its w = 1 point is the model's unguided rows."""
    out: Dict[float, List[Dict[str, Any]]] = {}
    for r in rows:
        if r["model"] == model and (r["method"] == method or (r["method"] == "none" and r["weight"] == 1.0)):
            out.setdefault(float(r["weight"]), []).append(r)
    return dict(sorted(out.items()))


def aggregate(target: str, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean and std per (model, method, weight); paired changes against w = 1 and between methods."""
    metrics = metric_names(target)
    table = []
    seen = []
    for r in rows:
        key = (r["model"], r["method"], float(r["weight"]))
        if key not in seen:
            seen.append(key)
    for model, method, weight in seen:
        group = [r for r in rows if (r["model"], r["method"], float(r["weight"])) == (model, method, weight)]
        entry = {"model": model, "method": method, "weight": weight, "seeds": len(group)}
        for m in metrics:
            entry[m] = mean_std([r.get(m) for r in group])
        table.append(entry)
    changes = []
    models = sorted({r["model"] for r in rows if r["method"] != "none"})
    for model in models:
        for method in METHODS:
            if method == "none":
                continue
            s = series(rows, model, method)
            if len(s) < 2 or 1.0 not in s:
                continue
            base = {pair_key(r): r for r in s[1.0]}
            for weight, group in s.items():
                if weight == 1.0:
                    continue
                pairs = [(r, base[pair_key(r)]) for r in group if pair_key(r) in base]
                entry = {"model": model, "method": method, "weight": weight, "against": "w=1"}
                for m in metrics:
                    entry[m] = paired_difference([a[m] for a, _ in pairs], [b[m] for _, b in pairs])
                changes.append(entry)
    # autoguidance against classifier-free guidance at the same weight (same model, same seeds)
    for model in models:
        auto, cfg = series(rows, model, "auto"), series(rows, model, "cfg")
        for weight in sorted(set(auto) & set(cfg)):
            if weight == 1.0:
                continue
            base = {pair_key(r): r for r in cfg[weight]}
            pairs = [(r, base[pair_key(r)]) for r in auto[weight] if pair_key(r) in base]
            entry = {"model": model, "method": "auto", "weight": weight, "against": "cfg"}
            for m in metrics:
                entry[m] = paired_difference([a[m] for a, _ in pairs], [b[m] for _, b in pairs])
            changes.append(entry)
    return {"table": table, "changes": changes}


# --------------------------------------------------------------------------- reports


def fmt(stat: Dict[str, Any], digits: int = 3) -> str:
    if stat.get("mean") is None:
        return "n/a"
    if stat.get("n", 0) > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def fmt_change(diff: Dict[str, Any], digits: int = 3) -> str:
    if diff.get("mean") is None:
        return "n/a"
    if diff["lo"] is None:
        return f"{diff['mean']:+.{digits}f}"
    mark = "" if verdict(diff) == "not resolved" else "**"
    return f"{mark}{diff['mean']:+.{digits}f}{mark} [{diff['lo']:+.{digits}f}, {diff['hi']:+.{digits}f}]"


METRIC_TITLES = {
    "outside": "outside 99 % region",
    "sw2": "sliced W2 to the class",
    "fd": "Frechet distance (features)",
    "confidence": "confidence",
    "accuracy": "accuracy (asked class)",
    "coverage": "coverage (min class fraction)",
}


def findings(target: str, summary: Dict[str, Any]) -> List[str]:
    """Sentences about what the paired intervals resolve; nothing beyond them."""
    metrics = metric_names(target)
    lines = []
    changes = [c for c in summary["changes"] if c["against"] == "w=1"]
    for model in sorted({c["model"] for c in changes}):
        for method in METHODS:
            mine = [c for c in changes if c["model"] == model and c["method"] == method]
            if not mine:
                continue
            parts = []
            for m in metrics:
                ups = [f"{c['weight']:g}" for c in mine if verdict(c[m]) == "up"]
                downs = [f"{c['weight']:g}" for c in mine if verdict(c[m]) == "down"]
                better, worse = (downs, ups) if m in LOWER_IS_BETTER else (ups, downs)
                text = []
                if better:
                    text.append(f"better at w = {', '.join(better)}")
                if worse:
                    text.append(f"worse at w = {', '.join(worse)}")
                parts.append(f"{METRIC_TITLES[m]} {'; '.join(text) if text else 'not resolved at any w'}")
            name = "autoguidance" if method == "auto" else f"{METHODS[method]} guidance"
            lines.append(f"- {model} model, {name} against unguided (w = 1): " + "; ".join(parts) + ".")
    versus = [c for c in summary["changes"] if c["against"] == "cfg"]
    for model in sorted({c["model"] for c in versus}):
        parts = []
        for m in metrics:
            mine = [c for c in versus if c["model"] == model]
            better = [f"{c['weight']:g}" for c in mine if verdict(c[m]) == ("down" if m in LOWER_IS_BETTER else "up")]
            worse = [f"{c['weight']:g}" for c in mine if verdict(c[m]) == ("up" if m in LOWER_IS_BETTER else "down")]
            text = ([f"better at w = {', '.join(better)}"] if better else []) + ([f"worse at w = {', '.join(worse)}"] if worse else [])
            parts.append(f"{METRIC_TITLES[m]} {'; '.join(text) if text else 'not resolved at any w'}")
        lines.append(f"- {model} model, autoguidance against classifier-free guidance at the same w: " + "; ".join(parts) + ".")
    return lines


def format_markdown(results: Dict[str, Any], images: Sequence[str]) -> str:
    s = results["settings"]
    target = results["target"]
    metrics = metric_names(target)
    summary = results["summary"]
    title = "2-D branches" if target == "toy" else "8x8 digits"
    lines = [f"# Guidance benchmark: {title}" + (" (--quick smoke run: sizes too small to mean anything)" if s["quick"] else ""), ""]
    lines.append(f"Command: `python benchmarks/guidance.py {target}{' --quick' if s['quick'] else ''}` "
                 f"({results['wall_s']:.0f} s; {results['machine'].get('torch_threads')} torch thread(s))")
    lines.append("")
    m, g = s["model"], s["guide"]
    if results.get("train_s"):
        lines.append("- training wall time when the runs were trained (reused runs are not retrained): "
                     + ", ".join(f"{k} {v:.0f} s" for k, v in results["train_s"].items()))
    lines.append(f"- model: {m['net']} {m['net_options']}, {m['steps']} steps of batch {m['batch']}, label dropout {s['label_dropout']}, "
                 f"training seeds {', '.join(map(str, s['train_seeds']))}")
    lines.append(f"- autoguidance guide: {g['net']} {g['net_options']}, {g['steps']} steps of batch {g['batch']} (same seeds)")
    nfe = samplers.get(s["solver"]).nfe(s["num_steps"])
    lines.append(f"- sampler: {s['solver']}, {s['num_steps']} EDM steps ({nfe} NFE), each model on its own ODE; sample i from seed i's latent")
    if target == "toy":
        lines.append(f"- {s['num_samples']} samples per class and set; the exact model over sample seeds {', '.join(map(str, s['sample_seeds']))}, "
                     "trained models one sample set per training seed")
        lines.append(f"- outside: fraction of samples with log p(x | c) below the 1 % quantile of log p(X | c) over {s['level_draws']:,} "
                     f"exact draws per class (levels {', '.join(f'{v:.2f}' for v in results['levels'])}); sliced W2 ({s['projections']} directions) "
                     f"against {s['reference_draws']:,} exact draws of the class; both averaged over the two classes")
    else:
        lo, hi = results["interval"]
        lines.append(f"- {s['num_samples']} samples per set (class = seed mod 10), sample seeds {', '.join(map(str, s['sample_seeds']))} "
                     "per training seed")
        lines.append(f"- interval: ({lo:g}, {hi:g}], EDM2's (0.28, 5.4] times sigma_data / 0.5 (the same signal-to-noise range)")
        lines.append("- scores from the digit classifier of edm_space.classifier: Frechet distance to all 1,797 real digits in its features, "
                     "mean top-class probability, fraction classified as the class asked for, smallest class fraction")
    pairs = len(s["train_seeds"]) * (len(s["sample_seeds"]) if target == "digits" else 1)
    lines.append(f"- ± is the standard deviation over seeds; changes are paired (same seeds, {pairs} pairs) means with 95 % "
                 f"t-intervals ({pairs - 1} degree(s) of freedom), **bold** where the interval excludes 0")
    lines.append("")
    lines.append("## Scores against the guidance weight")
    lines.append("")
    headers = ["model", "guidance", "w"] + [METRIC_TITLES[k] for k in metrics] + ["NFE", "network rows per sample"]
    body = []
    for e in summary["table"]:
        cost = e.get("cost") or {}
        body.append([e["model"], METHODS[e["method"]] if e["model"] != "data" else "(reference)", f"{e['weight']:g}"]
                    + [fmt(e[k], 4 if k in ("outside", "sw2") else 3) for k in metrics]
                    + [cost.get("nfe", ""), f"{cost['rows_per_sample']:.0f}" if cost.get("rows_per_sample") else ""])
    lines.append(common.markdown_table(headers, body))
    lines.append("")
    lines.append("`data` rows: exact draws of the law, scored alike (outside is 1 % by construction)." if target == "toy" else
                 f"`data` rows: real digits with the samples' classes ({s['num_samples'] / 10:g} of each), scored alike: "
                 "the floor of each score at this sample size.")
    lines.append("")
    lines.append("## Changes against w = 1 (paired)")
    lines.append("")
    body = []
    for c in summary["changes"]:
        if c["against"] != "w=1":
            continue
        body.append([c["model"], METHODS[c["method"]], f"{c['weight']:g}"] + [fmt_change(c[k], 4 if k in ("outside", "sw2") else 3) for k in metrics])
    lines.append(common.markdown_table(["model", "guidance", "w"] + [METRIC_TITLES[k] for k in metrics], body))
    versus = [c for c in summary["changes"] if c["against"] == "cfg"]
    if versus:
        lines.append("")
        lines.append("## Autoguidance minus classifier-free guidance at the same w (paired)")
        lines.append("")
        body = [[c["model"], f"{c['weight']:g}"] + [fmt_change(c[k], 4 if k in ("outside", "sw2") else 3) for k in metrics] for c in versus]
        lines.append(common.markdown_table(["model", "w"] + [METRIC_TITLES[k] for k in metrics], body))
    lines.append("")
    lines.append("## What the numbers support")
    lines.append("")
    lines.append(f"Lower is better for {', '.join(METRIC_TITLES[k] for k in metrics if k in LOWER_IS_BETTER)}; "
                 f"higher for the others. Only changes whose 95 % interval excludes 0 count as resolved.")
    lines.append("")
    lines += findings(target, summary)
    for image in images:
        lines += ["", f"![{image}]({image})"]
    lines += ["", "## Machine", "", common.machine_markdown(results["machine"])]
    return "\n".join(lines)


def attach_costs(results: Dict[str, Any]) -> None:
    """NFE and network rows per sample of each table entry (from the rows; the same for every seed)."""
    per_sample = results["settings"]["num_samples"] * (BRANCH_CLASSES if results["target"] == "toy" else 1)
    for e in results["summary"]["table"]:
        group = [r for r in results["rows"] if (r["model"], r["method"], float(r["weight"])) == (e["model"], e["method"], e["weight"])]
        if group and "rows" in group[0]:
            e["cost"] = {"nfe": group[0]["nfe"], "rows_per_sample": group[0]["rows"] / per_sample}


def write_plots(results: Dict[str, Any], base: str, shown: Optional[Dict[str, np.ndarray]]) -> List[str]:
    """guidance_TARGET.png: each metric against w per guidance series (error bars: std over seeds); toy: the samples."""
    plt = common.pyplot("the guidance plots")
    target = results["target"]
    metrics = metric_names(target)
    rows = results["rows"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    styles = {("exact", "cfg"): ("black", "o", "--"), ("trained", "cfg"): ("tab:blue", "s", "-"),
              ("trained", "cfg-interval"): ("tab:green", "^", "-"), ("trained", "auto"): ("tab:red", "D", "-")}
    for ax, m in zip(np.atleast_1d(axes), metrics):
        for (model, method), (color, marker, line) in styles.items():
            s = series(rows, model, method)
            if len(s) < 2:
                continue
            w = list(s)
            stat = [mean_std([r[m] for r in s[k]]) for k in w]
            ax.errorbar(w, [v["mean"] for v in stat], yerr=[v["std"] for v in stat], color=color, marker=marker, linestyle=line,
                        capsize=3, label=f"{model}, {METHODS[method]}")
        for model, color in (("data", "gray"), ("guide", "tab:orange")):
            group = [r[m] for r in rows if r["model"] == model and r.get(m) is not None]
            if group:
                ax.axhline(float(np.mean(group)), color=color, linestyle=":", label="exact draws" if model == "data" and target == "toy"
                           else "real digits" if model == "data" else "guide alone (w = 1)")
        ax.set_xlabel("guidance weight w")
        ax.set_title(METRIC_TITLES[m], fontsize=9)
        ax.grid(True, alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(f"guidance on {'2-D branches' if target == 'toy' else '8x8 digits'}: mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    paths = [common.save_png(fig, base + ".png")]
    if target == "toy" and shown:
        labels = np.asarray(results["shown_labels"])
        names = ["exact draws"] + [k for k in shown if k != "exact draws"]
        cols = 4
        fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(3.2 * cols, 3.2 * math.ceil(len(names) / cols)),
                                 squeeze=False)
        everything = np.concatenate([shown[k] for k in names])
        finite = everything[np.isfinite(everything).all(axis=1)]
        lo, hi = np.percentile(finite, 0.5, axis=0), np.percentile(finite, 99.5, axis=0)
        for ax, name in zip(axes.flat, names):
            pts = shown[name]
            for c, color in enumerate(("tab:blue", "tab:red")):
                sel = labels[: len(pts)] == c
                ax.scatter(pts[sel, 0], pts[sel, 1], s=1, color=color, alpha=0.5, linewidths=0)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.suptitle("branches: samples of class 0 (blue) and 1 (red), first seed", fontsize=10)
        fig.tight_layout()
        paths.append(common.save_png(fig, base + "_samples.png"))
    return paths


def write_results(results: Dict[str, Any], out_dir: str, shown: Optional[Dict[str, np.ndarray]] = None, plot: bool = True) -> List[str]:
    """guidance_TARGET.json / .md and, with matplotlib, the plots."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"guidance_{results['target']}")
    images: List[str] = []
    if plot and common.have_matplotlib():
        images = write_plots(results, base, shown)
    if not shown and os.path.isfile(base + "_samples.png"):
        images.append(base + "_samples.png")  # --report-only keeps the committed samples figure
    text = format_markdown(results, [os.path.basename(p) for p in images])
    common.write_results(os.path.basename(base), results, text, out_dir, indent=1)
    return images + [base + ".json", base + ".md"]


def run_benchmark(settings: Settings, out_dir: str, work_dir: str, plot: bool = True, reuse: bool = True,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train (or reuse), sample and score one target; write its results."""
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    machine = common.machine_info()
    log(f"[{settings.target}] {'quick ' if settings.quick else ''}guidance benchmark; runs in {work_dir}")
    try:
        outcome = (run_toy if settings.target == "toy" else run_digits)(settings, work_dir, log, reuse)
    finally:
        torch.set_num_threads(previous)
    shown = outcome.pop("_shown")
    results = {"benchmark": "guidance", "target": settings.target, "settings": dataclasses.asdict(settings),
               "wall_s": round(time.perf_counter() - started, 1), "machine": machine, **outcome}
    results["summary"] = aggregate(settings.target, results["rows"])
    attach_costs(results)
    paths = write_results(results, out_dir, shown, plot)
    log(f"[{settings.target}] wrote {', '.join(paths)}")
    return results


def rebuild_report(json_path: str, out_dir: str, plot: bool = True) -> Dict[str, Any]:
    """Recompute the summary of a results file from its rows and rewrite its Markdown, JSON and metric plot."""
    try:
        with open(json_path) as file:
            results = json.load(file)
        settings_from_json(results["settings"])
        results["rows"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{json_path!r} is not a guidance results file ({type(error).__name__}: {error})") from None
    results["summary"] = aggregate(results["target"], results["rows"])
    attach_costs(results)
    write_results(results, out_dir, None, plot)
    return results


def default_work_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "edm-space-bench-guidance")


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/guidance.py", formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Classifier-free guidance and autoguidance against the guidance weight.")
    parser.add_argument("target", nargs="?", default=None, choices=list(TARGETS) + ["all"],
                        help="toy (2-D branches), digits (8x8 digits) or all [default: all with --quick, else required]")
    parser.add_argument("--quick", action="store_true", help="smoke run at toy sizes (about a minute); writes to a temporary folder")
    parser.add_argument("--report-only", action="store_true", help="rebuild the Markdown, JSON summary and plot from guidance_TARGET.json; run nothing")
    parser.add_argument("--out-dir", default=None, help="where guidance_*.{json,md,png} go [default: benchmarks/results; "
                                                        "with --quick TMPDIR/edm-space-guidance-quick]")
    parser.add_argument("--work-dir", default=None, help="where trained runs are kept for reuse [default: TMPDIR/edm-space-bench-guidance]")
    parser.add_argument("--fresh", action="store_true", help="retrain instead of reusing finished runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine) [default: 1]")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; bad input ends with one line `error: ...` on stderr and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.target is None and not args.quick:
        parser.error("name a target: toy, digits or all")
    targets = list(TARGETS) if args.target in (None, "all") else [args.target]
    with common.one_line_errors():
        out_dir = args.out_dir or (os.path.join(tempfile.gettempdir(), "edm-space-guidance-quick") if args.quick else common.RESULTS)
        if args.report_only:
            for target in targets:
                path = os.path.join(out_dir, f"guidance_{target}.json")
                if not os.path.isfile(path):
                    raise ConfigError(f"--report-only: {path!r} does not exist; run the benchmark first")
                rebuild_report(path, out_dir, plot=not args.no_plot)
                print(f"[{target}] rebuilt {path} and its report")
            return 0
        all_settings = [make_settings(t, quick=args.quick, threads=args.threads) for t in targets]
        for settings in all_settings:
            run_benchmark(settings, out_dir, args.work_dir or default_work_dir(), plot=not args.no_plot, reuse=not args.fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
