"""Post-hoc EMA on digits: sample quality against EMA length from ONE training run (EDM2 Fig. 5's curve).

    python benchmarks/ema.py                  # train once (a few CPU minutes), score many EMA lengths
    python benchmarks/ema.py --report-only    # rebuild ema_digits.md / .png from the committed .json
    python benchmarks/ema.py --data mnist     # the same on MNIST (about 15 minutes on two threads)

One U-Net trains under the edm preset while it tracks the power-function EMA profiles of relative
std 0.05 and 0.10 (snapshots every `snapshot_every_steps` steps). Afterwards the EMA of each relative
std in `eval_stds` is reconstructed from the snapshots alone (edm_space.posthoc_ema) at the final
step and at half of it, sampled, and scored by the Frechet distance in the features of the
project's digit classifier against held-out images. The raw weights and the run's ordinary
(half-life) EMA are scored alike for reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

import common
from networks import Evaluation, dataset_size

import samplers
from edm_space.classifier import cached_classifier
from edm_space.errors import ConfigError
from edm_space.optional import require
from edm_space.posthoc_ema import reconstruct
from edm_space.seeding import SeededNoise
from edm_space.training import TrainConfig, load_trained, train

LATENT_SEED = 50_000


@dataclass
class Settings:
    """Everything that defines the benchmark; stored in the results."""

    data: str = "digits"
    net: str = "unet"
    net_options: Dict[str, Any] = field(default_factory=lambda: {"channels": 32, "channel_mult": [1, 2]})
    steps: int = 1200
    batch: int = 64
    lr: float = 2e-3
    warmup_images: int = 2_000
    ema_halflife_images: float = 20_000.0
    tracked_stds: Tuple[float, ...] = (0.05, 0.10)
    snapshot_every_steps: int = 40
    eval_stds: Tuple[float, ...] = (0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.16, 0.20, 0.25)
    holdout: int = 500
    num_samples: int = 512
    sampler: Tuple[str, str, int] = ("heun", "edm", 18)
    seed: int = 0
    threads: int = 1
    quick: bool = False


def quick_settings() -> Settings:
    """A smoke run of about a minute (tiny network, few steps); not a result."""
    return Settings(net_options={"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1}, steps=60, snapshot_every_steps=5,
                    eval_stds=(0.03, 0.05, 0.10, 0.2), num_samples=64, sampler=("heun", "edm", 4), quick=True, warmup_images=256)


def mnist_settings() -> Settings:
    """MNIST (the benchmarks' 5,000 digits, 1,000 held out): the 0.66 M U-Net of benchmarks/networks.py, about
    six CPU minutes of training on two threads, nine EMA lengths scored with 256 samples each."""
    return Settings(data="mnist", net_options={"channels": 16, "channel_mult": [1, 2, 4], "blocks_per_level": 1}, steps=500,
                    warmup_images=5_000, ema_halflife_images=10_000.0, snapshot_every_steps=25,
                    eval_stds=(0.02, 0.03, 0.05, 0.07, 0.10, 0.13, 0.16, 0.20, 0.25), holdout=1000, num_samples=256,
                    sampler=("heun", "edm", 10), threads=2)


def train_run(settings: Settings, run_dir: str, log) -> Dict[str, Any]:
    """Train the one run (resumed if it is there); its CPU seconds."""
    config = TrainConfig(
        preset="edm", data=common.data_set(settings.data), data_size=dataset_size(settings.data) - settings.holdout, net=settings.net,
        net_options=dict(settings.net_options), steps=settings.steps, batch=settings.batch, lr=settings.lr,
        warmup_images=settings.warmup_images, ema_halflife_images=settings.ema_halflife_images, seed=settings.seed,
        checkpoint_every=settings.steps // 2, keep_checkpoints=2, log_every=50, out=run_dir,
        ema_stds=list(settings.tracked_stds), ema_snapshot_images=settings.snapshot_every_steps * settings.batch,
    )
    common.refuse_legacy_run(run_dir)  # a resumed run keeps the defaults it was trained with
    started = time.process_time()
    train(config, progress=False, echo=lambda line: None)
    log(f"trained {settings.steps} steps in {time.process_time() - started:.0f} CPU s")
    return {"train_cpu_s": time.process_time() - started, "images": settings.steps * settings.batch}


def score_weights(denoiser, item_shape: Sequence[int], weights: Optional[Dict[str, torch.Tensor]], settings: Settings,
                  evaluation: Evaluation, first_seed: int = LATENT_SEED) -> Dict[str, Any]:
    """Load `weights` (None: keep the denoiser's) and score samples from the latents of seeds first_seed, ..."""
    if weights is not None:
        denoiser.network.load_state_dict(weights)
    solver, discretization, steps = settings.sampler
    noise = SeededNoise(range(first_seed, first_seed + settings.num_samples))
    latents = noise.randn([settings.num_samples, *item_shape], dtype=torch.float64)
    with torch.no_grad():
        x = samplers.sample(denoiser, latents, formulation=denoiser.formulation, solver=solver, num_steps=steps,
                            discretization=discretization, randn_like=noise.randn_like)
    return evaluation.score(x)


def score_run(settings: Settings, run_dir: str, evaluation: Evaluation, log) -> List[Dict[str, Any]]:
    """One row per (step, weights): the post-hoc EMA of each std at half and all of the run, the raw and half-life EMA weights."""
    rows = []
    for step in (settings.steps // 2, settings.steps):
        for kind in ("raw", "halflife-ema"):
            denoiser, _, item_shape, _, _ = load_trained(run_dir, ema=kind != "raw", step=step)
            rows.append({"step": step, "weights": kind, "std": None, **score_weights(denoiser, item_shape, None, settings, evaluation)})
        _, rebuilt, coefficients = reconstruct(run_dir, settings.eval_stds, at=step)
        for std in settings.eval_stds:
            row = {"step": step, "weights": "post-hoc", "std": std, "snapshots": len(coefficients[std]),
                   **score_weights(denoiser, item_shape, rebuilt[std], settings, evaluation)}
            rows.append(row)
            log(f"step {step}: std {std:.3f} FD {row['fd']:.3f}")
    # The sampling noise of one row: the tracked 0.10 profile's reconstruction scored on a second set of latents.
    std = settings.tracked_stds[-1]
    rows.append({"step": settings.steps, "weights": "post-hoc, second latents", "std": std, "snapshots": len(coefficients[std]),
                 **score_weights(denoiser, item_shape, rebuilt[std], settings, evaluation, first_seed=LATENT_SEED + 100_000)})
    return rows


# --------------------------------------------------------------------------- report


def fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def spread_verdict(rows: Sequence[Dict[str, Any]], noise: float) -> str:
    """How the FD spread across stds compares with the sampling noise of one row."""
    spread = max(r["fd"] for r in rows) - min(r["fd"] for r in rows)
    ratio = spread / noise if noise > 0 else float("inf")
    return f"{ratio:.1f} times the noise" + (" (resolved)" if ratio > 2 else " (barely above it)" if ratio > 1 else " (not resolved)")


def markdown(results: Dict[str, Any], plot_name: Optional[str]) -> str:
    s, rows = results["settings"], results["rows"]
    final = [r for r in rows if r["step"] == s["steps"] and r["weights"] == "post-hoc" and r["fd"] is not None]
    best = min(final, key=lambda r: r["fd"])
    half = [r for r in rows if r["step"] == s["steps"] // 2 and r["weights"] == "post-hoc" and r["fd"] is not None]
    half_best = min(half, key=lambda r: r["fd"])
    reference = {(r["step"], r["weights"]): r for r in rows if r["weights"] != "post-hoc"}
    second = reference[(s["steps"], "post-hoc, second latents")]
    first = next(r for r in final if r["std"] == second["std"])
    solver, discretization, num_steps = s["sampler"]
    command = "python benchmarks/ema.py" + ("" if s["data"] == "digits" else f" --data {s['data']}")
    threads = "one thread" if s["threads"] == 1 else f"{s['threads']} threads"
    data_note = "" if s["data"] == "digits" else " The data are the benchmarks' 5,000 MNIST digits (`mnist5k`)."
    lines = [
        f"# Post-hoc EMA on {s['data']}: quality against EMA length from one training run",
        "",
        f"Command: `{command}` (`--report-only` rebuilds this page and the plot from the JSON).",
        "",
        f"One {s['net']} ({results['parameters']:,} parameters, `{s['net_options']}`) trained for {s['steps']:,} steps of batch "
        f"{s['batch']} ({s['steps'] * s['batch']:,} images, {results['run']['train_cpu_s']:.0f} CPU s on {threads}) under edm, "
        f"lr {s['lr']:g} after a {s['warmup_images']:,}-image warm-up, tracking the power-function EMA profiles of relative std "
        f"{', '.join(f'{v:g}' for v in s['tracked_stds'])} with a snapshot every {s['snapshot_every_steps']} steps. Every other EMA "
        f"length is reconstructed afterwards from those snapshots alone (least squares in float64, EDM2 App. C.3). "
        f"{s['num_samples']} samples per row from the same latents ({solver}, {discretization} time steps, N = {num_steps}), "
        f"Frechet distance in the digit classifier's features against {results['heldout_count']} held-out images (lower is better); "
        f"real training images score {fmt(results['data_floor'])} against them.{data_note}",
        "",
        "## What the numbers support",
        "",
        f"- At the end of the run the best relative std is {best['std']:g} (FD {fmt(best['fd'])}); the raw weights score "
        f"{fmt(reference[(s['steps'], 'raw')]['fd'])} and the run's half-life EMA ({s['ema_halflife_images']:,.0f} images) "
        f"{fmt(reference[(s['steps'], 'halflife-ema')]['fd'])}; across the stds the FD spans {fmt(best['fd'])} to "
        f"{fmt(max(r['fd'] for r in final))}.",
        f"- Half-way ({s['steps'] // 2 * s['batch']:,} images) the best relative std is {half_best['std']:g} (FD "
        f"{fmt(half_best['fd'])}), the FD spans {fmt(half_best['fd'])} to {fmt(max(r['fd'] for r in half))}, the raw weights score "
        f"{fmt(reference[(s['steps'] // 2, 'raw')]['fd'])} and the half-life EMA {fmt(reference[(s['steps'] // 2, 'halflife-ema')]['fd'])}. "
        "Both curves come from the same snapshots of the one run.",
        f"- One run, one sample set per row. The sampling noise of a row: std {second['std']:g} scores FD {fmt(first['fd'])} on "
        f"these latents and {fmt(second['fd'])} on a second set; differences between stds smaller than that "
        f"({abs(first['fd'] - second['fd']):.3f}) are not resolved. By that yardstick the spread across stds is "
        f"{spread_verdict(half, abs(first['fd'] - second['fd']))} half-way and {spread_verdict(final, abs(first['fd'] - second['fd']))} "
        "at the end of the run.",
        "",
        "## FD against relative EMA std",
        "",
    ]
    table = []
    for r in rows:
        name = f"{r['weights']} std {r['std']:g} ({r['snapshots']} stored profiles)" if r["std"] is not None else r["weights"]
        table.append([f"{r['step']:,}", f"{r['step'] * s['batch']:,}", name, fmt(r["fd"]), fmt(r["confidence"]),
                      fmt(r["min_class_fraction"])])
    lines.append(common.markdown_table(["step", "images", "weights", "FD", "confidence", "smallest class share"], table))
    if plot_name:
        lines += ["", f"![FD against EMA length]({plot_name})"]
    lines += ["", "## Machine", "", common.machine_markdown(results["machine"])]
    return "\n".join(lines)


def write_plot(results: Dict[str, Any], path: str) -> str:
    plt = common.pyplot("the EMA benchmark's plot")
    ticker = require("matplotlib.ticker", "the EMA benchmark's plot")
    s, rows = results["settings"], results["rows"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for step, color in ((s["steps"] // 2, "tab:orange"), (s["steps"], "tab:blue")):
        points = [(r["std"], r["fd"]) for r in rows if r["step"] == step and r["weights"] == "post-hoc" and r["fd"] is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color,
                label=f"post-hoc EMA at {step * s['batch']:,} images")
        for kind, style in (("raw", ":"), ("halflife-ema", "--")):
            ref = next(r for r in rows if r["step"] == step and r["weights"] == kind)
            if ref["fd"] is not None:
                ax.axhline(ref["fd"], color=color, linestyle=style, linewidth=1, label=f"{kind} weights at {step * s['batch']:,} images")
    for std in s["tracked_stds"]:
        ax.axvline(std, color="gray", linewidth=0.8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for scale in (ax.xaxis, ax.yaxis):  # plain numbers at 1, 2, 3 and 5 times powers of ten
        scale.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        scale.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        scale.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("relative EMA std (grey: the two tracked profiles)")
    ax.set_ylabel("FD in classifier features (lower is better)")
    ax.set_title(f"{s['data']}: one run, every EMA length afterwards", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return common.save_png(fig, path)


def write_report(results: Dict[str, Any], out_dir: str, plot: bool = True) -> List[str]:
    stem = f"ema_{results['settings']['data']}"
    os.makedirs(out_dir, exist_ok=True)
    plot_path = write_plot(results, os.path.join(out_dir, stem + ".png")) if plot and common.have_matplotlib() else None
    paths = common.write_results(stem, results, markdown(results, os.path.basename(plot_path) if plot_path else None), out_dir)
    return paths + ([plot_path] if plot_path else [])


# --------------------------------------------------------------------------- the benchmark


def run_benchmark(settings: Settings, out_dir: str, work_dir: str, plot: bool = True, log=print) -> Dict[str, Any]:
    started = time.perf_counter()
    if (settings.steps // 2) % settings.snapshot_every_steps:  # the half-way curve needs a snapshot there
        raise ConfigError(f"snapshot_every_steps = {settings.snapshot_every_steps} does not divide half of steps = {settings.steps}")
    common.set_threads(settings.threads)
    machine = common.machine_info()
    classifier, _, _ = cached_classifier(settings.data, os.path.join(work_dir, "classifier"))
    evaluation = Evaluation(settings, settings.seed, classifier)
    run_dir = os.path.join(work_dir, f"{settings.data}-{'quick' if settings.quick else 'run'}")
    run = train_run(settings, run_dir, log)
    rows = score_run(settings, run_dir, evaluation, log)
    denoiser = load_trained(run_dir)[0]
    results = {
        "settings": dataclasses.asdict(settings), "run": run, "rows": rows, "heldout_count": evaluation.heldout_count,
        "parameters": sum(p.numel() for p in denoiser.network.parameters()),
        "data_floor": evaluation.score(evaluation.training_sample.to(torch.float64))["fd"],
        "machine": machine, "wall_s": time.perf_counter() - started,
    }
    for path in write_report(results, out_dir, plot):
        log(f"wrote {path}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/ema.py", description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits", help="the data set [default: digits]")
    parser.add_argument("--quick", action="store_true", help="smoke run of about a minute on digits (writes to TMPDIR, not a result)")
    parser.add_argument("--out-dir", default=None, help="where ema_DATA.{json,md,png} go [default: benchmarks/results]")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "edm-space-bench-ema"), help="where the run is trained")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--report-only", action="store_true", help="rewrite ema_DATA.md and .png from ema_DATA.json; train nothing")
    args = parser.parse_args(argv)
    with common.one_line_errors():
        out_dir = args.out_dir or (os.path.join(tempfile.gettempdir(), "edm-space-ema-quick") if args.quick else common.RESULTS)
        if args.report_only:
            path = os.path.join(out_dir, f"ema_{args.data}.json")
            if not os.path.isfile(path):
                raise ConfigError(f"--report-only: {path!r} does not exist; run the benchmark first")
            with open(path) as file:
                for written in write_report(json.load(file), out_dir, plot=not args.no_plot):
                    print(f"wrote {written}")
            return 0
        settings = quick_settings() if args.quick else mnist_settings() if args.data == "mnist" else Settings()
        run_benchmark(settings, out_dir, args.work_dir, plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
