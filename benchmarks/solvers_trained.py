"""Solvers on a trained model: sample quality against NFE for every deterministic solver.

    pip install -e ".[data,plot]"
    python benchmarks/solvers_trained.py                  # train (or reuse) an edm digits U-Net, then sweep
    python benchmarks/solvers_trained.py --quick          # smoke run of the same code path in about a minute
    python benchmarks/solvers_trained.py --report-only    # rebuild .md/.png from the committed .json

The exact-ODE benchmark (benchmarks/solvers.py) scores a solver's own error on a
target with an exact denoiser. Here the denoiser is a trained network, so what
counts is what the samples look like:

1. The model. `edm_space.training.train` trains one edm U-Net on scikit-learn's
   8x8 digits (TRAIN below) in --work-dir; a finished run there is reused.
2. The sweep. Every deterministic solver samples the model's own (edm) ODE with
   EDM's rho = 7 steps at every NFE of the grid (steps: samplers.get(solver).steps_for_nfe;
   the grid is odd, so two-evaluation solvers hit it exactly). The samples come in
   disjoint seed sets (set k: seeds k * n .. k * n + n - 1, sample i from its own
   seed, as `edm-space sample --ckpt RUN --seeds` draws them); every solver sees
   the same latents.
3. The scores, per seed set (edm_space.classifier.image_quality, a small classifier
   trained once on the digits and cached in --work-dir): the Frechet distance of
   the classifier's features to those of all 1,797 real digits, the mean top-class
   probability (confidence) and the smallest class fraction. Reported as mean and
   standard deviation over the seed sets. Also the RMS distance (pixels in [-1, 1])
   of each sample to the same latent's end point from a converged run of the same
   ODE (CONVERGED below): the solver's own error on the trained model.
4. Rows for scale: the converged run itself (the model's floor for any solver),
   and disjoint sets of real digits scored like the samples (the floor of the
   metric at this sample size).

Writes solvers_trained_digits[_quick].{json,md,png} under --out-dir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import samplers  # noqa: E402
from edm_space.classifier import cached_classifier, image_quality  # noqa: E402
from edm_space.errors import ConfigError  # noqa: E402
from edm_space.optional import require  # noqa: E402
from edm_space.reference import rms_error  # noqa: E402
from edm_space.seeding import SeededNoise  # noqa: E402
from edm_space.training import TrainConfig, load_trained, train  # noqa: E402
from solvers import _parse_ints, _parse_names, deterministic_solvers  # noqa: E402  (benchmarks/solvers.py)

Tensor = torch.Tensor
F64 = torch.float64

#: The trained model. A 16-channel U-Net with one block per level samples at about 0.5 ms
#: of CPU per image and evaluation, 3.6x cheaper than the 32-channel, two-block one of
#: benchmarks/training_quality.py; the sweep's ~1.4 million image evaluations take about 12 minutes.
TRAIN: Dict[str, Any] = dict(
    preset="edm", data="digits", net="unet", net_options={"channels": 16, "channel_mult": [1, 2], "blocks_per_level": 1},
    steps=1200, batch=128, lr=2e-3, warmup_images=10_000, grad_clip=1.0, ema_halflife_images=20_000.0,
    ema_rampup_ratio=0.05, seed=0, checkpoint_every=1200, keep_checkpoints=1, log_every=100,
)
NFE_GRID = (5, 7, 9, 13, 19, 35)
#: The converged run every sample is compared with: DPM-Solver++(3M) at 81 NFE has an error
#: of 4e-4 on the exact digits-gmm target (benchmarks/results/solvers_digits-gmm.md), far
#: below every solver's error here.
CONVERGED = ("dpm++3m", 81)
#: Not swept: DDIM (eta = 0) is Euler in sigma, the same samples as euler on the edm ODE (Karras et al.
#: 2022, App. B.2); the run checks this on one seed set at the smallest NFE and records the difference.
SAME_AS_EULER = "ddim"


def swept_solvers() -> Tuple[str, ...]:
    """Every deterministic solver but ddim (see SAME_AS_EULER)."""
    return tuple(name for name in deterministic_solvers() if name != SAME_AS_EULER)


@dataclass
class Settings:
    """Everything that defines a run; recorded in the results."""

    quick: bool = False
    train: Dict[str, Any] = field(default_factory=lambda: dict(TRAIN))
    solvers: Tuple[str, ...] = field(default_factory=swept_solvers)
    nfe: Tuple[int, ...] = NFE_GRID
    seed_sets: int = 3
    samples_per_set: int = 500
    converged: Tuple[str, int] = CONVERGED
    threads: int = 1

    @classmethod
    def make(cls, quick: bool = False, **overrides) -> "Settings":
        """The full settings, or with `quick` a tiny model and sweep; overrides that are None are ignored."""
        base = cls()
        if quick:
            small = {"channels": 8, "channel_mult": [1, 2], "blocks_per_level": 1}
            base = cls(quick=True, train={**TRAIN, "steps": 20, "net_options": small, "checkpoint_every": 20},
                       solvers=("euler", "heun", "unipc-3"), nfe=(5, 9), seed_sets=2, samples_per_set=64, converged=("dpm++3m", 27))
        for key, value in overrides.items():
            if value is not None:
                setattr(base, key, value)
        return base


def default_work_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "edm-space-bench-solvers-trained")


def run_name(settings: Settings) -> str:
    """The run folder's name: what it was trained with, so that other settings never reuse it."""
    t = settings.train
    o = t["net_options"]
    return (f"digits-{t['preset']}-unet{o['channels']}x{len(o['channel_mult'])}b{o.get('blocks_per_level', 2)}"
            f"-steps{t['steps']}-batch{t['batch']}-seed{t['seed']}")


