"""The formulation benchmark (benchmarks/formulations.py).

The quick mode must run end to end and write finite results, with the cross-sampling
rows; the aggregation over seeds and the paired ordering test are checked on
constructed input whose answers are known.
"""

import json
import math
import os
import shutil

import pytest

import samplers
from conftest import benchmark_folders, import_benchmark
from edm_space.errors import ConfigError

common = import_benchmark("common")  # benchmarks/common.py
bf = import_benchmark("formulations")  # benchmarks/formulations.py


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick toy benchmark (2 presets, 1 seed), shared by the tests below."""
    out, work = benchmark_folders(tmp_path_factory, "formulations")
    settings = bf.make_settings("toy", quick=True)
    results = bf.run_benchmark(settings, out, work_dir=work, plot=True, log=lambda _: None)
    return {"results": results, "out": out, "work": work, "settings": settings}


def test_quick_mode_writes_json_markdown_and_plots(quick):
    out = quick["out"]
    for name in ("formulations_toy.json", "formulations_toy.md"):
        assert os.path.isfile(os.path.join(out, name))
    for suffix in ("nfe", "training", "lossfloor"):
        with open(os.path.join(out, f"formulations_toy_{suffix}.png"), "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(out, "formulations_toy.json")) as file:
        payload = json.load(file)  # standard JSON: no NaN tokens
    assert payload["data"] == "toy" and payload["settings"]["quick"] is True
    markdown = open(os.path.join(out, "formulations_toy.md")).read()
    for heading in ("## Equal training budget", "## EDM's orderings", "## Metric against NFE",
                    "## Metric against training images", "## Cross-sampling", "## Loss floor"):
        assert heading in markdown


def test_quick_mode_metrics_are_finite(quick):
    summary = quick["results"]["summary"]
    settings = quick["settings"]
    model_rows = [r for r in summary["rows"] if r["section"] != "data"]
    assert {r["model"] for r in model_rows} == set(settings.presets)
    for row in summary["rows"]:
        for metric in ("sw2", "sw2_boot", "mmd2", "far"):
            assert math.isfinite(row[metric]["mean"]), (row, metric)
            assert row[metric]["n"] == len(settings.seeds), (row, metric)
    for preset in settings.presets:
        assert math.isfinite(summary["likelihood"][preset]["nll"]["mean"])
        buckets = summary["loss_floor"][preset]
        assert len(buckets) == len(settings.floor_buckets) - 1
        for bucket in buckets:
            assert all(math.isfinite(bucket[k]["mean"]) for k in ("model", "floor", "excess"))
            assert bucket["excess"]["mean"] == pytest.approx(bucket["model"]["mean"] - bucket["floor"]["mean"], rel=1e-9, abs=1e-12)
    # every section is there: one training row per stage, the own sampler, the sweep at every NFE for both solvers
    for preset in settings.presets:
        mine = [r for r in model_rows if r["model"] == preset]
        assert sorted(r["images"] for r in mine if r["section"] == "training") == [st * settings.batch for st in settings.stages]
        assert len([r for r in mine if r["section"] == "own"]) == 1
        sweep = {(r["solver"], r["nfe"]) for r in mine if r["section"] == "sweep"}
        assert sweep == {(solver, nfe) for solver in ("heun", "euler") for nfe in settings.nfe_grid}


def test_cross_sampling_rows_present(quick):
    rows = quick["results"]["summary"]["rows"]
    flow_under_edm = [r for r in rows if r["section"] == "cross" and r["model"] == "flow" and r["ode"] == "edm"]
    assert len(flow_under_edm) == 1
    assert (flow_under_edm[0]["solver"], flow_under_edm[0]["discretization"], flow_under_edm[0]["nfe"]) == ("heun", "edm", 35)
    edm_under_flow = [r for r in rows if r["section"] == "cross" and r["model"] == "edm" and r["ode"] == "flow"]
    assert len(edm_under_flow) == 1
    assert (edm_under_flow[0]["solver"], edm_under_flow[0]["discretization"], edm_under_flow[0]["nfe"]) == ("euler", "uniform-t", 50)
    assert math.isfinite(edm_under_flow[0]["sw2"]["mean"])
    markdown = open(os.path.join(quick["out"], "formulations_toy.md")).read()
    assert "| flow | edm ODE | heun, edm | 18 | 35 |" in markdown
    assert "| edm | flow ODE | euler, uniform-t | 50 | 50 |" in markdown


def test_finished_runs_are_reused_with_identical_numbers(quick, tmp_path):
    again = bf.run_benchmark(quick["settings"], str(tmp_path), work_dir=quick["work"], plot=False, log=lambda _: None)
    assert again["reused_runs"] == len(again["runs"]) == len(quick["settings"].presets)
    assert again["summary"]["rows"] == quick["results"]["summary"]["rows"]


def run_main(args, capsys):
    """benchmarks/formulations.py ARGS in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as done:
        bf.main(args)
    return done.value.code, capsys.readouterr().err


