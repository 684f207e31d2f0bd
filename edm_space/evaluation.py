"""Scoring a trained run: generation, reference features, and the metrics of `edm-space eval`.

    from edm_space.evaluation import EvalSettings, evaluate
    result = evaluate("runs/mnist-edm", EvalSettings(metrics=("fd", "fid", "pr"), n=10_000))

A run is a diffusion run (pixel or latent), a family run (nice, gan, pixelcnn, vae) or an
autoencoder run. The samples of a generative run are drawn as `edm-space sample` draws them (sample
i from seed i); an autoencoder's "samples" are its reconstructions of the reference items.

Reference images: the official test split of a set that has one (`mnist` -> `mnist-test`), the
first held-out items of a family run (an autoencoder: the seeded subset its own evaluation uses), and otherwise the diffusion run's own training
data (it holds nothing out; the result says which); n of them chosen by a fixed seed when there are more. The features of the reference images are cached per
(data set, split, size, feature extractor, checksum of the items) in the cache folder, written atomically.

Metrics (each with a bootstrap standard deviation over the points it averages):
- fd: Frechet distance in the features of the project's small classifier of the data set
  (edm_space.classifier), or in raw coordinates for vectors; comparable only within this project.
- fid: Frechet distance in Inception-v3 pool features (edm_space.fid), the standard FID.
- pr: precision and recall (k = 3), density and coverage (k = 5) (edm_space.precision_recall).
- nll: bits per dimension of the reference items on 256 levels (edm_space.families.bits): the PF-ODE
  likelihood of a pixel diffusion model, the exact one of NICE and PixelCNN, the IWAE bound of the VAE
  and of a KL autoencoder.
- loss: per sigma bucket, the model's weighted loss on reference items (with the standard error of
  its mean over the draws in place of a bootstrap) and on training items beside the loss floor of the
  ideal denoiser of those training items (EDM Fig. 5; metrics.loss_floor).
- recon (autoencoders): reconstruction MSE and PSNR on the reference items.

Diffusion samples come from edm_space.generation.generate with the settings `edm-space sample` builds
(edm_space.sampling), so `eval --n N` scores exactly the samples of `sample --seeds 0-(N-1)` with the
same solver, steps, guidance and batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from . import data, devices, latent
from .errors import ConfigError, unknown
from .files import save_npz_atomic
from .metrics import covariance_factor, frechet_distance_from_factors, log_likelihood, loss_floor
from .model_training import draw_samples, evaluate_autoencoder, is_model_run, load_model, load_split
from .precision_recall import point_scores
from .generation import Guidance, SamplerSettings, class_labels, generate
from .sampling import SampleOptions, open_run, sampler_settings
from .training import build_formulation, load_trained, load_training_data

Tensor = torch.Tensor

METRICS = ("fd", "fid", "pr", "nll", "loss", "recon")
#: Levels of the one dequantization convention of every likelihood here (families.bits).
NLL_LEVELS = 256


@dataclasses.dataclass
class EvalSettings:
    """What `evaluate` computes and how. `n` samples (seeds seed .. seed + n - 1) against at most `n` reference items."""

    metrics: Sequence[str] = ("fd",)
    n: int = 10_000
    seed: int = 0
    sampler: SamplerSettings = dataclasses.field(default_factory=SamplerSettings)  # its solver and steps (None: the preset's own)
    guidance: Optional[float] = None
    batch: int = 250
    bootstrap: int = 10
    pr_features: Optional[str] = None
    nll_n: int = 100
    nll_steps: int = 32
    loss_draws: int = 256
    floor_items: int = 2000
    cache_dir: Optional[str] = None
    device: str = "cpu"
    progress: Optional[bool] = None

    def check(self) -> None:
        """One-line errors for impossible settings."""
        for name in self.metrics:
            if name not in METRICS:
                raise unknown("metric", name, METRICS)
        if not self.metrics:
            raise ConfigError(f"--metrics is empty; give some of {', '.join(METRICS)}")
        for name in ("n", "batch", "nll_n", "nll_steps", "loss_draws", "floor_items"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)!r} is invalid; it must be an integer >= 1")
        if self.bootstrap < 2:
            raise ConfigError(f"bootstrap = {self.bootstrap} is invalid; it needs >= 2 resamples for an error bar")
        if self.pr_features not in (None, "classifier", "inception"):
            raise ConfigError(f"pr features {self.pr_features!r} is invalid; choose classifier or inception")


def default_cache_dir() -> str:
    """$EDM_SPACE_CACHE, else $XDG_CACHE_HOME/edm-space, else ~/.cache/edm-space."""
    if os.environ.get("EDM_SPACE_CACHE"):
        return os.environ["EDM_SPACE_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "edm-space")


def show_progress(settings: EvalSettings) -> bool:
    """Progress bars: as asked, else only on a terminal."""
    return sys.stderr.isatty() if settings.progress is None else settings.progress


# ---------------------------------------------------------------------------
# The run and its reference items.


@dataclasses.dataclass
class Target:
    """A loaded run: kind ('diffusion', 'latent', 'family', 'autoencoder'), its model, config, data and reference items."""

    kind: str
    run: str
    step: int
    model: Any
    config: Any
    data_name: str
    reference: Tensor
    split: str
    latent_space: Optional[latent.LatentSpace] = None
    num_classes: int = 0
    autoencoder_scores: Optional[Dict[str, Any]] = None  # evaluate_autoencoder's, whose originals are the reference

    @property
    def images(self) -> bool:
        return self.reference.ndim == 4


def load_target(run: str, step: Optional[int], n: int, device: str = "cpu") -> Target:
    """Load the run's model and its reference items (at most n; see the module notes)."""
    if is_model_run(run):
        model, config, step = load_model(run, step, device)
        _, held, _ = load_split(config)
        if not len(held):
            raise ConfigError(f"run {run!r} holds out no items (trained with held_out = 0), so it has nothing to be scored against")
        if config.kind == "autoencoder":  # its seeded subset of the held-out items, with their reconstructions
            scores = evaluate_autoencoder(run, step, n=min(n, len(held)), device=device)
            return Target("autoencoder", run, step, model, config, config.data, scores["originals"], f"held-out {len(held)}",
                          autoencoder_scores=scores)
        return Target("family", run, step, model, config, config.data, held[:n], f"held-out {len(held)}")
    denoiser, config, _, num_classes, step = load_trained(run, step=step, device=device)
    space = latent.open_latent_space(config.latent_space, run) if config.latent_space is not None else None
    test = data.TEST_SPLITS.get(config.data) if isinstance(config.data, str) else None
    reference, split = (data.load(test), test) if test is not None else (load_training_data(config)[0], "train")
    return Target("latent" if space else "diffusion", run, step, denoiser, config, config.data, data.fixed_subset(reference, n), split, space, num_classes)


