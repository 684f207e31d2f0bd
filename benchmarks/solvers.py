"""The solver benchmark: every sampler against the exact probability-flow ODE solution.

    pip install -e ".[data,plot]"
    python benchmarks/solvers.py                     # digits-gmm, the full sweep (several minutes on 2 cores)
    python benchmarks/solvers.py --quick             # 2-D mixture, under a minute
    python benchmarks/solvers.py --target digits     # the finite digits set (samples snap to training points)
    python benchmarks/solvers.py --report-only --target digits-gmm   # rebuild .md/.png from the .json, run nothing
    python benchmarks/solvers.py --fast              # the fast-solver study on digits-gmm (item 5 below)

What it measures:

1. The reference (edm_space.reference). With the exact denoiser of a target
   (edm_space.targets) the probability-flow ODE in x_hat and u = ln sigma is
   integrated by scipy's DOP853 (rtol 1e-10) from x_hat = z sigma_0, where
   sigma_0 = sigma(t_0) of the formulation and discretization being scored,
   down to the target's sigma_end, and mapped to x(0) by the target's `finish`.
   None of our samplers is involved. Its accuracy is shown by solving again at
   half the tolerance (and, in the tests, against the closed form of a Gaussian).

2. The sweep: solver x discretization x formulation x NFE. The error of a run is
   the RMS over samples of |x - x_ref| / sqrt(dim) (data units, images in [-1, 1]);
   the distribution-level error is the sliced Wasserstein-2 distance between the
   samples and the reference samples. For finite data sets the fraction of
   samples whose nearest training point differs from the reference's is recorded.
   A solver's steps for an NFE are samplers.get(solver).steps_for_nfe(NFE); the
   grids hold odd NFEs, which two-evaluation solvers (heun, dpm++2s: 2N - 1) hit
   exactly, so every comparison is at equal NFE.

3. Optimized time steps (samplers.optimize): for a solver and an NFE budget the
   levels below sigma_max = 80 are fitted on calibration latents, scored on the
   sweep's own latents (which the fit never saw) against EDM's rho = 7 levels, and
   saved as {"sigmas": [...]} JSON that `samplers.sample(discretization="FILE.json")`
   and `edm-space sample --discretization FILE.json` accept.

4. Sampler overhead: `samplers.sample` against a minimal hand-written Euler loop
   (EDM Algorithm 1 without the correction) with a denoiser that costs almost
   nothing, on the same time steps, best of several runs in the same process.

5. The fast-solver study (--fast, a run of its own): the error of Heun with EDM's
   steps at 35 NFE is the goal. Every deterministic solver (ddim aside: on the edm
   ODE it is euler) on the discretizations edm, time-uniform, time-quadratic and
   logsnr, with final_step "solver" or "denoise" and with or without the analytical
   first step, runs with N = 2, 3, ... steps until it reaches the goal or passes
   35 NFE: the fewest NFE of each configuration. final_step="denoise" is run only
   where it changes the samples. Then samplers.optimize fits each solver's steps
   at 7 NFE and fewer, while the held-out error still reaches the goal.

Writes solvers_TARGET[_fast][_quick].{json,md,png} and steps_TARGET_SOLVER_nfeN.json under --out-dir.
The two few-evaluation goals (untuned at 8 NFE, optimized steps at 6, worse of two latent sets)
are benchmarks/solver_goals.py, which reuses this file's references.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (puts the repository root on sys.path)
import torch  # noqa: E402

import presets  # noqa: E402
import samplers  # noqa: E402
from edm_space import targets  # noqa: E402
from edm_space.errors import ConfigError, unknown  # noqa: E402
from edm_space.metrics import sliced_wasserstein2  # noqa: E402
from edm_space.optional import require  # noqa: E402
from edm_space.reference import ReferenceSolution, compare_solutions, rms_error, solve_reference  # noqa: E402
from edm_space.targets import Target  # noqa: E402
from samplers.optimize import optimize_steps, save_levels  # noqa: E402

Tensor = torch.Tensor
F64 = torch.float64

# --------------------------------------------------------------------------- settings

#: Odd NFEs, so that two-evaluation solvers (heun, dpm++2s: N steps cost 2N - 1)
#: hit every grid point exactly and every comparison is at equal NFE.
NFE_GRID = (5, 7, 9, 11, 13, 15, 19, 27, 35, 51, 81, 121, 199)
NFE_GRID_COARSE = (5, 9, 13, 19, 27, 35, 51, 81, 121, 199)
QUICK_NFE = (5, 9, 15, 27, 35, 51)

#: The deterministic solvers swept by default (--solvers takes any deterministic registered solver).
SWEPT_SOLVERS = ("euler", "heun", "ddim", "dpm++2m", "dpm++3m", "dpm++2s")
SECTIONS = ("solvers", "formulations", "discretizations")
SIGMA_MAX = 80.0  # EDM's sigma_max: where the optimized steps start
COMMON_RANGE = (0.002, SIGMA_MAX)  # EDM's sigma range, used to compare spacings alone
#: Discretizations not re-run on the common range: log-sigma's own range on the edm
#: formulation already is [0.002, 80], and ve on that range (geometric in sigma^2, hence
#: in sigma) is log-sigma itself.
SAME_ON_COMMON_RANGE = ("log-sigma", "ve")
#: Own discretizations not swept: ddpm's first level depends on N (the DDPM chain's leading
#: timestep: sigma 9.5 at N = 3, 144 at N = 100), so every NFE would need its own reference solve.
LEVELS_DEPEND_ON_N = ("ddpm",)

#: The fast-solver study (--fast): DPM-Solver's discretizations next to EDM's, each on its own sigma
#: range (time-uniform = vp: [0.0105, 152]; time-quadratic: the same range; logsnr = log-sigma and edm:
#: [0.002, 80]), every solver with either final step and with or without the analytical first step.
FAST_DISCRETIZATIONS = ("edm", "time-uniform", "time-quadratic", "logsnr")
FAST_VARIANTS = (("solver", False), ("denoise", False), ("solver", True), ("denoise", True))
#: The error to reach: Heun with EDM's rho = 7 steps at 35 NFE (N = 18), on the same latents.
GOAL = ("heun", 35)
FAST_MIN_NFE = 3
#: final_step="denoise" is swept only where it changes the samples: compared at PROBE_STEPS steps,
#: a largest difference up to SAME_SAMPLES is round-off (the solver's own step into sigma = 0 already
#: returns D(x; sigma_min), as Euler's on the edm ODE and the exponential integrators' do).
PROBE_STEPS = 6
SAME_SAMPLES = 1e-10


def deterministic_solvers() -> List[str]:
    """The registered solvers without noise: the ones an exact ODE solution can score."""
    return [name for name in samplers.names() if not samplers.get(name).stochastic]


def fast_study_solvers() -> Tuple[str, ...]:
    """The fast-solver study's solvers: every deterministic one but ddim, which on the edm ODE is euler in sigma
    (the same samples; tests/test_bench_solvers.py checks it)."""
    return tuple(name for name in deterministic_solvers() if name != "ddim")


@dataclass
class Settings:
    """Everything that defines a benchmark run; recorded in the results."""

    target: str = "digits-gmm"
    quick: bool = False
    num_latents: int = 256
    num_calibration: int = 128
    seed: int = 0
    rtol: float = 1e-10
    solvers_nfe: Tuple[int, ...] = NFE_GRID
    nfe: Tuple[int, ...] = NFE_GRID_COARSE
    solvers: Tuple[str, ...] = SWEPT_SOLVERS
    formulations: Tuple[str, ...] = ("vp", "ve", "iddpm", "flow", "ddpm")
    own_discretizations: bool = True
    discretizations: Tuple[str, ...] = ("vp", "ve", "iddpm", "log-sigma")
    discretization_solvers: Tuple[str, ...] = ("euler", "heun", "dpm++2m")
    #: (solver, NFE budget) pairs whose time steps are optimized.
    optimize: Tuple[Tuple[str, int], ...] = (("dpm++3m", 10), ("dpm++2m", 10), ("heun", 10), ("euler", 10), ("dpm++3m", 15))
    optimize_maxfev: int = 1200
    sections: Tuple[str, ...] = SECTIONS
    overhead_shapes: Tuple[Tuple[int, ...], ...] = ((1024, 2), (256, 64), (64, 3, 32, 32))
    overhead_steps: int = 50
    overhead_repeats: int = 25
    projections: int = 256
    threads: int = 1
    #: The fast-solver study (--fast), a run of its own written to solvers_TARGET_fast.*: solvers x
    #: discretizations x FAST_VARIANTS scanned up to the error of GOAL, then optimized steps within a small budget.
    fast: bool = False
    fast_solvers: Tuple[str, ...] = field(default_factory=fast_study_solvers)
    fast_discretizations: Tuple[str, ...] = FAST_DISCRETIZATIONS
    fast_max_nfe: int = 35
    fast_optimize_max_nfe: int = 7
    fast_optimize_maxfev: int = 500

    @classmethod
    def make(cls, target: Optional[str] = None, quick: bool = False, fast: bool = False, **overrides) -> "Settings":
        """The full settings, or with `quick` the small sweep on the 2-D mixture; `fast` selects the fast-solver
        study (with `quick`: a few solvers and discretizations on the 2-D mixture); overrides that are None are ignored."""
        if fast and quick:
            base = cls(target=target or "gmm2d", quick=True, fast=True, num_calibration=64,
                       fast_solvers=("heun", "dpm++2m", "ipndm", "unipc-3"), fast_discretizations=("edm", "logsnr"),
                       fast_optimize_max_nfe=5, fast_optimize_maxfev=60)
        elif fast:
            base = cls(target=target or "digits-gmm", fast=True)
        elif quick:
            base = cls(
                target=target or "gmm2d", quick=True, num_latents=256, num_calibration=64,
                solvers_nfe=QUICK_NFE, nfe=QUICK_NFE, formulations=("vp", "ve", "flow"),
                own_discretizations=False, discretizations=("vp", "ve", "iddpm"), discretization_solvers=("heun",),
                optimize=(("dpm++2m", 10),), optimize_maxfev=300, overhead_shapes=((256, 64),),
                overhead_repeats=5,
            )
        else:
            base = cls(target=target or "digits-gmm")
        for key, value in overrides.items():
            if value is not None:
                setattr(base, key, value)
        return base


# --------------------------------------------------------------------------- reference


class References:
    """Reference solutions of a target, solved once per (latent set, sigma_0)."""

    def __init__(self, target: Target, rtol: float, log: Callable[[str], None] = lambda s: None):
        self.target, self.rtol, self.log = target, rtol, log
        self.cache: Dict[Tuple[str, float], ReferenceSolution] = {}
        self.modes: Dict[Tuple[str, float], Tensor] = {}
        self.seconds = 0.0

    @staticmethod
    def key(sigma_0: float) -> float:
        return float(f"{sigma_0:.12g}")  # 80 and 79.99999999999996 (via sigma_inv) share one solve

    def solve(self, latents: Tensor, sigma_0: float, rtol: float) -> ReferenceSolution:
        """The target's exact end points of `latents` started at sigma_0 (not cached)."""
        t = self.target
        return solve_reference(t.denoiser, latents, sigma_0, t.sigma_end, rtol, finish=t.finish)

    def get(self, name: str, latents: Tensor, sigma_0: float) -> ReferenceSolution:
        key = (name, self.key(sigma_0))
        if key not in self.cache:
            ref = self.solve(latents, key[1], self.rtol)
            self.seconds += ref.seconds
            self.log(f"  reference {name} sigma_0 = {key[1]:g}: {ref.nfev} evaluations, {ref.seconds:.1f} s")
            self.cache[key] = ref
        return self.cache[key]

    def modes_of(self, name: str, ref: ReferenceSolution) -> Tensor:
        """The mode (training point or mixture component) of each reference end point."""
        key = (name, ref.sigma_0)
        if key not in self.modes:
            self.modes[key] = self.target.assign(ref.x)
        return self.modes[key]