def test_command_line_quick_and_bad_input(quick, tmp_path, capsys):
    assert bf.main(["--quick", "--no-plot", "--out-dir", str(tmp_path), "--work-dir", quick["work"]]) == 0
    assert os.path.isfile(tmp_path / "formulations_toy.md") and not os.path.exists(tmp_path / "formulations_digits.md")
    code, err = run_main(["--quick", "--presets", "edm,nope", "--out-dir", str(tmp_path / "bad")], capsys)
    assert code == 2 and err.startswith("error: unknown preset 'nope'") and err.count("\n") == 1
    code, err = run_main(["--quick", "--seeds", "x", "--out-dir", str(tmp_path / "bad")], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "bad")
    code, _ = run_main(["--help"], capsys)
    assert code == 0


def test_settings():
    with pytest.raises(ConfigError, match="unknown preset"):
        bf.make_settings("toy", preset_names=["edm", "bogus"])
    with pytest.raises(ConfigError, match="unknown data"):
        bf.make_settings("cifar")
    full = bf.make_settings("digits")
    assert full.presets == bf.PRESETS and full.seeds == (0, 1, 2)
    # ddpm's own 1000 ancestral steps are capped on digits, and the cap is reported
    own = bf.own_sampler("ddpm", full)
    assert own == {"solver": "ancestral", "discretization": "ddpm", "steps": 100, "default_steps": 1000, "capped": True}
    assert bf.own_sampler("vp", bf.make_settings("toy"))["steps"] == 256
    # the fingerprint ignores the preset and seed lists but not the training budget
    a = bf.make_settings("toy")
    assert a.fingerprint("edm", 0) == bf.make_settings("toy", preset_names=["edm"], seeds=[0, 5]).fingerprint("edm", 0)
    assert a.fingerprint("edm", 0) != bf.make_settings("toy", quick=True).fingerprint("edm", 0)
    assert a.fingerprint("edm", 0) != a.fingerprint("edm", 1)


# --------------------------------------------------------------------------- aggregation and orderings


def _row(seed, model="edm", section="sweep", solver="heun", steps=18, **metrics):
    return {"section": section, "model": model, "ode": model, "solver": solver, "discretization": "edm",
            "steps": steps, "nfe": samplers.get(solver).nfe(steps), "images": 100, "seed": seed, **metrics}


def test_mean_std_aggregation_on_constructed_input():
    rows = [_row(0, sw2=1.0, label="x"), _row(1, sw2=2.0, label="x"), _row(2, sw2=6.0, label="x"),
            _row(0, model="vp", sw2=4.0), _row(1, model="vp", sw2=float("nan"))]
    out = {r["model"]: r for r in bf.aggregate_rows(rows)}
    assert out["edm"]["sw2"] == {"mean": 3.0, "std": pytest.approx(math.sqrt(7.0)), "n": 3}  # var = (4 + 1 + 9) / 2
    assert out["edm"]["seeds"] == [0, 1, 2] and out["edm"]["label"] == "x"
    assert out["vp"]["sw2"] == {"mean": 4.0, "std": 0.0, "n": 1}  # the non-finite seed is left out and counted
    assert bf.mean_std([]) == {"mean": None, "std": None, "n": 0}
    assert bf.mean_std([2.0, 4.0]) == {"mean": 3.0, "std": pytest.approx(math.sqrt(2.0)), "n": 2}


def test_aggregate_runs_averages_likelihood_and_loss_floor():
    def run(seed, nll, excess):
        return {"preset": "edm", "seed": seed, "rows": [_row(seed, sw2=nll)], "timing": {"total_s": 10.0 + seed},
                "likelihood": {"unit": "nats_per_dim", "nll": nll, "nll_se": 0.1},
                "loss_floor": [{"sigma_lo": 0.1, "sigma_hi": 1.0, "model": 1.0 + excess, "floor": 1.0, "excess": excess}]}

    summary = bf.aggregate_runs([run(0, 1.0, 0.2), run(1, 3.0, 0.4)], [])
    assert summary["likelihood"]["edm"]["nll"]["mean"] == 2.0
    assert summary["likelihood"]["edm"]["nll"]["std"] == pytest.approx(math.sqrt(2.0))
    bucket = summary["loss_floor"]["edm"][0]
    assert bucket["excess"]["mean"] == pytest.approx(0.3) and bucket["floor"] == {"mean": 1.0, "std": 0.0, "n": 2}
    assert summary["run_seconds"]["edm"]["mean"] == 10.5