# ---------------------------------------------------------------------------
# Generation (sample i from seed i, as `edm-space sample` draws it).


def generate_images(target: Target, settings: EvalSettings) -> Tuple[Tensor, Dict[str, Any]]:
    """(samples [n, ...] float64 on the CPU, a description of the sampler) of the run."""
    seeds = list(range(settings.seed, settings.seed + settings.n))
    if target.kind == "autoencoder":
        return target.autoencoder_scores["reconstructions"].double(), {"sampler": "reconstructions of the reference items"}
    if target.kind == "family":
        return draw_samples(target.model, target.config, target.run, seeds).double(), {"sampler": f"{target.config.name}'s own"}
    options = SampleOptions(run_dir=target.run, checkpoint_step=target.step, sampler=settings.sampler,
                            guidance_weight=settings.guidance, batch_size=settings.batch, device=settings.device, progress=False)
    device = devices.resolve_device(settings.device)
    model = open_run(options, device)
    sampler = sampler_settings(options, model)
    labels = class_labels(seeds, model.num_classes) if model.num_classes else None
    if settings.guidance is not None and labels is None:
        raise ConfigError(f"--guidance needs a class-conditional run; {target.run!r} is not (train it with --conditional)")
    guidance = Guidance(settings.guidance) if settings.guidance is not None else None
    generated = generate(model.denoiser, seeds, model.item_shape, sampler, batch_size=settings.batch, labels=labels, guidance=guidance,
                         decode=model.decode, device=device, progress=show_progress(settings))
    described = {"sampler": f"{sampler.formulation.name} + {sampler.solver}", "solver": sampler.solver, "steps": sampler.num_steps,
                 "guidance": settings.guidance}
    return generated.samples.double(), described


