"""Reference MNIST models: one class-conditional model per formulation, trained on all 60,000 training digits for a
fixed budget, committed as safetensors weights runs under benchmarks/models/, and scored.

    python benchmarks/reference_models.py                         # train (or resume), export, score every model
    python benchmarks/reference_models.py --models edm-unet --no-train   # score the committed weights only
    python benchmarks/reference_models.py --report-only           # rebuild the reports from the JSON

1. Training: each model is one `edm-space train` command (COMMON_OPTIONS + its own, printed in the report) run in
   --work-dir/NAME; a finished run there is resumed as a no-op. The budget is fixed in steps: 1,500 steps of 64
   digits (96,000 images, 1.6 epochs) for the U-Nets, and for the DiT, whose steps are about 6.5 times cheaper,
   9,000 steps (about the same training time); on one CPU thread. The report gives the seconds the training
   steps took (from the run's log.jsonl).
2. Export: the EMA weights of the last checkpoint (`edm-space export`) replace benchmarks/models/NAME, with a
   fingerprint (the denoiser on fixed inputs) that tests/test_reference_models.py checks.
3. Scores, of the committed weights as any user loads them (`edm-space sample --ckpt benchmarks/models/NAME`):
   SAMPLES samples from seeds 0.. with Heun on EDM's rho = 7 steps (35 NFE) on each model's own ODE, drawn
   unconditionally (the null label), conditionally (label = seed mod 10) and with classifier-free guidance;
   the Frechet distance in the project's digit classifier's features (edm_space.classifier, trained once on
   10,000 training digits and cached) against SAMPLES digits of the MNIST test split, with its bootstrap sd,
   and the classifier's class shares. Real training digits scored the same way give the floor.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from edm_space import data  # noqa: E402
from edm_space.classifier import cached_classifier  # noqa: E402
from edm_space.errors import ConfigError  # noqa: E402
from edm_space.evaluation import frechet  # noqa: E402
from edm_space.generation import Guidance, SamplerSettings, class_labels, generate  # noqa: E402
from edm_space.guidance import null_labels  # noqa: E402
from edm_space.training import load_trained  # noqa: E402

VERSION = 1
MODELS_DIR = os.path.join(common.HERE, "models")
STEM = "reference_models"
COMMON_OPTIONS = ["--data", "mnist", "--conditional", "--label-dropout", "0.2", "--batch", "64",
                  "--lr", "0.002", "--warmup", "5000", "--ema-halflife", "10000", "--checkpoint-every", "250",
                  "--threads", "1", "--device", "cpu", "--seed", "0"]
UNET = ["--steps", "1500", "--net", "unet", "--net-option", "channels=16", "--net-option", "channel_mult=[1,2,4]", "--net-option", "blocks_per_level=1"]
#: The DiT takes its steps about 6.5 times faster: 9,000 steps take about the time of the U-Nets' 1,500.
DIT = ["--steps", "9000", "--net", "dit", "--net-option", "depth=3", "--net-option", "width=128", "--net-option", "heads=4",
       "--net-option", "patch=7", "--net-option", "pos=rope"]
#: name -> the options of its `edm-space train` command beyond COMMON_OPTIONS
MODELS: Dict[str, List[str]] = {
    "edm-unet": ["--preset", "edm", *UNET],
    "sd3-unet": ["--preset", "sd3", *UNET],
    "flow-unet": ["--preset", "flow", *UNET],
    # vp's c_noise is 999 t: the noise embedding's top frequency 1 (README, "Training"), as EDM's DDPM++.
    "vp-unet": ["--preset", "vp", *UNET, "--net-option", "noise_max_freq=1"],
    "sd3-dit": ["--preset", "sd3", *DIT],
}
SAMPLES = 500
SAMPLER = ("heun", 18)  # 35 NFE
GUIDANCE_WEIGHTS = (2.0,)
BOOTSTRAP = 10
GRID = 64  # samples per grid picture (8 x 8), stored as 8-bit pixels in the JSON
FINGERPRINT_NAME = "fingerprint.json"
#: fixed inputs of the fingerprint: noise levels and labels (index 10: the null label)
FINGERPRINT_SIGMAS = (0.3, 1.0, 5.0)
FINGERPRINT_LABELS = (0, 3, 7, 10)


def train_command(name: str, run_dir: str) -> List[str]:
    return ["edm-space", "train", *MODELS[name], *COMMON_OPTIONS, "--out", run_dir]


def train(name: str, run_dir: str, log) -> None:
    """Run (or resume) the model's `edm-space train` command."""
    common.refuse_legacy_run(run_dir)
    argv = train_command(name, run_dir)
    log("$ " + " ".join(argv))
    done = subprocess.run([sys.executable, "-m", "edm_space.cli", *argv[1:], "--quiet"])
    if done.returncode != 0:
        raise ConfigError(f"training {name!r} in {run_dir!r} failed (exit status {done.returncode}; its error is above)")


