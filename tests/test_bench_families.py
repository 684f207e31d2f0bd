"""benchmarks/families.py --quick: every model scored, and the numbers checked against independent facts.

- the GAN has no likelihood, every other model a finite one;
- network evaluations per sample: PixelCNN one per pixel (8 x 8 = 64), Heun with N steps 2N - 1
  (Karras et al. 2022, Algorithm 1: one evaluation per step plus a correction on all but the last);
- NICE's bits/dim recomputed by hand from its density on the held-out digits dequantized as
  Theis et al. 2016 describe: k = round((x + 1) 127.5), y = (k + u) / 128 - 1, bits = -log2 p(y) / 64 + 7.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import torch

from edm_space.data import load
from edm_space.model_training import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["nice", "vae", "gan", "pixelcnn", "edm", "vp", "flow", "sd3"]
FIELDS = ["fd", "confidence", "min_class_fraction", "max_class_fraction", "nll_bpd", "nfe_per_sample", "wall_s_per_sample",
          "cpu_s_per_sample", "steps", "train_cpu_s", "parameters", "likelihood"]


def test_quick_run_fields_and_independent_relations(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    work, out = tmp_path / "work", tmp_path / "out"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "families.py"), "--quick", "--work-dir", str(work),
                    "--out-dir", str(out)], check=True, env=env, cwd=ROOT, capture_output=True, timeout=600)
    with open(out / "families_digits.json") as file:
        payload = json.load(file)
    assert (out / "families_digits.md").is_file() and (out / "families_digits_samples.png").is_file()
    assert list(payload["table"]) == MODELS
    results = {r["model"]: r for r in payload["results"]}
    assert sorted(results) == sorted(MODELS)
    for model, row in results.items():
        for field in FIELDS:
            assert field in row, (model, field)
        assert row["fd"] is not None and row["fd"] >= 0
        assert 0.1 <= row["confidence"] <= 1.0  # a mean top probability over 10 classes
        assert row["steps"] >= 1 and row["train_cpu_s"] > 0
        assert len(payload["grids"][model]) == 64 and len(payload["grids"][model][0]) == 64

    assert results["gan"]["nll_bpd"] is None and payload["table"]["gan"]["nll_bpd"]["mean"] is None
    for model in MODELS:
        if model != "gan":
            assert math.isfinite(results[model]["nll_bpd"]), model

    assert results["pixelcnn"]["nfe_per_sample"] == 8 * 8
    for model in ("nice", "vae", "gan"):
        assert results[model]["nfe_per_sample"] == 1
    for model in ("edm", "vp", "flow", "sd3"):
        assert results[model]["nfe_per_sample"] == 2 * 18 - 1

    # NICE's figure by hand: the held-out digits are the first 300 of a fixed permutation (seed 20240601).
    settings = payload["settings"]
    x = load("digits")
    held = np.sort(np.random.default_rng(20_240_601).permutation(len(x))[: settings["held_out"]])
    x = x[torch.from_numpy(held)][: settings["ll_points"]].double()
    k = torch.round((x + 1) * 127.5)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(7000 + 0), dtype=torch.float64)
    y = (k + u) / 128 - 1
    model, _, _ = load_model(str(work / "nice-seed0" / "run"))
    with torch.no_grad():
        log_p = model.log_likelihood(y.float()).double()
    expected = float((-log_p / (64 * math.log(2)) + 7).mean())
    assert abs(results["nice"]["nll_bpd"] - expected) < 1e-4
