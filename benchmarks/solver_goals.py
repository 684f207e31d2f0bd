"""The two few-evaluation goals of the solver benchmark, with the worse-of-two-latent-sets rule.

    python benchmarks/solver_goals.py                  # digits-gmm, a few minutes on one core
    python benchmarks/solver_goals.py --quick          # the 2-D mixture, seconds (what the tests run)
    python benchmarks/solver_goals.py --report-only    # rebuild .md/.png from the .json, run nothing

The problem is benchmarks/solvers.py's (the exact denoiser of a target, errors against the
exact probability-flow ODE end points by DOP853; the solvers integrate the edm formulation's
ODE unless a variant names another). The goal error is Heun with
EDM's rho = 7 steps at 35 NFE, measured on each of two latent sets, A and B (256 latents each,
seeds 0 and 1). A configuration's score is the worse of its two ratios error / goal error on
the same set: it reaches the goal when that is at most 1.

1. Untuned at 8 NFE: solver variants x fixed schedules x (with or without) the analytical
   first step (AFS: D at sigma_max is the data mean; it saves one evaluation, so 8 NFE buy one
   more step). Schedules: EDM's polynomial in sigma with rho = 3, 5, 7, 10 on [0.002, 80];
   polynomial in VP time (t^(1/p) uniform: p = 1 is DPM-Solver's time-uniform, 2 its
   time-quadratic, 3, 4) on the VP discretization's range [0.0105, 152], p = 2 also on [0.002, 80];
   uniform in logSNR (= log sigma) on [0.002, 80].
2. Optimized steps at 6 NFE (samplers.optimize): fitted on calibration latents (128, another
   seed) with AFS, starting from the variant's best schedule of part 1, scored on A and B.
3. The best untuned configurations of part 1 again at 6 and 10 NFE (which to use at 6, 8, 10).
4. dpm++3m published against taylor=True (and published without lower_order_final): errors at several NFE
   on two schedules, and measured
   orders on logSNR-uniform steps against the exact flow to sigma_min followed by the
   solver's own last step (x = D(x; sigma_min)), on the first latents of A.

Writes solver_goals_TARGET[_quick].{json,md,png} under --out-dir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import samplers  # noqa: E402
from edm_space import targets  # noqa: E402
from edm_space.errors import ConfigError, unknown  # noqa: E402
from edm_space.reference import rms_error, solve_reference  # noqa: E402
from samplers.discretizations import OWN_RANGE, edm_sigmas, log_sigmas, vp_time_power_sigmas  # noqa: E402
from samplers.optimize import optimize_steps  # noqa: E402
from solvers import References  # noqa: E402

F64 = torch.float64
Tensor = torch.Tensor
EDM_RANGE = OWN_RANGE["edm"]
VP_RANGE = OWN_RANGE["vp"]
GOAL = ("heun", 35)
SETS = {"A": 0, "B": 1}  # latent set name -> seed
CALIBRATION_SEED = 1_000_003

#: (label, solver, options): the variants compared, published and exact forms side by side. Under "ode", options name the
#: formulation whose probability-flow ODE the solver integrates (default edm: t = sigma, s = 1); the same trajectories
#: in other coordinates, which a multistep method approximates differently.
VARIANTS: Tuple[Tuple[str, str, dict], ...] = (
    ("heun", "heun", {}),
    ("dpm++2m", "dpm++2m", {}),
    ("dpm++3m", "dpm++3m", {}),
    ("dpm++3m taylor", "dpm++3m", {"taylor": True}),
    ("dpm++3m full order", "dpm++3m", {"lower_order_final": False}),
    ("unipc-2", "unipc-2", {}),
    ("unipc-3", "unipc-3", {}),
    ("unipc-3 full order", "unipc-3", {"lower_order_final": False}),
    ("deis", "deis", {}),
    ("ipndm", "ipndm", {}),
    ("ipndm order 3", "ipndm", {"max_order": 3}),
    ("ipndm (flow ODE)", "ipndm", {"ode": "flow"}),
    ("ipndm order 3 (flow ODE)", "ipndm", {"max_order": 3, "ode": "flow"}),
    ("ipndm-v", "ipndm-v", {}),
    ("ipndm-v published", "ipndm-v", {"weights": "published"}),
)
#: Schedules: (label, kind, parameter, range).
SCHEDULES: Tuple[Tuple[str, str, float, Tuple[float, float]], ...] = (
    ("edm rho=3", "edm", 3.0, EDM_RANGE),
    ("edm rho=5", "edm", 5.0, EDM_RANGE),
    ("edm rho=7", "edm", 7.0, EDM_RANGE),
    ("edm rho=10", "edm", 10.0, EDM_RANGE),
    ("vp-time p=1", "vp-time", 1.0, VP_RANGE),
    ("vp-time p=2", "vp-time", 2.0, VP_RANGE),
    ("vp-time p=3", "vp-time", 3.0, VP_RANGE),
    ("vp-time p=4", "vp-time", 4.0, VP_RANGE),
    ("vp-time p=2 on edm range", "vp-time", 2.0, EDM_RANGE),
    ("logsnr", "logsnr", 0.0, EDM_RANGE),
)
#: The variants --quick leaves out.
QUICK_LEAVES_OUT = ("unipc-2", "unipc-3", "unipc-3 full order", "deis")
UNTUNED_NFE = 8
OPTIMIZED_NFE = 6
DPM3M_NFE = (6, 8, 10, 15, 20, 35)
DPM3M_SCHEDULES = ("edm rho=7", "vp-time p=2")
ORDER_STEPS = (10, 20, 40, 80)
OTHER_NFE = (6, 10)
BEST_CONFIGS = 6


def split_ode(options: dict) -> Tuple[str, dict]:
    """(the formulation whose ODE a variant integrates, its solver options): a variant's options without "ode"."""
    return options.get("ode", "edm"), {key: value for key, value in options.items() if key != "ode"}