def training_seconds(run_dir: str, until_step: Optional[int] = None) -> float:
    """Seconds of the training steps (up to `until_step`), from the images/s of each log.jsonl window (checkpoints
    and start-up excluded)."""
    seconds, last_images = 0.0, 0
    with open(os.path.join(run_dir, "log.jsonl")) as file:
        for line in file:
            entry = json.loads(line)
            if entry.get("images_per_s") and (until_step is None or entry["step"] <= until_step):
                seconds += (entry["images"] - last_images) / entry["images_per_s"]
                last_images = entry["images"]
    return seconds


def export(name: str, run_dir: str) -> str:
    """Replace benchmarks/models/NAME with the run's newest EMA weights; the old folder is put back if that fails."""
    from edm_space.interop.own_format import export_run

    target = os.path.join(MODELS_DIR, name)
    old = target + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.isdir(target):
        os.replace(target, old)
    try:
        export_run(run_dir, os.path.relpath(target))  # the weights run records the path it was given
    except BaseException:
        if os.path.isdir(old):
            shutil.rmtree(target, ignore_errors=True)
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def fingerprint_inputs(item_shape: Sequence[int]) -> Dict[str, torch.Tensor]:
    """The fixed inputs of a fingerprint: x = sigma * n from a seeded generator, one row per (sigma, label)."""
    generator = torch.Generator().manual_seed(12345)
    rows = [(s, c) for s in FINGERPRINT_SIGMAS for c in FINGERPRINT_LABELS]
    sigma = torch.tensor([s for s, _ in rows], dtype=torch.float64)
    noise = torch.randn((len(rows), *item_shape), generator=generator, dtype=torch.float64)
    labels = torch.nn.functional.one_hot(torch.tensor([c for _, c in rows]), 11)[:, :10].to(torch.float64)
    return {"x": noise * sigma.view(-1, 1, 1, 1), "sigma": sigma, "labels": labels}


def fingerprint(denoiser, item_shape: Sequence[int]) -> Dict[str, List[float]]:
    """Per-row mean and RMS of D on the fixed inputs, and its first 8 pixels of each row."""
    inputs = fingerprint_inputs(item_shape)
    with torch.no_grad():
        out = denoiser(inputs["x"], inputs["sigma"], inputs["labels"]).double().flatten(1)
    return {"mean": out.mean(1).tolist(), "rms": out.square().mean(1).sqrt().tolist(), "pixels": out[:, :8].flatten().tolist()}


class Scorer:
    """FD and class shares in the classifier's features against SAMPLES test digits; the floor from real digits."""

    def __init__(self, cache_dir: str):
        self.classifier, _, _ = cached_classifier("mnist", cache_dir)
        self.real = data.fixed_subset(data.load("mnist-test"), SAMPLES)
        with torch.no_grad():
            self.real_features = self.classifier.features(self.real.float())

    def score(self, samples: torch.Tensor) -> Dict[str, Any]:
        """FD with its bootstrap sd, mean top-class probability, class shares and each sample's predicted class."""
        with torch.no_grad():
            features = self.classifier.features(samples.float().clamp(-1, 1))
            probs = self.classifier.head(features).softmax(dim=1)
        predicted = probs.argmax(1)
        shares = torch.bincount(predicted, minlength=10).double() / len(samples)
        fd = frechet(self.real_features.double(), features.double(), BOOTSTRAP, 0)
        return {"fd": fd["value"], "fd_sd": fd["sd"], "confidence": float(probs.max(dim=1).values.mean()),
                "class_shares": shares.tolist(), "predicted": predicted.tolist()}

    def floor(self) -> Dict[str, Any]:
        real_train = data.fixed_subset(data.load("mnist"), SAMPLES)
        return {key: value for key, value in self.score(real_train).items() if key != "predicted"}


