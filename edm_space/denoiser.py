"""Denoiser: a raw network F and a Formulation give D(x_hat; sigma) (EDM eq. 7)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .devices import autocast
from .parameterization import F64, Formulation, expand_per_item


class Denoiser(nn.Module):
    """D(x_hat; sigma) = c_skip x_hat + c_out F(c_in x_hat, c_noise), with the formulation's coefficients.

    Call it as a sampler's denoiser: x_hat [batch, ...] (any float dtype) and sigma
    (float64 [batch] or a scalar). The network runs in its own dtype; the result
    comes back in x_hat's dtype. The same trained Denoiser feeds every sampler.
    """

    def __init__(self, network: nn.Module, formulation: Formulation, labels: Optional[torch.Tensor] = None,
                 precision: str = "fp32"):
        super().__init__()
        self.network = network
        self.formulation = formulation
        self.labels = labels
        self.precision = precision  # autocast precision of the network's forward (edm_space.devices)

    def forward(self, x_hat: torch.Tensor, sigma, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=F64, device=x_hat.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x_hat.shape[0])
        c_skip, c_out, c_in, c_noise = self.formulation.precond(sigma)
        parameter = next(self.network.parameters(), None)  # a network without weights runs in x_hat's dtype
        dtype = x_hat.dtype if parameter is None else parameter.dtype
        labels = self.labels if labels is None else labels
        x_in = (expand_per_item(c_in.to(x_hat.dtype), x_hat) * x_hat).to(dtype)
        with autocast(x_hat.device, self.precision):
            output = self.network(x_in, c_noise.to(dtype), labels)
        output = output.to(x_hat.dtype)
        return expand_per_item(c_skip.to(x_hat.dtype), x_hat) * x_hat + expand_per_item(c_out.to(x_hat.dtype), x_hat) * output
