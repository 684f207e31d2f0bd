"""benchmarks/dit_ablation.py and benchmarks/gan_remedies.py: --report-only rebuilds the committed reports byte for
byte from their JSON, and bad input ends with one line."""

import json
import os
import shutil
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import dit_ablation  # noqa: E402  (benchmarks/dit_ablation.py)
import gan_remedies  # noqa: E402  (benchmarks/gan_remedies.py)

RESULTS = os.path.join(BENCH, "results")


@pytest.mark.parametrize("module, data, folder", [(dit_ablation, "digits", ""), (dit_ablation, "mnist", ""), (gan_remedies, "digits", ""),
                                                  (gan_remedies, "mnist", ""), (gan_remedies, "digits", "gan_remedies_budget"),
                                                  (gan_remedies, "mnist", "gan_remedies_budget"), (gan_remedies, "digits", "gan_remedies_r1"),
                                                  (gan_remedies, "mnist", "gan_remedies_r1"), (gan_remedies, "digits", "gan_remedies_r1_30s"),
                                                  (gan_remedies, "mnist", "gan_remedies_r1_1200s")])
def test_report_only_rebuilds_the_committed_markdown(module, data, folder, tmp_path):
    stem, results = module.stem(data), os.path.join(RESULTS, folder)
    shutil.copy(os.path.join(results, f"{stem}.json"), tmp_path / f"{stem}.json")
    assert module.main(["--report-only", "--data", data, "--out-dir", str(tmp_path)]) == 0
    with open(os.path.join(results, f"{stem}.md")) as committed, open(tmp_path / f"{stem}.md") as rebuilt:
        assert rebuilt.read() == committed.read()


@pytest.mark.parametrize("module, argv, words", [
    (dit_ablation, ["--variants", "dit-nonsense"], "dit-nonsense"),
    (dit_ablation, ["--budget", "-1"], "--budget -1.0"),
    (gan_remedies, ["--variants", "nonsense"], "nonsense"),
    (gan_remedies, ["--report-only"], "--report-only"),
    (gan_remedies, ["--samples", "0"], "--samples 0"),
])
def test_bad_input_is_one_line(module, argv, words, tmp_path, capsys):
    if "--report-only" not in argv:
        argv = argv + ["--work-dir", str(tmp_path / "work")]
    with pytest.raises(SystemExit) as caught:
        module.main(argv + ["--out-dir", str(tmp_path)])
    assert caught.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and "\n" not in err
    assert not os.path.exists(tmp_path / "work")


def test_a_gan_run_is_reused_only_for_the_same_budget_and_options(tmp_path):
    run_dir = tmp_path / "ttur8-seed0"
    run_dir.mkdir()
    options = {"channels": 48, "lr_ratio": 8.0, "r1": 0.0}
    (run_dir / "config.json").write_text(json.dumps({"kind": "family", "name": "gan", "options": options}))
    assert gan_remedies.trained_on_budget(str(run_dir), options, 30.0) is None  # no budget.json: not finished
    (run_dir / "budget.json").write_text(json.dumps({"budget_s": 30.0, "steps": 412, "cpu_s": 30.4}))
    assert gan_remedies.trained_on_budget(str(run_dir), options, 30.0) == {"budget_s": 30.0, "steps": 412, "cpu_s": 30.4}
    assert gan_remedies.trained_on_budget(str(run_dir), options, 120.0) is None
    assert gan_remedies.trained_on_budget(str(run_dir), {**options, "r1": 1.0}, 30.0) is None
