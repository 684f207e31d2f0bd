"""Pixel-space against latent diffusion on MNIST (5k, 28x28) at the same total CPU budget.

    python benchmarks/latent.py                 # every configuration, as parallel processes, 40 s of CPU each
    python benchmarks/latent.py --budget 480 --parallel 1   # 8 minutes of CPU per configuration, one after another (the committed results)
    python benchmarks/latent.py --quick         # the same code path at toy sizes, in a temporary folder (< 1 min)
    python benchmarks/latent.py --report-only   # rewrite the Markdown and the plot from benchmarks/results/latent_mnist.json

The budget of a configuration is CPU time of its process (time.process_time, one torch
thread), not wall time: the machine is shared, and a process waiting for a core spends wall
time but no CPU time. For a latent configuration the budget pays for everything the
latent route needs before sampling: training the autoencoder (a fixed share of the budget),
encoding the data set once, and training the diffusion model on the latents. A pixel
configuration spends the whole budget on its diffusion model. Training runs in chunks
(edm_space.training.train / model_training.train_model resume bit-exactly): a short first
chunk measures the CPU cost per step, later chunks fill the rest of the budget.

Every model trains with the EDM preset (Karras et al. 2022) and samples with Heun's
2nd-order solver, 5 steps (9 NFE), samples i from seed i, EMA weights, as
`edm-space sample --ckpt` does; a latent model's samples are decoded with the
autoencoder's decoder (edm_space.latent). Scores (edm_space.classifier.image_quality):
Frechet distance in the features of a small MNIST classifier between the samples and the
5,000 real digits (with a bootstrap over samples), the classifier's mean top-class
probability and the least-covered class's share. The autoencoder's reconstruction
PSNR = 10 log10(4 / MSE) on its held-out digits (data in [-1, 1]) bounds what a latent
model can reach; the FD of those reconstructions is reported next to that of the
originals.

Results: benchmarks/results/latent_mnist.{json,md,png} and latent_mnist_samples.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from edm_space.classifier import image_quality, train_classifier  # noqa: E402
from edm_space.data import load  # noqa: E402
from edm_space.latent import open_latent_space  # noqa: E402
from edm_space.metrics import frechet_distance  # noqa: E402
from edm_space.model_training import ModelConfig, evaluate_autoencoder, train_model  # noqa: E402
from edm_space.training import TrainConfig, load_trained, train  # noqa: E402

STEM = "latent_mnist"
SOLVER, NUM_STEPS = "heun", 5
BOOTSTRAP = 200

# The configurations. Latent models use a DiT with 49 tokens (7x7 latents, patch 1); the pixel
# model the U-Net tuned for MNIST in benchmarks/training_quality.py (a DiT on 28x28 pixels needs
# patch 4, i.e. 16-value tokens, and is the weaker pixel model).
PIXEL_NET = dict(net="unet", net_options={"channels": 16, "channel_mult": [1, 2, 4], "blocks_per_level": 1}, lr=2e-3)
LATENT_NET = dict(net="dit", net_options={"depth": 4, "width": 96, "heads": 4, "patch": 1}, lr=1e-3)
DEFAULT_CONFIGS = ("pixel", "kl-c2-d4", "kl-c4-d4", "kl-c8-d4", "vq-c4-d4")  # vq-c2-d4 with --configs
CONFIGS: List[Dict[str, Any]] = [
    {"name": "pixel", "space": "pixel"},
    {"name": "kl-c2-d4", "space": "latent", "kind": "kl", "latent_channels": 2, "downsample": 4},
    {"name": "kl-c4-d4", "space": "latent", "kind": "kl", "latent_channels": 4, "downsample": 4},
    {"name": "kl-c8-d4", "space": "latent", "kind": "kl", "latent_channels": 8, "downsample": 4},
    {"name": "vq-c2-d4", "space": "latent", "kind": "vq", "latent_channels": 2, "downsample": 4},
    {"name": "vq-c4-d4", "space": "latent", "kind": "vq", "latent_channels": 4, "downsample": 4},
]
SETTINGS: Dict[str, Any] = {
    "budget_cpu_s": 40.0,          # per configuration: autoencoder + encoding + diffusion training
    "autoencoder_share": 0.3,      # of the budget, for a latent configuration
    "first_chunk_steps": 40,       # measures the CPU cost per step
    "batch": 64,
    "autoencoder": {"channels": 32, "blocks": 1, "lr": 1e-3},
    "diffusion": dict(warmup_images=10_000, grad_clip=1.0, ema_halflife_images=20_000, ema_rampup_ratio=0.05),
    "n_samples": 500,
    "classifier_epochs": 3,
    "data_size": None,
    "pixel_net": PIXEL_NET,
    "latent_net": LATENT_NET,
    "num_steps": NUM_STEPS,
}
QUICK: Dict[str, Any] = {
    "budget_cpu_s": 3.0, "first_chunk_steps": 2, "batch": 16, "n_samples": 24, "classifier_epochs": 1, "data_size": 256, "num_steps": 3,
    "autoencoder": {"channels": 8, "blocks": 1, "lr": 1e-3},
    "pixel_net": dict(net="unet", net_options={"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1}, lr=2e-3),
    "latent_net": dict(net="dit", net_options={"depth": 1, "width": 32, "heads": 2, "patch": 1}, lr=1e-3),
}
QUICK_CONFIGS = ("pixel", "kl-c2-d4", "vq-c2-d4")


# ---------------------------------------------------------------------------
# Training within a CPU budget.


def train_within(budget_s: float, first_steps: int, run_chunk: Callable[[int], None], max_chunks: int = 4) -> Dict[str, Any]:
    """Call run_chunk(total_steps) with growing step counts until `budget_s` of process CPU time is spent.

    The first call trains `first_steps`; each later one extends the run by 95 % of the remaining
    budget divided by the CPU cost per step of the previous call (its start-up cost included,
    so the estimate errs short). Returns steps, cpu_s and the calls' (steps, cpu_s).
    """
    start = time.process_time()
    steps, done, chunks = first_steps, 0, []
    for _ in range(max_chunks):
        before = time.process_time()
        run_chunk(steps)
        spent = time.process_time() - before
        chunks.append((steps, spent))
        per_step = spent / max(steps - done, 1)
        done = steps
        remaining = budget_s - (time.process_time() - start)
        more = int(0.95 * remaining / per_step)
        if more < max(1, first_steps // 4):
            break
        steps = done + more
    return {"steps": done, "cpu_s": time.process_time() - start, "chunks": chunks}


def train_autoencoder(config: Dict[str, Any], settings: Dict[str, Any], run: str, budget_s: float) -> Dict[str, Any]:
    ae = settings["autoencoder"]
    options = {"latent_channels": config["latent_channels"], "downsample": config["downsample"], "channels": ae["channels"], "blocks": ae["blocks"]}

    def chunk(steps: int) -> None:
        train_model(ModelConfig(kind="autoencoder", name=config["kind"], options=options, data="mnist5k", out=run,
                                data_size=settings["data_size"], steps=steps, batch=settings["batch"], lr=ae["lr"],
                                checkpoint_every=steps, keep_checkpoints=1, log_every=max(1, steps)), progress=False)

    common.refuse_legacy_run(run)
    spent = train_within(budget_s, settings["first_chunk_steps"], chunk)
    return {**spent, "options": options}


def train_diffusion(config: Dict[str, Any], settings: Dict[str, Any], run: str, budget_s: float, latent: Optional[str]) -> Dict[str, Any]:
    net = settings["latent_net"] if latent else settings["pixel_net"]

    def chunk(steps: int) -> None:
        train(TrainConfig(preset="edm", data="mnist5k", out=run, net=net["net"], net_options=net["net_options"], lr=net["lr"],
                          data_size=settings["data_size"], steps=steps, batch=settings["batch"], seed=0, latent=latent,
                          latent_mode="mean", checkpoint_every=steps, keep_checkpoints=1, log_every=max(1, steps),
                          **settings["diffusion"]), progress=False)

    common.refuse_legacy_run(run)
    return {**train_within(budget_s, settings["first_chunk_steps"], chunk), "net": net}


def sample_decoded(run: str, n: int, num_steps: int) -> Dict[str, Any]:
    """n samples (seed i for sample i) of a run as images in [-1, 1], with the CPU time of sampling and of decoding."""
    before = time.process_time()
    samples, nfe, _ = common.sample_run(run, n, solver=SOLVER, num_steps=num_steps, batch=250)
    sample_cpu = time.process_time() - before
    _, config, _, _, _ = load_trained(run)
    decode_cpu = 0.0
    if config.latent_space is not None:
        space = open_latent_space(config.latent_space, run)
        before = time.process_time()
        samples = space.decode(samples.to(torch.float32))
        decode_cpu = time.process_time() - before
    return {"images": samples.clamp(-1, 1).to(torch.float32), "nfe": nfe, "sample_cpu_s": sample_cpu, "decode_cpu_s": decode_cpu,
            "shape": list(config.item_shape)}


def run_configuration(config: Dict[str, Any], settings: Dict[str, Any], work_dir: str) -> Dict[str, Any]:
    """Train one configuration within its budget, sample and decode; writes work_dir/NAME/{result.json,arrays.npz}."""
    folder = os.path.join(work_dir, config["name"])
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    budget = settings["budget_cpu_s"]
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    result: Dict[str, Any] = {"config": config, "budget_cpu_s": budget}
    latent, arrays = None, {}
    if config["space"] == "latent":
        latent = os.path.join(folder, "autoencoder")
        result["autoencoder"] = train_autoencoder(config, settings, latent, settings["autoencoder_share"] * budget)
    result["diffusion"] = train_diffusion(config, settings, os.path.join(folder, "diffusion"), budget - (time.process_time() - start_cpu), latent)
    result["train_cpu_s"] = time.process_time() - start_cpu
    result["train_wall_s"] = time.perf_counter() - start_wall
    drawn = sample_decoded(os.path.join(folder, "diffusion"), settings["n_samples"], settings["num_steps"])
    arrays["samples"] = drawn.pop("images").numpy()
    result["sampling"] = drawn
    if latent is not None:
        evaluation = evaluate_autoencoder(latent, n=500, iwae_samples=1)
        arrays["originals"] = evaluation.pop("originals").numpy()
        arrays["reconstructions"] = evaluation.pop("reconstructions").clamp(-1, 1).numpy()
        result["reconstruction"] = evaluation
    np.savez(os.path.join(folder, "arrays.npz"), **arrays)
    common.write_json(os.path.join(folder, "result.json"), result)
    return result


# ---------------------------------------------------------------------------
# Scoring.


def bootstrap_fd(real_features: torch.Tensor, fake_features: torch.Tensor, reps: int, seed: int = 0) -> Dict[str, float]:
    """Std and 2.5 / 97.5 % quantiles of the FD over `reps` resamplings (with replacement) of the samples."""
    rng = np.random.default_rng(seed)
    values = [frechet_distance(real_features, fake_features[torch.from_numpy(rng.integers(0, len(fake_features), len(fake_features)))])
              for _ in range(reps)]
    return {"std": float(np.std(values, ddof=1)), "low": float(np.quantile(values, 0.025)), "high": float(np.quantile(values, 0.975)), "reps": reps}


def score(results: Dict[str, Dict[str, Any]], arrays: Dict[str, Dict[str, np.ndarray]], classifier, real: torch.Tensor, reps: int) -> Dict[str, Any]:
    """Adds the quality numbers to each configuration's result; returns the real-data references."""
    with torch.no_grad():
        real_features = classifier.features(real)
    for name, result in results.items():
        samples = torch.from_numpy(arrays[name]["samples"])
        quality = image_quality(samples, None, classifier, real_features=real_features)
        with torch.no_grad():
            fake_features = classifier.features(samples)
        quality["frechet_distance_bootstrap"] = bootstrap_fd(real_features, fake_features, reps)
        result["quality"] = quality
        if "reconstructions" in arrays[name]:
            recon = torch.from_numpy(arrays[name]["reconstructions"])
            result["reconstruction"]["frechet_distance"] = image_quality(recon, None, classifier, real_features=real_features)["frechet_distance"]
            result["reconstruction"]["frechet_distance_originals"] = image_quality(
                torch.from_numpy(arrays[name]["originals"]), None, classifier, real_features=real_features)["frechet_distance"]
        sampling = result["sampling"]
        n = len(samples)
        sampling["cpu_s_per_image"] = (sampling["sample_cpu_s"] + sampling["decode_cpu_s"]) / n
        sampling["decode_cpu_s_per_image"] = sampling["decode_cpu_s"] / n
    # The floor: a random subset of real digits, as many as the samples, against all of them.
    n = len(next(iter(arrays.values()))["samples"])
    subset = torch.from_numpy(np.random.default_rng(1).choice(len(real), n, replace=False))
    return {"real_subset_n": n, "real_subset_quality": image_quality(real[subset], None, classifier, real_features=real_features)}