# ---------------------------------------------------------------------------
# Features, with the reference's cached.


def feature_function(target: Target, extractor: str, cache_dir: str, progress: bool) -> Callable[[Tensor], Tensor]:
    """images -> float64 features [n, d] of `extractor` ('classifier', 'inception' or 'raw')."""
    if extractor == "raw":
        return lambda x: x.reshape(len(x), -1).double()
    if not target.images:
        raise ConfigError(f"the {extractor} features need images; the run's items are vectors of shape {list(target.reference.shape[1:])}")
    if extractor == "inception":
        from .fid import InceptionFeatures

        network = InceptionFeatures()
        return lambda x: _with_bar(network, x, "inception features", progress)
    from .classifier import cached_classifier

    if not isinstance(target.data_name, str) or target.data_name not in data.names():
        raise ConfigError(f"fd needs a labelled built-in image set for its classifier; the run's data is {target.data_name!r} (use fid)")
    classifier, _, _ = cached_classifier(target.data_name, cache_dir)
    return lambda x: torch.cat([classifier.features(x[i : i + 500].float().clamp(-1, 1)).double() for i in range(0, len(x), 500)])


def _with_bar(network, x: Tensor, what: str, progress: bool) -> Tensor:
    bar = tqdm(total=len(x), desc=what, unit="image", disable=not progress, leave=False)
    try:
        return network(x, progress=bar.update)
    finally:
        bar.close()


