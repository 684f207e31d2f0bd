"""Learning curves of reference models at equal training time: FD after each sixth of the budget.

    python benchmarks/learning_curves.py --work-dir RUNS        # score the runs RUNS/sd3-unet and RUNS/sd3-dit
    python benchmarks/learning_curves.py --report-only          # rebuild the report from the JSON

The runs are those benchmarks/reference_models.py trains in its --work-dir (their post-hoc EMA snapshots are kept
there, not in benchmarks/models/). After each sixth of each run's steps (the U-Net's 1,500, the DiT's 9,000,
about the same training time), the post-hoc EMA of relative std STD (EDM2 Sec. 3) is rebuilt from the run's
snapshots at that step and scored like the committed models: SAMPLES samples, Heun at 35 NFE on the model's own
ODE, unconditional (null label) and conditional (label seed mod 10), Frechet distance in the digit classifier's
features against SAMPLES test digits. The report gives each model's FD against its training seconds (from
log.jsonl) and the ratio of the second model's FD to the first's at each point.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import common  # noqa: E402  (puts the repository root on sys.path)

import reference_models  # noqa: E402
from edm_space.errors import ConfigError  # noqa: E402
from edm_space.generation import class_labels  # noqa: E402
from edm_space.guidance import null_labels  # noqa: E402
from edm_space.posthoc_ema import ema_weights  # noqa: E402
from edm_space.training import load_trained  # noqa: E402

STEM = "learning_curves"
VERSION = 1
POINTS = 6  # scored after each sixth of the run
STD = 0.05  # the post-hoc EMA std scored (the best of 0.03-0.20 for the DiT at the end of its run)
MODES = ("unconditional", "conditional")


def curve(name: str, run_dir: str, scorer: "reference_models.Scorer", log) -> List[Dict[str, Any]]:
    """The scores of run `run_dir` after each 1/POINTS of its steps (post-hoc EMA of std STD)."""
    denoiser, run, item_shape, num_classes, last_step = load_trained(run_dir)
    labels = class_labels(range(reference_models.SAMPLES), num_classes)
    points = []
    for k in range(1, POINTS + 1):
        step = last_step * k // POINTS
        denoiser.network.load_state_dict(ema_weights(run_dir, STD, step))
        point = {"step": step, "seconds": reference_models.training_seconds(run_dir, step)}
        for mode in MODES:
            samples = reference_models.sample(denoiser, item_shape, null_labels(labels) if mode == "unconditional" else labels)
            scores = scorer.score(samples)
            point[mode] = {"fd": scores["fd"], "fd_sd": scores["fd_sd"], "class_shares": scores["class_shares"]}
        log(f"{name} step {step}: FD {point['unconditional']['fd']:.2f} / {point['conditional']['fd']:.2f}")
        points.append(point)
    return points


def run(names: Sequence[str], work_dir: str, log=print) -> Dict[str, Any]:
    scorer = reference_models.Scorer(os.path.join(work_dir, "classifier"))
    results = {"version": VERSION, "std": STD, "samples": reference_models.SAMPLES, "sampler": list(reference_models.SAMPLER),
               "floor": scorer.floor()["fd"], "machine": common.machine_info(), "models": {}}
    for name in names:
        run_dir = os.path.join(work_dir, name)
        if not os.path.isdir(run_dir):
            raise ConfigError(f"no run {run_dir!r}; train it with benchmarks/reference_models.py --work-dir {work_dir}")
        results["models"][name] = curve(name, run_dir, scorer, log)
    return results


def rows(results: Dict[str, Any]) -> List[List[Any]]:
    names = list(results["models"])
    first, second = (results["models"][n] for n in names[:2])
    table = []
    for k, (a, b) in enumerate(zip(first, second), start=1):
        table.append([f"{k}/{POINTS}", f"{a['step']:,} / {b['step']:,}", f"{a['seconds']:.0f} / {b['seconds']:.0f}",
                      *[f"{a[m]['fd']:.2f} / {b[m]['fd']:.2f} ({b[m]['fd'] / a[m]['fd']:.2f})" for m in MODES],
                      f"{min(b['unconditional']['class_shares']):.3f}-{max(b['unconditional']['class_shares']):.3f}"])
    return table


def markdown(results: Dict[str, Any]) -> str:
    names = list(results["models"])
    solver, steps = results["sampler"]
    lines = [
        f"# Learning curves at equal training time: `{names[0]}` against `{names[1]}`", "",
        f"Command: `python benchmarks/learning_curves.py --models {','.join(names)} --work-dir RUNS` on the runs of "
        "`benchmarks/reference_models.py` (`--report-only` rebuilds this page from the JSON).", "",
        f"After each sixth of each run, the post-hoc EMA of relative std {results['std']:g} rebuilt from the run's snapshots, "
        f"scored as the committed models are: {results['samples']} samples, {solver} with N = {steps} on the model's own ODE, "
        f"Frechet distance in the digit classifier's features against {results['samples']} test digits (real digits: "
        f"{results['floor']:.2f}). Each cell: {names[0]} / {names[1]} (their ratio). Seconds: the training steps' time "
        "from log.jsonl, on a shared machine.", "",
        common.markdown_table(["training", "steps", "seconds", "FD unconditional", "FD conditional",
                               f"{names[1]} unconditional class shares"], rows(results)), "",
    ]
    return "\n".join(lines)


def write_report(results: Dict[str, Any]) -> List[str]:
    return common.write_results(STEM, results, markdown(results))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd3-unet,sd3-dit", help="two comma-separated reference models (the second is compared with the first)")
    parser.add_argument("--work-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "edm-space", "reference-runs"),
                        help="where benchmarks/reference_models.py trained the runs")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from the committed JSON")
    args = parser.parse_args(argv)

    def measure() -> Dict[str, Any]:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        if len(names) != 2 or any(n not in reference_models.MODELS for n in names):
            raise ConfigError(f"--models {args.models!r}: give two of {', '.join(reference_models.MODELS)}")
        return run(names, args.work_dir)

    return common.report_main(STEM, args.report_only, measure, write_report)


if __name__ == "__main__":
    sys.exit(main())
