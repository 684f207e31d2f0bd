"""The post-hoc EMA benchmark (benchmarks/ema.py): one run, FD against EMA length, a report rebuilt byte for byte."""

import json
import os
import shutil

import pytest

from conftest import benchmark_folders, import_benchmark, one_torch_thread

be = import_benchmark("ema")  # benchmarks/ema.py


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out, work = benchmark_folders(tmp_path_factory, "ema")
    with one_torch_thread():
        assert be.main(["--quick", "--out-dir", out, "--work-dir", work]) == 0
    files = {name: open(os.path.join(out, f"ema_digits.{name}"), "rb").read() for name in ("json", "md", "png")}
    return {"out": out, "work": work, "files": files, "payload": json.loads(files["json"])}


def test_every_std_is_scored_from_the_snapshots_up_to_its_step(quick):
    s, rows = quick["payload"]["settings"], quick["payload"]["rows"]
    for step in (s["steps"] // 2, s["steps"]):
        posthoc = [r for r in rows if r["step"] == step and r["weights"] == "post-hoc"]
        assert [r["std"] for r in posthoc] == s["eval_stds"]
        # two profiles per snapshot, one snapshot every snapshot_every_steps steps up to the step
        assert all(r["snapshots"] == 2 * (step // s["snapshot_every_steps"]) for r in posthoc)
        assert {r["weights"] for r in rows if r["step"] == step and r["std"] is None} == {"raw", "halflife-ema"}
    assert all(r["fd"] is not None and r["fd"] > 0 for r in rows)


def test_the_markdown_names_the_best_std_of_the_json(quick):
    s, rows = quick["payload"]["settings"], quick["payload"]["rows"]
    best = min((r for r in rows if r["step"] == s["steps"] and r["weights"] == "post-hoc"), key=lambda r: r["fd"])
    assert f"the best relative std is {best['std']:g} (FD {best['fd']:.3f})" in quick["files"]["md"].decode()


def test_report_only_rebuilds_the_report_byte_for_byte(quick, tmp_path):
    (tmp_path / "ema_digits.json").write_bytes(quick["files"]["json"])
    assert be.main(["--report-only", "--out-dir", str(tmp_path)]) == 0
    for name in ("json", "md", "png"):
        assert (tmp_path / f"ema_digits.{name}").read_bytes() == quick["files"][name], name


def test_report_only_without_results_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        be.main(["--report-only", "--out-dir", str(tmp_path)])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --report-only") and err.count("\n") == 1


def test_report_only_on_mnist_reads_and_writes_the_mnist_files(quick, tmp_path):
    payload = dict(quick["payload"], settings=dict(quick["payload"]["settings"], data="mnist"))
    (tmp_path / "ema_mnist.json").write_text(json.dumps(payload))
    assert be.main(["--report-only", "--data", "mnist", "--out-dir", str(tmp_path), "--no-plot"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["ema_mnist.json", "ema_mnist.md"]  # no digits file read or written
    assert "# Post-hoc EMA on mnist" in (tmp_path / "ema_mnist.md").read_text()
    assert json.loads((tmp_path / "ema_mnist.json").read_text()) == payload


def test_a_run_trained_before_a_default_changed_is_refused_not_reused(quick, tmp_path, capsys):
    """A U-Net run whose config.json does not record min_channels_per_group loads with one channel per group (the
    default it was trained with); the benchmark must not resume and score it as a run of today's U-Net."""
    work = tmp_path / "work"
    shutil.copytree(quick["work"], work)
    run_dir = work / "digits-quick"
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text())
    assert config["net_options"]["min_channels_per_group"] == 4  # what a new run records
    del config["net_options"]["min_channels_per_group"]
    config_path.write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as done:
        be.main(["--quick", "--out-dir", str(out), "--work-dir", str(work), "--no-plot"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "min_channels_per_group" in err and str(run_dir) in err and "--work-dir" in err
    assert {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # not resumed or rewritten
    assert not out.exists() or not any(out.iterdir())