# --------------------------------------------------------------------------- the sweep


def seed_set(settings: Settings, k: int) -> List[int]:
    """The seeds of set k: k * n .. k * n + n - 1 (n samples per set)."""
    n = settings.samples_per_set
    return list(range(k * n, (k + 1) * n))


def sample_set(denoiser, item_shape, seeds: Sequence[int], solver: str, nfe: int) -> Tuple[Tensor, int]:
    """Samples of the model's own ODE with EDM's rho = 7 steps, sample i from seed i; (samples, NFE counted)."""
    noise = SeededNoise(seeds)
    latents = noise.randn([len(seeds), *item_shape], dtype=F64)
    info: Dict[str, Any] = {}
    with torch.no_grad():
        x = samplers.sample(denoiser, latents, formulation=denoiser.formulation, solver=solver,
                            num_steps=samplers.get(solver).steps_for_nfe(nfe), discretization="edm",
                            randn_like=noise.randn_like, info=info)
    return x, int(info["nfe"])


def score(x: Tensor, classifier, real_features: Tensor, converged: Optional[Tensor]) -> Dict[str, float]:
    """The classifier scores of one sample set, and its RMS distance to the converged samples of the same seeds."""
    quality = image_quality(x, None, classifier, real_features=real_features)
    row = {"fd": quality["frechet_distance"], "confidence": quality["confidence"],
           "min_class_fraction": quality["min_class_fraction"]}
    row["rms_to_converged"] = rms_error(x, converged) if converged is not None else None
    return row


def mean_std(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean and sample standard deviation (n - 1) over the seed sets."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def aggregate(rows: List[dict]) -> List[dict]:
    """One entry per (kind, solver, NFE): every metric as mean and std over the seed sets."""
    groups: Dict[Tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["solver"], r["nfe"]), []).append(r)
    out = []
    for (kind, solver, nfe), group in groups.items():
        entry = {"kind": kind, "solver": solver, "nfe": nfe, "sets": len(group)}
        for metric in ("fd", "confidence", "min_class_fraction", "rms_to_converged"):
            entry[metric] = mean_std([r.get(metric) for r in group])
        out.append(entry)
    return out


