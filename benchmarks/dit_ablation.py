"""Why the DiT lags the U-Net: an ablation of its settings at equal training CPU time, with a probe of D at middle sigma.

    python benchmarks/dit_ablation.py                      # 8x8 digits, edm, seed 0, every variant (about 15 CPU minutes)
    python benchmarks/dit_ablation.py --variants unet,dit-lr2e-3 --budget 20
    python benchmarks/dit_ablation.py --report-only       # rebuild dit_ablation_DATA.md from its JSON, byte for byte

Every variant trains under benchmarks/networks.py's loop and settings (the same data split, batch, EMA, gradient
clip, sampler and scores) for the same CPU budget, split in two stages, and differs from the benchmark's DiT in the
one thing its name says. After each stage the EMA weights are scored (FD in the classifier's features, class
shares) and probed at a few noise levels on real training images x0 (edm_space.denoiser.Denoiser D):

- x-dependence: the per-pixel spread of D(x0 + sigma n) across images, over that of x0 (1: D follows the image; 0: D is
  the same picture whatever x is, so every sampling path ends in one digit);
- Jacobian: the finite-difference gain |D(x + eps u) - D(x)| / |eps u| along random unit directions u;
- error: mean squared error of D(x0 + sigma n) against x0 per pixel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import torch  # noqa: E402

import networks  # noqa: E402  (the benchmark whose loop, settings and scores the variants share)
from edm_space.classifier import cached_classifier  # noqa: E402
from edm_space.data import load  # noqa: E402
from edm_space.errors import ConfigError, unknown  # noqa: E402
from edm_space.seeding import parse_seeds  # noqa: E402
from edm_space.training import load_trained  # noqa: E402

VERSION = 1
#: noise levels of the probe (data in [-1, 1], sigma_data about 0.5): low, middle, high, and the sampler's first levels
PROBE_SIGMAS = (0.2, 0.5, 1.5, 5.0, 20.0, 80.0)
PROBE_ITEMS = 64
PROBE_EPS = 1e-2


def variants(data: str) -> Dict[str, Dict[str, Any]]:
    """name -> {net, options, lr, warmup_images, what}: the benchmark's DiT and U-Net, then one change at a time."""
    base = dict(networks.make_settings(data).nets["dit"])
    unet = dict(networks.make_settings(data).nets["unet"])
    lr, warm = networks.make_settings(data).lr, networks.make_settings(data).warmup_images

    def dit(what: str, lr_: float = lr, warm_: int = warm, **change: Any) -> Dict[str, Any]:
        return {"net": "dit", "options": {**base, **change}, "lr": lr_, "warmup_images": warm_, "what": what}

    # width/depth at about the same parameter count (a block has about 18 width^2 weights with its modulation)
    wide = {"depth": 2, "width": 176, "heads": 4}
    deep = {"depth": 7, "width": 96, "heads": 4}
    coarse = {"dit-patch7-rope": dit("7x7 patches (16 tokens) and RoPE", patch=7, pos="rope"),
              "dit-patch7-rope-noadaln-zero": dit("7x7 patches, RoPE and Xavier-initialized modulation and output", patch=7, pos="rope",
                                                  adaln_zero=False)} if data == "mnist" else {}
    return {
        "unet": {"net": "unet", "options": unet, "lr": lr, "warmup_images": warm, "what": "the benchmark's U-Net"},
        f"dit-lr{lr:g}": dit("the benchmark's DiT and optimizer"),
        "dit-lr1e-3": dit("learning rate 1e-3", 1e-3),
        "dit-lr5e-4": dit("learning rate 5e-4", 5e-4),
        "dit-lr2e-4": dit("learning rate 2e-4", 2e-4),
        "dit-lr5e-4-warm5k": dit("learning rate 5e-4, 5,000-image warm-up", 5e-4, 5_000),
        "dit-patch4" if base["patch"] != 4 else "dit-patch2": dit("other patch size", patch=4 if base["patch"] != 4 else 2),
        "dit-wide": dit(f"depth {wide['depth']}, width {wide['width']}", **wide),
        "dit-deep": dit(f"depth {deep['depth']}, width {deep['width']}", **deep),
        "dit-rope": dit("axial RoPE instead of sin-cos positions", pos="rope"),
        "dit-noqknorm": dit("no RMS norm of queries and keys", qk_norm=False),
        "dit-noadaln-zero": dit("modulation and output layers Xavier-initialized, not zero", adaln_zero=False),
        "dit-rope-noadaln-zero": dit("RoPE and Xavier-initialized modulation and output", pos="rope", adaln_zero=False),
        "dit-dit-embedding": dit("DiT's sinusoidal noise embedding (noise_scale 1)", noise_embedding="dit"),
        **coarse,
    }