# ---------------------------------------------------------------------------
# Report.


def label(result: Dict[str, Any]) -> str:
    c = result["config"]
    if c["space"] == "pixel":
        return "pixel (U-Net)"
    return f"{c['kind'].upper()} c{c['latent_channels']} d{c['downsample']}"


def table_rows(payload: Dict[str, Any]) -> List[List[str]]:
    rows = []
    for name, r in payload["configurations"].items():
        q, s, d = r["quality"], r["sampling"], r["diffusion"]
        b = q["frechet_distance_bootstrap"]
        ae = r.get("autoencoder")
        rec = r.get("reconstruction")
        rows.append([
            label(r), "x".join(map(str, s["shape"])),
            f"{ae['steps']} / {ae['cpu_s']:.0f} s" if ae else "-",
            f"{d['steps']} / {d['cpu_s']:.0f} s", f"{r['train_cpu_s']:.0f} s",
            f"{rec['psnr']:.2f}" if rec else "-", f"{rec['frechet_distance']:.2f}" if rec else "-",
            f"**{q['frechet_distance']:.2f}** ± {b['std']:.2f}", f"{q['confidence']:.3f}", f"{q['min_class_fraction']:.3f}",
            str(s["nfe"]), f"{1000 * s['cpu_s_per_image']:.1f} ({1000 * s['decode_cpu_s_per_image']:.2f})",
        ])
    return rows


