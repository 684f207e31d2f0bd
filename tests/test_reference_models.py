"""The committed reference MNIST models (benchmarks/models): each loads as any user loads it, gives the outputs
recorded when it was scored (so a change that silently alters an architecture or the loading is caught), and
denoises real test digits as a trained model must."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import reference_models  # noqa: E402

from edm_space import data  # noqa: E402
from edm_space.training import load_trained  # noqa: E402

NAMES = sorted(reference_models.MODELS)


@pytest.fixture(scope="module")
def test_digits():
    images, labels = data.load("mnist-test", n=64, with_labels=True)
    return images.double(), torch.as_tensor(labels).long()


def load(name: str):
    path = os.path.join(reference_models.MODELS_DIR, name)
    assert os.path.isdir(path), f"benchmarks/models/{name} is missing; run benchmarks/reference_models.py"
    return load_trained(path)


@pytest.mark.parametrize("name", NAMES)
def test_model_is_what_its_command_trained(name):
    denoiser, config, item_shape, num_classes, _ = load(name)
    argv = reference_models.MODELS[name]
    assert config.preset == argv[argv.index("--preset") + 1]
    assert config.net == argv[argv.index("--net") + 1]
    assert (tuple(item_shape), num_classes, config.conditional) == ((1, 28, 28), 10, True)
    given = dict(argv[i + 1].split("=", 1) for i, flag in enumerate(argv) if flag == "--net-option")
    assert {key: option_value(value) for key, value in given.items()} == {key: config.net_options.get(key) for key in given}


def option_value(text: str):
    """A --net-option value as the command line reads it: JSON where it parses (numbers, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@pytest.mark.parametrize("name", NAMES)
def test_fingerprint(name):
    denoiser, _, item_shape, _, _ = load(name)
    with open(os.path.join(reference_models.MODELS_DIR, name, reference_models.FINGERPRINT_NAME)) as file:
        stored = json.load(file)
    inputs = reference_models.fingerprint_inputs(item_shape)
    with torch.no_grad():
        out = denoiser(inputs["x"], inputs["sigma"], inputs["labels"]).double().flatten(1)
    # float32 networks: other CPUs and BLAS builds differ in the last bits only
    torch.testing.assert_close(out.mean(1), torch.tensor(stored["mean"], dtype=torch.float64), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.square().mean(1).sqrt(), torch.tensor(stored["rms"], dtype=torch.float64), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[:, :8].flatten(), torch.tensor(stored["pixels"], dtype=torch.float64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_denoises_real_digits_and_uses_the_label(name, test_digits):
    """At sigma = 0.5 the identity D(x) = x has error sigma^2 = 0.25 per pixel and D = 0 about E[x^2] (0.9 for
    MNIST in [-1, 1]); a trained denoiser is far below both. At sigma = 2 the label carries most of what is known
    of the digit, so the right label must beat a wrong one."""
    denoiser, *_ = load(name)
    x0, labels = test_digits
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(labels, 10).double()
    wrong = torch.nn.functional.one_hot((labels + 1) % 10, 10).double()

    def mse(sigma: float, label_rows: torch.Tensor) -> float:
        with torch.no_grad():
            out = denoiser(x0 + sigma * noise, torch.full((len(x0),), sigma, dtype=torch.float64), label_rows)
        return float((out.double() - x0).square().mean())

    assert mse(0.5, onehot) < 0.1
    assert mse(2.0, onehot) < 0.9 * mse(2.0, wrong)
