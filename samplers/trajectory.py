"""A sampler callback that keeps every step of a trajectory."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
from torch import Tensor


class TrajectoryRecorder:
    """Pass as `callback` to `samplers.sample`: keeps each step's (t, sigma, x, denoised) as numpy arrays."""

    def __init__(self) -> None:
        self.t: List[float] = []
        self.sigma: List[float] = []
        self.x: List[np.ndarray] = []
        self.denoised: List[np.ndarray] = []

    def __call__(self, step: int, t, sigma, x: Tensor, denoised: Tensor) -> None:
        self.t.append(float(t))
        self.sigma.append(float(sigma))
        self.x.append(x.detach().cpu().numpy().copy())
        self.denoised.append(denoised.detach().cpu().numpy().copy())

    def arrays(self) -> Dict[str, np.ndarray]:
        """t and sigma [steps], x and denoised [steps, batch, ...]."""
        return {"t": np.asarray(self.t), "sigma": np.asarray(self.sigma), "x": np.stack(self.x), "denoised": np.stack(self.denoised)}