HEADERS = ["configuration", "diffusion space", "AE steps / CPU", "diffusion steps / CPU", "total train CPU",
           "recon PSNR (dB)", "recon FD", "FD ± bootstrap std", "confidence", "min class share", "NFE", "CPU ms / image (decoder)"]


def conclusions(payload: Dict[str, Any]) -> List[str]:
    configs = payload["configurations"]
    fd = {name: r["quality"]["frechet_distance"] for name, r in configs.items()}
    lines = []
    if "pixel" in fd and len(fd) > 1:
        latent = {k: v for k, v in fd.items() if k != "pixel"}
        best = min(latent, key=latent.get)
        pb = configs["pixel"]["quality"]["frechet_distance_bootstrap"]
        bb = configs[best]["quality"]["frechet_distance_bootstrap"]
        separated = bb["high"] < pb["low"] or pb["high"] < bb["low"]
        budget = payload["settings"]["budget_cpu_s"]
        verb = "lower" if latent[best] < fd["pixel"] else "higher"
        spent = [r["train_cpu_s"] for r in configs.values()]
        lines.append(f"- At this budget ({budget:.0f} s of CPU per configuration, {min(spent):.0f}-{max(spent):.0f} s spent; one thread, one seed), "
                     "the best latent configuration "
                     f"({label(configs[best])}) reaches FD {latent[best]:.2f}, {verb} than pixel-space diffusion's {fd['pixel']:.2f}; "
                     + ("the 95 % bootstrap intervals over samples do not overlap." if separated else
                        "the 95 % bootstrap intervals over samples overlap, so the data do not separate them."))
        better = sorted(k for k, v in latent.items() if v < fd["pixel"])
        lines.append(f"- Latent configurations with a lower FD than pixel space: {', '.join(label(configs[k]) for k in better) or 'none'} "
                     f"(of {len(latent)}).")
        for name in latent:
            rec = configs[name]["reconstruction"]
            if fd[name] < 1.5 * rec["frechet_distance"]:
                lines.append(f"- {label(configs[name])}: sample FD {fd[name]:.2f} is within 1.5x of its autoencoder's reconstruction FD "
                             f"{rec['frechet_distance']:.2f} (500 held-out digits): much of its distance to the real digits is already in "
                             "the autoencoder's reconstructions, so a better diffusion model alone would gain little.")
        px = configs["pixel"]["sampling"]["cpu_s_per_image"]
        lt = np.mean([configs[k]["sampling"]["cpu_s_per_image"] for k in latent])
        lines.append(f"- Sampling at the same NFE costs {1000 * px:.1f} ms of CPU per image in pixel space and {1000 * lt:.1f} ms on "
                     f"average in latent space, decoder included (the networks differ: U-Net at 28x28 vs DiT on 7x7 latents).")
    lines.append("- Not supported by these numbers: a ranking at other budgets, on a GPU, or across seeds (one training seed per "
                 "configuration; the error bars are over samples only and do not include training noise).")
    return lines