def reference_features(target: Target, extractor: str, features: Callable[[Tensor], Tensor], cache_dir: str) -> Tensor:
    """Features of the reference items, read from / written to the cache.

    The cache key holds the data set, split, size, extractor and a SHA-256 of the items themselves, so
    runs whose references differ (another data size or seed, a changed file) never share an entry.
    """
    digest = hashlib.sha256(np.ascontiguousarray(target.reference.numpy()).tobytes()).hexdigest()[:16]
    key = f"{target.data_name}|{target.split}|{len(target.reference)}|{extractor}|{digest}"
    path = os.path.join(cache_dir, "reference", f"{extractor}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz")
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["key"]) == key and len(stored["features"]) == len(target.reference):
                    return torch.from_numpy(stored["features"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable: computed afresh and replaced
    out = features(target.reference)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_npz_atomic(path, {"features": out.numpy(), "key": np.array(key)})
    return out


# ---------------------------------------------------------------------------
# Metrics with bootstrap error bars.


def _bootstrap_mean(values: Tensor, resamples: int, seed: int) -> Dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    values = values.double()
    means = [float(values[torch.randint(len(values), (len(values),), generator=generator)].mean()) for _ in range(resamples)]
    return {"value": float(values.mean()), "sd": float(np.std(means, ddof=1))}


def frechet(real: Tensor, fake: Tensor, resamples: int, seed: int) -> Dict[str, float]:
    """Frechet distance, with its bootstrap sd over the generated set (the reference statistics stay fixed)."""
    reference = covariance_factor(real)
    value = frechet_distance_from_factors(reference, covariance_factor(fake))
    generator = torch.Generator().manual_seed(seed)
    values = [frechet_distance_from_factors(reference, covariance_factor(fake[torch.randint(len(fake), (len(fake),), generator=generator)]))
              for _ in range(resamples)]
    return {"value": value, "sd": float(np.std(values, ddof=1))}


def precision_recall_scores(real: Tensor, fake: Tensor, resamples: int, seed: int) -> Dict[str, Dict[str, float]]:
    """Precision, recall, density, coverage, each with the bootstrap sd of its mean over points."""
    return {name: _bootstrap_mean(values, resamples, seed) for name, values in point_scores(real, fake).items()}


def nll_scores(target: Target, settings: EvalSettings) -> Dict[str, Any]:
    """Bits per dimension of the first nll_n reference items (see the module notes)."""
    x = target.reference[: settings.nll_n]
    generator = torch.Generator().manual_seed(settings.seed)
    if target.kind == "latent":
        return {"skipped": "a latent model has no pixel likelihood"}
    if target.kind == "diffusion":
        out = log_likelihood(target.model, x.double(), num_steps=settings.nll_steps, dequantize_bins=NLL_LEVELS, seed=settings.seed)
        method = "PF-ODE, " + ("exact divergence" if x[0].numel() <= 64 else "Hutchinson trace estimate")
        return {"bits_per_dim": _bootstrap_mean(out["bits_per_dim"], settings.bootstrap, settings.seed), "method": method, "n": len(x)}
    if target.kind == "autoencoder":
        if target.config.name != "kl":
            return {"skipped": f"a {target.config.name} autoencoder has no likelihood"}
        scores = target.autoencoder_scores
        return {"bits_per_dim": {"value": scores["iwae_bits_per_dim"], "sd": None}, "method": "IWAE bound", "n": scores["n"]}
    bits = target.model.bits_per_dim(x, generator)
    if bits is None:
        return {"skipped": f"the {target.config.name} model has no likelihood"}
    method = {"vae": "IWAE bound", "pixelcnn": "exact, discrete"}.get(target.config.name, "exact")
    return {"bits_per_dim": _bootstrap_mean(bits.detach().cpu(), settings.bootstrap, settings.seed), "method": method, "n": len(x)}


def loss_scores(target: Target, settings: EvalSettings) -> Dict[str, Any]:
    """Per sigma bucket: loss on reference items, on training items, and the floor of those training items."""
    if target.kind != "diffusion":
        return {"skipped": f"a {target.kind} run has no denoising loss in pixel space"}
    train, _ = load_training_data(target.config)
    if len(train) > settings.floor_items:
        index = torch.from_numpy(np.sort(np.random.default_rng(settings.seed).permutation(len(train))[: settings.floor_items]))
        train = train[index]
    rows = loss_floor(target.model, build_formulation(target.config), train.double(), num_draws=settings.loss_draws,
                      seed=settings.seed, held_out=target.reference.double())
    return {"buckets": rows, "training_items": len(train), "draws_per_bucket": settings.loss_draws}


# ---------------------------------------------------------------------------
# The whole evaluation.


def evaluate(run: str, settings: EvalSettings, step: Optional[int] = None) -> Dict[str, Any]:
    """Every requested metric of a run (see the module notes); a JSON-ready dict without timings."""
    import time

    settings.check()
    cache_dir = settings.cache_dir or default_cache_dir()
    progress = show_progress(settings)
    timing: Dict[str, float] = {}
    clock = time.perf_counter()
    target = load_target(run, step, settings.n, settings.device)
    if "recon" in settings.metrics and target.kind != "autoencoder":
        raise ConfigError(f"metric recon is for autoencoder runs; {run!r} holds a {target.kind} model")
    result: Dict[str, Any] = {"run": run, "step": target.step, "kind": target.kind, "data": target.data_name,
                              "reference": {"split": target.split, "n": len(target.reference)}, "metrics": {}}
    needs_samples = any(m in settings.metrics for m in ("fd", "fid", "pr"))
    samples = None
    if needs_samples:
        samples, described = generate_images(target, settings)
        if not torch.isfinite(samples).all():
            raise ConfigError(f"the model of {run!r} (step {target.step}) produced non-finite samples")
        result.update(described, n=len(samples), seeds=f"{settings.seed}-{settings.seed + len(samples) - 1}")
        timing["generate"] = time.perf_counter() - clock
    extractors = _extractors(target, settings)
    for metric, extractor in extractors.items():
        clock = time.perf_counter()
        features = feature_function(target, extractor, cache_dir, progress)
        real = reference_features(target, extractor, features, cache_dir)
        fake = features(samples)
        if metric in ("fd", "fid"):
            result["metrics"][metric] = {**frechet(real, fake, settings.bootstrap, settings.seed), "features": extractor}
        else:
            result["metrics"]["pr"] = {**precision_recall_scores(real, fake, settings.bootstrap, settings.seed), "features": extractor}
        timing[metric] = time.perf_counter() - clock
    for metric, fn in (("nll", nll_scores), ("loss", loss_scores), ("recon", _recon_scores)):
        if metric in settings.metrics:
            clock = time.perf_counter()
            result["metrics"][metric] = fn(target, settings)
            timing[metric] = time.perf_counter() - clock
    result["seconds"] = timing
    return result


def _extractors(target: Target, settings: EvalSettings) -> Dict[str, str]:
    """The feature extractor of each sample-based metric requested, in a fixed order."""
    out = {}
    if "fd" in settings.metrics:
        out["fd"] = "classifier" if target.images else "raw"
    if "fid" in settings.metrics:
        out["fid"] = "inception"
    if "pr" in settings.metrics:
        out["pr"] = settings.pr_features or ("inception" if "fid" in settings.metrics else out.get("fd", "classifier" if target.images else "raw"))
    return out


def _recon_scores(target: Target, settings: EvalSettings) -> Dict[str, Any]:
    scores = target.autoencoder_scores
    squared = ((scores["reconstructions"].double() - scores["originals"].double()) ** 2).reshape(scores["n"], -1).mean(dim=1)
    mse = _bootstrap_mean(squared, settings.bootstrap, settings.seed)
    psnr_values = 10 * torch.log10(4.0 / squared.clamp_min(1e-30))
    out = {"mse": mse, "psnr": {"value": scores["psnr"], "sd": _bootstrap_mean(psnr_values, settings.bootstrap, settings.seed)["sd"]}, "n": scores["n"]}
    for key in ("codebook_usage", "perplexity", "elbo_bits_per_dim", "iwae_bits_per_dim"):
        if key in scores:
            out[key] = scores[key]
    return out


def format_table(result: Dict[str, Any]) -> str:
    """One aligned text table: metric, value, bootstrap sd, notes."""
    rows: List[Tuple[str, str, str, str]] = []

    def add(name: str, figure: Any, note: str = "") -> None:
        if isinstance(figure, dict) and "value" in figure:
            sd = figure.get("sd")
            rows.append((name, f"{figure['value']:.6g}", "" if sd is None else f"{sd:.2g}", note))

    for metric, scores in result["metrics"].items():
        if "skipped" in scores:
            rows.append((metric, "-", "", scores["skipped"]))
            continue
        if metric in ("fd", "fid"):
            add(metric, scores, f"{scores['features']} features")
        elif metric == "pr":
            for name in ("precision", "recall", "density", "coverage"):
                add(name, scores[name], f"{scores['features']} features")
        elif metric == "nll":
            add("nll bits/dim", scores["bits_per_dim"], f"{scores['method']}, {scores['n']} items")
        elif metric == "recon":
            add("recon mse", scores["mse"])
            add("recon psnr dB", scores["psnr"])
        elif metric == "loss":
            for row in scores["buckets"]:
                rows.append((f"loss sigma {row['sigma_lo']:g}-{row['sigma_hi']:g}", f"{row['held_out']:.4g}", f"{row['held_out_se']:.2g}",
                             f"train {row['model']:.4g}, floor {row['floor']:.4g}"))
    widths = [max(len(r[i]) for r in rows + [("metric", "value", "sd", "notes")]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(("metric", "value", "sd", "notes"), widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
