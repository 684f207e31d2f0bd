"""benchmarks/solver_goals.py: the worse-of-two-latent-sets rule, NFE accounting, schedules, --report-only.

A quick run on the 2-D mixture (seconds); its numbers are checked against what they must be:
the goal is Heun with EDM's steps at 35 NFE on each set, every untuned configuration costs
exactly 8 evaluations (9 steps with the analytical first step), every fit 6, a fit never ends
worse on its calibration latents than where it started, and the conclusions take the worse set.
"""

import json
import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import presets  # noqa: E402
import samplers  # noqa: E402
import solver_goals as goals  # noqa: E402  (benchmarks/solver_goals.py)
from conftest import one_torch_thread  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("goals")
    with one_torch_thread():
        assert goals.main(["--quick", "--maxfev", "30", "--out-dir", str(out)]) == 0
    return json.loads((out / "solver_goals_gmm2d_quick.json").read_text()), out


def test_goal_is_heun_with_edm_steps_at_35_nfe(quick):
    results, _ = quick
    assert results["goal"]["solver"] == "heun" and results["goal"]["nfe"] == 35
    assert set(results["goal"]["rms"]) == {"A", "B"} and results["goal"]["rms"]["A"] != results["goal"]["rms"]["B"]


def test_every_untuned_run_costs_8_evaluations(quick):
    results, _ = quick
    untuned = [r for r in results["records"] if r["part"] == "untuned"]
    assert len(untuned) == len(results["variants"]) * len(results["schedules"]) * 2
    for r in untuned:
        if r["solver"] == "heun":  # 2 per step, 1 on the last: 4 steps (7 NFE), or 5 with AFS (8)
            assert (r["num_steps"], r["nfe"]) == ((5, 8) if r["afs"] else (4, 7))
        else:
            assert r["nfe"] == 8 and r["num_steps"] == 8 + r["afs"]


def test_fits_cost_6_evaluations_and_never_end_worse_on_calibration(quick):
    results, _ = quick
    fits = [r for r in results["records"] if r["part"] == "optimized"]
    assert fits and all(r["nfe"] == 6 and r["num_steps"] == 7 and r["afs"] for r in fits)
    for r in fits:
        assert r["calibration"]["rms_fitted"] <= r["calibration"]["rms_start"]
        assert r["sigmas"][0] == r["start"]["sigmas"][0]  # sigma_max stays where the start schedule has it


def test_conclusions_take_the_worse_set(quick):
    results, _ = quick
    goal = results["goal"]["rms"]
    for part in ("untuned", "optimized"):
        rows = [r for r in results["records"] if r["part"] == part]
        scores = [max(r["rms"]["A"] / goal["A"], r["rms"]["B"] / goal["B"]) for r in rows if None not in r["rms"].values()]
        c = results["conclusions"][part]
        assert c["worse_ratio"] == pytest.approx(min(scores), rel=1e-12)
        assert c["reached"] == (min(scores) <= 1)


def test_schedules_are_the_discretizations_they_name():
    f = presets.get("edm")
    cases = [("edm rho=7", "edm"), ("vp-time p=1", "time-uniform"), ("vp-time p=2", "time-quadratic"), ("logsnr", "logsnr")]
    for label, name in cases:
        expected = f.sigma(samplers.time_steps(f, 9, name))[:-1]
        assert torch.allclose(goals.schedule_levels(label, 9), expected, rtol=1e-12), label


def test_a_variant_s_ode_is_the_formulation_its_solver_integrates():
    """DPM-Solver++ gives the same samples on every formulation's ODE (Lu et al. 2022: it integrates the
    exponential form in logSNR, which the scaling s(t) cancels from), while a multistep method in t does not;
    and "ode" is not passed to the solver as an option."""
    with one_torch_thread():
        h = goals.Harness("gmm2d", 16, 4, lambda _: None)
        levels = goals.schedule_levels("edm rho=7", 8)
        edm = h.rms("A", "dpm++2m", levels, {}, False)[0]
        flow = h.rms("A", "dpm++2m", levels, {"ode": "flow"}, False)[0]
        assert flow == pytest.approx(edm, rel=1e-9)
        ipndm_edm = h.rms("A", "ipndm", levels, {"max_order": 3}, False)[0]
        ipndm_flow = h.rms("A", "ipndm", levels, {"max_order": 3, "ode": "flow"}, False)[0]
        assert abs(ipndm_flow - ipndm_edm) > 1e-3 * ipndm_edm
    assert goals.split_ode({"max_order": 3, "ode": "flow"}) == ("flow", {"max_order": 3})
    assert goals.split_ode({"max_order": 3}) == ("edm", {"max_order": 3})


def test_dpm3m_taylor_measures_a_higher_order_than_published(quick):
    results, _ = quick
    orders = results["conclusions"]["orders"]
    assert orders["dpm++3m taylor"] > 2.7 and orders["dpm++3m"] < orders["dpm++3m taylor"]


def test_report_only_rebuilds_the_report_byte_for_byte(quick, tmp_path):
    _, out = quick
    for suffix in (".json", ".md", ".png"):
        shutil.copy(out / f"solver_goals_gmm2d_quick{suffix}", tmp_path / f"solver_goals_gmm2d_quick{suffix}")
    (tmp_path / "solver_goals_gmm2d_quick.md").write_text("stale")
    assert goals.main(["--report-only", "--quick", "--no-plot", "--out-dir", str(tmp_path)]) == 0
    for suffix in (".json", ".md"):
        assert (tmp_path / f"solver_goals_gmm2d_quick{suffix}").read_bytes() == (out / f"solver_goals_gmm2d_quick{suffix}").read_bytes()


def test_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        goals.main(["--report-only", "--out-dir", str(tmp_path)])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
