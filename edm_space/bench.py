"""The solver benchmark: every sampler against the exact probability-flow ODE solution.

    edm-space bench solvers --target digits-gmm          # or: python benchmarks/solvers.py
    edm-space bench solvers --quick                      # 2-D mixture, under a minute

What it measures (the numbers the README quotes):

1. The reference. With the exact denoiser of a target (`edm_space.targets`) the
   probability-flow ODE (EDM eq. 4) in the unscaled x_hat = x / s(t) and
   sigma is formulation-independent,

       dx_hat/dsigma = (x_hat - D(x_hat; sigma)) / sigma        (EDM eq. 4, s = 1, sigma(t) = t),

   and in u = ln sigma it reads dx_hat/du = x_hat - D(x_hat; e^u), a smooth
   system whose time scale is O(1) in u at every noise level (the "well-conditioned
   time variable"). Every sampler starts at x_hat = z sigma_0 (z the latents,
   sigma_0 = sigma(t_0) of the formulation and discretization being scored), so the
   reference integrates this system from u = ln sigma_0 down to ln sigma_end with
   scipy's DOP853 (rtol 1e-10) and maps x(sigma_end) to x(0) with the target's
   `finish` (see `edm_space.targets`). None of our samplers is involved. Its
   accuracy is shown by solving again at half the tolerance (and, in the tests,
   against the closed form of a Gaussian target).

2. The sweep: solver x discretization x formulation x NFE. The error of a run is
   the RMS over samples of |x - x_ref| / sqrt(dim) (data units, images in [-1, 1]);
   the distribution-level error is the sliced Wasserstein-2 distance between the
   samples and the reference samples. For finite data sets the fraction of
   samples whose nearest training point differs from the reference's is recorded.

3. Optimized time steps: for a solver and an NFE budget, the N - 1 noise levels
   below sigma_max = 80 are free (ln sigma_i = ln sigma_{i-1} - softplus(p_i), so
   any p gives strictly decreasing levels), started at EDM's rho = 7 levels
   (EDM eq. 5) and fitted to minimize the error on calibration latents; they are
   scored on the sweep's own latents, which the fit never saw, and saved as
   {"sigmas": [...]} JSON that `samplers.sample(discretization="FILE.json")` and
   `edm-space sample --discretization FILE.json` accept.

4. Sampler overhead: `samplers.sample` against a minimal hand-written Euler loop
   (EDM Algorithm 1 without the correction) with a denoiser that costs almost
   nothing, on the same time steps, best of several runs in the same process.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import ConfigError
from .metrics import sliced_wasserstein2
from .targets import Target

Tensor = torch.Tensor
F64 = torch.float64

# --------------------------------------------------------------------------- settings

#: Odd NFEs, so that two-evaluation solvers (heun, dpm++2s: N steps cost 2N - 1)
#: hit every grid point exactly and every comparison is at equal NFE.
NFE_GRID = (5, 7, 9, 11, 13, 15, 19, 27, 35, 51, 81, 121, 199)
NFE_GRID_COARSE = (5, 9, 13, 19, 27, 35, 51, 81, 121, 199)
QUICK_NFE = (5, 9, 15, 27, 35, 51)

DETERMINISTIC = ("euler", "heun", "ddim", "dpm++2m", "dpm++3m", "dpm++2s")
TWO_EVALUATIONS = ("heun", "dpm++2s")  # N steps cost 2N - 1 evaluations (the last step is first order)
OWN_DISCRETIZATION = {"edm": "edm", "vp": "vp", "ve": "ve", "iddpm": "iddpm", "flow": "uniform-t", "ddpm": "ddpm"}
COMMON_RANGE = (0.002, 80.0)  # EDM's sigma range, used to compare spacings alone
#: Discretizations not re-run on the common range: log-sigma's own range on the edm
#: formulation already is [0.002, 80], and ve on that range (geometric in sigma^2, hence
#: in sigma) is log-sigma itself.
SAME_ON_COMMON_RANGE = ("log-sigma", "ve")


def nfe_of(solver: str, num_steps: int) -> int:
    """Denoiser evaluations of an N-step run of a deterministic solver."""
    return 2 * num_steps - 1 if solver in TWO_EVALUATIONS else num_steps


def steps_for(solver: str, nfe: int) -> int:
    """The N whose NFE is closest to `nfe` (exact for odd nfe)."""
    return max(1, int(math.floor((nfe + 1) / 2 + 0.5))) if solver in TWO_EVALUATIONS else max(1, int(nfe))


def steps_within(solver: str, budget: int) -> int:
    """The largest N whose NFE does not exceed `budget`."""
    return max(1, (budget + 1) // 2) if solver in TWO_EVALUATIONS else max(1, int(budget))


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
    solvers: Tuple[str, ...] = DETERMINISTIC
    formulations: Tuple[str, ...] = ("vp", "ve", "iddpm", "flow", "ddpm")
    own_discretizations: bool = True
    discretizations: Tuple[str, ...] = ("vp", "ve", "iddpm", "log-sigma")
    discretization_solvers: Tuple[str, ...] = ("euler", "heun", "dpm++2m")
    #: (solver, NFE budget) pairs whose time steps are optimized.
    optimize: Tuple[Tuple[str, int], ...] = (("dpm++3m", 10), ("dpm++2m", 10), ("heun", 10), ("euler", 10), ("dpm++3m", 15))
    optimize_maxfev: int = 1200
    sections: Tuple[str, ...] = ("solvers", "formulations", "discretizations")
    overhead_shapes: Tuple[Tuple[int, ...], ...] = ((1024, 2), (256, 64), (64, 3, 32, 32))
    overhead_steps: int = 50
    overhead_repeats: int = 25
    projections: int = 256
    threads: int = 1

    @classmethod
    def make(cls, target: Optional[str] = None, quick: bool = False, **overrides) -> "Settings":
        if quick:
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


@dataclass
class ReferenceSolution:
    """The exact PF-ODE end points x(0) of a batch of latents started at sigma_0."""

    x: Tensor
    sigma_0: float
    sigma_end: float
    rtol: float
    atol: float
    nfev: int
    steps: int
    seconds: float


def solve_reference(
    target: Target,
    latents: Tensor,
    sigma_0: float,
    rtol: float = 1e-10,
    atol: Optional[float] = None,
    sigma_end: Optional[float] = None,
    chunk: Optional[int] = None,
) -> ReferenceSolution:
    """Integrate dx_hat/du = x_hat - D(x_hat; e^u), u = ln sigma, from x_hat = z sigma_0 at u = ln sigma_0
    down to ln sigma_end with DOP853, then apply the target's `finish` (x(sigma_end) -> x(0)).

    The batch is flattened into one state vector (one call of D per stage for the
    whole batch); `chunk` samples per solve bound the memory on large targets.
    DOP853's error control uses the RMS over the state, so the tolerance holds on
    average over a chunk; the tolerance-halving check reports the largest deviation.
    """
    from scipy.integrate import solve_ivp

    sigma_end = target.sigma_end if sigma_end is None else float(sigma_end)
    atol = rtol if atol is None else float(atol)
    if not (0 < sigma_end < sigma_0 < math.inf):
        raise ConfigError(f"the reference needs 0 < sigma_end < sigma_0 < inf; got {sigma_end:g}, {sigma_0:g}")
    z = latents.to(F64).reshape(latents.shape[0], -1)
    batch = z.shape[0]
    chunk = batch if chunk is None else max(1, int(chunk))
    out = torch.empty_like(z)
    nfev = steps = 0
    start = time.perf_counter()
    for b0 in range(0, batch, chunk):
        zc = z[b0 : b0 + chunk]
        rows = zc.shape[0]
        shape = (rows, *target.item_shape)

        def rhs(u: float, y: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(y).view(shape)
            sigma = torch.full((rows,), math.exp(u), dtype=F64)
            return (x - target.denoiser(x, sigma).to(F64)).reshape(-1).numpy()

        solution = solve_ivp(
            rhs, (math.log(sigma_0), math.log(sigma_end)), (zc * sigma_0).reshape(-1).numpy(),
            method="DOP853", rtol=rtol, atol=atol,
        )
        if solution.status != 0:
            raise RuntimeError(f"the reference ODE solve failed: {solution.message}")
        x_end = torch.from_numpy(np.ascontiguousarray(solution.y[:, -1])).view(shape)
        out[b0 : b0 + rows] = target.finish(x_end, sigma_end).reshape(rows, -1)
        nfev += int(solution.nfev)
        steps += len(solution.t) - 1
    x = out.reshape(latents.shape)
    return ReferenceSolution(x, float(sigma_0), sigma_end, rtol, atol, nfev, steps, time.perf_counter() - start)


def reference_accuracy(target: Target, latents: Tensor, sigma_0: float, rtol: float = 1e-10, first: Optional[ReferenceSolution] = None) -> dict:
    """Solve at rtol and rtol / 2 and report how far apart the end points are (data units)."""
    a = first if first is not None else solve_reference(target, latents, sigma_0, rtol)
    b = solve_reference(target, latents, sigma_0, rtol / 2)
    diff = (a.x - b.x).reshape(latents.shape[0], -1)
    per_sample = diff.pow(2).mean(dim=1).sqrt()
    report = {
        "sigma_0": sigma_0,
        "sigma_end": a.sigma_end,
        "rtol": rtol,
        "rtol_half": rtol / 2,
        "rms_difference": float(diff.pow(2).mean().sqrt()),
        "max_sample_rms_difference": float(per_sample.max()),
        "max_abs_difference": float(diff.abs().max()),
        "nfev": a.nfev,
        "nfev_half": b.nfev,
        "seconds": a.seconds,
        "seconds_half": b.seconds,
    }
    if target.kind == "finite":
        report["different_point_fraction"] = float((target.nearest(a.x) != target.nearest(b.x)).double().mean())
    return report


class References:
    """Reference solutions, solved once per (latent set, sigma_0)."""

    def __init__(self, target: Target, rtol: float, log: Callable[[str], None] = lambda s: None):
        self.target, self.rtol, self.log = target, rtol, log
        self.cache: Dict[Tuple[str, float], ReferenceSolution] = {}
        self.seconds = 0.0

    @staticmethod
    def key(sigma_0: float) -> float:
        return float(f"{sigma_0:.12g}")  # 80 and 79.99999999999996 (via sigma_inv) share one solve

    def get(self, name: str, latents: Tensor, sigma_0: float) -> ReferenceSolution:
        key = (name, self.key(sigma_0))
        if key not in self.cache:
            ref = solve_reference(self.target, latents, key[1], self.rtol)
            self.seconds += ref.seconds
            self.log(f"  reference {name} sigma_0 = {key[1]:g}: {ref.nfev} evaluations, {ref.seconds:.1f} s")
            self.cache[key] = ref
        return self.cache[key]


# --------------------------------------------------------------------------- metrics


def rms_error(x: Tensor, reference: Tensor) -> float:
    """RMS over samples of |x - x_ref| / sqrt(dim): sqrt(mean over samples and coordinates of (x - x_ref)^2)."""
    return float((x.to(F64) - reference.to(F64)).pow(2).mean().sqrt())


# --------------------------------------------------------------------------- one run


@dataclass
class Bench:
    """A target with its latent sets and reference cache."""

    target: Target
    settings: Settings
    latents: Tensor
    calibration: Tensor
    refs: References
    records: List[dict] = field(default_factory=list)

    @classmethod
    def make(cls, target: Target, settings: Settings, log: Callable[[str], None] = lambda s: None) -> "Bench":
        g = torch.Generator().manual_seed(settings.seed)
        latents = torch.randn(settings.num_latents, *target.item_shape, generator=g, dtype=F64)
        g = torch.Generator().manual_seed(settings.seed + 1_000_003)
        calibration = torch.randn(settings.num_calibration, *target.item_shape, generator=g, dtype=F64)
        return cls(target, settings, latents, calibration, References(target, settings.rtol, log))

    @property
    def switch_key(self) -> str:
        """The record key of the fraction of samples that end in another mode than the reference."""
        return "different_point_fraction" if self.target.kind == "finite" else "different_component_fraction"

    def reference_modes(self, latent_set: str, ref: "ReferenceSolution") -> Tensor:
        key = ("modes", latent_set, ref.sigma_0)
        if key not in self.refs.cache:
            self.refs.cache[key] = self.target.assign(ref.x)
        return self.refs.cache[key]

    def sample(self, latents: Tensor, solver: str, formulation: str, discretization, num_steps: int,
               sigma_range: Optional[Tuple[float, float]] = None) -> Tuple[Tensor, dict]:
        import samplers

        lo, hi = sigma_range if sigma_range is not None else (None, None)
        info: dict = {}
        x = samplers.sample(self.target.denoiser, latents, formulation=formulation, solver=solver, num_steps=num_steps,
                            discretization=discretization, sigma_min=lo, sigma_max=hi, info=info)
        return x, info

    def run(self, section: str, solver: str, formulation: str, discretization, nfe: int,
            range_name: str = "own", latent_set: str = "main", num_steps: Optional[int] = None,
            label: Optional[str] = None) -> dict:
        """Sample once and score the end points against the reference; the record is also kept."""
        import presets
        import samplers

        f = presets.get(formulation)
        n = steps_for(solver, nfe) if num_steps is None else num_steps
        sigma_range = COMMON_RANGE if range_name == "common" else None
        latents = self.latents if latent_set == "main" else self.calibration
        t_steps = samplers.time_steps(f, n, discretization, *(sigma_range or (None, None)))
        sigmas = f.sigma(t_steps)
        sigma_0 = float(sigmas[0])
        ref = self.refs.get(latent_set, latents, sigma_0)
        record = {
            "section": section, "solver": solver, "formulation": formulation,
            "discretization": label or (discretization if isinstance(discretization, str) else "explicit"),
            "range": range_name, "num_steps": n, "nfe": None, "sigma_0": sigma_0, "sigma_last": float(sigmas[-2]),
            "rms": None, "sw2": None, "max_abs": None, "finite": False, "seconds": None, "error": None,
        }
        start = time.perf_counter()
        try:
            x, info = self.sample(latents, solver, formulation, discretization, n, sigma_range)
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
            record[self.switch_key] = float((self.target.assign(x) != self.reference_modes(latent_set, ref)).double().mean())
        self.records.append(record)
        return record


# --------------------------------------------------------------------------- optimized steps


def _softplus(p: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, p)


def _softplus_inv(y: np.ndarray) -> np.ndarray:
    return y + np.log(-np.expm1(-y))


def levels_from_params(p: np.ndarray, sigma_max: float) -> np.ndarray:
    """sigma_0 = sigma_max, ln sigma_i = ln sigma_{i-1} - softplus(p_i): strictly decreasing for any p."""
    levels = np.exp(math.log(sigma_max) - np.concatenate([[0.0], np.cumsum(_softplus(np.asarray(p, dtype=np.float64)))]))
    levels[0] = sigma_max  # exactly, so that the reference from sigma_max applies
    return levels


def params_from_levels(levels: np.ndarray) -> np.ndarray:
    logs = np.log(np.asarray(levels, dtype=np.float64))
    return _softplus_inv(logs[:-1] - logs[1:])


def optimize_steps(bench: Bench, solver: str, budget: int, maxfev: int = 1500, sigma_max: float = 80.0,
                   sigma_min: float = 0.002, rho: float = 7.0, log: Callable[[str], None] = lambda s: None) -> dict:
    """Fit the N - 1 free noise levels below sigma_max for `solver` within an NFE budget on the calibration latents.

    Objective: ln of the RMS end-point error against the exact reference; Nelder-Mead
    (adaptive, derivative-free) from EDM's rho = 7 levels (EDM eq. 5). The result is
    scored on the main latents, which the fit never saw, against the rho = 7 levels for
    the same solver and N. On a smooth target the objective is a smooth function of the
    levels; on a finite data set it is nearly piecewise constant (a sample's error is
    about 0 or the distance between two training points), and the fit gains little.
    """
    from scipy.optimize import minimize

    import samplers

    n = steps_within(solver, budget)
    if n < 2:
        raise ConfigError(f"an NFE budget of {budget} leaves {solver} {n} step; optimizing needs at least 2")
    start = time.perf_counter()
    edm_levels = samplers.discretizations.edm_sigmas(n, sigma_min, sigma_max, rho).numpy()
    ref_cal = bench.refs.get("calibration", bench.calibration, sigma_max)
    evaluations = [0]

    def objective(p: np.ndarray) -> float:
        evaluations[0] += 1
        levels = levels_from_params(p, sigma_max)
        if not np.all(np.isfinite(levels)) or levels[-1] <= 0 or not np.all(np.diff(levels) < 0):
            return 50.0
        try:
            x, _ = bench.sample(bench.calibration, solver, "edm", torch.from_numpy(levels), n)
        except (ValueError, RuntimeError):
            return 50.0
        error = rms_error(x, ref_cal.x)
        return math.log(error) if math.isfinite(error) and error > 0 else 50.0

    p0 = params_from_levels(edm_levels)
    initial = objective(p0)
    result = minimize(objective, p0, method="Nelder-Mead",
                      options={"maxfev": maxfev, "xatol": 1e-5, "fatol": 1e-7, "adaptive": True})
    best = result.x if result.fun < initial else p0
    levels = levels_from_params(best, sigma_max)
    seconds = time.perf_counter() - start

    # Held out: score on the main latents (never seen by the fit).
    held_opt = bench.run("optimized", solver, "edm", torch.from_numpy(levels), 0, num_steps=n, label="optimized")
    held_edm = bench.run("optimized", solver, "edm", "edm", 0, num_steps=n, label="edm")
    reduction = 1 - held_opt["rms"] / held_edm["rms"] if held_opt["rms"] and held_edm["rms"] else None
    name = f"optimized-{bench.target.name}-{solver}-nfe{held_opt['nfe']}"
    samplers.discretizations.register_levels(name, torch.from_numpy(levels))  # usable by name in this process
    log(f"  optimized {solver} N = {n} (NFE {held_opt['nfe']}): calibration {math.exp(initial):.3g} -> "
        f"{math.exp(min(result.fun, initial)):.3g}; held-out {held_edm['rms']:.3g} -> {held_opt['rms']:.3g} "
        f"({_change(reduction)}), {evaluations[0]} evaluations, {seconds:.0f} s")
    return {
        "name": name, "solver": solver, "formulation": "edm", "nfe_budget": budget, "num_steps": n, "nfe": held_opt["nfe"],
        "sigmas": [float(s) for s in levels], "edm_sigmas": [float(s) for s in edm_levels],
        "calibration": {"latents": int(bench.calibration.shape[0]), "seed": bench.settings.seed + 1_000_003,
                        "rms_edm": math.exp(initial), "rms_optimized": math.exp(min(result.fun, initial)),
                        "objective_evaluations": evaluations[0], "optimizer": "Nelder-Mead (adaptive)",
                        "converged": bool(result.success), "seconds": seconds},
        "held_out": {"latents": int(bench.latents.shape[0]), "seed": bench.settings.seed,
                     "rms_edm": held_edm["rms"], "rms_optimized": held_opt["rms"],
                     "sw2_edm": held_edm["sw2"], "sw2_optimized": held_opt["sw2"], "reduction": reduction},
    }


def save_levels(path: str, optimized: dict, target: str) -> str:
    """Write the optimized levels as {"sigmas": [...], ...}, the format samplers.load_levels reads."""
    from .files import write_atomic

    payload = {
        "sigmas": optimized["sigmas"], "name": optimized["name"], "solver": optimized["solver"], "nfe": optimized["nfe"],
        "num_steps": optimized["num_steps"], "target": target, "formulation": optimized["formulation"],
        "held_out": optimized["held_out"], "calibration": optimized["calibration"],
        "note": "EDM-formulation noise levels sigma_0 > ... > sigma_{N-1} (sigma_N = 0 is implied); "
                "use as samplers.sample(..., discretization=PATH) or edm-space sample --discretization PATH",
    }
    write_atomic(path, (json.dumps(payload, indent=1) + "\n").encode())
    return path


# --------------------------------------------------------------------------- sampler overhead


def sampler_overhead(shapes: Sequence[Tuple[int, ...]] = ((256, 64),), num_steps: int = 50, repeats: int = 15) -> List[dict]:
    """Wall time of samplers.sample (euler, edm) against a hand-written Euler loop, denoiser D(x) = 0.9 x.

    The loop is EDM Algorithm 1 without its correction: d = (x - D(x; t_i)) / t_i,
    x <- x + (t_{i+1} - t_i) d, on the very time steps the sampler uses (sigma(t) = t,
    s = 1). Timings alternate between the two and keep the best of `repeats`.
    """
    import presets
    import samplers

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


# --------------------------------------------------------------------------- the whole benchmark


def machine_info(threads: int) -> dict:
    import scipy

    info = {
        "platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "torch_threads": threads, "python": sys.version.split()[0],
        "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def run_sweep(bench: Bench, log: Callable[[str], None] = print) -> None:
    """The solver, formulation and discretization sections of the sweep (records kept in bench.records)."""
    s = bench.settings
    if "solvers" in s.sections:
        log("solvers (edm formulation, edm discretization)")
    for solver in s.solvers if "solvers" in s.sections else ():
        for nfe in s.solvers_nfe:
            bench.run("solvers", solver, "edm", "edm", nfe)
        _log_line(log, bench, "solvers", solver)
    if "formulations" in s.sections:
        log("formulations (euler, heun)")
    for formulation in s.formulations if "formulations" in s.sections else ():
        discretizations = ["edm"] + ([OWN_DISCRETIZATION[formulation]] if s.own_discretizations and formulation != "ddpm" else [])
        for discretization in dict.fromkeys(discretizations):
            for solver in ("euler", "heun"):
                for nfe in s.nfe:
                    bench.run("formulations", solver, formulation, discretization, nfe)
                _log_line(log, bench, "formulations", solver, formulation, discretization)
    if "discretizations" in s.sections:
        log("discretizations (edm formulation)")
    for discretization in s.discretizations if "discretizations" in s.sections else ():
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


def conclusions(records: List[dict], optimized: List[dict], overhead: List[dict], settings: Optional[Settings] = None) -> dict:
    """Check the benchmark's claims against the records; every check says what it compared."""
    out: dict = {}

    # 1. Heun beats Euler at equal NFE on every formulation (and discretization) swept.
    pairs = []
    for section in ("solvers", "formulations", "discretizations"):
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