def markdown(payload: Dict[str, Any], grid: Optional[str], plot: Optional[str]) -> str:
    s = payload["settings"]
    ref = payload["reference"]
    lines = [f"# Pixel-space vs latent diffusion on MNIST at one CPU budget" + (" (--quick smoke run)" if payload["quick"] else ""), ""]
    lines.append(f"Command: `{payload.get('command') or 'python benchmarks/latent.py' + (' --quick' if payload['quick'] else '')}`")
    parallel = payload.get("parallel")
    how = ("configurations ran one after another, beside other jobs" if parallel == 1
           else "configurations ran as parallel processes")
    lines.append("")
    lines.append(f"Budget: **{s['budget_cpu_s']:.0f} s of process CPU time** (time.process_time, one torch thread) per configuration for "
                 f"everything before sampling: for latent configurations the autoencoder ({s['autoencoder_share']:.0%} of the budget), "
                 "encoding the 5,000 digits once, and the diffusion model. CPU time, not wall time, because the 2-core machine was "
                 f"shared with other processes ({how}; wall times are in the JSON). "
                 f"EDM preset, batch {s['batch']}, Heun {s['num_steps']} steps, {s['n_samples']} samples from seeds 0..{s['n_samples'] - 1}, "
                 "EMA weights, one training seed (0) per configuration.")
    walls = [r["train_wall_s"] for r in payload["configurations"].values()]
    share = [r["train_cpu_s"] / r["train_wall_s"] for r in payload["configurations"].values()]
    lines.append(f"While these ran, the machine was loaded (load average {payload['machine'].get('load_average_at_start')} at the start): "
                 f"training took {min(walls) / 60:.1f}-{max(walls) / 60:.1f} min of wall time per configuration, i.e. each process "
                 f"got {min(share):.0%}-{max(share):.0%} of a core. The whole run took {payload['wall_s'] / 60:.1f} min.")
    over = [label(r) for r in payload["configurations"].values() if r["train_cpu_s"] > 1.1 * s["budget_cpu_s"]]
    if over:
        lines.append("")
        lines.append(f"**Budget overrun** ({', '.join(over)}): the first training chunk ({s['first_chunk_steps']} steps, which measures the "
                     "CPU cost per step) of the autoencoder or of the diffusion model alone cost more than the budget on this loaded "
                     "machine, so no further steps were taken: these configurations are equal in steps, not in CPU time "
                     "(see 'total train CPU'). Rerun with a larger --budget on a less loaded machine for a budget-matched comparison.")
    lines.append("")
    lines.append(common.markdown_table(HEADERS, table_rows(payload)))
    lines.append("")
    rs = ref["real_subset_quality"]
    lines.append(f"- FD: Frechet distance in the 128 penultimate features of edm_space.classifier's MNIST classifier, samples vs the "
                 f"5,000 real digits; ± is the standard deviation over {BOOTSTRAP} bootstrap resamplings of the samples (95 % intervals "
                 f"in the JSON; resampling with replacement raises the FD a little, so only the spread is used). Floor: {ref['real_subset_n']} real digits vs all 5,000 give FD {rs['frechet_distance']:.2f}, "
                 f"confidence {rs['confidence']:.3f}.")
    lines.append("- recon PSNR: 10 log10(4 / MSE) of the autoencoder on its 500 held-out digits (the ceiling the latent space sets); "
                 "recon FD: FD of those 500 reconstructions (the 500 originals score "
                 + ", ".join(sorted({f"{r['reconstruction']['frechet_distance_originals']:.2f}" for r in payload['configurations'].values() if 'reconstruction' in r}))
                 + "; FD grows as n shrinks, so compare numbers at equal n).")
    lines.append("- confidence: the classifier's mean top-class probability; min class share: the least-predicted digit's share of the "
                 "samples (0.1 is perfectly even).")
    lines.append("- CPU ms / image: sampling plus decoding, per image, in batches of 250 (decoder alone in parentheses).")
    lines.append(f"- Networks: pixel `{s['pixel_net']}`; latent `{s['latent_net']}` (7x7 latents -> 49 tokens); autoencoders "
                 f"`{s['autoencoder']}` (edm_space.autoencoders, beta and codebook defaults).")
    lines.append("")
    lines.append("## What the numbers support")
    lines.append("")
    lines += conclusions(payload)
    if plot:
        lines += ["", f"![FD per configuration]({os.path.basename(plot)})"]
    if grid:
        lines += ["", f"![samples per configuration]({os.path.basename(grid)})", "",
                  f"`{os.path.basename(grid)}`: the first 64 samples (seeds 0-63) of each configuration, decoded."]
    lines += ["", "## Machine", "", common.machine_markdown(payload["machine"])]
    return "\n".join(lines)