def reference_accuracy(refs: References, latents: Tensor, sigma_0: float, first: ReferenceSolution) -> dict:
    """Solve again at half the tolerance and report how far apart the end points are (data units)."""
    rtol = first.rtol
    half = refs.solve(latents, sigma_0, rtol / 2)
    report = {"sigma_0": sigma_0, "sigma_end": first.sigma_end, "rtol": rtol, "rtol_half": rtol / 2,
              **compare_solutions(first, half),
              "nfev": first.nfev, "nfev_half": half.nfev, "seconds": first.seconds, "seconds_half": half.seconds}
    if refs.target.kind == "finite":
        report["different_point_fraction"] = float((refs.target.nearest(first.x) != refs.target.nearest(half.x)).double().mean())
    return report


# --------------------------------------------------------------------------- one run


@dataclass
class Bench:
    """A target with its latent sets and reference cache; `run` scores one sampler setting."""

    target: Target
    settings: Settings
    latents: Tensor
    calibration: Tensor
    refs: References
    records: List[dict] = field(default_factory=list)
    _data_mean: Optional[Tensor] = field(default=None, repr=False)

    @classmethod
    def make(cls, target: Target, settings: Settings, log: Callable[[str], None] = lambda s: None) -> "Bench":
        g = torch.Generator().manual_seed(settings.seed)
        latents = torch.randn(settings.num_latents, *target.item_shape, generator=g, dtype=F64)
        g = torch.Generator().manual_seed(calibration_seed(settings))
        calibration = torch.randn(settings.num_calibration, *target.item_shape, generator=g, dtype=F64)
        return cls(target, settings, latents, calibration, References(target, settings.rtol, log))

    @property
    def switch_key(self) -> str:
        """The record key of the fraction of samples that end in another mode than the reference."""
        return "different_point_fraction" if self.target.kind == "finite" else "different_component_fraction"

    def data_mean(self) -> Tensor:
        """The target's mean, D(x; sigma -> inf): what the analytical first step puts in place of D(x; sigma_max).

        Evaluated at sigma = 1e8, where D(0; sigma) differs from the mean by O(1 / sigma^2).
        """
        if self._data_mean is None:
            far = torch.full((1,), 1e8, dtype=F64)
            self._data_mean = self.target.denoiser(torch.zeros(1, *self.target.item_shape, dtype=F64), far)[0].to(F64)
        return self._data_mean

    def sample_options(self, final_step: str, analytic_first_step: bool) -> dict:
        """The keyword arguments of samplers.sample for a final step and (without) the analytical first step."""
        options: dict = {"final_step": final_step}
        if analytic_first_step:
            options.update(analytic_first_step=True, data_mean=self.data_mean())
        return options

    def run(self, section: str, solver: str, formulation: str, discretization, nfe: int,
            range_name: str = "own", latent_set: str = "main", num_steps: Optional[int] = None,
            label: Optional[str] = None, final_step: str = "solver", analytic_first_step: bool = False) -> dict:
        """Sample once and score the end points against the reference; the record is also kept.

        final_step and analytic_first_step are samplers.sample's; the NFE is the one the sampler counted.
        """
        f = presets.get(formulation)
        n = samplers.get(solver).steps_for_nfe(nfe) if num_steps is None else num_steps
        lo, hi = COMMON_RANGE if range_name == "common" else (None, None)
        latents = self.latents if latent_set == "main" else self.calibration
        sigmas = f.sigma(samplers.time_steps(f, n, discretization, lo, hi))
        sigma_0 = float(sigmas[0])
        ref = self.refs.get(latent_set, latents, sigma_0)
        record = {
            "section": section, "solver": solver, "formulation": formulation,
            "discretization": label or (discretization if isinstance(discretization, str) else "explicit"),
            "range": range_name, "num_steps": n, "nfe": None, "sigma_0": sigma_0, "sigma_last": float(sigmas[-2]),
            "rms": None, "sw2": None, "max_abs": None, "finite": False, "seconds": None, "error": None,
            "final_step": final_step, "analytic_first_step": analytic_first_step,
        }
        start = time.perf_counter()
        info: dict = {}
        try:
            x = samplers.sample(self.target.denoiser, latents, formulation=formulation, solver=solver, num_steps=n,
                                discretization=discretization, sigma_min=lo, sigma_max=hi, info=info,
                                **self.sample_options(final_step, analytic_first_step))
        except (ValueError, RuntimeError) as failure:  # e.g. responsibilities underflowing after a blow-up
            record["error"] = " ".join(str(failure).split())[:200]
            self.records.append(record)
            return record
        record["seconds"] = time.perf_counter() - start
        record["nfe"] = int(info["nfe"])
        finite = bool(torch.isfinite(x).all())
        record["finite"] = finite
        if finite:
            record["rms"] = rms_error(x, ref.x)
            record["sw2"] = sliced_wasserstein2(x, ref.x, self.settings.projections)
            per_sample = (x - ref.x).reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt()
            record["median"] = float(per_sample.median())
            record["max_abs"] = float((x - ref.x).abs().max())
            record[self.switch_key] = float((self.target.assign(x) != self.refs.modes_of(latent_set, ref)).double().mean())
        self.records.append(record)
        return record


def calibration_seed(settings: Settings) -> int:
    """The seed of the calibration latents: far from the main latents' seed."""
    return settings.seed + 1_000_003


# --------------------------------------------------------------------------- optimized steps


def optimize_and_score(bench: Bench, solver: str, budget: int, maxfev: int, log: Callable[[str], None] = print) -> dict:
    """Fit the steps of `solver` within `budget` NFE on the calibration latents (samplers.optimize), then score them
    on the main latents, which the fit never saw, against EDM's rho = 7 levels for the same solver and N."""
    ref_cal = bench.refs.get("calibration", bench.calibration, SIGMA_MAX)
    fit = optimize_steps(bench.target.denoiser, "edm", solver, budget, bench.calibration, ref_cal.x,
                         sigma_max=SIGMA_MAX, max_evaluations=maxfev)
    held_opt = bench.run("optimized", solver, "edm", fit.sigmas, 0, num_steps=fit.num_steps, label="optimized")
    held_edm = bench.run("optimized", solver, "edm", "edm", 0, num_steps=fit.num_steps, label="edm")
    reduction = 1 - held_opt["rms"] / held_edm["rms"] if held_opt["rms"] and held_edm["rms"] else None
    log(f"  optimized {solver} N = {fit.num_steps} (NFE {held_opt['nfe']}): calibration {fit.error_before:.3g} -> "
        f"{fit.error_after:.3g}; held-out {held_edm['rms']:.3g} -> {held_opt['rms']:.3g} "
        f"({_change(reduction)}), {fit.objective_evaluations} evaluations, {fit.seconds:.0f} s")
    return {
        "name": f"optimized-{bench.target.name}-{solver}-nfe{held_opt['nfe']}", "solver": solver, "formulation": fit.formulation,
        "nfe_budget": budget, "num_steps": fit.num_steps, "nfe": held_opt["nfe"],
        "sigmas": fit.sigmas.tolist(), "edm_sigmas": fit.initial_sigmas.tolist(),
        "calibration": {"latents": int(bench.calibration.shape[0]), "seed": calibration_seed(bench.settings),
                        "rms_edm": fit.error_before, "rms_optimized": fit.error_after,
                        "objective_evaluations": fit.objective_evaluations, "optimizer": "Nelder-Mead (adaptive)",
                        "converged": fit.converged, "seconds": fit.seconds},
        "held_out": {"latents": int(bench.latents.shape[0]), "seed": bench.settings.seed,
                     "rms_edm": held_edm["rms"], "rms_optimized": held_opt["rms"],
                     "sw2_edm": held_edm["sw2"], "sw2_optimized": held_opt["sw2"], "reduction": reduction},
    }