def run_benchmark(settings: Settings, out_dir: Optional[str] = "benchmarks/results", plot: bool = True,
                  optimize: bool = True, overhead: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run the whole benchmark and write solvers_<target>[-quick].{json,md,png} (and optimized steps) to out_dir."""
    from . import targets

    wall = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        machine = machine_info(settings.threads)
        target = targets.get(settings.target)
        bench = Bench.make(target, settings, log)
        log(f"target {target.name}: {target.description}; {settings.num_latents} latents, rtol {settings.rtol:g}")

        t0 = time.perf_counter()
        main_ref = bench.refs.get("main", bench.latents, 80.0)
        accuracy = reference_accuracy(target, bench.latents, 80.0, settings.rtol, first=main_ref)
        log(f"  reference accuracy (rtol {settings.rtol:g} vs {settings.rtol / 2:g}): RMS {accuracy['rms_difference']:.2e}, "
            f"max {accuracy['max_abs_difference']:.2e}")
        timings = {"reference_check": time.perf_counter() - t0}

        t0 = time.perf_counter()
        run_sweep(bench, log)
        timings["sweep"] = time.perf_counter() - t0

        optimized = []
        if optimize:
            t0 = time.perf_counter()
            log("optimized steps")
            for solver, budget in settings.optimize:
                optimized.append(optimize_steps(bench, solver, budget, settings.optimize_maxfev, log=log))
            timings["optimize"] = time.perf_counter() - t0

        overhead_rows = []
        if overhead:
            t0 = time.perf_counter()
            overhead_rows = sampler_overhead(settings.overhead_shapes, settings.overhead_steps, settings.overhead_repeats)
            for row in overhead_rows:
                log(f"  overhead {row['shape']}: samplers.sample / hand loop = {row['ratio']:.2f}")
            timings["overhead"] = time.perf_counter() - t0

        timings["references"] = bench.refs.seconds
        timings["total"] = time.perf_counter() - wall
        results = {
            "benchmark": "solvers", "target": target.name, "description": target.description, "kind": target.kind,
            "dim": target.dim, "target_details": target.extra, "settings": _jsonable(settings.__dict__),
            "machine": machine, "reference": accuracy, "records": bench.records, "optimized": optimized,
            "overhead": overhead_rows, "timings": timings,
        }
        results["conclusions"] = conclusions(bench.records, optimized, overhead_rows, settings)
        if out_dir is not None:
            results["files"] = write_results(results, out_dir, plot=plot, log=log)
        log(f"done in {timings['total']:.0f} s")
        return results
    finally:
        torch.set_num_threads(previous_threads)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- output


def stem_of(results: dict) -> str:
    return f"solvers_{results['target']}" + ("_quick" if results["settings"]["quick"] else "")


def write_results(results: dict, out_dir: str, plot: bool = True, log: Callable[[str], None] = print) -> List[str]:
    """JSON, Markdown table, optimized-steps JSON files and (with matplotlib) the PNG plot."""
    from .files import write_atomic

    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, stem_of(results))
    written = []
    for o in results["optimized"]:
        path = os.path.join(out_dir, f"steps_{results['target']}_{o['solver']}_nfe{o['nfe']}.json")
        save_levels(path, o, results["target"])
        o["file"] = path
        written.append(path)
    png = stem + ".png"
    if plot:
        try:
            plot_results(results, png)
            written.append(png)
        except ConfigError as missing:
            log(f"  no plot: {missing}")
    write_atomic(stem + ".md", markdown(results, os.path.basename(png) if png in written else None).encode())
    write_atomic(stem + ".json", (json.dumps(_jsonable(results), indent=1) + "\n").encode())
    written = [stem + ".json", stem + ".md"] + written
    log("wrote " + ", ".join(written))
    return written


def _fmt(value, spec: str = ".2e") -> str:
    return "fail" if value is None else format(value, spec)


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
    lines.append(f"| Heun <= Euler from some NFE on, on every formulation and discretization | "
                 f"{'from NFE ' + str(start) + ' on (' + ', '.join(f'{k}: {v}' for k, v in h['heun_better_from_nfe_by_discretization'].items()) + ')' if start else 'not within the grid for ' + ', '.join(c['formulation'] + '/' + c['discretization'] for c in h['crossover'] if c['heun_better_from_nfe'] is None)} "
                 f"| {_yes(start is not None)} |")
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
    finite = results["kind"] == "finite"
    lines += _table(records, "solvers", "Solvers (edm formulation, edm discretization): RMS error", lambda r: r["solver"])
    lines += _table(records, "solvers", "Solvers: sliced W2 to the reference samples", lambda r: r["solver"], key="sw2")
    lines += _table(records, "solvers", "Solvers: median over samples of the per-sample RMS error", lambda r: r["solver"], key="median")
    if finite:
        lines += _table(records, "solvers", "Solvers: fraction of samples landing on a different training point than the reference",
                        lambda r: r["solver"], key="different_point_fraction", spec=".3f")
    else:
        lines += _table(records, "solvers", "Solvers: fraction of samples ending in a different mixture component than the reference",
                        lambda r: r["solver"], key="different_component_fraction", spec=".3f")
    lines += _table(records, "formulations", "Formulations (Euler and Heun): RMS error",
                    lambda r: f"{r['solver']} / {r['formulation']} / {r['discretization']}")
    lines += _table(records, "discretizations", "Discretizations (edm formulation; own sigma range, or EDM's [0.002, 80]): RMS error",
                    lambda r: f"{r['solver']} / {r['discretization']} / {r['range']}")
    if results["optimized"]:
        lines += ["## Optimized steps (held-out latents)", "", "| solver | N | NFE | edm rho=7 | optimized | reduction | levels |", "|---|---|---|---|---|---|---|"]
        for o in results["optimized"]:
            levels = ", ".join(f"{s:.3g}" for s in o["sigmas"])
            lines.append(f"| {o['solver']} | {o['num_steps']} | {o['nfe']} | {o['held_out']['rms_edm']:.2e} | "
                         f"{o['held_out']['rms_optimized']:.2e} | {_change(o['held_out']['reduction'])} | {levels} |")
        lines.append("")
    if results["overhead"]:
        lines += ["## Sampler overhead (denoiser D(x) = 0.9 x, euler, 50 steps)", "",
                  "| batch | hand loop | samplers.sample | ratio | overhead per step |", "|---|---|---|---|---|"]
        for o in results["overhead"]:
            lines.append(f"| {o['shape']} | {1e3 * o['hand_seconds']:.2f} ms | {1e3 * o['sample_seconds']:.2f} ms | "
                         f"{o['ratio']:.2f} | {o['per_step_overhead_us']:.0f} us |")
        lines.append("")
    t = results["timings"]
    lines += ["## Timings", "", " | ".join(f"{k} {v:.0f} s" for k, v in t.items()), ""]
    return "\n".join(lines)


def _settings_line(settings: dict) -> str:
    sections = settings.get("sections", ["solvers", "formulations", "discretizations"])
    text = (f"Sweep: sections {', '.join(sections)}; solvers {', '.join(settings['solvers'])} at NFE "
            f"{', '.join(map(str, settings['solvers_nfe']))}")
    if "formulations" in sections:
        text += f"; euler and heun on formulations {', '.join(settings['formulations'])}"
    if "discretizations" in sections:
        text += f"; {', '.join(settings['discretization_solvers'])} on discretizations {', '.join(settings['discretizations'])}"
    if len(sections) > 1 or sections != ["solvers"]:
        text += f" at NFE {', '.join(map(str, settings['nfe']))}"
    return text + "."


def _change(reduction: Optional[float]) -> str:
    if reduction is None:
        return "n/a"
    return f"{100 * reduction:.0f}% lower" if reduction >= 0 else f"{-100 * reduction:.0f}% higher"


def render(json_path: str, plot: bool = True) -> None:
    """Re-derive the conclusions and rewrite the Markdown (and plot) of a results JSON from its records."""
    from .files import write_atomic

    with open(json_path) as file:
        results = json.load(file)
    results["conclusions"] = conclusions(results["records"], results["optimized"], results["overhead"], None)
    stem = os.path.splitext(json_path)[0]
    png = stem + ".png"
    if plot:
        plot_results(results, png)
    write_atomic(stem + ".md", markdown(results, os.path.basename(png) if os.path.exists(png) else None).encode())
    write_atomic(json_path, (json.dumps(_jsonable(results), indent=1) + "\n").encode())


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _table(records, section: str, title: str, row_of: Callable[[dict], str], key: str = "rms", spec: str = ".2e") -> List[str]:
    rows = [r for r in records if r["section"] == section]
    if not rows:
        return []
    nfes = sorted({r["nfe"] for r in rows if r["nfe"] is not None})
    names = list(dict.fromkeys(row_of(r) for r in rows))
    lines = [f"## {title}", "", "| | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for name in names:
        cells = {r["nfe"]: r.get(key) for r in rows if row_of(r) == name}
        lines.append(f"| {name} | " + " | ".join("" if n not in cells else _fmt(cells[n], spec) for n in nfes) + " |")
    return lines + [""]


def plot_results(results: dict, path: str) -> None:
    """Error against NFE on log-log axes: one line per solver; formulations; discretizations."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the plot needs the optional package matplotlib: pip install -e .[plot]") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import write_atomic

    records = results["records"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 6.2))

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
                color=colors.get(o["solver"], "black"), markeredgecolor="black", label=f"{o['solver']}, optimized steps, NFE {o['nfe']}")
    heun35 = _find(records, section="solvers", solver="heun", nfe=35)
    if heun35 and heun35[0]["rms"]:
        ax.axhline(heun35[0]["rms"], color="gray", linestyle=":", linewidth=1)
        ax.axvline(15, color="gray", linestyle=":", linewidth=1)
    ax.set_title("solvers (edm formulation, edm steps)")
    ax.set_ylabel("RMS end-point error vs the exact ODE solution")

    ax = axes[1]
    for i, key in enumerate(dict.fromkeys((r["formulation"], r["discretization"]) for r in records
                                          if r["section"] in ("solvers", "formulations") and r["solver"] in ("euler", "heun"))):
        formulation, discretization = key
        color = f"C{i % 10}"
        for solver, style in (("heun", "-"), ("euler", "--")):
            rows = [r for r in records if r["section"] in ("solvers", "formulations") and r["solver"] == solver
                    and r["formulation"] == formulation and r["discretization"] == discretization]
            line(ax, rows, f"{solver}, {formulation}/{discretization}", color=color, linestyle=style)
    ax.set_title("formulations: heun (solid), euler (dashed)")

    ax = axes[2]
    line(ax, _find(records, section="solvers", solver="heun"), "edm", color="black")
    for i, discretization in enumerate(dict.fromkeys(r["discretization"] for r in records if r["section"] == "discretizations")):
        for range_name, style in (("own", "-"), ("common", ":")):
            line(ax, _find(records, section="discretizations", solver="heun", discretization=discretization, range=range_name),
                 f"{discretization} ({range_name} range)", color=f"C{i}", linestyle=style)
    ax.set_title("heun, edm formulation: discretizations")

    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    nfes = sorted({r["nfe"] for r in records if r["nfe"]})
    ticks = [n for n in (5, 10, 15, 20, 35, 50, 100, 200) if nfes and nfes[0] <= n <= nfes[-1]]
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, min(top, 10.0))  # runs that blew up (errors > 10 in data units) are clipped
        ax.set_xlabel("NFE (denoiser evaluations)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=6.5, loc="upper right", ncol=2 if len(ax.lines) > 10 else 1)
    m = results["machine"]
    fig.suptitle(f"{results['target']}: {results['settings']['num_latents']} latents; {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}", fontsize=9)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


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
            raise ConfigError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
    return values


def _parse_pairs(text: Optional[str]) -> Optional[Tuple[Tuple[str, int], ...]]:
    if text is None:
        return None
    pairs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        solver, _, budget = part.rpartition(":")
        if solver not in DETERMINISTIC or not budget.isdigit() or int(budget) < 2:
            raise ConfigError(f"--optimize {part!r} is invalid; write SOLVER:NFE with SOLVER one of {', '.join(DETERMINISTIC)} and NFE >= 2")
        pairs.append((solver, int(budget)))
    return tuple(pairs)


def _solvers_command():
    import click

    from . import targets

    @click.command("solvers")
    @click.option("--target", default=None, help=f"Target: {', '.join(targets.names())} [default: digits-gmm; gmm2d with --quick].")
    @click.option("--quick", is_flag=True, help="Small sweep on the 2-D mixture (under a minute); what the tests run.")
    @click.option("--latents", "num_latents", type=int, default=None, help="Number of latents scored [default: 256].")
    @click.option("--nfe", default=None, help="Comma-separated NFE grid for every section, e.g. 5,9,15,35.")
    @click.option("--solvers", default=None, help="Comma-separated deterministic solvers of the solver section.")
    @click.option("--optimize", "optimize_pairs", default=None, help="Comma-separated SOLVER:NFE pairs whose steps are optimized, e.g. dpm++3m:10,heun:10.")
    @click.option("--sections", default=None, help="Comma-separated sweep sections: solvers, formulations, discretizations [default: all].")
    @click.option("--no-optimize", is_flag=True, help="Skip the time-step optimization.")
    @click.option("--no-overhead", is_flag=True, help="Skip the sampler-overhead timing.")
    @click.option("--no-plot", is_flag=True, help="Skip the PNG plot.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the latents (calibration latents use another).")
    @click.option("--threads", type=int, default=1, show_default=True, help="torch threads (1 is fastest on a shared machine).")
    @click.option("--out-dir", default=os.path.join("benchmarks", "results"), show_default=True, help="Where results are written.")
    def solvers_command(target, quick, num_latents, nfe, solvers, optimize_pairs, sections, no_optimize,
                        no_overhead, no_plot, seed, threads, out_dir):
        """Sweep solver x discretization x formulation x NFE against the exact ODE solution; optimize time steps.

        Writes solvers_TARGET.json, .md and .png and steps_TARGET_SOLVER_nfeN.json under --out-dir.
        """
        import samplers

        if target is not None and target not in targets.names():
            from .errors import unknown

            raise unknown("target", target, targets.names())
        if num_latents is not None and num_latents < 2:
            raise ConfigError(f"--latents {num_latents} is invalid; need at least 2")
        if threads < 1:
            raise ConfigError(f"--threads {threads} is invalid; need at least 1")
        grid = _parse_ints(nfe, "--nfe")
        settings = Settings.make(
            target, quick, num_latents=num_latents, seed=seed, threads=threads,
            solvers_nfe=grid, nfe=grid, solvers=_parse_names(solvers, DETERMINISTIC, "deterministic solver"),
            optimize=_parse_pairs(optimize_pairs),
            sections=_parse_names(sections, ("solvers", "formulations", "discretizations"), "section"),
        )
        samplers.names()
        run_benchmark(settings, out_dir, plot=not no_plot, optimize=not no_optimize, overhead=not no_overhead, log=click.echo)

    return solvers_command


solvers_command = _solvers_command()