def grid_bytes(samples: torch.Tensor) -> str:
    """Samples in [-1, 1] as base64 of their 8-bit pixels (what the report's pictures are drawn from)."""
    pixels = ((samples.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return base64.b64encode(pixels.numpy().tobytes()).decode()


def grid_pixels(encoded: str, item_shape: Sequence[int]) -> np.ndarray:
    """The 8-bit samples [n, H, W] of `grid_bytes`."""
    flat = np.frombuffer(base64.b64decode(encoded), dtype=np.uint8)
    return flat.reshape(-1, *item_shape[-2:])


def sample(denoiser, item_shape, labels: Optional[torch.Tensor], weight: Optional[float] = None) -> torch.Tensor:
    solver, steps = SAMPLER
    settings = SamplerSettings(formulation=denoiser.formulation, solver=solver, num_steps=steps)
    guidance = Guidance(weight) if weight is not None else None
    return generate(denoiser, range(SAMPLES), item_shape, settings, batch_size=250, labels=labels, guidance=guidance).samples


def score_model(name: str, scorer: Scorer, log) -> Dict[str, Any]:
    """Every score of the committed weights benchmarks/models/NAME, and their grid rows (the first 100 samples)."""
    path = os.path.join(MODELS_DIR, name)
    denoiser, config, item_shape, num_classes, step = load_trained(path)
    labels = class_labels(range(SAMPLES), num_classes)
    rows: Dict[str, Any] = {}
    grids: Dict[str, List[float]] = {}
    for key, row_labels, weight in [("unconditional", null_labels(labels), None), ("conditional", labels, None),
                                    *[(f"guided w={w:g}", labels, w) for w in GUIDANCE_WEIGHTS]]:
        started = time.perf_counter()
        samples = sample(denoiser, item_shape, row_labels, weight)
        scores = scorer.score(samples)
        predicted = scores.pop("predicted")
        if key != "unconditional":  # agreement of the classifier with the requested label
            scores["label_accuracy"] = sum(int(p == s % 10) for s, p in enumerate(predicted)) / SAMPLES
        rows[key] = {**scores, "seconds": time.perf_counter() - started}
        grids[key] = grid_bytes(samples[:GRID])
        log(f"{name} {key}: FD {scores['fd']:.3f} ± {scores['fd_sd']:.3f}, class shares "
            f"{min(scores['class_shares']):.3f}-{max(scores['class_shares']):.3f}")
    common.write_json(os.path.join(path, FINGERPRINT_NAME), fingerprint(denoiser, item_shape))
    parameters = sum(p.numel() for p in denoiser.network.parameters())
    return {"preset": config.preset, "net": config.net, "net_options": config.net_options, "parameters": parameters,
            "step": step, "scores": rows, "grids": {k: grids[k] for k in ("unconditional", "conditional")},
            "item_shape": list(item_shape)}


# --------------------------------------------------------------------------- report


def fmt_shares(shares: Sequence[float]) -> str:
    return f"{min(shares):.3f}-{max(shares):.3f}"


def goal_lines(results: Dict[str, Any]) -> List[str]:
    """The goal for the best model, per way of sampling: FD within 3x the real floor, every class share in [0.05, 0.15]."""
    floor = results["floor"]["fd"]
    lines = []
    for mode in ("unconditional", "conditional"):
        best = min(results["models"], key=lambda name: results["models"][name]["scores"][mode]["fd"])
        row = results["models"][best]["scores"][mode]
        ratio, shares = row["fd"] / floor, row["class_shares"]
        within = 0.05 <= min(shares) and max(shares) <= 0.15
        lines.append(f"- Best {mode} samples: **{best}**, FD {row['fd']:.3f} = {ratio:.2f} x the real floor ({floor:.3f}; goal: "
                     f"at most 3x, {'met' if ratio <= 3 else '**not met**'}); class shares {fmt_shares(shares)} (goal: all in "
                     f"0.05-0.15, {'met' if within else '**not met**'}).")
    return lines


def model_rows(results: Dict[str, Any]) -> List[List[Any]]:
    rows = []
    for name, model in results["models"].items():
        scores = model["scores"]
        uncond, cond = scores["unconditional"], scores["conditional"]
        rows.append([f"`{name}`", model["preset"], model["net"], f"{model['parameters']:,}", f"{model['train_seconds']:.0f}",
                     f"{uncond['fd']:.2f} ± {uncond['fd_sd']:.2f}", fmt_shares(uncond["class_shares"]),
                     f"{cond['fd']:.2f} ± {cond['fd_sd']:.2f}", f"{cond['label_accuracy']:.3f}"])
    return rows


def guidance_rows(results: Dict[str, Any]) -> List[List[Any]]:
    rows = []
    for name, model in results["models"].items():
        for key, row in model["scores"].items():
            if key != "unconditional":
                rows.append([f"`{name}`", "1" if key == "conditional" else key.split("=")[1], f"{row['fd']:.2f} ± {row['fd_sd']:.2f}",
                             f"{row['label_accuracy']:.3f}", f"{row['confidence']:.3f}", fmt_shares(row["class_shares"])])
    return rows


def markdown(results: Dict[str, Any], picture: Optional[str]) -> str:
    floor = results["floor"]
    solver, steps = results["sampler"]
    lines = [
        "# Reference MNIST models", "",
        "Command: `python benchmarks/reference_models.py` (`--report-only` rebuilds this page, benchmarks/models/README.md "
        "and the picture from the JSON).", "",
        f"One class-conditional model per formulation, trained on the 60,000 MNIST training digits (`edm-space train` with "
        f"`{' '.join(results['common_options'])}`, on one CPU thread; the U-Nets for 1,500 steps, the DiT, whose steps are "
        f"about 6.5 times cheaper, for 9,000, about the same training time: the commands are below) and exported with "
        f"`edm-space export` (EMA weights) to `benchmarks/models/NAME`. Scores of the committed weights: {results['samples']:,} "
        f"samples (seeds 0..{results['samples'] - 1}, {solver} on EDM's rho = 7 steps, N = {steps}, each model on its own ODE), "
        f"Frechet distance (FD, lower is better; ± bootstrap sd over the samples) in the digit classifier's features "
        f"against {results['samples']:,} digits of the MNIST test split. Real training digits score "
        f"{floor['fd']:.3f} ± {floor['fd_sd']:.3f} (the floor at this sample size).", "",
        "## What the numbers support", "", *goal_lines(results), "",
        "## Models", "",
        common.markdown_table(["model", "preset", "network", "parameters", "training s", "FD unconditional", "class shares",
                               "FD conditional", "label accuracy"], model_rows(results)), "",
        "Unconditional: the null label (the models learn it from 20 % of the training rows). Conditional: label seed mod 10; "
        "label accuracy is the share of samples the classifier puts in the requested class. Class shares: the smallest and "
        "largest share of the classifier's classes. Training s: seconds of the training steps from log.jsonl (checkpoints "
        "excluded), on a shared machine.", "",
        "## Classifier-free guidance", "",
        common.markdown_table(["model", "w", "FD", "label accuracy", "confidence", "class shares"], guidance_rows(results)), "",
        "## Commands", "",
    ]
    lines += [f"- `{name}`: `{' '.join(model['command'])}`" for name, model in results["models"].items()]
    if picture:
        lines += ["", f"![samples]({picture})", "",
                  "Left: the first 64 unconditional samples; right: the first 64 conditional ones (label seed mod 10), per model."]
    return "\n".join(lines) + "\n"


def models_readme(results: Dict[str, Any]) -> str:
    lines = [
        "# Reference models", "",
        "EMA weights of the reference MNIST models (safetensors weights runs: `config.json` + `weights.safetensors`), "
        "trained and scored by `benchmarks/reference_models.py`; the full report, with the commands and the guidance "
        "sweep, is `benchmarks/results/reference_models.md`. Each folder is a run for `--ckpt`:", "",
        "```bash", "edm-space sample --ckpt benchmarks/models/edm-unet --seeds 0-63 --class 3 --out threes.png", "```", "",
        common.markdown_table(["model", "preset", "network", "parameters", "training s", "FD unconditional", "class shares",
                               "FD conditional", "label accuracy"], model_rows(results)), "",
        f"FD of real training digits (the floor): {results['floor']['fd']:.3f}. `fingerprint.json` in each folder holds the "
        "denoiser's output on fixed inputs, which tests/test_reference_models.py checks.",
    ]
    return "\n".join(lines) + "\n"


def write_picture(results: Dict[str, Any], path: str) -> str:
    plt = common.pyplot("the samples picture")
    names = list(results["models"])
    fig, axes = plt.subplots(len(names), 2, figsize=(6, 3 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        model = results["models"][name]
        for col, key in enumerate(("unconditional", "conditional")):
            pixels = grid_pixels(model["grids"][key], model["item_shape"])
            side = int(len(pixels) ** 0.5)
            height, width = pixels.shape[1:]
            tiled = pixels[: side * side].reshape(side, side, height, width).transpose(0, 2, 1, 3).reshape(side * height, side * width)
            ax = axes[row, col]
            ax.imshow(tiled, cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{name}, {key}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    return common.save_png(fig, path)


def write_report(results: Dict[str, Any], plot: bool = True) -> List[str]:
    picture = STEM + ".png" if plot and common.have_matplotlib() else None
    paths = common.write_results(STEM, results, markdown(results, picture))
    paths.append(common.write_markdown(os.path.join(MODELS_DIR, "README.md"), models_readme(results)))
    if picture:
        paths.append(write_picture(results, os.path.join(common.RESULTS, picture)))
    return paths


# --------------------------------------------------------------------------- main


def run(names: Sequence[str], work_dir: str, train_models: bool, log=print) -> Dict[str, Any]:
    path = os.path.join(common.RESULTS, STEM + ".json")
    previous = json.load(open(path)) if os.path.isfile(path) else {"models": {}}
    scorer = Scorer(os.path.join(work_dir, "classifier"))
    results = {"version": VERSION, "samples": SAMPLES, "sampler": list(SAMPLER), "common_options": COMMON_OPTIONS,
               "floor": scorer.floor(), "machine": common.machine_info(), "models": {}}
    for name in MODELS:
        if name not in names:
            if name in previous["models"]:
                results["models"][name] = previous["models"][name]
            continue
        run_dir = os.path.join(work_dir, name)
        if train_models:
            train(name, run_dir, log)
        if os.path.isdir(run_dir):  # the run's newest EMA weights replace the committed ones
            export(name, run_dir)
        seconds = training_seconds(run_dir) if os.path.isdir(run_dir) else previous["models"][name]["train_seconds"]
        results["models"][name] = {**score_model(name, scorer, log), "train_seconds": seconds,
                                   "command": train_command(name, f"RUN/{name}")}
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--work-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "edm-space", "reference-runs"),
                        help="where the training runs live (resumed if there)")
    parser.add_argument("--no-train", action="store_true", help="train nothing: export the runs found in --work-dir, score the committed weights")
    parser.add_argument("--report-only", action="store_true", help="rebuild the reports from the committed JSON")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    with common.one_line_errors():
        if args.report_only:
            paths = common.rebuild_report(os.path.join(common.RESULTS, STEM + ".json"), lambda r: write_report(r, not args.no_plot))
        else:
            names = [n.strip() for n in args.models.split(",") if n.strip()]
            unknown = [n for n in names if n not in MODELS]
            if unknown:
                raise ConfigError(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
            torch.set_num_threads(1)
            paths = write_report(run(names, args.work_dir, not args.no_train), not args.no_plot)
        print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