def run_benchmark(settings: Settings, out_dir: Optional[str] = common.RESULTS, work_dir: Optional[str] = None,
                  plot: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train (or reuse) the model, sample and score every solver at every NFE; write the results under out_dir."""
    wall = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        machine = common.machine_info()
        work_dir = work_dir or default_work_dir()
        run_dir = os.path.join(work_dir, run_name(settings))
        common.refuse_legacy_run(run_dir)
        t0 = time.perf_counter()
        summary = train(TrainConfig(out=run_dir, **settings.train), progress=False, echo=log)
        train_seconds = time.perf_counter() - t0
        denoiser, config, item_shape, _, step = load_trained(run_dir)
        log(f"model: {run_dir} at step {step} ({train_seconds:.0f} s including any training)")

        t0 = time.perf_counter()
        classifier, images, _ = cached_classifier("digits", os.path.join(work_dir, "classifier"))
        with torch.no_grad():
            real_features = classifier.features(images.to(torch.float32))
        classifier_seconds = time.perf_counter() - t0

        rows: List[dict] = []
        n_sets = settings.seed_sets
        # Real digits for scale: disjoint random subsets of the size of a seed set (as many as fit).
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        n = settings.samples_per_set
        for k in range(min(n_sets, len(images) // n)):
            real = images[order[k * n : (k + 1) * n]].to(F64)
            rows.append({"kind": "real digits", "solver": "data", "nfe": 0, "set": k, **score(real, classifier, real_features, None)})

        t0 = time.perf_counter()
        converged: Dict[int, Tensor] = {}
        solver_c, nfe_c = settings.converged
        for k in range(n_sets):
            x, used = sample_set(denoiser, item_shape, seed_set(settings, k), solver_c, nfe_c)
            converged[k] = x
            rows.append({"kind": "converged", "solver": solver_c, "nfe": used, "set": k,
                         **score(x, classifier, real_features, None)})
        log(f"  converged: {solver_c} at {nfe_c} NFE, {time.perf_counter() - t0:.0f} s")

        t_sweep = time.perf_counter()
        ddim, _ = sample_set(denoiser, item_shape, seed_set(settings, 0), SAME_AS_EULER, min(settings.nfe))
        euler, _ = sample_set(denoiser, item_shape, seed_set(settings, 0), "euler", min(settings.nfe))
        ddim_vs_euler = float((ddim - euler).abs().max())
        log(f"  ddim vs euler at {min(settings.nfe)} NFE: largest difference {ddim_vs_euler:.1e}")
        for solver in settings.solvers:
            for nfe in settings.nfe:
                for k in range(n_sets):
                    t1 = time.perf_counter()
                    x, used = sample_set(denoiser, item_shape, seed_set(settings, k), solver, nfe)
                    seconds = time.perf_counter() - t1
                    finite = bool(torch.isfinite(x).all())
                    row = {"kind": "sweep", "solver": solver, "nfe": used, "set": k, "seconds": seconds, "finite": finite}
                    if finite:
                        row.update(score(x, classifier, real_features, converged[k]))
                    rows.append(row)
            summary_line = "  ".join(
                f"{e['nfe']}:{e['fd']['mean']:.2f}" for e in aggregate([r for r in rows if r["kind"] == "sweep" and r["solver"] == solver])
                if e["fd"]["mean"] is not None)
            log(f"  {solver:8s} FD {summary_line}")
        timings = {"train_s": train_seconds, "classifier_s": classifier_seconds, "sweep_s": time.perf_counter() - t_sweep,
                   "total_s": time.perf_counter() - wall}
        results = {
            "benchmark": "solvers_trained", "settings": common.jsonable(vars(settings)), "machine": machine,
            "model": {"run_dir": run_name(settings), "step": step, "sigma_data": config.sigma_data,
                      "parameters": sum(p.numel() for p in denoiser.network.parameters()),
                      "training_seconds_this_run": train_seconds, "summary": common.jsonable(summary)},
            "rows": rows, "timings": timings,
            "ddim_vs_euler": {"nfe": min(settings.nfe), "max_abs_difference": ddim_vs_euler},
        }
        results["aggregate"] = aggregate(rows)
        results["conclusions"] = conclusions(results["aggregate"], rows)
        if out_dir is not None:
            write_outputs(results, out_dir, plot=plot, log=log)
        log(f"done in {timings['total_s']:.0f} s")
        return results
    finally:
        torch.set_num_threads(previous_threads)


# --------------------------------------------------------------------------- conclusions


#: The metrics of the "fewest NFE reaching Heun at its largest NFE" conclusion.
GOAL_METRICS = ("fd", "rms_to_converged")


def paired(rows: List[dict], metric: str, a: Tuple[str, int], b: Tuple[str, int]) -> Dict[str, Optional[float]]:
    """Mean and std over seed sets of metric(a) - metric(b) on the same set: (solver, NFE) a against b."""
    by_set = {}
    for r in rows:
        if r["kind"] == "sweep" and r.get(metric) is not None and (r["solver"], r["nfe"]) in (a, b):
            by_set.setdefault(r["set"], {})[(r["solver"], r["nfe"])] = r[metric]
    return mean_std([v[a] - v[b] for v in by_set.values() if a in v and b in v])


def conclusions(entries: List[dict], rows: Sequence[dict] = ()) -> dict:
    """Per solver and metric (FD; RMS distance to the converged samples) the fewest NFE whose mean is at most Heun's
    at the largest NFE swept, with the difference to Heun's on the same seed sets; the best solver at every NFE."""
    sweep = [e for e in entries if e["kind"] == "sweep" and e["fd"]["mean"] is not None]
    heun = sorted((e for e in sweep if e["solver"] == "heun"), key=lambda e: e["nfe"])
    out: dict = {}
    if heun:
        goal = heun[-1]
        out["heun_goal"] = {"nfe": goal["nfe"], **{metric: goal[metric] for metric in GOAL_METRICS}}
        fewest: Dict[str, Dict[str, Optional[dict]]] = {metric: {} for metric in GOAL_METRICS}
        for metric in GOAL_METRICS:
            for solver in dict.fromkeys(e["solver"] for e in sweep):
                hits = sorted((e for e in sweep if e["solver"] == solver and e[metric]["mean"] is not None
                               and e[metric]["mean"] <= goal[metric]["mean"]), key=lambda e: e["nfe"])
                fewest[metric][solver] = None if not hits else {
                    "nfe": hits[0]["nfe"], "value": hits[0][metric]["mean"],
                    "minus_heun": paired(list(rows), metric, (solver, hits[0]["nfe"]), ("heun", goal["nfe"])),
                }
        out["fewest_nfe_reaching_heun"] = fewest
    best = {}
    for nfe in sorted({e["nfe"] for e in sweep}):
        at = [e for e in sweep if e["nfe"] == nfe]
        best[str(nfe)] = {metric: {"solver": w["solver"], "value": w[metric]}
                          for metric in GOAL_METRICS for w in [min(at, key=lambda e: e[metric]["mean"])]}
    out["best_by_nfe"] = best
    return out


# --------------------------------------------------------------------------- output


def stem_of(quick: bool) -> str:
    return "solvers_trained_digits" + ("_quick" if quick else "")


def _pm(stat: Dict[str, Optional[float]], spec: str = ".2f") -> str:
    if stat["mean"] is None:
        return "fail"
    return f"{format(stat['mean'], spec)} ± {format(stat['std'], spec)}"


def markdown(results: dict, png: Optional[str] = None) -> str:
    """The results as Markdown: conclusions, then one table per metric (rows solvers, columns NFE)."""
    s, m, model = results["settings"], results["machine"], results["model"]
    entries = results["aggregate"]
    lines = [
        "# Solvers on a trained model: digits",
        "",
        f"Model: edm preset, U-Net {json.dumps(s['train']['net_options'])} ({model['parameters']:,} parameters), "
        f"{s['train']['steps']} steps of batch {s['train']['batch']} on scikit-learn's 8x8 digits (seed {s['train']['seed']}; "
        f"EMA weights of step {model['step']}). Sampled on its own ODE with EDM's rho = 7 steps, "
        f"{s['seed_sets']} disjoint seed sets of {s['samples_per_set']} samples (same latents for every solver). "
        "Scores: Frechet distance (FD) in the features of a small digit classifier against all 1,797 real digits, "
        "the classifier's mean top-class probability (confidence), and the RMS distance of each sample to the same "
        f"latent's end point from {s['converged'][0]} at {s['converged'][1]} NFE (pixels in [-1, 1]); mean ± standard "
        "deviation over the seed sets.",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} thread), {m['date']}; "
        f"total {results['timings']['total_s']:.0f} s (sweep {results['timings']['sweep_s']:.0f} s).",
        "",
    ]
    if png:
        lines += [f"![quality against NFE]({png})", ""]
    d = results["ddim_vs_euler"]
    lines += [f"ddim is not swept: on the edm ODE it is Euler in sigma (largest difference to euler's samples at "
              f"{d['nfe']} NFE: {d['max_abs_difference']:.1e}).", ""]
    scale = [e for e in entries if e["kind"] != "sweep"]
    lines += ["## For scale", "", common.markdown_table(
        ["row", "NFE", "FD", "confidence", "smallest class fraction"],
        [[e["kind"] + ("" if e["kind"] == "real digits" else f" ({e['solver']})"), e["nfe"] or "", _pm(e["fd"]),
          _pm(e["confidence"], ".4f"), _pm(e["min_class_fraction"], ".3f")] for e in scale]), ""]
    c = results["conclusions"]
    if "heun_goal" in c:
        g = c["heun_goal"]
        fewest = c["fewest_nfe_reaching_heun"]

        def cell(hit, spec):
            if hit is None:
                return "not within the grid"
            return f"{hit['nfe']} ({format(hit['value'], spec)}; {_pm(hit['minus_heun'], spec)})"

        body = [[solver, cell(fewest["fd"][solver], ".2f"), cell(fewest["rms_to_converged"][solver], ".3f")] for solver in fewest["fd"]]
        lines += [f"## Fewest NFE reaching Heun at {g['nfe']} NFE (FD {_pm(g['fd'])}, RMS to converged {_pm(g['rms_to_converged'], '.3f')})", "",
                  "A solver reaches it where its mean over the seed sets is at most Heun's; in brackets that mean and the "
                  "difference to Heun's on the same seed sets (mean ± std over sets).", "",
                  common.markdown_table(["solver", "FD: NFE (FD; minus Heun's)", "RMS to converged: NFE (RMS; minus Heun's)"], body), ""]
        body = [[nfe, b["fd"]["solver"], _pm(b["fd"]["value"]), b["rms_to_converged"]["solver"], _pm(b["rms_to_converged"]["value"], ".3f")]
                for nfe, b in c["best_by_nfe"].items()]
        lines += ["## Best solver at each NFE", "",
                  common.markdown_table(["NFE", "lowest FD", "FD", "lowest RMS to converged", "RMS"], body), ""]
    sweep = [e for e in entries if e["kind"] == "sweep"]
    nfes = sorted({e["nfe"] for e in sweep})
    for metric, title, spec in (("fd", "Frechet distance (lower is better)", ".2f"),
                                ("confidence", "Confidence (mean top-class probability; real digits above)", ".4f"),
                                ("rms_to_converged", "RMS distance to the converged samples of the same latents", ".3f")):
        body = []
        for solver in dict.fromkeys(e["solver"] for e in sweep):
            cells = {e["nfe"]: _pm(e[metric], spec) for e in sweep if e["solver"] == solver}
            body.append([solver] + [cells.get(n, "") for n in nfes])
        lines += [f"## {title}", "", common.markdown_table(["solver"] + [f"NFE {n}" for n in nfes], body), ""]
    t = results["timings"]
    lines += ["## Timings", "", " | ".join(f"{k} {v:.0f} s" for k, v in t.items()), ""]
    return "\n".join(lines)