def test_paired_comparison_verdicts():
    # a is lower than b by exactly 1 in every seed: zero spread of the difference, the claim holds
    assert bf.compare({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 3.0, 2: 4.0})["verdict"] == "a lower"
    # the reverse
    result = bf.compare({0: 5.0, 1: 6.0, 2: 7.0}, {0: 2.0, 1: 3.1, 2: 4.0})
    assert result["verdict"] == "b lower" and result["a_lower_in"] == 0 and result["n"] == 3
    # differences of both signs: the 95 % t-interval contains 0
    mixed = bf.compare({0: 1.0, 1: 3.0, 2: 2.0}, {0: 2.0, 1: 2.0, 2: 2.5})
    assert mixed["verdict"] == "not resolved" and mixed["diff"] == pytest.approx(-0.5 / 3)
    # t-interval: differences -1, -2, -3 -> mean -2, sd 1, half width t(0.975, 2) / sqrt(3) = 2.4841
    t = bf.compare({0: 0.0, 1: 0.0, 2: 0.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert t["half_width"] == pytest.approx(4.302652729 / math.sqrt(3), rel=1e-6) and t["verdict"] == "not resolved"
    # one seed: the bootstrap errors decide (1.96 sigma)
    assert bf.compare({0: 1.0}, {0: 1.5}, {0: 0.1}, {0: 0.1})["verdict"] == "a lower"
    assert bf.compare({0: 1.0}, {0: 1.2}, {0: 0.1}, {0: 0.1})["verdict"] == "not resolved"
    # only seeds both sides have, and only finite values, are paired
    assert bf.compare({0: 1.0, 1: float("nan")}, {0: 2.0, 1: 0.0, 2: 0.0})["n"] == 1
    assert bf.compare({}, {0: 1.0})["verdict"] == "no data"


def test_orderings_from_constructed_runs():
    settings = bf.make_settings("toy", preset_names=["edm", "vp", "ve"], seeds=[0, 1, 2])
    settings.nfe_grid = (35,)
    runs = []
    for seed in range(3):
        for model, base in (("edm", 1.0), ("vp", 2.0), ("ve", 0.5)):
            rows = [_row(seed, model=model, section="own", sw2=base + 0.01 * seed, mmd2=base),
                    _row(seed, model=model, solver="heun", steps=18, sw2=base + 0.01 * seed, mmd2=base),
                    _row(seed, model=model, solver="euler", steps=35, sw2=base + 1 + 0.02 * seed, mmd2=base)]
            runs.append({"preset": model, "seed": seed, "rows": rows})
    claims = bf.orderings(settings, runs)
    verdict = {(c["claim"], c.get("sampler"), c.get("nfe"), c["metric"]): c["holds"] for c in claims}
    assert verdict[("edm <= vp", "own", None, "sw2")] == "holds"
    assert verdict[("edm <= vp", "common", None, "sw2")] == "holds"
    assert verdict[("edm <= ve", "own", None, "sw2")] == "reversed"
    assert verdict[("edm <= vp", "own", None, "mmd2")] == "holds"  # -1 in every seed, no spread
    for model in ("edm", "vp", "ve"):
        assert verdict[(f"heun < euler ({model})", None, 35, "sw2")] == "holds"
        assert verdict[(f"heun < euler ({model})", None, 35, "mmd2")] == "not resolved"  # equal: the interval is [0, 0]


def test_report_only_rebuilds_the_same_summary(quick, tmp_path, capsys):
    shutil.copy(os.path.join(quick["out"], "formulations_toy.json"), tmp_path / "formulations_toy.json")
    assert bf.main(["--report-only", "--data", "toy", "--no-plot", "--out-dir", str(tmp_path)]) == 0
    with open(tmp_path / "formulations_toy.json") as file:
        rebuilt = json.load(file)
    assert rebuilt["wall_s"] == quick["results"]["wall_s"]  # the original run's time is kept
    assert rebuilt["summary"]["rows"] == json.loads(json.dumps(common.jsonable(quick["results"]["summary"]["rows"])))
    assert [c["holds"] for c in rebuilt["orderings"]] == [c["holds"] for c in quick["results"]["orderings"]]
    tables = lambda text: text[text.index("## Equal training budget") : text.index("## Notes")]  # noqa: E731
    assert tables((tmp_path / "formulations_toy.md").read_text()) == tables(open(os.path.join(quick["out"], "formulations_toy.md")).read())
    code, err = run_main(["--report-only", "--data", "digits", "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and "does not exist" in err