def plot_fd(payload: Dict[str, Any], path: str) -> str:
    plt = common.pyplot("the latent benchmark's plot")
    configs = list(payload["configurations"].values())
    names = [label(r) for r in configs]
    fd = np.array([r["quality"]["frechet_distance"] for r in configs])
    low = np.array([r["quality"]["frechet_distance_bootstrap"]["low"] for r in configs])
    high = np.array([r["quality"]["frechet_distance_bootstrap"]["high"] for r in configs])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(configs))
    colors = ["tab:gray" if r["config"]["space"] == "pixel" else ("tab:blue" if r["config"].get("kind") == "kl" else "tab:orange") for r in configs]
    left.bar(x, fd, color=colors, label="samples")
    left.errorbar(x, fd, yerr=[fd - low, high - fd], fmt="none", ecolor="black", capsize=4, label="95 % bootstrap interval")
    left.axhline(payload["reference"]["real_subset_quality"]["frechet_distance"], color="green", ls="--", label="real digits (floor)")
    left.set_xticks(x, names, rotation=20)
    left.set_xlabel("configuration")
    left.set_yscale("log")  # untrained and trained models differ by orders of magnitude
    left.set_ylabel("classifier-feature Frechet distance (log; lower is better)")
    left.set_title(f"{payload['settings']['budget_cpu_s']:.0f} s CPU per configuration")
    left.legend()
    for r, name in zip(configs, names):
        if "reconstruction" in r:
            right.scatter(r["reconstruction"]["psnr"], r["quality"]["frechet_distance"], s=50,
                          color="tab:blue" if r["config"]["kind"] == "kl" else "tab:orange", marker="o" if r["config"]["latent_channels"] == 2 else "s",
                          label=name)
    if "pixel" in payload["configurations"]:
        right.axhline(payload["configurations"]["pixel"]["quality"]["frechet_distance"], color="tab:gray", ls=":", label="pixel (U-Net)")
    right.set_xlabel("autoencoder reconstruction PSNR on held-out digits (dB)")
    right.set_yscale("log")
    right.set_ylabel("sample Frechet distance (log)")
    right.set_title("latent models: FD vs the autoencoder's ceiling")
    right.legend()
    fig.tight_layout()
    return common.save_png(fig, path, dpi=110)