def write_levels(path: str, optimized: dict, target: str) -> str:
    """The optimized levels with what they were fitted and scored on, as samplers.load_levels reads them."""
    return save_levels(
        path, optimized["sigmas"], name=optimized["name"], solver=optimized["solver"], nfe=optimized["nfe"],
        num_steps=optimized["num_steps"], target=target, formulation=optimized["formulation"],
        held_out=optimized["held_out"], calibration=optimized["calibration"],
        note="EDM-formulation noise levels sigma_0 > ... > sigma_{N-1} (sigma_N = 0 is implied); "
             "use as samplers.sample(..., discretization=PATH) or edm-space sample --discretization PATH",
    )


# --------------------------------------------------------------------------- sampler overhead


def sampler_overhead(shapes: Sequence[Tuple[int, ...]] = ((256, 64),), num_steps: int = 50, repeats: int = 15) -> List[dict]:
    """Wall time of samplers.sample (euler, edm) against a hand-written Euler loop, denoiser D(x) = 0.9 x.

    The loop is EDM Algorithm 1 without its correction: d = (x - D(x; t_i)) / t_i,
    x <- x + (t_{i+1} - t_i) d, on the very time steps the sampler uses (sigma(t) = t,
    s = 1). Timings alternate between the two and keep the best of `repeats`.
    """
    f = presets.get("edm")

    def denoiser(x: Tensor, sigma: Tensor) -> Tensor:
        return 0.9 * x

    rows = []
    for shape in shapes:
        latents = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=F64)
        t_steps = samplers.time_steps(f, num_steps, "edm")

        def hand() -> Tensor:
            x = latents * t_steps[0]
            for i in range(num_steps):
                t_cur, t_next = t_steps[i], t_steps[i + 1]
                d = (x - denoiser(x, t_cur.expand(x.shape[0]))) / t_cur
                x = x + (t_next - t_cur) * d
            return x

        def library() -> Tensor:
            return samplers.sample(denoiser, latents, formulation=f, solver="euler", num_steps=num_steps, discretization="edm")

        difference = float((hand() - library()).abs().max())
        best_hand = best_library = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            hand()
            t1 = time.perf_counter()
            library()
            t2 = time.perf_counter()
            best_hand, best_library = min(best_hand, t1 - t0), min(best_library, t2 - t1)
        rows.append({
            "shape": list(shape), "num_steps": num_steps, "hand_seconds": best_hand, "sample_seconds": best_library,
            "ratio": best_library / best_hand, "per_step_overhead_us": 1e6 * (best_library - best_hand) / num_steps,
            "max_abs_difference": difference,
        })
    return rows


# --------------------------------------------------------------------------- the sweep


def run_sweep(bench: Bench, log: Callable[[str], None] = print) -> None:
    """The solver, formulation and discretization sections of the sweep (records kept in bench.records)."""
    s = bench.settings
    if "solvers" in s.sections:
        log("solvers (edm formulation, edm discretization)")
        for solver in s.solvers:
            for nfe in s.solvers_nfe:
                bench.run("solvers", solver, "edm", "edm", nfe)
            _log_line(log, bench, "solvers", solver)
    if "formulations" in s.sections:
        log("formulations (euler, heun)")
        for formulation in s.formulations:
            own = presets.get(formulation).default_discretization
            swept = ["edm"] + ([own] if s.own_discretizations and own not in LEVELS_DEPEND_ON_N else [])
            for discretization in dict.fromkeys(swept):
                for solver in ("euler", "heun"):
                    for nfe in s.nfe:
                        bench.run("formulations", solver, formulation, discretization, nfe)
                    _log_line(log, bench, "formulations", solver, formulation, discretization)
    if "discretizations" in s.sections:
        log("discretizations (edm formulation)")
        for discretization in s.discretizations:
            for solver in s.discretization_solvers:
                for nfe in s.nfe:
                    bench.run("discretizations", solver, "edm", discretization, nfe)
                _log_line(log, bench, "discretizations", solver, "edm", discretization)
            if discretization in SAME_ON_COMMON_RANGE:
                continue
            for nfe in s.nfe:  # the spacing alone: the discretization on EDM's range [0.002, 80]
                bench.run("discretizations", "heun", "edm", discretization, nfe, range_name="common")
            _log_line(log, bench, "discretizations", "heun", "edm", discretization, "common")


def _log_line(log, bench: Bench, section: str, solver: str, formulation: str = "edm", discretization: str = "edm", range_name: str = "own") -> None:
    rows = [r for r in bench.records if r["section"] == section and r["solver"] == solver and r["formulation"] == formulation
            and r["discretization"] == discretization and r["range"] == range_name]
    text = "  ".join(f"{r['nfe']}:{r['rms']:.2e}" if r["rms"] is not None else f"{r['nfe']}:fail" for r in rows)
    log(f"  {solver:8s} {formulation:6s} {discretization:9s} {range_name:6s} {text}")