def plot_results(results: dict, path: str) -> None:
    """FD and confidence against NFE (log NFE axis), one line per solver with the seed-set std as error bars."""
    plt = common.pyplot("the trained-solver benchmark's plot")
    ticker = require("matplotlib.ticker", "the trained-solver benchmark's plot")
    entries = results["aggregate"]
    sweep = [e for e in entries if e["kind"] == "sweep" and e["fd"]["mean"] is not None]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.6))
    panels = (("fd", "Frechet distance in classifier features (lower is better)", True),
              ("confidence", "classifier confidence (mean top-class probability)", False),
              ("rms_to_converged", "RMS distance to the converged samples (pixels in [-1, 1])", True))
    for ax, (metric, label, log_y) in zip(axes, panels):
        for i, solver in enumerate(dict.fromkeys(e["solver"] for e in sweep)):
            rows = sorted((e for e in sweep if e["solver"] == solver and e[metric]["mean"] is not None), key=lambda e: e["nfe"])
            if rows:
                ax.errorbar([e["nfe"] for e in rows], [e[metric]["mean"] for e in rows], yerr=[e[metric]["std"] for e in rows],
                            marker="o", markersize=3, capsize=2, label=solver, color=f"C{i % 10}",
                            linestyle="--" if i >= 10 else "-")
        for e in entries:
            if e["kind"] != "sweep" and e[metric]["mean"] is not None and metric != "rms_to_converged":
                style = ":" if e["kind"] == "real digits" else "-."
                ax.axhline(e[metric]["mean"], color="gray", linestyle=style, linewidth=1,
                           label="real digits" if e["kind"] == "real digits" else f"converged ({e['solver']}, {e['nfe']} NFE)")
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        nfes = sorted({e["nfe"] for e in sweep})
        ax.xaxis.set_major_locator(ticker.FixedLocator(nfes))
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("NFE (denoiser evaluations per sample)")
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, ncol=2)
    s, m = results["settings"], results["machine"]
    fig.suptitle(f"trained edm digits U-Net (step {results['model']['step']}), edm rho = 7 steps: mean ± std over "
                 f"{s['seed_sets']} seed sets of {s['samples_per_set']} samples\n{m['platform']}, torch {m['torch']}", fontsize=9)
    fig.tight_layout()
    common.save_png(fig, path, dpi=110)


