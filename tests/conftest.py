"""Shared, independent references for the parameterization / preset / sampler tests.

Everything here is written from the papers (Ho et al. 2020; Nichol & Dhariwal 2021;
Karras et al. 2022, "EDM", Table 1) and docs/design.md in plain numpy / torch. None of
it calls the code under test.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
from typing import Tuple

import numpy as np
import pytest
import torch

F64 = torch.float64


def ddpm_abar_np(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """abar(t), t = 0..T (Ho's 1-based t, abar(0) = 1), linear betas, float64."""
    betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def ddpm_sigma_table_np(T: int = 1000) -> np.ndarray:
    """sigma(t) = sqrt(1/abar(t) - 1) at integer t = 0..T."""
    return np.sqrt(1.0 / ddpm_abar_np(T) - 1.0)


def iddpm_u_np(M: int = 1000, C1: float = 0.001, C2: float = 0.008) -> np.ndarray:
    """EDM Table 1's iDDPM levels u_0 > ... > u_M = 0 by its recursion, float64 numpy."""

    def alpha_bar(j: int) -> float:
        return math.sin(0.5 * math.pi * j / M / (C2 + 1)) ** 2

    u = np.zeros(M + 1, dtype=np.float64)
    for j in range(M, 0, -1):
        ratio = max(alpha_bar(j - 1) / alpha_bar(j), C1)
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / ratio - 1)
    return u


def gaussian_denoiser(mu: torch.Tensor, c: float):
    """Ideal denoiser of N(mu, c^2 I): D(x_hat; sigma) = mu + c^2/(c^2+sigma^2) (x_hat - mu)."""

    def D(x_hat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=F64).reshape(-1, *([1] * (x_hat.ndim - 1)))
        return mu + c**2 / (c**2 + sigma**2) * (x_hat - mu)

    return D


def finite_set_denoiser(data: torch.Tensor):
    """Brute-force posterior mean of the uniform law on the rows of `data` (one example at a time)."""
    data = data.to(F64)
    flat = data.reshape(data.shape[0], -1)

    def D(x_hat: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=F64).reshape(-1)
        out = torch.empty_like(x_hat, dtype=F64)
        for b in range(x_hat.shape[0]):
            x = x_hat[b].reshape(1, -1).to(F64)
            s = sigma[b] if sigma.numel() > 1 else sigma[0]
            if torch.isinf(s):
                w = torch.full((flat.shape[0],), 1.0 / flat.shape[0], dtype=F64)
            else:
                logits = -((x - flat) ** 2).sum(dim=1) / (2 * s**2)
                w = torch.softmax(logits, dim=0)
            out[b] = (w[:, None] * flat).sum(dim=0).reshape(x_hat.shape[1:])
        return out

    return D


@pytest.fixture(scope="session")
def ddpm_abar() -> np.ndarray:
    return ddpm_abar_np()


@pytest.fixture(scope="session")
def ddpm_sigma_table() -> np.ndarray:
    return ddpm_sigma_table_np()


@pytest.fixture(scope="session")
def iddpm_u() -> np.ndarray:
    return iddpm_u_np()


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one thread (tiny ops on a shared 2-core machine are slower with two), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def one_thread():
    """torch on one thread for each test (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def one_thread_per_module():
    """torch on one thread for a whole module, its module-scoped fixtures included (shared benchmark runs)."""
    with one_torch_thread():
        yield


@pytest.fixture
def no_debug_env(monkeypatch):
    """EDM_SPACE_DEBUG unset, so errors are the one-line messages a user sees, not tracebacks."""
    monkeypatch.delenv("EDM_SPACE_DEBUG", raising=False)


BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def import_benchmark(name: str):
    """benchmarks/NAME.py as a module; the scripts import each other by name, so their folder goes on sys.path."""
    if BENCHMARKS not in sys.path:
        sys.path.insert(0, BENCHMARKS)
    return importlib.import_module(name)


def benchmark_folders(tmp_path_factory, name: str) -> Tuple[str, str]:
    """(out, work): the report and work folders of one benchmark run, in a fresh temporary folder."""
    root = tmp_path_factory.mktemp(name)
    return str(root / "out"), str(root / "work")


def snapshot(run_dir: str) -> dict:
    """Every file of a run directory, relative path -> bytes."""
    files = {}
    for root, _, names in os.walk(run_dir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                files[os.path.relpath(path, run_dir)] = file.read()
    return files


# --------------------------------------------------------------------------- no silent skips in CI

_MISSING_PACKAGE = ("could not import", "No module named", "is not installed")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a test skipped because a package is missing fails: the install step is what is broken."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        if any(marker in reason for marker in _MISSING_PACKAGE):
            report.outcome = "failed"
            report.longrepr = f"skipped for a missing package under CI ({reason}); install it: see the README's test command"