def probe(run_dir: str, x0: torch.Tensor, seed: int) -> Dict[str, Any]:
    """How D of the run's EMA weights depends on x at PROBE_SIGMAS (see the module docstring)."""
    denoiser, _, _, _, _ = load_trained(run_dir)
    x0 = x0[:PROBE_ITEMS].to(torch.float64)
    g = torch.Generator().manual_seed(123 + seed)
    spread0 = x0.std(dim=0).mean()
    out: Dict[str, Any] = {}
    with torch.no_grad():
        for sigma in PROBE_SIGMAS:
            x = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
            d = denoiser(x, sigma)
            u = torch.randn(x0.shape, generator=g, dtype=torch.float64)
            u = u / u.flatten(1).norm(dim=1).reshape(-1, *[1] * (u.ndim - 1))
            gain = (denoiser(x + PROBE_EPS * u, sigma) - d).flatten(1).norm(dim=1) / PROBE_EPS
            key = f"{sigma:g}"
            out[f"x_dependence@{key}"] = float(d.std(dim=0).mean() / spread0)
            out[f"jacobian@{key}"] = float(gain.mean())
            out[f"error@{key}"] = float(((d - x0) ** 2).mean())
    return out


def run_variant(name: str, spec: Dict[str, Any], base: networks.Settings, seed: int, work_dir: str, evaluation,
                log: Callable[[str], None]) -> Dict[str, Any]:
    """Measure the variant's step cost, train it through the stages its CPU budget buys, score and probe each stage."""
    settings = dataclasses.replace(base, nets={**base.nets, spec["net"]: spec["options"]}, lr=spec["lr"],
                                   warmup_images=spec["warmup_images"])
    folder = os.path.join(work_dir, name)
    os.makedirs(os.path.join(folder, settings.data), exist_ok=True)
    cost = networks.measure_step_cost(dataclasses.replace(settings, seeds=(seed,)), spec["net"], os.path.join(folder, settings.data))
    stages = networks.budget_steps(settings.budget_cpu_s, cost["cpu_s_per_step"], settings.stage_divisors)
    params = networks.parameter_count(settings, spec["net"], tuple(load(settings.data, n=1).shape[1:]))
    result = networks.run_one(settings, spec["net"], base.presets[0], seed, stages, folder, evaluation, log, reuse=False,
                              probe=lambda run_dir: probe(run_dir, evaluation.training_sample, seed))
    return {"variant": name, **spec, "parameters": params, "cpu_s_per_step": cost["cpu_s_per_step"], "stages": stages,
            "rows": result["rows"], "diverged": result["diverged"]}


# --------------------------------------------------------------------------- report


