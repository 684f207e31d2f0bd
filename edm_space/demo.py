"""`edm-space demo`: train two presets on a toy set, sample each with two solvers, compare.

In a few minutes on two CPU cores it shows the project's point: the same network
trained under two formulations, sampled by two solvers at several budgets of
network evaluations (NFE), scored by the sliced Wasserstein-2 distance to fresh
data (with a bootstrap error bar, next to the distance between two fresh data
sets, the floor any model can reach at this sample size).
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Dict, List, Sequence

import numpy as np
import torch

import presets
import samplers

from .data import load
from .errors import ConfigError
from .files import write_atomic
from .generation import SamplerSettings, generate
from .metrics import bootstrap, sliced_wasserstein2
from .optional import require
from .plotting import scatter_panels_png
from .training import TrainConfig, load_trained, train

DEMO_PRESETS = ("edm", "flow")
DEMO_SOLVERS = ("heun", "euler")
DEMO_NFE = (5, 9, 17, 35)
SEED_STRIDE = 1_000_000  # sample i of demo seed s starts from the latent of seed s * SEED_STRIDE + i
# Why Heun trails Euler at the smallest budgets (README, "Solver benchmark"): with few steps sigma_{i+1} << sigma_i.
HEUN_NOTE = ("Heun at few steps: when sigma_{i+1} is much smaller than sigma_i its end-of-step slope is near 0, so the "
             "average of its two slopes moves about half as far as Euler's step.")


def run_demo(
    out_dir: str = "edm-space-demo",
    data: str = "moons",
    presets_to_train: Sequence[str] = DEMO_PRESETS,
    solvers: Sequence[str] = DEMO_SOLVERS,
    nfe_grid: Sequence[int] = DEMO_NFE,
    steps: int = 2000,
    num_samples: int = 2000,
    seed: int = 0,
    progress: bool = True,
    echo=print,
) -> Dict:
    """Train, sample, score; write results.json, results.md and demo.png under out_dir; return the results."""
    for name in presets_to_train:
        presets.get(name)
    for solver in solvers:
        samplers.get(solver)
    if num_samples < 10:
        raise ConfigError(f"num_samples = {num_samples} is too few to score; use at least 10")
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    # The demo's tensors are small: one thread avoids the cost of splitting tiny operations (and of
    # fighting another busy core), and makes the run several times faster on a 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(out_dir, data, presets_to_train, solvers, nfe_grid, steps, num_samples, seed, progress, echo, started)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir, data, presets_to_train, solvers, nfe_grid, steps, num_samples, seed, progress, echo, started) -> Dict:
    fresh = load(data, n=num_samples, seed=seed + 101)
    floor = sliced_wasserstein2(load(data, n=num_samples, seed=seed + 202), fresh)
    rows: List[Dict] = []
    panels: Dict[str, np.ndarray] = {"data": fresh.numpy()}
    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)  # train() creates the run folder, not its parents
    for name in presets_to_train:
        run_dir = os.path.join(out_dir, "runs", name)
        echo(f"training {name} on {data} ({steps} steps) -> {run_dir}")
        config = TrainConfig(preset=name, data=data, out=run_dir, net="mlp", net_options={"width": 128, "depth": 3},
                             steps=steps, batch=256, seed=seed, checkpoint_every=steps, log_every=max(steps // 10, 1))
        train(config, progress=progress)
        denoiser, trained, _, _, _ = load_trained(run_dir)
        sample_seeds = range(seed * SEED_STRIDE, seed * SEED_STRIDE + num_samples)  # the same latents for every configuration
        for solver in solvers:
            for nfe in nfe_grid:
                num_steps = samplers.get(solver).steps_for_nfe(nfe)  # the most steps within the budget
                out = generate(denoiser, sample_seeds, fresh.shape[1:], SamplerSettings(name, solver, num_steps), batch_size=num_samples)
                x = out.samples
                value, error = bootstrap(sliced_wasserstein2, x, fresh, num_resamples=10, seed=seed)
                rows.append({"preset": name, "solver": solver, "steps": num_steps, "nfe": out.nfe,
                             "sw2": value, "sw2_err": error, "discretization": presets.get(name).default_discretization})
                panels[f"{name} + {solver}"] = x.numpy()  # the largest budget is kept (last in the grid)
    elapsed = time.perf_counter() - started
    results = {"data": data, "train_steps": steps, "num_samples": num_samples, "sw2_floor": floor, "rows": rows, "seconds": elapsed}
    _write_outputs(out_dir, results, panels)
    return results


def format_results(results: Dict) -> str:
    """The comparison table in Markdown."""
    lines = [
        f"Sliced W2 to fresh {results['data']} data ({results['num_samples']} samples; two fresh data sets differ by "
        f"{results['sw2_floor']:.4f}). Lower is better.",
        "",
        "| preset | solver | steps | NFE | sliced W2 |",
        "|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(f"| {row['preset']} | {row['solver']} | {row['steps']} | {row['nfe']} | {row['sw2']:.4f} ± {row['sw2_err']:.4f} |")
    if any(row["solver"] == "heun" and row["steps"] <= 3 for row in results["rows"]):
        lines += ["", HEUN_NOTE]
    return "\n".join(lines)


def _write_outputs(out_dir: str, results: Dict, panels: Dict[str, np.ndarray]) -> None:
    write_atomic(os.path.join(out_dir, "results.json"), (json.dumps(results, indent=2) + "\n").encode())
    write_atomic(os.path.join(out_dir, "results.md"), (format_results(results) + "\n").encode())
    figure = os.path.join(out_dir, "demo.png")
    try:
        matplotlib = require("matplotlib", "the demo's figure")
    except ConfigError:  # without the optional package: the sample panels alone
        scatter_panels_png(figure, list(panels.values()))
        return
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "the demo's figure")

    names = list(panels)
    top_nfe = max(r["nfe"] for r in results["rows"])
    fig = plt.figure(figsize=(3.0 * len(names), 6.4), dpi=100)
    grid = fig.add_gridspec(2, len(names), height_ratios=[1, 1.1])
    for i, name in enumerate(names):
        ax = fig.add_subplot(grid[0, i])
        points = panels[name]
        ax.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5, color="tab:blue" if i == 0 else "tab:orange")
        ax.set_title(name if i == 0 else f"{name}, NFE {top_nfe}", fontsize=9)
        ax.set_xlim(-1.6, 1.6)
        ax.set_ylim(-1.6, 1.6)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    ax = fig.add_subplot(grid[1, :])
    for preset in dict.fromkeys(r["preset"] for r in results["rows"]):
        for solver in dict.fromkeys(r["solver"] for r in results["rows"]):
            rows = [r for r in results["rows"] if r["preset"] == preset and r["solver"] == solver]
            ax.errorbar([r["nfe"] for r in rows], [r["sw2"] for r in rows], yerr=[r["sw2_err"] for r in rows],
                        marker="o", markersize=3, capsize=2, label=f"{preset} + {solver}")
    ax.axhline(results["sw2_floor"], color="gray", linestyle="--", linewidth=1, label="two fresh data sets")
    ax.set_xscale("log")
    ax.set_yscale("log")
    nfes = sorted({r["nfe"] for r in results["rows"]})
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.minorticks_off()
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("sliced W2 to fresh data")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_atomic(figure, buffer.getvalue())
