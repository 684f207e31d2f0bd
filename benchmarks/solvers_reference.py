"""Solver goal 3 on trained models: Frechet distance at 8 evaluations against Heun at 35, on the reference MNIST models.

    python benchmarks/solvers_reference.py                   # edm-unet and sd3-unet (benchmarks/models), about 15 CPU minutes
    python benchmarks/solvers_reference.py --models edm-unet
    python benchmarks/solvers_reference.py --fit             # fit the models' steps again first (edm-space optimize-steps)
    python benchmarks/solvers_reference.py --report-only     # rebuild the report from the JSON

benchmarks/solver_goals.py picks, on the exact digits-gmm problem, the configurations that reach Heun's 35-evaluation
error at 8 evaluations without tuning. Here the same configurations sample the committed reference models
(benchmarks/reference_models.py) unconditionally (the null label), each on its model's own ODE, in SETS seed sets of
SAMPLES (set k: seeds k * SAMPLES ..), every configuration on the same latents. Scores in the digit classifier's
features against the MNIST test digits (reference_models.Scorer). A configuration reaches the goal when its FD, as
the mean over the sets, is within the error bar of Heun at 35: at most FD(Heun 35) + 2 sd of the difference, the sd
from the two configurations' spreads over the sets and their bootstrap sds. Also the RMS distance of each sample to
the Heun-35 sample of the same latent (pixels in [-1, 1]).

The schedule "fitted" stands for steps fitted to each model (edm_space.step_fitting, as `edm-space optimize-steps`:
the error against the model's own ODE, for the null label, on FIT's calibration latents, seeds far from the scored
ones); they are committed under FITTED_DIR and refitted with --fit.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import reference_models  # noqa: E402  (the committed models and their scorer)
import presets  # noqa: E402
from edm_space import data  # noqa: E402
from edm_space.errors import ConfigError  # noqa: E402
from edm_space.files import read_json  # noqa: E402
from edm_space.generation import SamplerSettings, class_labels, generate  # noqa: E402
from edm_space.guidance import null_labels  # noqa: E402
from edm_space.reference import rms_error  # noqa: E402
from edm_space.step_fitting import StepFit, fit_steps_to_file  # noqa: E402
from edm_space.training import load_trained  # noqa: E402
from samplers.discretizations import load_levels  # noqa: E402
from solver_goals import schedule_levels, split_ode, steps_for  # noqa: E402

VERSION = 1
STEM = "solvers_reference"
SETS = 2
SAMPLES = 500
MODELS = ("edm-unet", "sd3-unet")
FITTED_DIR = os.path.join(common.RESULTS, "solvers_reference_steps")
#: How the "fitted" steps are fitted (StepFit's fields). With 32 calibration latents the fits overfit (held-out RMS fell far
#: less than calibration RMS); 128 keeps a fit within about 20 CPU minutes per configuration and model.
FIT = {"initial": "time-quadratic", "sigma_min": 0.002, "sigma_max": 80.0, "calibration": 128, "held_out": 64, "seed": 100_000,
       "max_evaluations": 400}
#: (label, solver, options, schedule of benchmarks/solver_goals.py or "fitted", analytical first step, NFE); the first is
#: the goal. Options as solver_goals.VARIANTS' ("ode": the formulation whose ODE is integrated, default the model's own).
CONFIGS = (
    ("heun, edm rho=7, 35 NFE", "heun", {}, "edm rho=7", False, 35),
    ("heun, edm rho=7, 9 NFE", "heun", {}, "edm rho=7", False, 9),
    ("dpm++2m, edm rho=7, 8 NFE", "dpm++2m", {}, "edm rho=7", False, 8),
    ("unipc-2, vp-time p=3, 8 NFE", "unipc-2", {}, "vp-time p=3", False, 8),
    ("ipndm, vp-time p=2 on edm range + AFS, 8 NFE", "ipndm", {}, "vp-time p=2 on edm range", True, 8),
    ("unipc-3, vp-time p=4, 8 NFE", "unipc-3", {}, "vp-time p=4", False, 8),
    ("dpm++3m, logsnr, 8 NFE", "dpm++3m", {}, "logsnr", False, 8),
    ("ipndm, vp-time p=2 on edm range + AFS, 6 NFE", "ipndm", {}, "vp-time p=2 on edm range", True, 6),
    ("ipndm, vp-time p=2 on edm range + AFS, 10 NFE", "ipndm", {}, "vp-time p=2 on edm range", True, 10),
    ("ipndm order 3 (flow ODE), vp-time p=2 on edm range + AFS, 8 NFE", "ipndm", {"max_order": 3, "ode": "flow"},
     "vp-time p=2 on edm range", True, 8),
    ("ipndm, steps fitted to the model + AFS, 8 NFE", "ipndm", {}, "fitted", True, 8),
    ("ipndm order 3 (flow ODE), steps fitted to the model + AFS, 8 NFE", "ipndm", {"max_order": 3, "ode": "flow"}, "fitted", True, 8),
)


def fitted_path(model: str, config) -> str:
    """Where the fitted steps of a "fitted" configuration of `model` are kept."""
    _, solver, options, _, afs, nfe = config
    extra = "".join(f"_{key}{value}" for key, value in sorted(split_ode(options)[1].items()))
    return os.path.join(FITTED_DIR, f"{model}_{solver}{extra}_{options.get('ode', 'own')}-ode{'_afs' if afs else ''}_{nfe}nfe.json")


def fit_steps(model: str, config, log) -> str:
    """Fit the steps of a "fitted" configuration to `model` (edm_space.step_fitting) and write them to fitted_path."""
    _, solver, options, _, afs, nfe = config
    solver_options = split_ode(options)[1]
    path = fitted_path(model, config)
    os.makedirs(FITTED_DIR, exist_ok=True)
    result = fit_steps_to_file(StepFit(solver=solver, nfe=nfe, out_path=path, run_dir=os.path.join(reference_models.MODELS_DIR, model),
                                       preset=options.get("ode"), solver_options=solver_options, analytic_first_step=afs, **FIT),
                               echo=log)
    log(f"{model} {config[0]}: held-out RMS {result['before']:.4f} -> {result['after']:.4f}; wrote {path}")
    return path


def fitted_levels(model: str, config, formulation: str) -> torch.Tensor:
    """The committed fitted steps of a configuration; a ConfigError if missing or fitted for something else."""
    _, solver, options, _, afs, nfe = config
    path = fitted_path(model, config)
    if not os.path.isfile(path):
        raise ConfigError(f"{path!r} does not exist; run with --fit to fit the steps of {model!r}")
    spec = read_json(path, "fitted steps file")
    wanted = {"solver": solver, "nfe": nfe, "formulation": formulation, "solver_options": split_ode(options)[1], "analytic_first_step": afs}
    if any(spec.get(key) != value for key, value in wanted.items()):
        raise ConfigError(f"{path!r} holds steps fitted for another configuration than {config[0]!r}; run with --fit")
    return load_levels(path)


def sample_config(model: str, denoiser, item_shape, seeds: List[int], config, data_mean: torch.Tensor) -> torch.Tensor:
    """Samples of one configuration from the latents of `seeds` (null label)."""
    _, solver, options, schedule, afs, nfe = config
    # the model's own formulation object (with its preset options) unless the configuration names another ODE
    ode = presets.get(options["ode"]) if "ode" in options else denoiser.formulation
    solver_options = split_ode(options)[1]
    if schedule == "fitted":
        levels = fitted_levels(model, config, ode.name)
    else:
        levels = schedule_levels(schedule, steps_for(solver, nfe, afs))
    settings = SamplerSettings(formulation=ode, solver=solver, num_steps=len(levels), discretization=levels,
                               analytic_first_step=afs, data_mean=data_mean if afs else None, options=solver_options)
    labels = null_labels(class_labels(seeds, 10))
    out = generate(denoiser, seeds, item_shape, settings, batch_size=250, labels=labels)
    if out.nfe != nfe:
        raise ConfigError(f"{config[0]}: the sampler counted {out.nfe} evaluations, not {nfe}")
    return out.samples


def score_model(name: str, scorer: "reference_models.Scorer", log) -> List[Dict[str, Any]]:
    denoiser, _, item_shape, _, _ = load_trained(os.path.join(reference_models.MODELS_DIR, name))
    data_mean = data.load("mnist").double().mean(0)  # D(x; sigma -> inf) = E[x] (Karras et al. 2022, Eq. 2 limit)
    rows = []
    for k in range(SETS):
        seeds = list(range(k * SAMPLES, (k + 1) * SAMPLES))
        goal = None
        for config in CONFIGS:
            x = sample_config(name, denoiser, item_shape, seeds, config, data_mean)
            goal = x if goal is None else goal
            scores = scorer.score(x)
            rows.append({"model": name, "config": config[0], "nfe": config[5], "set": k, "fd": scores["fd"],
                         "fd_sd": scores["fd_sd"], "class_shares": scores["class_shares"],
                         "rms_to_heun35": rms_error(x.float().clamp(-1, 1), goal.float().clamp(-1, 1))})
            log(f"{name} set {k} {config[0]}: FD {scores['fd']:.3f}")
    return rows


def summary(rows: List[Dict[str, Any]], name: str) -> List[Dict[str, Any]]:
    """Per configuration: mean FD over the sets, its sd, the difference to Heun 35 and whether it is within 2 sd."""
    def stats(label: str) -> Dict[str, float]:
        group = [r for r in rows if r["model"] == name and r["config"] == label]
        fds = [r["fd"] for r in group]
        spread = float(np.std(fds, ddof=1)) / math.sqrt(len(fds)) if len(fds) > 1 else 0.0
        boot = math.sqrt(sum(r["fd_sd"] ** 2 for r in group)) / len(group)
        return {"fd": float(np.mean(fds)), "sd": math.hypot(spread, boot),
                "rms": float(np.mean([r["rms_to_heun35"] for r in group])),
                "min_share": float(np.mean([min(r["class_shares"]) for r in group]))}

    goal = stats(CONFIGS[0][0])
    out = []
    for config in CONFIGS:
        if not any(r["model"] == name and r["config"] == config[0] for r in rows):
            continue
        s = stats(config[0])
        margin = 2 * math.hypot(s["sd"], goal["sd"])
        out.append({"model": name, "config": config[0], "nfe": config[5], **s, "difference": s["fd"] - goal["fd"],
                    "margin": margin, "reached": bool(s["fd"] - goal["fd"] <= margin)})
    return out


def markdown(results: Dict[str, Any]) -> str:
    lines = [
        "# Solvers on the reference MNIST models: 8 evaluations against Heun at 35", "",
        "Command: `python benchmarks/solvers_reference.py` (`--report-only` rebuilds this page from the JSON).", "",
        f"The committed reference models (benchmarks/models, see reference_models.md) sampled unconditionally in "
        f"{results['sets']} seed sets of {results['samples']}, every configuration on the same latents and its model's own ODE; "
        "FD in the digit classifier's features against the MNIST test digits, mean over the sets ± sd (spread over the "
        "sets and bootstrap). Goal: FD at 8 NFE at most FD(Heun, 35 NFE) + 2 sd of the difference. RMS: distance of each "
        "sample to the Heun-35 sample of the same latent (pixels in [-1, 1]).", "",
        "## What the numbers support", "",
    ]
    for name in results["models"]:
        rows = [r for r in results["summary"] if r["model"] == name and r["nfe"] == 8]
        best = min(rows, key=lambda r: r["fd"])
        goal = next(r for r in results["summary"] if r["model"] == name and r["config"] == CONFIGS[0][0])
        lines.append(f"- **{name}**: best at 8 NFE {best['config'].rsplit(', ', 1)[0]} with FD {best['fd']:.2f} ± {best['sd']:.2f} against "
                     f"{goal['fd']:.2f} for Heun at 35: "
                     f"{'within the error bars (goal reached)' if best['reached'] else '**outside the error bars (goal not reached)**'}.")
    lines += ["", "## Results", "",
              common.markdown_table(["model", "configuration", "NFE", "FD", "difference to Heun 35", "2 sd", "goal", "RMS to Heun 35",
                                     "smallest class share"],
                                    [[f"`{r['model']}`", r["config"], r["nfe"], f"{r['fd']:.2f} ± {r['sd']:.2f}", f"{r['difference']:+.2f}",
                                      f"{r['margin']:.2f}", "yes" if r["reached"] else "no", f"{r['rms']:.4f}", f"{r['min_share']:.3f}"]
                                     for r in results["summary"]])]
    return "\n".join(lines) + "\n"


def write_report(results: Dict[str, Any]) -> List[str]:
    return common.write_results(STEM, results, markdown(results))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(reference_models.MODELS)}")
    parser.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "edm-space", "reference-runs"),
                        help="where the digit classifier is cached (as reference_models.py's --work-dir)")
    parser.add_argument("--fit", action="store_true", help="fit the steps of the 'fitted' configurations to each model first (about "
                        "20 CPU minutes per configuration and model) instead of reading the committed ones")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)

    def measure() -> Dict[str, Any]:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        for name in names:
            if not os.path.isdir(os.path.join(reference_models.MODELS_DIR, name)):
                raise ConfigError(f"model {name!r} is not in benchmarks/models; choose from "
                                  f"{', '.join(sorted(os.listdir(reference_models.MODELS_DIR)))}")
        if args.fit:
            for name in names:
                for config in (c for c in CONFIGS if c[3] == "fitted"):
                    fit_steps(name, config, print)
        scorer = reference_models.Scorer(os.path.join(args.cache_dir, "classifier"))
        rows = [row for name in names for row in score_model(name, scorer, print)]
        return {"version": VERSION, "sets": SETS, "samples": SAMPLES, "models": names, "rows": rows,
                "summary": [s for name in names for s in summary(rows, name)], "machine": common.machine_info()}

    return common.report_main(STEM, args.report_only, measure, write_report)


if __name__ == "__main__":
    sys.exit(main())
