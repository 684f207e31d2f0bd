"""The device benchmarks: benchmarks/gpu_check.py and the --device/--precision side of benchmarks/speed.py.

No GPU is needed: gpu_check.py runs every part on the CPU with --allow-cpu --quick (CUDA hidden,
so the same happens on a machine with one). There its checks become exact ones: two training
runs on the same device in the same precision must log the same losses bit for bit, the same
weights must give the same network output, and `edm-space sample` under torchrun (two gloo
processes) must write the file one process writes. Without CUDA and without flags it must print
one line and write nothing. speed.py --quick must measure both precisions, keep the keys of the
committed results, run its hand-written loops under autocast, and its hand-written Heun sampler
must agree with samplers.sample in both precisions.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_check  # noqa: E402  (benchmarks/gpu_check.py)
import speed  # noqa: E402  (benchmarks/speed.py)
from edm_space.errors import ConfigError  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _no_cuda_env(tmp: str) -> dict:
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TMPDIR=tmp,
                PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


# --------------------------------------------------------------------------- gpu_check.py


def _results_state() -> dict:
    state = {}
    for name in ("gpu_check.json", "gpu_check.md"):
        path = os.path.join(RESULTS, name)
        state[name] = os.stat(path).st_mtime_ns if os.path.exists(path) else None
    return state


def test_gpu_check_without_cuda_prints_one_line_and_writes_nothing(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    before = _results_state()
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py")], cwd=str(tmp_path),
                          env=_no_cuda_env(str(scratch)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [gpu_check.NO_GPU]
    assert done.stderr == ""
    assert _results_state() == before  # benchmarks/results untouched
    assert os.listdir(scratch) == []  # not even a temporary folder
    assert os.listdir(tmp_path) == ["tmp"]


@pytest.fixture(scope="module")
def cpu_check(tmp_path_factory):
    """One `gpu_check.py --allow-cpu --quick` run with CUDA hidden, shared by the tests below."""
    out = str(tmp_path_factory.mktemp("gpu-check"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        status = gpu_check.main(["--allow-cpu", "--quick", "--results-dir", out])
    with open(os.path.join(out, "gpu_check.json")) as file:
        payload = json.load(file)  # standard JSON: no NaN tokens
    with open(os.path.join(out, "gpu_check.md")) as file:
        markdown = file.read()
    return {"status": status, "payload": payload, "markdown": markdown}


def test_gpu_check_on_the_cpu_passes_and_the_markdown_is_built_from_the_json_alone(cpu_check):
    payload = cpu_check["payload"]
    assert cpu_check["status"] == 0 and payload["ok"] is True
    assert payload["device"] == "cpu" and payload["peak_gpu_memory_mib"] is None
    assert gpu_check.markdown(payload).rstrip("\n") == cpu_check["markdown"].rstrip("\n")
    assert "## Summary" in cpu_check["markdown"]


def test_same_device_and_precision_give_the_same_losses_bit_for_bit(cpu_check):
    reference, fp32, bf16 = cpu_check["payload"]["training"]
    assert (reference["device"], reference["precision"], fp32["device"], fp32["precision"]) == ("cpu", "fp32", "cpu", "fp32")
    assert reference["steps"] == 5 and fp32["steps"] > 5  # two separate runs, of different lengths
    assert len(reference["first_losses"]) == 5
    assert fp32["first_losses"] == reference["first_losses"]  # exact: float equality after a JSON round trip
    same, other = cpu_check["payload"]["loss_agreement"]
    assert same["max_relative_difference"] == 0.0 and same["tolerance"] == 0.0 and same["ok"]
    # bf16 starts from the same weights and draws; the zero output layer keeps the first losses close.
    assert other["precision"] == "bf16" and other["max_relative_difference"] <= gpu_check.TOLERANCE["bf16"]
    assert bf16["first_losses"][0] == reference["first_losses"][0]  # step 0: F = 0 exactly, whatever the precision


def test_network_agreement_is_exact_in_fp32_and_shows_bf16_rounding(cpu_check):
    fp32, bf16 = cpu_check["payload"]["network_agreement"]
    assert fp32["precision"] == "fp32" and fp32["relative_difference"] == 0.0
    # bfloat16 keeps 8 mantissa bits (relative spacing 2^-8 = 3.9e-3): the difference is real but of that order.
    assert bf16["precision"] == "bf16" and 1e-4 < bf16["relative_difference"] < gpu_check.TOLERANCE_NETWORK["bf16"]


def test_torchrun_sampling_equals_one_process(cpu_check):
    dist = cpu_check["payload"]["distributed"]
    assert dist["processes"] == 2 and dist["single"]["returncode"] == 0 and dist["torchrun"]["returncode"] == 0
    assert dist["equal"] is True and dist["max_abs_difference"] == 0.0
    assert dist["batch"] * dist["processes"] >= dist["n"]
    # The command line draws seed i's latents as this process did: same samples, up to batch composition.
    assert dist["cli_vs_in_process_max_abs_difference"] < 1e-6


def test_sampling_rows_cover_the_settings_at_ten_evaluations(cpu_check):
    rows = cpu_check["payload"]["sampling"]
    assert [(r["precision"], r["state_dtype"]) for r in rows] == list(gpu_check.SAMPLING_SETTINGS)
    for row in rows:
        assert row["nfe"] == 10 and row["finite"] and row["samples_per_s"] > 0
        assert 0.1 <= row["digit_mean_top_prob"] <= 1.0  # a probability over 10 classes


# --------------------------------------------------------------------------- speed.py


@pytest.fixture(scope="module")
def speed_quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("speed"))
    status = speed.main(["--quick", "--precision", "fp32,bf16", "--device", "cpu", "--cases", "mlp-moons", "--no-breakdown", "--results-dir", out])
    with open(os.path.join(out, "speed.json")) as file:
        payload = json.load(file)
    return {"status": status, "payload": payload}


def test_speed_measures_both_precisions_and_keeps_the_committed_keys(speed_quick):
    payload = speed_quick["payload"]
    assert speed_quick["status"] == 0
    assert payload["device"] == "cpu" and payload["precisions"] == ["fp32", "bf16"]
    for precision in ("fp32", "bf16"):
        training = payload["training_by_precision"][precision]["mlp-moons"]
        assert training["precision"] == precision and training["clock"] == "process_time"
        assert all(v > 0 for v in training["median_images_per_cpu_s"].values())
        assert payload["sampling_by_precision"][precision]["mlp-moons"]["precision"] == precision
    assert payload["training"]["mlp-moons"] == payload["training_by_precision"]["fp32"]["mlp-moons"]
    with open(os.path.join(RESULTS, "speed.json")) as file:
        committed = json.load(file)
    assert set(committed) - {"breakdown"} <= set(payload)
    assert set(committed["training"]["mlp-moons"]) <= set(payload["training"]["mlp-moons"])
    assert set(committed["sampling"]["mlp-moons"]) <= set(payload["sampling"]["mlp-moons"])


def test_speed_hand_written_loops_run_under_autocast(speed_quick):
    by_precision = speed_quick["payload"]["training_by_precision"]
    assert by_precision["fp32"]["mlp-moons"]["network_output_dtype"] == {"ours": None, "minimal": "torch.float32", "matched": "torch.float32"}
    assert by_precision["bf16"]["mlp-moons"]["network_output_dtype"] == {"ours": None, "minimal": "torch.bfloat16", "matched": "torch.bfloat16"}


def test_speed_hand_heun_agrees_with_the_library_sampler_in_both_precisions(speed_quick):
    fp32 = speed_quick["payload"]["sampling_by_precision"]["fp32"]["mlp-moons"]
    bf16 = speed_quick["payload"]["sampling_by_precision"]["bf16"]["mlp-moons"]
    assert fp32["nfe"] == 35 and fp32["max_abs_difference_ours_vs_hand"] < 1e-10
    # bf16 moves the samples (autocast took effect), and the two implementations still agree far better than that.
    assert bf16["max_abs_difference_vs_fp32"] > 1e-6
    assert bf16["max_abs_difference_ours_vs_hand"] < bf16["max_abs_difference_vs_fp32"] / 10


def test_speed_precision_list_is_checked_against_the_device():
    cpu = torch.device("cpu")
    assert speed.parse_precisions("fp32, bf16,fp32", cpu) == ["fp32", "bf16"]
    assert speed.default_precisions(cpu) == ["fp32"]
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        speed.parse_precisions("fp32,fp16", cpu)
    with pytest.raises(ConfigError, match="invalid"):
        speed.parse_precisions("fp64", cpu)
    with pytest.raises(ConfigError, match="invalid"):
        speed.parse_precisions(" , ", cpu)