def _num(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(results: Dict[str, Any]) -> str:
    """The report, from the results JSON alone."""
    s = results["settings"]
    runs = results["runs"]
    lines = [f"# DiT ablation on {s['data']} ({s['presets'][0]}): equal training CPU time, one change at a time", "",
             f"Command: `python benchmarks/dit_ablation.py --data {s['data']} --budget {s['budget_cpu_s']:g} --seeds "
             f"{','.join(str(v) for v in s['seeds'])}` (`--report-only` rebuilds this page from the JSON).", "",
             f"Each run trains for {s['budget_cpu_s']:g} CPU seconds (one thread) with benchmarks/networks.py's loop: batch "
             f"{s['batch']}, Adam, gradient clip {s['grad_clip']:g}, EMA half-life {s['ema_halflife_images']:,.0f} images "
             f"(ramp-up {s['ema_rampup_ratio']:g}); {s['num_samples']} samples ({s['sampler'][0]}, {s['sampler'][1]} steps, "
             f"N = {s['sampler'][2]}) scored against {results['heldout_count']} held-out images. FD of real training images "
             f"against them: {_num(results['floor_fd'])} (mean over the seeds). Lower FD is better; an even model puts 0.10 in every class.", "",
             "## Quality after half and all of the budget", ""]
    rows = []
    for run in runs:
        for row in run["rows"]:
            rows.append([f"`{run['variant']}`" if row["stage"] == len(run["rows"]) - 1 else "", run["seed"], run["what"] if row["stage"] == 0 else "",
                         f"{run['lr']:g}", f"{run['parameters']:,}", row["steps"], f"{row['images']:,}", f"{row['train_cpu_s']:.0f}",
                         _num(row.get("loss"), 4), _num(row.get("fd")), _num(row.get("min_class_fraction")),
                         _num(row.get("max_class_fraction"))])
    lines += [common.markdown_table(["variant", "seed", "change", "lr", "parameters", "steps", "images", "CPU s", "loss", "FD",
                                     "smallest class", "largest class"], rows), ""]
    lines += ["## D at low, middle and high noise (EMA weights after the whole budget)", "",
              "x-dependence: spread of D(x0 + sigma n) across images over that of x0; Jacobian: |D(x + eps u) - D(x)| / eps "
              "for unit u; error: mean squared error per pixel.", ""]
    sig = [f"{v:g}" for v in s["probe_sigmas"]]
    header = ["variant", "seed"] + [f"{m} @ sigma {k}" for m in ("x-dependence", "Jacobian", "error") for k in sig]
    body = []
    for run in runs:
        last = run["rows"][-1]
        body.append([f"`{run['variant']}`", run["seed"]] + [_num(last.get(f"{m}@{k}")) for m in ("x_dependence", "jacobian", "error") for k in sig])
    lines += [common.markdown_table(header, body), "", "## Machine", "", common.machine_markdown(results["machine"]), ""]
    return "\n".join(lines)


def stem(data: str) -> str:
    return f"dit_ablation_{data}"


def write_report(results: Dict[str, Any], out_dir: str) -> List[str]:
    return common.write_results(stem(results["settings"]["data"]), results, markdown(results), out_dir)


def run(data: str, names: Sequence[str], seeds: Sequence[int], budget: float, out_dir: str, work_dir: str,
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train, score and probe every variant for every seed; write the report."""
    common.set_threads(1)
    specs = variants(data)
    for name in names:
        if name not in specs:
            raise unknown("variant", name, list(specs))
    base = dataclasses.replace(networks.make_settings(data, preset_names=["edm"], seeds=seeds, budget_cpu_s=budget),
                               stage_divisors=(2, 1))
    classifier, _, _ = cached_classifier(data, os.path.join(work_dir, "classifier"))
    runs, floors = [], []
    heldout = None
    for seed in seeds:
        evaluation = networks.Evaluation(base, seed, classifier)
        heldout = evaluation.heldout_count
        floors.append(evaluation.score(evaluation.training_sample)["fd"])
        for name in names:
            t0 = time.process_time()
            runs.append({**run_variant(name, specs[name], base, seed, os.path.join(work_dir, f"seed{seed}"), evaluation, log), "seed": seed})
            last = runs[-1]["rows"][-1]
            log(f"{name} seed {seed}: {time.process_time() - t0:.0f} CPU s in all; classes {last.get('min_class_fraction')}.."
                f"{last.get('max_class_fraction')}; probe {json.dumps({k: round(v, 3) for k, v in last.items() if '@' in k})}")
    results = {"settings": {**dataclasses.asdict(base), "probe_sigmas": list(PROBE_SIGMAS)}, "version": VERSION, "runs": runs,
               "heldout_count": heldout, "floor_fd": sum(floors) / len(floors), "machine": common.machine_info()}
    return {"results": results, "paths": write_report(results, out_dir)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/dit_ablation.py", description=__doc__.split("\n")[0])
    common.add_ablation_arguments(parser, networks.DATA_CHOICES, "comma-separated variant names [default: all]", "0", 60.0,
                                  "dit_ablation")
    args = parser.parse_args(argv)
    with common.one_line_errors():
        if args.report_only:
            for written in common.rebuild_report(os.path.join(args.out_dir, f"{stem(args.data)}.json"),
                                                 lambda results: write_report(results, args.out_dir)):
                print(f"wrote {written}")
            return 0
        if not (math.isfinite(args.budget) and args.budget > 0):
            raise ConfigError(f"--budget {args.budget} is invalid; it must be a number of CPU seconds > 0")
        names = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else list(variants(args.data))
        run(args.data, names, parse_seeds(args.seeds), args.budget, args.out_dir, args.work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