def plot_grid(payload: Dict[str, Any], arrays: Dict[str, Dict[str, np.ndarray]], path: str) -> str:
    plt = common.pyplot("the latent benchmark's sample grid")
    names = list(payload["configurations"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.9), squeeze=False)
    for ax, name in zip(axes[0], names):
        images = arrays[name]["samples"][:64, 0]
        k = int(math.ceil(math.sqrt(len(images))))
        h, w = images.shape[1:]
        canvas = np.ones((k * (h + 1), k * (w + 1)))
        for i, image in enumerate(images):
            r, c = divmod(i, k)
            canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = (image + 1) / 2
        ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{label(payload['configurations'][name])}\nFD {payload['configurations'][name]['quality']['frechet_distance']:.2f}")
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.96))  # room for the two-line titles
    return common.save_png(fig, path, dpi=100)


# ---------------------------------------------------------------------------
# Command line.


def write_report(payload: Dict[str, Any], results_dir: str, arrays: Optional[Dict[str, Dict[str, np.ndarray]]]) -> List[str]:
    os.makedirs(results_dir, exist_ok=True)
    stem = STEM + ("_quick" if payload["quick"] else "")
    plot = plot_fd(payload, os.path.join(results_dir, stem + ".png"))
    grid = os.path.join(results_dir, stem + "_samples.png")
    if arrays is not None:
        plot_grid(payload, arrays, grid)
    grid = grid if os.path.exists(grid) else None
    return common.write_results(stem, payload, markdown(payload, grid, plot), results_dir) + [plot] + ([grid] if grid else [])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes in a temporary folder, < 1 minute")
    parser.add_argument("--report-only", action="store_true", help="rewrite the Markdown and the plot from the stored JSON")
    parser.add_argument("--budget", type=float, default=None, help="CPU seconds per configuration [default: 40; the committed results used 480]")
    parser.add_argument("--configs", default=None, help="comma-separated configuration names [default: all]")
    parser.add_argument("--parallel", type=int, default=None, help="configurations trained at once as processes [default: all; 1 with --quick]")
    parser.add_argument("--work-dir", default=None, help="runs and raw samples [default: out/latent_mnist, or a temporary folder with --quick]")
    parser.add_argument("--results-dir", default=None, help="where the JSON / Markdown / PNGs go [default: benchmarks/results; a temporary folder with --quick]")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    settings = dict(SETTINGS)
    if args.quick:
        settings.update(QUICK)
    if args.budget is not None:
        if not args.budget > 0:
            parser.error(f"--budget {args.budget} is invalid; it must be > 0")
        settings["budget_cpu_s"] = args.budget
    known = {c["name"]: c for c in CONFIGS}
    chosen = args.configs.split(",") if args.configs else (list(QUICK_CONFIGS) if args.quick else list(DEFAULT_CONFIGS))
    for name in chosen:
        if name not in known:
            parser.error(f"--configs {name!r} is unknown; valid: {', '.join(known)}")

    if args.worker is not None:  # one configuration in this process (spawned by the parent run)
        with common.one_line_errors():
            with open(os.path.join(args.work_dir, "settings.json")) as file:
                run_configuration(known[args.worker], json.load(file), args.work_dir)
        return 0

    results_dir = args.results_dir or (tempfile.mkdtemp(prefix="edm-space-latent-") if args.quick else common.RESULTS)
    if args.report_only:
        stem = STEM + ("_quick" if args.quick else "")
        with open(os.path.join(results_dir, stem + ".json")) as file:
            payload = json.load(file)
        for path in write_report(payload, results_dir, None):
            print(f"wrote {path}")
        return 0

    work_dir = args.work_dir or (tempfile.mkdtemp(prefix="edm-space-latent-work-") if args.quick else os.path.join(common.ROOT, "out", "latent_mnist"))
    os.makedirs(work_dir, exist_ok=True)
    common.write_json(os.path.join(work_dir, "settings.json"), settings)
    machine = common.machine_info()
    started = time.perf_counter()
    parallel = args.parallel or (1 if args.quick else len(chosen))
    with common.one_line_errors():
        if parallel == 1:
            for name in chosen:
                run_configuration(known[name], settings, work_dir)
            classifier, real = feature_classifier(settings)
        else:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            workers = {}
            pending = list(chosen)
            while pending or workers:
                while pending and len(workers) < parallel:
                    name = pending.pop(0)
                    log = open(os.path.join(work_dir, f"{name}.log"), "w")
                    workers[name] = (subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", name, "--work-dir", work_dir],
                                                      env=env, stdout=log, stderr=subprocess.STDOUT), log)
                    print(f"started {name} (pid {workers[name][0].pid})", flush=True)
                    if len(workers) == parallel or not pending:
                        # The classifier trains while the workers do (it does not count towards any budget).
                        classifier, real = feature_classifier(settings)
                for name, (process, log) in list(workers.items()):
                    if process.poll() is not None:
                        log.close()
                        del workers[name]
                        print(f"{name} finished with status {process.returncode}", flush=True)
                        if process.returncode:
                            raise SystemExit(f"configuration {name} failed; see {os.path.join(work_dir, name + '.log')}")
                time.sleep(5)
        results, arrays = {}, {}
        for name in chosen:
            with open(os.path.join(work_dir, name, "result.json")) as file:
                results[name] = json.load(file)
            with np.load(os.path.join(work_dir, name, "arrays.npz")) as stored:
                arrays[name] = {key: stored[key] for key in stored.files}
        reference = score(results, arrays, classifier, real, 20 if args.quick else BOOTSTRAP)
    command = " ".join(["python benchmarks/latent.py", *(sys.argv[1:] if argv is None else argv)])
    payload = {"quick": args.quick, "command": command, "parallel": parallel, "settings": settings, "configurations": results,
               "reference": reference, "machine": machine,
               "wall_s": time.perf_counter() - started}
    for path in write_report(payload, results_dir, arrays):
        print(f"wrote {path}")
    return 0


def feature_classifier(settings: Dict[str, Any]):
    """(edm_space.classifier's SmallConvNet trained on the digits, the real digits).

    Fewer epochs than cached_classifier's 15: on the loaded shared machine those alone took minutes of CPU.
    """
    images, labels = load("mnist5k", n=settings["data_size"], with_labels=True)
    return train_classifier(images, labels, epochs=settings["classifier_epochs"]), images


if __name__ == "__main__":
    sys.exit(main())