def _find(records, **match) -> List[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


# --------------------------------------------------------------------------- the fast-solver study


def variant_name(final_step: str, analytic_first_step: bool) -> str:
    """How the tables name a (final step, analytical first step) pair."""
    return f"final {final_step}" + (" + AFS" if analytic_first_step else "")


def final_step_difference(bench: Bench, solver: str, discretization: str, analytic_first_step: bool,
                          num_steps: int = PROBE_STEPS) -> float:
    """The largest difference between the samples of final_step="denoise" and "solver" (same steps and latents)."""
    runs = [samplers.sample(bench.target.denoiser, bench.latents, formulation="edm", solver=solver, num_steps=num_steps,
                            discretization=discretization, **bench.sample_options(final_step, analytic_first_step))
            for final_step in samplers.FINAL_STEPS]
    return float((runs[1] - runs[0]).abs().max())


def scan_to_goal(bench: Bench, solver: str, discretization: str, final_step: str, analytic_first_step: bool,
                 goal: float, max_nfe: int, through: bool = False) -> Optional[int]:
    """Sample with N = 2, 3, ... steps (NFE from FAST_MIN_NFE to max_nfe) until the RMS error is at most `goal`.

    Returns the first NFE that reaches it, or None. With `through` every N up to max_nfe is run.
    The analytical first step saves one evaluation: N steps cost samplers.get(solver).nfe(N) - 1.
    """
    entry = samplers.get(solver)
    reached = None
    n = 2
    while entry.nfe(n) - int(analytic_first_step) <= max_nfe:
        if entry.nfe(n) - int(analytic_first_step) >= FAST_MIN_NFE:
            r = bench.run("fast", solver, "edm", discretization, 0, num_steps=n, final_step=final_step,
                          analytic_first_step=analytic_first_step)
            if reached is None and r["rms"] is not None and r["rms"] <= goal:
                reached = r["nfe"]
                if not through:
                    break
        n += 1
    return reached


def optimize_budgets(solver: str, most: int) -> List[int]:
    """The distinct NFEs from `most` down to FAST_MIN_NFE that leave `solver` at least the 2 steps optimizing needs."""
    entry = samplers.get(solver)
    return sorted({entry.nfe(entry.steps_for_nfe(b)) for b in range(FAST_MIN_NFE, most + 1) if entry.steps_for_nfe(b) >= 2},
                  reverse=True)


def run_fast_study(bench: Bench, log: Callable[[str], None] = print, optimize: bool = True) -> Tuple[dict, List[dict], List[dict]]:
    """The goal, then every solver x discretization x variant scanned to it, then optimized steps within a small budget.

    Returns (goal, the final_step="denoise" variants found identical and not swept, the optimized steps);
    the sampling records are kept in bench.records. The scan of every solver with EDM's steps and the plain
    variant runs through fast_max_nfe (the curves of the plot); the others stop at the first NFE reaching the goal.
    For the optimized steps the budgets fall from fast_optimize_max_nfe while the held-out error reaches the goal.
    """
    s = bench.settings
    goal_solver, goal_nfe = GOAL
    goal_record = bench.run("goal", goal_solver, "edm", "edm", goal_nfe)
    goal = {"solver": goal_solver, "discretization": "edm", "nfe": goal_record["nfe"], "rms": goal_record["rms"]}
    log(f"goal: {goal_solver} with edm steps at {goal['nfe']} NFE, RMS error {goal['rms']:.4e}")
    identical = []
    for solver in s.fast_solvers:
        for discretization in s.fast_discretizations:
            for final_step, first_step in FAST_VARIANTS:
                if final_step == "denoise":
                    difference = final_step_difference(bench, solver, discretization, first_step)
                    if difference <= SAME_SAMPLES:
                        identical.append({"solver": solver, "discretization": discretization, "analytic_first_step": first_step,
                                          "num_steps": PROBE_STEPS, "max_abs_difference": difference})
                        continue
                through = discretization == "edm" and final_step == "solver" and not first_step
                reached = scan_to_goal(bench, solver, discretization, final_step, first_step, goal["rms"], s.fast_max_nfe, through)
                log(f"  {solver:8s} {discretization:14s} {variant_name(final_step, first_step):20s} "
                    + (f"reaches it at NFE {reached}" if reached else f"not within {s.fast_max_nfe} NFE"))
    optimized = []
    if optimize:
        log(f"optimized steps within {s.fast_optimize_max_nfe} NFE")
    for solver in s.fast_solvers if optimize else ():
        for budget in optimize_budgets(solver, s.fast_optimize_max_nfe):
            o = optimize_and_score(bench, solver, budget, s.fast_optimize_maxfev, log=log)
            o["reaches_goal"] = o["held_out"]["rms_optimized"] is not None and o["held_out"]["rms_optimized"] <= goal["rms"]
            optimized.append(o)
            if not o["reaches_goal"]:
                break
    return goal, identical, optimized


CONFIG_KEYS = ("solver", "discretization", "final_step", "analytic_first_step")


def _config_key(r: dict) -> Tuple[str, str, str, bool]:
    return r["solver"], r["discretization"], r.get("final_step", "solver"), bool(r.get("analytic_first_step", False))


def _pick(d: dict, keys: Sequence[str]) -> dict:
    return {k: d[k] for k in keys}


def fast_conclusions(records: List[dict], goal: dict, optimized: List[dict], max_untuned_nfe: int = 10,
                     max_optimized_nfe: int = 7) -> dict:
    """Per configuration the first NFE reaching the goal; per solver the fewest; the untuned and optimized claims."""
    groups: Dict[Tuple, List[dict]] = {}
    for r in records:
        if r["section"] == "fast":
            groups.setdefault(_config_key(r), []).append(r)
    configs = []
    for (solver, discretization, final_step, first_step), rows in groups.items():
        rows = sorted((r for r in rows if r["nfe"]), key=lambda r: r["nfe"])
        hits = [r for r in rows if r["rms"] is not None and r["rms"] <= goal["rms"]]
        small = [r for r in rows if r["rms"] is not None and r["nfe"] <= max_untuned_nfe]
        best_small = min(small, key=lambda r: r["rms"]) if small else None
        configs.append({
            "solver": solver, "discretization": discretization, "final_step": final_step, "analytic_first_step": first_step,
            "reaches_at_nfe": hits[0]["nfe"] if hits else None, "rms_there": hits[0]["rms"] if hits else None,
            "largest_nfe_run": rows[-1]["nfe"] if rows else None, "rms_at_largest": rows[-1]["rms"] if rows else None,
            "best_within": {"nfe": best_small["nfe"], "rms": best_small["rms"]} if best_small else None,
        })
    by_solver: Dict[str, dict] = {}
    for c in configs:
        if c["reaches_at_nfe"] is None:
            continue
        best = by_solver.get(c["solver"])
        if best is None or (c["reaches_at_nfe"], c["rms_there"]) < (best["reaches_at_nfe"], best["rms_there"]):
            by_solver[c["solver"]] = c
    within = [c for c in configs if c["best_within"]]
    best_untuned = min(within, key=lambda c: c["best_within"]["rms"]) if within else None
    fewest = min(by_solver.values(), key=lambda c: (c["reaches_at_nfe"], c["rms_there"])) if by_solver else None
    opt_by_solver: Dict[str, dict] = {}
    for o in optimized:
        entry = opt_by_solver.setdefault(o["solver"], {"solver": o["solver"], "fewest_nfe_reaching": None, "rms_there": None,
                                                       "fits": []})
        entry["fits"].append({"nfe": o["nfe"], "held_out_edm": o["held_out"]["rms_edm"], "held_out_optimized": o["held_out"]["rms_optimized"]})
        rms = o["held_out"]["rms_optimized"]
        if rms is not None and rms <= goal["rms"] and (entry["fewest_nfe_reaching"] is None or o["nfe"] < entry["fewest_nfe_reaching"]):
            entry["fewest_nfe_reaching"], entry["rms_there"] = o["nfe"], rms
    reaching = [e for e in opt_by_solver.values() if e["fewest_nfe_reaching"] is not None]
    return {
        "goal": goal,
        "configs": configs,
        "fewest_nfe_by_solver": by_solver,
        "untuned": {
            "max_nfe": max_untuned_nfe,
            "best": None if best_untuned is None else {**_pick(best_untuned, CONFIG_KEYS), **best_untuned["best_within"]},
            "fewest": None if fewest is None else _pick(fewest, CONFIG_KEYS + ("reaches_at_nfe", "rms_there")),
            "holds": bool(best_untuned and best_untuned["best_within"]["rms"] <= goal["rms"]),
        },
        "optimized": {
            "max_nfe": max_optimized_nfe, "by_solver": list(opt_by_solver.values()),
            "fewest": min(reaching, key=lambda e: (e["fewest_nfe_reaching"], e["rms_there"])) if reaching else None,
            "holds": any(e["fewest_nfe_reaching"] <= max_optimized_nfe for e in reaching),
        },
    }


# --------------------------------------------------------------------------- claims


def conclusions(records: List[dict], optimized: List[dict], overhead: List[dict]) -> dict:
    """Check the benchmark's claims against the records; every check says what it compared."""
    out: dict = {}

    # 1. Heun beats Euler at equal NFE on every formulation (and discretization) swept.
    pairs = []
    for section in SECTIONS:
        for r in _find(records, section=section, solver="heun"):
            e = _find(records, section=section, solver="euler", formulation=r["formulation"],
                      discretization=r["discretization"], range=r["range"], nfe=r["nfe"])
            if e and r["rms"] is not None:
                pairs.append((r, e[0]))
    losses = [
        {"formulation": h["formulation"], "discretization": h["discretization"], "range": h["range"], "nfe": h["nfe"],
         "heun": h["rms"], "euler": e["rms"]}
        for h, e in pairs if e["rms"] is not None and h["rms"] > e["rms"]
    ]
    by_formulation: Dict[str, dict] = {}
    curves: Dict[tuple, List[tuple]] = {}
    for h, e in pairs:
        better = e["rms"] is None or h["rms"] <= e["rms"]
        entry = by_formulation.setdefault(h["formulation"], {"compared": 0, "heun_better": 0})
        entry["compared"] += 1
        entry["heun_better"] += int(better)
        curves.setdefault((h["formulation"], h["discretization"], h["range"]), []).append((h["nfe"], better))
    crossover = []
    for (formulation, discretization, range_name), points in curves.items():
        points.sort()
        # the smallest NFE from which Heun is at least as accurate as Euler at every larger NFE swept
        start = None
        for nfe, better in reversed(points):
            if not better:
                break
            start = nfe
        crossover.append({"formulation": formulation, "discretization": discretization, "range": range_name, "heun_better_from_nfe": start})
    worst = [c["heun_better_from_nfe"] for c in crossover]
    by_discretization: Dict[str, Optional[int]] = {}
    for c in crossover:  # per discretization: from which NFE Heun wins on every formulation swept with it
        name = c["discretization"] + ("" if c["range"] == "own" else f" ({c['range']} range)")
        previous = by_discretization.get(name, 0)
        by_discretization[name] = None if previous is None or c["heun_better_from_nfe"] is None else max(previous, c["heun_better_from_nfe"])
    out["heun_beats_euler"] = {
        "holds": not losses, "comparisons": len(pairs), "by_formulation": by_formulation, "exceptions": losses,
        "crossover": crossover, "heun_better_from_nfe_by_discretization": by_discretization,
        "heun_better_from_nfe_everywhere": None if not worst or None in worst else max(worst),
    }

    # 2. edm discretization best for Heun at NFE 35 (edm formulation; own ranges and EDM's common range).
    best35: dict = {}
    for range_name in ("own", "common"):
        rows = {}
        for r in records:
            if not (r["section"] in ("solvers", "discretizations") and r["solver"] == "heun" and r["formulation"] == "edm" and r["nfe"] == 35):
                continue
            if r["range"] == range_name or r["discretization"] == "edm":
                rows[r["discretization"]] = r["rms"]
            elif range_name == "common" and r["discretization"] == "log-sigma":
                rows["ve = log-sigma"] = r["rms"]  # see SAME_ON_COMMON_RANGE
        if "edm" in rows and len(rows) > 1:
            others = {k: v for k, v in rows.items() if k != "edm"}
            best35[range_name] = {"rms": rows, "holds": all(v is None or rows["edm"] < v for v in others.values())}
    out["edm_discretization_best_heun_35"] = best35

    # 3. Best solver within 15 NFE vs Heun + edm steps at 35 NFE.
    heun35 = _find(records, section="solvers", solver="heun", nfe=35)
    if heun35 and heun35[0]["rms"] is not None:
        goal = heun35[0]["rms"]
        candidates = [r for r in records if r["section"] == "solvers" and r["nfe"] is not None and r["nfe"] <= 15 and r["rms"] is not None]
        candidates += [r for r in records if r["section"] == "optimized" and r["discretization"] == "optimized"
                       and r["nfe"] is not None and r["nfe"] <= 15 and r["rms"] is not None]
        if candidates:
            best = min(candidates, key=lambda r: r["rms"])
            fewest = sorted((r for r in candidates if r["rms"] <= goal), key=lambda r: (r["nfe"], r["rms"]))
            out["best_within_15_vs_heun_35"] = {
                "heun_edm_35": goal, "best": {k: best[k] for k in ("solver", "discretization", "nfe", "rms")},
                "holds": best["rms"] <= goal,
                "fewest_nfe_reaching_it": {k: fewest[0][k] for k in ("solver", "discretization", "nfe", "rms")} if fewest else None,
            }

    # 4. Optimized steps cut the held-out error by >= 30%.
    out["optimized_steps"] = [
        {"solver": o["solver"], "nfe": o["nfe"], "held_out_edm": o["held_out"]["rms_edm"],
         "held_out_optimized": o["held_out"]["rms_optimized"], "reduction": o["held_out"]["reduction"],
         "holds": o["held_out"]["reduction"] is not None and o["held_out"]["reduction"] >= 0.3}
        for o in optimized
    ]
    # 5. Sampler overhead within 1.2x.
    out["sampler_overhead"] = [{"shape": o["shape"], "ratio": o["ratio"], "holds": o["ratio"] <= 1.2} for o in overhead]
    return out


# --------------------------------------------------------------------------- the whole benchmark


def sweep_results(bench: Bench, timings: dict, optimize: bool = True, overhead: bool = True,
                  log: Callable[[str], None] = print) -> dict:
    """The sweep's sections, the optimized steps of settings.optimize and the sampler overhead, with their conclusions."""
    settings = bench.settings
    t0 = time.perf_counter()
    run_sweep(bench, log)
    timings["sweep"] = time.perf_counter() - t0

    optimized = []
    if optimize:
        t0 = time.perf_counter()
        log("optimized steps")
        for solver, budget in settings.optimize:
            optimized.append(optimize_and_score(bench, solver, budget, settings.optimize_maxfev, log=log))
        timings["optimize"] = time.perf_counter() - t0

    overhead_rows = []
    if overhead:
        t0 = time.perf_counter()
        overhead_rows = sampler_overhead(settings.overhead_shapes, settings.overhead_steps, settings.overhead_repeats)
        for row in overhead_rows:
            log(f"  overhead {row['shape']}: samplers.sample / hand loop = {row['ratio']:.2f}")
        timings["overhead"] = time.perf_counter() - t0
    return {"records": bench.records, "optimized": optimized, "overhead": overhead_rows,
            "conclusions": conclusions(bench.records, optimized, overhead_rows)}


def fast_study_results(bench: Bench, timings: dict, optimize: bool = True, log: Callable[[str], None] = print) -> dict:
    """The fast-solver study (run_fast_study) with its conclusions."""
    t0 = time.perf_counter()
    goal, identical, optimized = run_fast_study(bench, log, optimize)
    timings["fast"] = time.perf_counter() - t0
    return {"study": "fast", "goal": goal, "records": bench.records, "identical_final_step": identical,
            "optimized": optimized, "overhead": [],
            "conclusions": fast_conclusions(bench.records, goal, optimized, max_optimized_nfe=bench.settings.fast_optimize_max_nfe)}


def run_benchmark(settings: Settings, out_dir: Optional[str] = common.RESULTS, plot: bool = True,
                  optimize: bool = True, overhead: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run the whole benchmark; with out_dir, write solvers_<target>[_quick].{json,md,png} and the optimized steps there."""
    wall = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        machine = common.machine_info()
        target = targets.get(settings.target)
        bench = Bench.make(target, settings, log)
        log(f"target {target.name}: {target.description}; {settings.num_latents} latents, rtol {settings.rtol:g}")

        t0 = time.perf_counter()
        main_ref = bench.refs.get("main", bench.latents, SIGMA_MAX)
        accuracy = reference_accuracy(bench.refs, bench.latents, SIGMA_MAX, main_ref)
        log(f"  reference accuracy (rtol {settings.rtol:g} vs {settings.rtol / 2:g}): RMS {accuracy['rms_difference']:.2e}, "
            f"max {accuracy['max_abs_difference']:.2e}")
        timings = {"reference_check": time.perf_counter() - t0}

        header = {
            "benchmark": "solvers", "target": target.name, "description": target.description, "kind": target.kind,
            "dim": target.dim, "target_details": target.extra, "settings": common.jsonable(vars(settings)),
            "machine": machine, "reference": accuracy,
        }
        if settings.fast:
            results = {**header, **fast_study_results(bench, timings, optimize, log)}
        else:
            results = {**header, **sweep_results(bench, timings, optimize, overhead, log)}
        timings["references"] = bench.refs.seconds
        timings["total"] = time.perf_counter() - wall
        results["timings"] = timings
        if out_dir is not None:
            results["files"] = write_outputs(results, out_dir, plot=plot, log=log)
        log(f"done in {timings['total']:.0f} s")
        return results
    finally:
        torch.set_num_threads(previous_threads)


# --------------------------------------------------------------------------- output


def stem_of(target: str, quick: bool, fast: bool = False) -> str:
    """The file stem of a target's results: solvers_TARGET[_fast][_quick] (_fast: the fast-solver study)."""
    return f"solvers_{target}" + ("_fast" if fast else "") + ("_quick" if quick else "")


def levels_to_save(results: dict) -> List[dict]:
    """The optimized steps written as steps_*.json: all of the sweep's; of the fast-solver study, per solver the
    fewest-NFE steps whose held-out error reaches the goal."""
    if results.get("study") != "fast":
        return results["optimized"]
    fewest: Dict[str, dict] = {}
    for o in results["optimized"]:
        if o.get("reaches_goal") and (o["solver"] not in fewest or o["nfe"] < fewest[o["solver"]]["nfe"]):
            fewest[o["solver"]] = o
    return list(fewest.values())


def shown_path(path: str) -> str:
    """A path as the results record it: relative to the repository root when inside it."""
    absolute = os.path.abspath(path)
    return os.path.relpath(absolute, common.ROOT) if absolute.startswith(common.ROOT + os.sep) else absolute


def write_outputs(results: dict, out_dir: str, plot: bool = True, log: Callable[[str], None] = print) -> List[str]:
    """JSON, Markdown, the optimized-steps JSON files and (with matplotlib) the PNG plot; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, stem_of(results["target"], results["settings"]["quick"], results.get("study") == "fast"))
    written = []
    for o in levels_to_save(results):
        path = os.path.join(out_dir, f"steps_{results['target']}_{o['solver']}_nfe{o['nfe']}.json")
        write_levels(path, o, results["target"])
        o["file"] = shown_path(path)
        written.append(o["file"])
    png = stem + ".png"
    if plot:
        try:
            report_plot(results, png)
            written.append(shown_path(png))
        except ConfigError as missing:
            log(f"  no plot: {missing}")
    common.write_markdown(stem + ".md", report_markdown(results, os.path.basename(png) if shown_path(png) in written else None))
    common.write_json(stem + ".json", results, indent=1)
    written = [shown_path(stem + ".json"), shown_path(stem + ".md")] + written
    log("wrote " + ", ".join(written))
    return written


def rebuild_report(json_path: str, out_dir: Optional[str] = None, plot: bool = True, log: Callable[[str], None] = print) -> dict:
    """Re-derive the conclusions of a results JSON from its records and rewrite its JSON, Markdown and plot.

    Nothing is sampled; the machine, timings and records of the original run are kept.
    """
    try:
        with open(json_path) as file:
            results = json.load(file)
        if results.get("study") == "fast":
            results["conclusions"] = fast_conclusions(results["records"], results["goal"], results["optimized"],
                                                      max_optimized_nfe=results["settings"]["fast_optimize_max_nfe"])
        else:
            results["conclusions"] = conclusions(results["records"], results["optimized"], results["overhead"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{json_path!r} is not a solver-benchmark results file ({type(error).__name__}: {error})") from None
    out_dir = out_dir or os.path.dirname(os.path.abspath(json_path))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, os.path.splitext(os.path.basename(json_path))[0])
    png = stem + ".png"
    if plot:
        report_plot(results, png)
    common.write_markdown(stem + ".md", report_markdown(results, os.path.basename(png) if os.path.exists(png) else None))
    common.write_json(stem + ".json", results, indent=1)
    log(f"wrote {stem}.json, {stem}.md" + (f", {png}" if plot else ""))
    return results


def _fmt(value, spec: str = ".2e") -> str:
    return "fail" if value is None else format(value, spec)


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _change(reduction: Optional[float]) -> str:
    if reduction is None:
        return "n/a"
    return f"{100 * reduction:.0f}% lower" if reduction >= 0 else f"{-100 * reduction:.0f}% higher"


def _nfe_table(records, section: str, title: str, row_name: str, row_of: Callable[[dict], str], key: str = "rms",
               spec: str = ".2e") -> List[str]:
    """A Markdown table of `key` with one row per row_of(record) and one column per NFE."""
    rows = [r for r in records if r["section"] == section]
    if not rows:
        return []
    nfes = sorted({r["nfe"] for r in rows if r["nfe"] is not None})
    body = []
    for name in dict.fromkeys(row_of(r) for r in rows):
        cells = {r["nfe"]: r.get(key) for r in rows if row_of(r) == name}
        body.append([name] + ["" if n not in cells else _fmt(cells[n], spec) for n in nfes])
    return [f"## {title}", "", common.markdown_table([row_name] + [f"NFE {n}" for n in nfes], body), ""]


def _settings_line(settings: dict) -> str:
    sections = settings.get("sections", list(SECTIONS))
    text = (f"Sweep: sections {', '.join(sections)}; solvers {', '.join(settings['solvers'])} at NFE "
            f"{', '.join(map(str, settings['solvers_nfe']))}")
    if "formulations" in sections:
        text += f"; euler and heun on formulations {', '.join(settings['formulations'])}"
    if "discretizations" in sections:
        text += f"; {', '.join(settings['discretization_solvers'])} on discretizations {', '.join(settings['discretizations'])}"
    if len(sections) > 1 or sections != ["solvers"]:
        text += f" at NFE {', '.join(map(str, settings['nfe']))}"
    return text + "."


def markdown(results: dict, png: Optional[str] = None) -> str:
    """The results as Markdown: conclusions, then error tables by section."""
    m = results["machine"]
    c = results["conclusions"]
    ref = results["reference"]
    lines = [
        f"# Solver benchmark: {results['target']}",
        "",
        f"{results['description']}. {results['settings']['num_latents']} latents (seed {results['settings']['seed']}); "
        "error = RMS over samples of |x - x_ref| / sqrt(dim) against the exact PF-ODE end point "
        f"(DOP853 in ln sigma, rtol {ref['rtol']:g}); SW2 = sliced Wasserstein-2 to the reference samples.",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} thread), "
        f"{m['date']}; total {results['timings']['total']:.0f} s.",
        "",
        _settings_line(results["settings"]),
        "",
        f"Reference accuracy (rtol {ref['rtol']:g} vs {ref['rtol_half']:g}, sigma_0 = {ref['sigma_0']:g}): "
        f"RMS difference {ref['rms_difference']:.1e}, largest {ref['max_abs_difference']:.1e}.",
        "",
    ]
    if png:
        lines += [f"![error against NFE]({png})", ""]
    lines += ["## Conclusions", "", "| claim | result | holds |", "|---|---|---|"]
    h = c["heun_beats_euler"]
    detail = ", ".join(f"{k} {v['heun_better']}/{v['compared']}" for k, v in h["by_formulation"].items())
    exceptions = "; ".join(f"{e['formulation']}/{e['discretization']}/{e['range']} NFE {e['nfe']}: {e['heun']:.2e} > {e['euler']:.2e}"
                           for e in h["exceptions"][:6])
    lines.append(f"| Heun <= Euler at equal NFE, every formulation, every NFE | {detail}{' (exceptions: ' + exceptions + ')' if exceptions else ''} | {_yes(h['holds'])} |")
    formulations_with_edm = sorted({c["formulation"] for c in h["crossover"] if c["discretization"] == "edm" and c["range"] == "own"})
    start_edm = h["heun_better_from_nfe_by_discretization"].get("edm")
    if start_edm is not None:
        lines.append(f"| Heun <= Euler with the edm steps on every formulation ({', '.join(formulations_with_edm)}) from some NFE on | "
                     f"from NFE {start_edm} on | yes |")
    start = h["heun_better_from_nfe_everywhere"]
    if start:
        where = ", ".join(f"{k}: {v}" for k, v in h["heun_better_from_nfe_by_discretization"].items())
        result = f"from NFE {start} on ({where})"
    else:
        result = "not within the grid for " + ", ".join(c["formulation"] + "/" + c["discretization"] for c in h["crossover"] if c["heun_better_from_nfe"] is None)
    lines.append(f"| Heun <= Euler from some NFE on, on every formulation and discretization | {result} | {_yes(start is not None)} |")
    for range_name, row in c["edm_discretization_best_heun_35"].items():
        text = ", ".join(f"{k} {_fmt(v)}" for k, v in row["rms"].items())
        lines.append(f"| edm steps best for Heun at NFE 35 ({range_name} sigma ranges) | {text} | {_yes(row['holds'])} |")
    b = c.get("best_within_15_vs_heun_35")
    if b:
        fewest = b["fewest_nfe_reaching_it"]
        more = f"; fewest NFE reaching it: {fewest['solver']} ({fewest['discretization']}) at {fewest['nfe']}" if fewest else ""
        lines.append(f"| best solver with <= 15 NFE reaches Heun-edm at 35 ({b['heun_edm_35']:.2e}) | "
                     f"{b['best']['solver']} ({b['best']['discretization']}) NFE {b['best']['nfe']}: {b['best']['rms']:.2e}{more} | {_yes(b['holds'])} |")
    for o in c["optimized_steps"]:
        lines.append(f"| optimized steps cut held-out error >= 30% ({o['solver']}, NFE {o['nfe']}) | "
                     f"{o['held_out_edm']:.2e} -> {o['held_out_optimized']:.2e} ({_change(o['reduction'])}) | {_yes(o['holds'])} |")
    for o in c["sampler_overhead"]:
        lines.append(f"| samplers.sample within 1.2x of a hand-written Euler loop, batch {o['shape']} | ratio {o['ratio']:.2f} | {_yes(o['holds'])} |")
    lines.append(f"| the whole run (settings above) under 10 minutes | {results['timings']['total']:.0f} s | {_yes(results['timings']['total'] < 600)} |")
    lines.append("")

    records = results["records"]
    solver = lambda r: r["solver"]  # noqa: E731
    lines += _nfe_table(records, "solvers", "Solvers (edm formulation, edm discretization): RMS error", "solver", solver)
    lines += _nfe_table(records, "solvers", "Solvers: sliced W2 to the reference samples", "solver", solver, key="sw2")
    lines += _nfe_table(records, "solvers", "Solvers: median over samples of the per-sample RMS error", "solver", solver, key="median")
    if results["kind"] == "finite":
        lines += _nfe_table(records, "solvers", "Solvers: fraction of samples landing on a different training point than the reference",
                            "solver", solver, key="different_point_fraction", spec=".3f")
    else:
        lines += _nfe_table(records, "solvers", "Solvers: fraction of samples ending in a different mixture component than the reference",
                            "solver", solver, key="different_component_fraction", spec=".3f")
    lines += _nfe_table(records, "formulations", "Formulations (Euler and Heun): RMS error", "solver / formulation / discretization",
                        lambda r: f"{r['solver']} / {r['formulation']} / {r['discretization']}")
    lines += _nfe_table(records, "discretizations", "Discretizations (edm formulation; own sigma range, or EDM's [0.002, 80]): RMS error",
                        "solver / discretization / sigma range", lambda r: f"{r['solver']} / {r['discretization']} / {r['range']}")
    if results["optimized"]:
        body = [[o["solver"], o["num_steps"], o["nfe"], f"{o['held_out']['rms_edm']:.2e}", f"{o['held_out']['rms_optimized']:.2e}",
                 _change(o["held_out"]["reduction"]), ", ".join(f"{s:.3g}" for s in o["sigmas"])] for o in results["optimized"]]
        lines += ["## Optimized steps (held-out latents)", "",
                  common.markdown_table(["solver", "N", "NFE", "edm rho=7", "optimized", "reduction", "levels"], body), ""]
    if results["overhead"]:
        body = [[o["shape"], f"{1e3 * o['hand_seconds']:.2f} ms", f"{1e3 * o['sample_seconds']:.2f} ms", f"{o['ratio']:.2f}",
                 f"{o['per_step_overhead_us']:.0f} us"] for o in results["overhead"]]
        lines += ["## Sampler overhead (denoiser D(x) = 0.9 x, euler, 50 steps)", "",
                  common.markdown_table(["batch", "hand loop", "samplers.sample", "ratio", "overhead per step"], body), ""]
    t = results["timings"]
    lines += ["## Timings", "", " | ".join(f"{k} {v:.0f} s" for k, v in t.items()), ""]
    return "\n".join(lines)


def _style_error_axes(ax, ticks) -> None:
    """Log-log axes of RMS error against NFE, labelled, with the legend below the panel so no curve is hidden."""
    ticker = require("matplotlib.ticker", "the solver benchmark's plot")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, min(top, 10.0))  # runs that blew up (errors > 10 in data units) are clipped
    ax.set_xlabel("NFE (denoiser evaluations per sample)")
    ax.set_ylabel("RMS error of the samples vs the exact ODE end points (data units)", fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=2)


def plot_results(results: dict, path: str) -> None:
    """Error against NFE on log-log axes: solvers; formulations; discretizations (one panel each)."""
    plt = common.pyplot("the solver benchmark's plot")

    records = results["records"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 8.6))

    def line(ax, rows, label, **style):
        rows = sorted((r for r in rows if r["rms"] is not None and r["nfe"]), key=lambda r: r["nfe"])
        if rows:
            ax.plot([r["nfe"] for r in rows], [r["rms"] for r in rows], marker="o", markersize=3, label=label, **style)

    ax = axes[0]
    colors = {}
    for i, solver in enumerate(dict.fromkeys(r["solver"] for r in records if r["section"] == "solvers")):
        colors[solver] = f"C{i}"
        style = {"linestyle": "--", "linewidth": 2.5, "alpha": 0.6} if solver == "ddim" else {}
        line(ax, _find(records, section="solvers", solver=solver), "ddim (= euler in sigma)" if solver == "ddim" else solver,
             color=colors[solver], **style)
    for o in results["optimized"]:
        ax.plot([o["nfe"]], [o["held_out"]["rms_optimized"]], marker="*", markersize=13, linestyle="none",
                color=colors.get(o["solver"], "black"), markeredgecolor="black", label=f"{o['solver']}, optimized steps, NFE {o['nfe']} (held-out)")
    heun35 = _find(records, section="solvers", solver="heun", nfe=35)
    if heun35 and heun35[0]["rms"]:
        ax.axhline(heun35[0]["rms"], color="gray", linestyle=":", linewidth=1, label="heun at NFE 35 (level to reach)")
        ax.axvline(15, color="gray", linestyle="-.", linewidth=1, label="NFE 15")
    ax.set_title("solvers (edm formulation, edm steps)", fontsize=10)

    ax = axes[1]
    for i, key in enumerate(dict.fromkeys((r["formulation"], r["discretization"]) for r in records
                                          if r["section"] in ("solvers", "formulations") and r["solver"] in ("euler", "heun"))):
        formulation, discretization = key
        color = f"C{i % 10}"
        for solver, style in (("heun", "-"), ("euler", "--")):
            rows = [r for r in records if r["section"] in ("solvers", "formulations") and r["solver"] == solver
                    and r["formulation"] == formulation and r["discretization"] == discretization]
            line(ax, rows, f"{solver}, {formulation}/{discretization}", color=color, linestyle=style)
    ax.set_title("formulations (formulation/steps): heun solid, euler dashed", fontsize=10)

    ax = axes[2]
    line(ax, _find(records, section="solvers", solver="heun"), "edm", color="black")
    for i, discretization in enumerate(dict.fromkeys(r["discretization"] for r in records if r["section"] == "discretizations")):
        for range_name, style in (("own", "-"), ("common", ":")):
            line(ax, _find(records, section="discretizations", solver="heun", discretization=discretization, range=range_name),
                 f"{discretization} ({range_name} sigma range)", color=f"C{i}", linestyle=style)
    ax.set_title("heun, edm formulation: discretizations", fontsize=10)

    nfes = sorted({r["nfe"] for r in records if r["nfe"]})
    ticks = [n for n in (5, 10, 15, 20, 35, 50, 100, 200) if nfes and nfes[0] <= n <= nfes[-1]]
    for ax in axes:
        _style_error_axes(ax, ticks)  # below the panel: no curve hidden
    m = results["machine"]
    fig.suptitle(f"{results['target']}: samplers' end points against the exact probability-flow ODE solution of the same "
                 f"{results['settings']['num_latents']} latents (the reference, DOP853; no training data involved)\n"
                 f"{m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}", fontsize=9)
    fig.tight_layout()
    common.save_png(fig, path, dpi=110)


def report_markdown(results: dict, png: Optional[str] = None) -> str:
    """The Markdown of a results file: the sweep's (markdown) or the fast-solver study's (fast_markdown)."""
    return fast_markdown(results, png) if results.get("study") == "fast" else markdown(results, png)


def report_plot(results: dict, path: str) -> None:
    """The plot of a results file: the sweep's (plot_results) or the fast-solver study's (plot_fast)."""
    (plot_fast if results.get("study") == "fast" else plot_results)(results, path)


def _config_name(c: dict) -> str:
    return f"{c['solver']}, {c['discretization']}, {variant_name(c['final_step'], c['analytic_first_step'])}"


def fast_markdown(results: dict, png: Optional[str] = None) -> str:
    """The fast-solver study as Markdown: claims, fewest NFE per configuration, the error curves, optimized steps."""
    m, st, c, ref = results["machine"], results["settings"], results["conclusions"], results["reference"]
    goal = results["goal"]
    max_nfe = st["fast_max_nfe"]
    lines = [
        f"# Fast solvers: {results['target']}",
        "",
        f"{results['description']}. {st['num_latents']} latents (seed {st['seed']}); error = RMS over samples of "
        f"|x - x_ref| / sqrt(dim) against the exact PF-ODE end point from the run's own sigma_0 (DOP853 in ln sigma, "
        f"rtol {ref['rtol']:g}; at sigma_0 = {ref['sigma_0']:g} halving it moves the reference by {ref['rms_difference']:.1e} RMS).",
        "",
        f"The error to reach: {goal['solver']} with EDM's rho = 7 steps at {goal['nfe']} NFE, **{goal['rms']:.4e}**. "
        f"Every solver x discretization (edm formulation; each discretization on its own sigma range) x final step "
        f"(`solver`: the solver steps into sigma = 0; `denoise`: it stops at sigma_min and ends with x = D(x; sigma_min)) "
        f"x analytical first step (AFS: D(x; sigma_max) replaced by the target's mean, one NFE saved) is run with "
        f"N = 2, 3, ... steps until its error is at most that, or past {max_nfe} NFE. Optimized steps "
        f"(samplers.optimize: fitted on {st['num_calibration']} calibration latents, scored on the {st['num_latents']} "
        f"above; edm discretization's levels as the start, final step `solver`, no AFS) are fitted for budgets from "
        f"{st['fast_optimize_max_nfe']} NFE down while they reach it.",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} thread), "
        f"{m['date']}; total {results['timings']['total']:.0f} s.",
        "",
    ]
    if png:
        lines += [f"![error against NFE]({png})", ""]
    u, o = c["untuned"], c["optimized"]
    lines += ["## Conclusions", "", "| claim | result | holds |", "|---|---|---|"]
    if u["best"]:
        b = u["best"]
        fewest = u["fewest"]
        more = (f"; fewest NFE reaching it: {_config_name(fewest)} at {fewest['reaches_at_nfe']} ({fewest['rms_there']:.3e})"
                if fewest else f"; no configuration reaches it within {max_nfe} NFE")
        lines.append(f"| the best untuned solver with <= {u['max_nfe']} NFE reaches {goal['solver']} + edm steps at "
                     f"{goal['nfe']} NFE ({goal['rms']:.3e}) | best: {_config_name(b)} at NFE {b['nfe']}: {b['rms']:.3e}{more} | "
                     f"{_yes(u['holds'])} |")
    if o["by_solver"]:
        best = o["fewest"]
        text = (f"fewest: {best['solver']} at NFE {best['fewest_nfe_reaching']} ({best['rms_there']:.3e})" if best
                else "none reaches it; best: " + ", ".join(
                    f"{e['solver']} {min(f['held_out_optimized'] for f in e['fits']):.3e}" for e in o["by_solver"]))
        lines.append(f"| with optimized steps some solver reaches it with <= {o['max_nfe']} NFE (held-out latents) | "
                     f"{text} | {_yes(o['holds'])} |")
    lines.append("")

    by_solver = c["fewest_nfe_by_solver"]
    opt = {e["solver"]: e for e in o["by_solver"]}
    body = []
    for solver in st["fast_solvers"]:
        best = by_solver.get(solver)
        e = opt.get(solver)
        if e is None:
            optimized = ""
        elif e["fewest_nfe_reaching"] is not None:
            optimized = f"{e['fewest_nfe_reaching']} ({e['rms_there']:.3e})"
        else:
            f0 = e["fits"][0]
            optimized = f"not at {f0['nfe']} ({f0['held_out_optimized']:.3e})"
        body.append([solver,
                     f"{best['reaches_at_nfe']} ({best['rms_there']:.3e})" if best else f"> {max_nfe}",
                     f"{best['discretization']}, {variant_name(best['final_step'], best['analytic_first_step'])}" if best else "",
                     optimized])
    lines += [f"## Fewest NFE reaching {goal['rms']:.3e}, per solver", "",
              common.markdown_table(["solver", "untuned: NFE (error)", "with", f"optimized steps, <= {o['max_nfe']} NFE: NFE (error)"], body), ""]

    identical = {(i["solver"], i["discretization"], i["analytic_first_step"]) for i in results["identical_final_step"]}
    configs = {(x["solver"], x["discretization"], x["final_step"], x["analytic_first_step"]): x for x in c["configs"]}
    body = []
    for solver in st["fast_solvers"]:
        for discretization in st["fast_discretizations"]:
            cells = []
            for final_step, first_step in FAST_VARIANTS:
                if final_step == "denoise" and (solver, discretization, first_step) in identical:
                    cells.append("= final solver")
                    continue
                x = configs.get((solver, discretization, final_step, first_step))
                if x is None:
                    cells.append("")
                elif x["reaches_at_nfe"] is None:
                    cells.append(f"> {max_nfe} ({_fmt(x['rms_at_largest'])} at {x['largest_nfe_run']})")
                else:
                    cells.append(f"**{x['reaches_at_nfe']}**" if x["reaches_at_nfe"] <= u["max_nfe"] else str(x["reaches_at_nfe"]))
            body.append([solver, discretization] + cells)
    lines += [f"## Fewest NFE reaching {goal['rms']:.3e}, per configuration (bold: <= {u['max_nfe']})", "",
              "`= final solver`: final_step=\"denoise\" gives the same samples as \"solver\" (largest difference "
              f"<= {SAME_SAMPLES:g} at {PROBE_STEPS} steps), so it is not run again.", "",
              common.markdown_table(["solver", "discretization"] + [variant_name(*v) for v in FAST_VARIANTS], body), ""]

    records = results["records"]
    plain = [r for r in records if r["section"] == "fast" and r["discretization"] == "edm"
             and r.get("final_step") == "solver" and not r.get("analytic_first_step")]
    lines += _nfe_table(plain, "fast", "Untuned, EDM's rho = 7 steps, final step solver: RMS error", "solver", lambda r: r["solver"])
    if results["optimized"]:
        body = [[x["solver"], x["num_steps"], x["nfe"], f"{x['held_out']['rms_edm']:.3e}", f"{x['held_out']['rms_optimized']:.3e}",
                 _yes(x["reaches_goal"]), ", ".join(f"{v:.3g}" for v in x["sigmas"])] for x in results["optimized"]]
        lines += [f"## Optimized steps (held-out latents; goal {goal['rms']:.3e})", "",
                  common.markdown_table(["solver", "N", "NFE", "edm rho=7", "optimized", "reaches goal", "levels"], body), ""]
    t = results["timings"]
    lines += ["## Timings", "", " | ".join(f"{k} {v:.0f} s" for k, v in t.items()), ""]
    return "\n".join(lines)


def plot_fast(results: dict, path: str) -> None:
    """Error against NFE on log-log axes: every solver with EDM's steps; every solver's fastest configuration
    and its optimized steps."""
    plt = common.pyplot("the solver benchmark's plot")
    records, c, goal = results["records"], results["conclusions"], results["goal"]
    solvers = results["settings"]["fast_solvers"]
    colors = {solver: f"C{i % 10}" for i, solver in enumerate(solvers)}
    styles = {solver: ("--" if i >= 10 else "-") for i, solver in enumerate(solvers)}
    fig, axes = plt.subplots(1, 2, figsize=(16, 7.8))

    def curve(ax, rows, label, solver, **style):
        rows = sorted((r for r in rows if r["rms"] is not None and r["nfe"]), key=lambda r: r["nfe"])
        if rows:
            ax.plot([r["nfe"] for r in rows], [r["rms"] for r in rows], marker="o", markersize=3, label=label,
                    color=colors[solver], linestyle=styles[solver], **style)

    ax = axes[0]
    for solver in solvers:
        curve(ax, [r for r in records if r["section"] == "fast" and r["solver"] == solver and r["discretization"] == "edm"
                   and r.get("final_step") == "solver" and not r.get("analytic_first_step")], solver, solver)
    ax.set_title("untuned: EDM's rho = 7 steps, final step solver, no AFS", fontsize=10)

    ax = axes[1]
    for solver in solvers:
        best = c["fewest_nfe_by_solver"].get(solver)
        if best:
            curve(ax, [r for r in records if r["section"] == "fast" and _config_key(r) == _config_key(best)],
                  f"{_config_name(best)}", solver)
        fits = sorted((o for o in results["optimized"] if o["solver"] == solver), key=lambda o: o["nfe"])
        if fits:
            ax.plot([o["nfe"] for o in fits], [o["held_out"]["rms_optimized"] for o in fits], marker="*", markersize=11,
                    linestyle=":", color=colors[solver], markeredgecolor="black", label=f"{solver}, optimized steps (held-out)")
    ax.axvline(results["settings"]["fast_optimize_max_nfe"], color="gray", linestyle="--", linewidth=1,
               label=f"NFE {results['settings']['fast_optimize_max_nfe']}")
    ax.set_title("each solver's fastest untuned configuration (up to the goal), and optimized steps", fontsize=10)

    nfes = sorted({r["nfe"] for r in records if r["section"] in ("fast", "optimized") and r["nfe"]})
    ticks = [n for n in (3, 5, 7, 10, 15, 20, 35) if nfes and nfes[0] <= n <= nfes[-1]]
    for ax in axes:
        ax.axhline(goal["rms"], color="black", linestyle=":", linewidth=1.2,
                   label=f"goal: {goal['solver']} + edm steps at {goal['nfe']} NFE ({goal['rms']:.2e})")
        ax.axvline(c["untuned"]["max_nfe"], color="gray", linestyle="-.", linewidth=1, label=f"NFE {c['untuned']['max_nfe']}")
        _style_error_axes(ax, ticks)
    m = results["machine"]
    fig.suptitle(f"{results['target']}: fast solvers against the exact probability-flow ODE solution of the same "
                 f"{results['settings']['num_latents']} latents (edm formulation)\n{m['platform']}, {m['cpu_count']} CPUs, "
                 f"torch {m['torch']}", fontsize=9)
    fig.tight_layout()
    common.save_png(fig, path, dpi=110)


# --------------------------------------------------------------------------- command line


def _parse_ints(text: Optional[str], name: str) -> Optional[Tuple[int, ...]]:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{name} {text!r} is invalid; write comma-separated integers like 5,9,15") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{name} {text!r} is invalid; every NFE must be >= 1")
    return values


def _parse_names(text: Optional[str], valid: Sequence[str], kind: str) -> Optional[Tuple[str, ...]]:
    if text is None:
        return None
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    for value in values:
        if value not in valid:
            raise unknown(kind, value, valid)
    return values


def _parse_pairs(text: Optional[str]) -> Optional[Tuple[Tuple[str, int], ...]]:
    if text is None:
        return None
    valid = deterministic_solvers()
    pairs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        solver, _, budget = part.rpartition(":")
        if solver not in valid or not budget.isdigit() or int(budget) < 2:
            raise ConfigError(f"--optimize {part!r} is invalid; write SOLVER:NFE with SOLVER one of {', '.join(valid)} and NFE >= 2")
        pairs.append((solver, int(budget)))
    return tuple(pairs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/solvers.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sweep solver x discretization x formulation x NFE against the exact ODE solution; optimize time steps.",
        epilog="Writes solvers_TARGET[_quick].json, .md and .png and steps_TARGET_SOLVER_nfeN.json under --out-dir.",
    )
    parser.add_argument("--target", default=None, help=f"target: {', '.join(targets.names())} [default: digits-gmm; gmm2d with --quick]")
    parser.add_argument("--quick", action="store_true", help="small sweep on the 2-D mixture (under a minute); what the tests run")
    parser.add_argument("--fast", action="store_true",
                        help="the fast-solver study instead of the sweep: fewest NFE of every solver x discretization x final "
                             "step x analytical first step to reach Heun + edm steps at 35 NFE, and optimized steps within 7 NFE; "
                             "writes solvers_TARGET_fast.*")
    parser.add_argument("--latents", dest="num_latents", type=int, default=None, help="number of latents scored [default: 256]")
    parser.add_argument("--nfe", default=None, help="comma-separated NFE grid for every section, e.g. 5,9,15,35")
    parser.add_argument("--solvers", default=None, help="comma-separated deterministic solvers of the solver section (with --fast: of the study)")
    parser.add_argument("--optimize", dest="optimize_pairs", default=None,
                        help="comma-separated SOLVER:NFE pairs whose steps are optimized, e.g. dpm++3m:10,heun:10")
    parser.add_argument("--sections", default=None, help=f"comma-separated sweep sections: {', '.join(SECTIONS)} [default: all]")
    parser.add_argument("--no-optimize", action="store_true", help="skip the time-step optimization")
    parser.add_argument("--no-overhead", action="store_true", help="skip the sampler-overhead timing")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents (the calibration latents use another) [default: 0]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine) [default: 1]")
    parser.add_argument("--out-dir", default=common.RESULTS, help="where results are written [default: benchmarks/results]")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the Markdown, plot and conclusions of OUT_DIR/solvers_TARGET[_quick].json from its records; run nothing")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; bad input ends with one line `error: ...` on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    with common.one_line_errors():
        if args.target is not None and args.target not in targets.names():
            raise unknown("target", args.target, targets.names())
        if args.report_only:
            target = args.target or ("gmm2d" if args.quick else "digits-gmm")
            path = os.path.join(args.out_dir, stem_of(target, args.quick, args.fast) + ".json")
            if not os.path.isfile(path):
                raise ConfigError(f"--report-only: {path!r} does not exist; run the benchmark first")
            rebuild_report(path, plot=not args.no_plot)
            return 0
        if args.num_latents is not None and args.num_latents < 2:
            raise ConfigError(f"--latents {args.num_latents} is invalid; need at least 2")
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} is invalid; need at least 1")
        grid = _parse_ints(args.nfe, "--nfe")
        solvers = _parse_names(args.solvers, deterministic_solvers(), "deterministic solver")
        if args.fast:
            for name, value in (("--nfe", args.nfe), ("--optimize", args.optimize_pairs), ("--sections", args.sections)):
                if value is not None:
                    raise ConfigError(f"{name} does not apply to --fast (the study scans every NFE up to 35 and optimizes within 7)")
            settings = Settings.make(args.target, args.quick, fast=True, num_latents=args.num_latents, seed=args.seed,
                                     threads=args.threads, fast_solvers=solvers)
        else:
            settings = Settings.make(
                args.target, args.quick, num_latents=args.num_latents, seed=args.seed, threads=args.threads,
                solvers_nfe=grid, nfe=grid, solvers=solvers,
                optimize=_parse_pairs(args.optimize_pairs), sections=_parse_names(args.sections, SECTIONS, "section"),
            )
        run_benchmark(settings, args.out_dir, plot=not args.no_plot, optimize=not args.no_optimize, overhead=not args.no_overhead)
    return 0


if __name__ == "__main__":
    sys.exit(main())