def schedule_levels(label: str, num_steps: int) -> Tensor:
    """The num_steps sigma levels of a SCHEDULES entry (the sampler appends sigma = 0)."""
    _, kind, parameter, (lo, hi) = next(s for s in SCHEDULES if s[0] == label)
    if kind == "edm":
        return edm_sigmas(num_steps, lo, hi, parameter)
    if kind == "vp-time":
        return vp_time_power_sigmas(num_steps, lo, hi, parameter)
    return log_sigmas(num_steps, lo, hi)


class Harness:
    """The target, the latent sets and their references; `score` runs one configuration on both sets."""

    def __init__(self, target_name: str, num_latents: int, num_calibration: int, log: Callable[[str], None]):
        self.target = targets.get(target_name)
        self.log = log
        shape = self.target.item_shape
        self.latents = {name: torch.randn(num_latents, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
                        for name, seed in SETS.items()}
        self.latents["calibration"] = torch.randn(num_calibration, *shape, generator=torch.Generator().manual_seed(CALIBRATION_SEED),
                                                  dtype=F64)
        self.refs = References(self.target, 1e-10, log)
        far = torch.full((1,), 1e8, dtype=F64)  # D(x; sigma -> inf) is the data mean (to O(1/sigma^2))
        self.data_mean = self.target.denoiser(torch.zeros(1, *shape, dtype=F64), far)[0].to(F64)

    def rms(self, set_name: str, solver: str, levels: Tensor, options: dict, afs: bool) -> Tuple[float, int]:
        """(RMS error against the exact end points, NFE) of one run on one latent set."""
        latents = self.latents[set_name]
        ref = self.refs.get(set_name, latents, float(levels[0]))
        info: dict = {}
        extra = {"analytic_first_step": True, "data_mean": self.data_mean} if afs else {}
        ode, solver_options = split_ode(options)
        try:
            x = samplers.sample(self.target.denoiser, latents, formulation=ode, solver=solver, discretization=levels,
                                info=info, **solver_options, **extra)
        except (ValueError, RuntimeError):  # a blow-up (e.g. responsibilities underflowing)
            return math.inf, -1
        error = rms_error(x, ref.x) if bool(torch.isfinite(x).all()) else math.inf
        return error, int(info["nfe"])

    def score(self, solver: str, levels: Tensor, options: dict, afs: bool) -> Dict[str, float]:
        """{"A": rms, "B": rms, "nfe": n} on both held-out sets."""
        out: Dict[str, float] = {}
        for name in SETS:
            out[name], out["nfe"] = self.rms(name, solver, levels, options, afs)
        return out


def steps_for(solver: str, nfe: int, afs: bool) -> int:
    """The steps of `solver` within `nfe` evaluations; the analytical first step saves one."""
    return samplers.get(solver).steps_for_nfe(nfe + int(afs))


def record(part: str, label: str, solver: str, options: dict, schedule: str, afs: bool, levels: Tensor, scores: dict) -> dict:
    return {"part": part, "variant": label, "solver": solver, "options": options, "schedule": schedule, "afs": afs,
            "num_steps": len(levels), "nfe": scores["nfe"], "sigmas": [float(s) for s in levels],
            "rms": {name: scores[name] for name in SETS}}


def run_untuned(h: Harness, variants, schedules) -> List[dict]:
    """Part 1: every variant x schedule x AFS at UNTUNED_NFE."""
    records = []
    for label, solver, options in variants:
        for schedule in schedules:
            for afs in (False, True):
                levels = schedule_levels(schedule, steps_for(solver, UNTUNED_NFE, afs))
                records.append(record("untuned", label, solver, options, schedule, afs, levels, h.score(solver, levels, options, afs)))
        h.log(f"  untuned {label}: done")
    return records


def run_optimized(h: Harness, variants, untuned: List[dict], goal: dict, maxfev: int, only: Optional[Sequence[str]] = None) -> List[dict]:
    """Part 2: per one-evaluation variant (or those named in `only`), steps fitted at OPTIMIZED_NFE with AFS from its
    best untuned schedule."""
    records = []
    for label, solver, options in variants:
        if samplers.get(solver).evaluations_per_step != 1 or (only is not None and label not in only):
            continue
        mine = [r for r in untuned if r["variant"] == label and r["afs"]]
        start_schedule = min(mine, key=lambda r: worse_ratio(r, goal))["schedule"]
        num_steps = steps_for(solver, OPTIMIZED_NFE, True)
        start = schedule_levels(start_schedule, num_steps)
        sigma_max = float(start[0])
        calibration = h.latents["calibration"]
        ref = h.refs.get("calibration", calibration, sigma_max)
        ode, solver_options = split_ode(options)
        fit = optimize_steps(h.target.denoiser, ode, solver, OPTIMIZED_NFE, calibration, ref.x, sigma_max=sigma_max,
                             max_evaluations=maxfev, initial=start, solver_options=solver_options, analytic_first_step=True,
                             data_mean=h.data_mean)
        r = record("optimized", label, solver, options, f"fitted from {start_schedule}", True, fit.sigmas,
                   h.score(solver, fit.sigmas, options, True))
        r.update(start=record("optimized-start", label, solver, options, start_schedule, True, start, h.score(solver, start, options, True)),
                 calibration={"latents": int(calibration.shape[0]), "seed": CALIBRATION_SEED, "rms_start": fit.error_before,
                              "rms_fitted": fit.error_after, "objective_evaluations": fit.objective_evaluations})
        h.log(f"  optimized {label}: worse ratio {worse_ratio(r, goal):.3f} (start {worse_ratio(r['start'], goal):.3f})")
        records.append(r)
    return records


def run_other_budgets(h: Harness, untuned: List[dict], goal: dict) -> List[dict]:
    """Part 3: the BEST_CONFIGS best untuned configurations (by worse ratio) at each of OTHER_NFE."""
    best = sorted(untuned, key=lambda r: worse_ratio(r, goal))[:BEST_CONFIGS]
    records = []
    for r in best:
        for nfe in OTHER_NFE:
            levels = schedule_levels(r["schedule"], steps_for(r["solver"], nfe, r["afs"]))
            scores = h.score(r["solver"], levels, r["options"], r["afs"])
            records.append(record(f"untuned-{nfe}", r["variant"], r["solver"], r["options"], r["schedule"], r["afs"], levels, scores))
    return records


def run_dpm3m(h: Harness, order_latents: int) -> Tuple[List[dict], List[dict]]:
    """Part 4: the dpm++3m variants: errors at DPM3M_NFE, and measured orders on logSNR-uniform steps."""
    variants = [v for v in VARIANTS if v[1] == "dpm++3m"]
    records = [record("dpm3m", label, solver, options, schedule, False, levels, h.score(solver, levels, options, False))
               for label, solver, options in variants for schedule in DPM3M_SCHEDULES for nfe in DPM3M_NFE
               for levels in [schedule_levels(schedule, steps_for(solver, nfe, False))]]
    z = h.latents["A"][:order_latents]
    sigma_min, sigma_max = EDM_RANGE
    finish = lambda x, s: h.target.denoiser(x, torch.full((x.shape[0],), float(s), dtype=F64)).to(F64)  # noqa: E731
    exact = solve_reference(h.target.denoiser, z, sigma_max, sigma_min, 1e-12, finish=finish).x
    orders = []
    for label, solver, options in variants:
        errors = []
        for n in ORDER_STEPS:
            x = samplers.sample(h.target.denoiser, z, formulation="edm", solver=solver, discretization=log_sigmas(n, sigma_min, sigma_max),
                                **options)
            errors.append(rms_error(x, exact))
        orders.append({"variant": label, "steps": list(ORDER_STEPS), "rms": errors})
    return records, orders


def dpm3m_labels(results: dict) -> List[str]:
    """The labels of the dpm++3m variants in `results` (part 4)."""
    return [label for label, solver, _ in results["variants"] if solver == "dpm++3m"]


def worse_ratio(r: dict, goal: dict) -> float:
    """The worse of error / goal error over the two latent sets (inf for a failed run)."""
    return max(r["rms"][name] / goal[name] if r["rms"][name] is not None else math.inf for name in SETS)


def fitted_order(steps: Sequence[int], errors: Sequence[float]) -> float:
    """-slope of log error against log steps over the last three points."""
    return -float(np.polyfit(np.log(steps[-3:]), np.log(errors[-3:]), 1)[0])


# --------------------------------------------------------------------------- conclusions and report


def conclusions(results: dict) -> dict:
    """The two goals from the records: best configuration, its worse ratio, whether it is at most 1."""
    goal = results["goal"]["rms"]
    out = {}
    for part in ("untuned", "optimized"):
        rows = [r for r in results["records"] if r["part"] == part]
        best = min(rows, key=lambda r: worse_ratio(r, goal))
        out[part] = {"variant": best["variant"], "schedule": best["schedule"], "afs": best["afs"], "nfe": best["nfe"],
                     "worse_ratio": worse_ratio(best, goal), "reached": worse_ratio(best, goal) <= 1}
    out["orders"] = {o["variant"]: fitted_order(o["steps"], o["rms"]) for o in results["orders"]}
    return out


def _r(value: float) -> str:
    return "failed" if not math.isfinite(value) else f"{value:.3f}"


def _untuned_table(results: dict) -> str:
    goal = results["goal"]["rms"]
    rows = []
    for label, *_ in results["variants"]:
        cells = []
        for schedule in results["schedules"]:
            pair = [worse_ratio(r, goal) for r in results["records"]
                    if r["part"] == "untuned" and r["variant"] == label and r["schedule"] == schedule]
            best = min(pair) if pair else math.inf
            cells.append(("**" + _r(best) + "**") if best <= 1 else _r(best))
        rows.append([label] + cells)
    return common.markdown_table(["variant"] + list(results["schedules"]), rows)


def _budget_table(results: dict) -> str:
    goal = results["goal"]["rms"]
    nfes = sorted(OTHER_NFE + (UNTUNED_NFE,))
    rows = []
    for r in sorted((r for r in results["records"] if r["part"] == "untuned"), key=lambda r: worse_ratio(r, goal))[:BEST_CONFIGS]:
        cells = []
        for nfe in nfes:
            part = "untuned" if nfe == UNTUNED_NFE else f"untuned-{nfe}"
            (match,) = [o for o in results["records"] if o["part"] == part and o["variant"] == r["variant"]
                        and o["schedule"] == r["schedule"] and o["afs"] == r["afs"]]
            cells.append(_r(worse_ratio(match, goal)))
        rows.append([r["variant"], r["schedule"] + (" + AFS" if r["afs"] else "")] + cells)
    return common.markdown_table(["variant", "schedule"] + [f"NFE {n}" for n in nfes], rows)


def markdown(results: dict, png: Optional[str] = None) -> str:
    """The report; everything in it comes from `results` (so --report-only rebuilds it byte for byte)."""
    c, goal, s = results["conclusions"], results["goal"], results["settings"]
    u, o = c["untuned"], c["optimized"]
    lines = [
        f"# Solver goals: {results['target']}", "",
        f"Goal: {GOAL[0]} with EDM's rho = 7 steps at {GOAL[1]} NFE, RMS error {goal['rms']['A']:.4e} on latent set A "
        f"(seed {SETS['A']}) and {goal['rms']['B']:.4e} on set B (seed {SETS['B']}), {s['num_latents']} latents each, "
        "against the exact probability-flow ODE end points. A configuration's score is the **worse** of its two ratios "
        "error / goal error (at most 1: goal reached). AFS = analytical first step (D at sigma_max replaced by the data "
        "mean, one NFE saved: 8 NFE buy one more step).", "",
        f"Machine: {results['machine']['platform']}, {results['machine']['cpu_count']} CPUs, torch {results['machine']['torch']}; "
        f"total {results['seconds']:.0f} s.", "",
    ]
    if png:
        lines += [f"![goals]({png})", ""]
    lines += [
        "## Goals", "",
        common.markdown_table(["goal", "best configuration", "worse ratio", "reached"], [
            [f"untuned, {UNTUNED_NFE} NFE", f"{u['variant']}, {u['schedule']}{' + AFS' if u['afs'] else ''} (NFE {u['nfe']})",
             _r(u["worse_ratio"]), "yes" if u["reached"] else "**no**"],
            [f"optimized steps, {OPTIMIZED_NFE} NFE (held-out sets)", f"{o['variant']}, {o['schedule']} + AFS (NFE {o['nfe']})",
             _r(o["worse_ratio"]), "yes" if o["reached"] else "**no**"],
        ]), "",
        f"## 1. Untuned at {UNTUNED_NFE} NFE: worse ratio, the better of with and without AFS (bold: goal reached)", "",
        _untuned_table(results), "",
        f"## 2. Optimized steps at {OPTIMIZED_NFE} NFE, with AFS", "",
        f"Fitted on {s['num_calibration']} calibration latents (seed {CALIBRATION_SEED}), Nelder-Mead with at most "
        f"{s['maxfev']} runs, starting from the variant's best schedule of part 1; scored on sets A and B.", "",
        common.markdown_table(["variant", "start", "start: worse ratio", "fitted: A", "fitted: B", "fitted: worse ratio", "levels"], [
            [r["variant"], r["start"]["schedule"], _r(worse_ratio(r["start"], goal["rms"])), f"{r['rms']['A']:.3e}",
             f"{r['rms']['B']:.3e}", _r(worse_ratio(r, goal["rms"])), ", ".join(f"{v:.3g}" for v in r["sigmas"])]
            for r in results["records"] if r["part"] == "optimized"]), "",
        f"## 3. The {BEST_CONFIGS} best untuned configurations at {', '.join(str(n) for n in sorted(OTHER_NFE + (UNTUNED_NFE,)))} NFE: worse ratio", "",
        _budget_table(results), "",
        "## 4. dpm++3m: published (default) against taylor=True and against full order to the end (lower_order_final=False)", "",
        "Orders: RMS error on logSNR-uniform steps against the exact flow to sigma_min = 0.002 followed by x = D(x; sigma_min) "
        f"(the solvers' own last step), first {s['order_latents']} latents of set A, slope over the last three step counts.", "",
        common.markdown_table(["variant"] + [f"N = {n}" for n in ORDER_STEPS] + ["measured order"], [
            [o["variant"]] + [f"{e:.2e}" for e in o["rms"]] + [f"{c['orders'][o['variant']]:.2f}"] for o in results["orders"]]), "",
        "Worse-of-two RMS error against NFE:", "",
        common.markdown_table(["variant", "schedule"] + [f"NFE {n}" for n in DPM3M_NFE], [
            [label, schedule] + [f"{max(r['rms'].values()):.2e}" for r in results["records"]
                                 if r["part"] == "dpm3m" and r["variant"] == label and r["schedule"] == schedule]
            for label in dpm3m_labels(results) for schedule in DPM3M_SCHEDULES]),
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    """Left: untuned worse ratio per variant (best schedule, either AFS); right: dpm++3m error against NFE."""
    plt = common.pyplot("the figures")
    goal = results["goal"]["rms"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    labels = [v[0] for v in results["variants"]]
    best = [min(worse_ratio(r, goal) for r in results["records"] if r["part"] == "untuned" and r["variant"] == v) for v in labels]
    fitted = {r["variant"]: worse_ratio(r, goal) for r in results["records"] if r["part"] == "optimized"}
    y = np.arange(len(labels))
    axes[0].barh(y - 0.2, best, height=0.4, label=f"untuned, {UNTUNED_NFE} NFE (best schedule)")
    axes[0].barh(y + 0.2, [fitted.get(v, 0) for v in labels], height=0.4, label=f"optimized, {OPTIMIZED_NFE} NFE")
    axes[0].axvline(1, color="black", linestyle=":", label="goal")
    axes[0].set_xscale("log")
    axes[0].set_yticks(y, labels)
    axes[0].set_xlabel("worse of two latent sets: error / goal error")
    axes[0].legend(fontsize=8)
    for label in dpm3m_labels(results):
        for schedule, style in zip(DPM3M_SCHEDULES, ("-", "--")):
            rows = [r for r in results["records"] if r["part"] == "dpm3m" and r["variant"] == label and r["schedule"] == schedule]
            axes[1].plot([r["nfe"] for r in rows], [max(r["rms"].values()) for r in rows], style, marker="o", label=f"{label}, {schedule}")
    axes[1].axhline(max(goal.values()), color="black", linestyle=":", label="goal (worse set)")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("NFE")
    axes[1].set_ylabel("RMS error (worse set)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{results['target']}: solver goals against the exact ODE solution", fontsize=10)
    fig.tight_layout()
    common.save_png(fig, path, dpi=100)


def write_outputs(results: dict, out_dir: str, plot_it: bool = True) -> List[str]:
    """JSON, Markdown and (with matplotlib) the PNG."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"solver_goals_{results['target']}" + ("_quick" if results["settings"]["quick"] else ""))
    png = stem + ".png"
    if plot_it:
        plot(results, png)
    common.write_markdown(stem + ".md", markdown(results, os.path.basename(png) if os.path.exists(png) else None))
    common.write_json(stem + ".json", results, indent=1)
    return [stem + ".json", stem + ".md"] + ([png] if plot_it else [])


# --------------------------------------------------------------------------- running


def run(target: str, quick: bool, maxfev: int, fit: Optional[Sequence[str]] = None, num_calibration: Optional[int] = None,
        log: Callable[[str], None] = print) -> dict:
    """All parts; the results dict that write_outputs writes. `fit`: the variants whose steps are fitted (default:
    every one-evaluation variant)."""
    start = time.perf_counter()
    num_latents, calibration_default, order_latents = (64, 32, 16) if quick else (256, 128, 64)
    num_calibration = num_calibration or calibration_default
    variants = [v for v in VARIANTS if v[0] not in QUICK_LEAVES_OUT] if quick else VARIANTS
    h = Harness(target, num_latents, num_calibration, log)
    goal_levels = edm_sigmas(steps_for(GOAL[0], GOAL[1], False), *EDM_RANGE)
    goal = h.score(GOAL[0], goal_levels, {}, False)
    results = {
        "study": "goals", "target": target, "goal": {"solver": GOAL[0], "nfe": goal["nfe"], "rms": {n: goal[n] for n in SETS}},
        "settings": {"quick": quick, "num_latents": num_latents, "num_calibration": num_calibration, "maxfev": maxfev, "fit": fit,
                     "order_latents": order_latents, "sets": SETS, "calibration_seed": CALIBRATION_SEED},
        "variants": [list(v) for v in variants], "schedules": [s[0] for s in SCHEDULES],
        "machine": common.machine_info(),
    }
    untuned = run_untuned(h, variants, results["schedules"])
    optimized = run_optimized(h, variants, untuned, results["goal"]["rms"], maxfev, fit)
    others = run_other_budgets(h, untuned, results["goal"]["rms"])
    dpm3m, orders = run_dpm3m(h, order_latents)
    results.update(records=untuned + optimized + others + dpm3m, orders=orders, seconds=time.perf_counter() - start)
    results["conclusions"] = conclusions(results)
    return results


def rebuild(path: str, plot_it: bool = True) -> List[str]:
    """--report-only: conclusions, Markdown and plot again from the JSON's records."""
    try:
        with open(path) as file:
            results = json.load(file)
        results["conclusions"] = conclusions(results)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{path!r} is not a solver-goals results file ({type(error).__name__}: {error})") from None
    return write_outputs(results, os.path.dirname(os.path.abspath(path)), plot_it)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/solver_goals.py", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=None, help="target [default: digits-gmm; gmm2d with --quick]")
    parser.add_argument("--quick", action="store_true", help="the 2-D mixture, fewer variants and latents (seconds)")
    parser.add_argument("--maxfev", type=int, default=300, help="sampling runs per step fit [default: 300]")
    parser.add_argument("--fit", default=None, help="comma-separated variants whose steps are fitted [default: every one-evaluation variant]")
    parser.add_argument("--calibration", type=int, default=None, help="calibration latents of the fits [default: 128; 32 with --quick]")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--out-dir", default=common.RESULTS, help="where results are written [default: benchmarks/results]")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report of OUT_DIR/solver_goals_TARGET.json; run nothing")
    args = parser.parse_args(argv)
    with common.one_line_errors():
        target = args.target or ("gmm2d" if args.quick else "digits-gmm")
        if target not in targets.names():
            raise unknown("target", target, targets.names())
        if args.maxfev < 1:
            raise ConfigError(f"--maxfev {args.maxfev} is invalid; it must be >= 1")
        torch.set_num_threads(1)
        if args.report_only:
            path = os.path.join(args.out_dir, f"solver_goals_{target}" + ("_quick" if args.quick else "") + ".json")
            if not os.path.isfile(path):
                raise ConfigError(f"--report-only: {path!r} does not exist; run the benchmark first")
            print("wrote " + ", ".join(rebuild(path, not args.no_plot)))
            return 0
        fit = None
        if args.fit is not None:
            fit = tuple(v.strip() for v in args.fit.split(",") if v.strip())
            for label in fit:
                if label not in [v[0] for v in VARIANTS]:
                    raise unknown("variant", label, [v[0] for v in VARIANTS])
        if args.calibration is not None and args.calibration < 2:
            raise ConfigError(f"--calibration {args.calibration} is invalid; need at least 2")
        results = run(target, args.quick, args.maxfev, fit, args.calibration)
        print("wrote " + ", ".join(write_outputs(results, args.out_dir, not args.no_plot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