def write_outputs(results: dict, out_dir: str, plot: bool = True, log: Callable[[str], None] = print) -> List[str]:
    """JSON, Markdown and (with matplotlib) the PNG; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, stem_of(results["settings"]["quick"]))
    written = []
    png = stem + ".png"
    if plot:
        try:
            plot_results(results, png)
            written.append(png)
        except ConfigError as missing:
            log(f"  no plot: {missing}")
    common.write_markdown(stem + ".md", markdown(results, os.path.basename(png) if png in written else None))
    common.write_json(stem + ".json", results, indent=1)
    written = [stem + ".json", stem + ".md"] + written
    log("wrote " + ", ".join(written))
    return written


def rebuild_report(json_path: str, plot: bool = True, log: Callable[[str], None] = print) -> dict:
    """Re-derive the aggregate and conclusions of a results JSON from its rows; rewrite its JSON, Markdown and plot."""
    try:
        with open(json_path) as file:
            results = json.load(file)
        results["aggregate"] = aggregate(results["rows"])
        results["conclusions"] = conclusions(results["aggregate"], results["rows"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{json_path!r} is not a trained-solver results file ({type(error).__name__}: {error})") from None
    write_outputs(results, os.path.dirname(os.path.abspath(json_path)), plot=plot, log=log)
    return results


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/solvers_trained.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sample quality against NFE for every deterministic solver on a trained edm digits U-Net.",
        epilog="Writes solvers_trained_digits[_quick].json, .md and .png under --out-dir.",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny model and sweep (about a minute); targets not expected to hold")
    parser.add_argument("--solvers", default=None, help="comma-separated deterministic solvers [default: all but ddim]")
    parser.add_argument("--nfe", default=None, help="comma-separated NFE grid [default: 5,7,9,13,19,35]")
    parser.add_argument("--work-dir", default=None, help="where the model and the classifier are trained and kept "
                                                        "[default: TMPDIR/edm-space-bench-solvers-trained]")
    parser.add_argument("--out-dir", default=None,
                        help="where results are written [default: benchmarks/results; with --quick a temporary folder]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads [default: 1]")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument("--report-only", action="store_true", help="rebuild the Markdown and plot of OUT_DIR's JSON; run nothing")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; bad input ends with one line `error: ...` on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    with common.one_line_errors():
        if args.report_only:
            path = os.path.join(args.out_dir or common.RESULTS, stem_of(args.quick) + ".json")
            if not os.path.isfile(path):
                raise ConfigError(f"--report-only: {path!r} does not exist; run the benchmark first")
            rebuild_report(path, plot=not args.no_plot)
            return 0
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} is invalid; need at least 1")
        solvers = _parse_names(args.solvers, deterministic_solvers(), "deterministic solver")
        nfe = _parse_ints(args.nfe, "--nfe")
        settings = Settings.make(args.quick, solvers=solvers, nfe=nfe, threads=args.threads)
        out_dir = args.out_dir or (tempfile.mkdtemp(prefix="solvers-trained-quick-") if args.quick else common.RESULTS)
        run_benchmark(settings, out_dir, work_dir=args.work_dir, plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
