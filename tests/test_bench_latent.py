"""benchmarks/latent.py --quick: the JSON holds every reported number, and they agree with independent arithmetic."""

import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import latent  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    work = tmp_path_factory.mktemp("work")
    assert latent.main(["--quick", "--results-dir", str(results), "--work-dir", str(work)]) == 0
    with open(results / "latent_mnist_quick.json") as file:
        return json.load(file), results


def test_every_configuration_reports_quality_sampling_and_budget(quick_run):
    payload, _ = quick_run
    configs = payload["configurations"]
    assert set(configs) == set(latent.QUICK_CONFIGS)
    for name, result in configs.items():
        quality = result["quality"]
        assert quality["frechet_distance"] >= 0
        assert 0.1 <= quality["confidence"] <= 1.0  # a mean top probability over 10 classes
        boot = quality["frechet_distance_bootstrap"]
        assert boot["low"] <= boot["high"] and boot["std"] >= 0
        sampling = result["sampling"]
        # Heun (EDM Algorithm 1): 2 evaluations per step, the last step Euler only.
        assert sampling["nfe"] == 2 * payload["settings"]["num_steps"] - 1
        n = payload["settings"]["n_samples"]
        assert math.isclose(sampling["cpu_s_per_image"], (sampling["sample_cpu_s"] + sampling["decode_cpu_s"]) / n, rel_tol=1e-9)
        assert result["budget_cpu_s"] == payload["settings"]["budget_cpu_s"]
        assert result["diffusion"]["steps"] >= payload["settings"]["first_chunk_steps"]


def test_latent_shapes_and_reconstruction_psnr(quick_run):
    payload, _ = quick_run
    for name, result in payload["configurations"].items():
        config = result["config"]
        if config["space"] == "pixel":
            assert result["sampling"]["shape"] == [1, 28, 28]
            assert "reconstruction" not in result
            continue
        d = config["downsample"]
        assert result["sampling"]["shape"] == [config["latent_channels"], 28 // d, 28 // d]
        rec = result["reconstruction"]
        # Data in [-1, 1]: peak-to-peak 2, so PSNR = 10 log10(2^2 / MSE).
        assert math.isclose(rec["psnr"], 10 * math.log10(4.0 / rec["mse"]), rel_tol=1e-9)
        assert rec["n"] == 500  # the autoencoder's held-out tenth of the 5,000 digits


def test_report_only_rewrites_markdown_from_json(quick_run):
    payload, results = quick_run
    md = results / "latent_mnist_quick.md"
    md.unlink()
    assert latent.main(["--quick", "--report-only", "--results-dir", str(results)]) == 0
    text = md.read_text()
    pixel_fd = payload["configurations"]["pixel"]["quality"]["frechet_distance"]
    assert f"**{pixel_fd:.2f}**" in text
    assert (results / "latent_mnist_quick_samples.png").exists()  # the grid of the run is kept
