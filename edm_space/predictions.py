"""What a network may predict (x0, eps, v, velocity, score) and the conversions between each and the denoised
D = E[x_0 | x_hat], all in the unscaled variable x_hat = x_0 + sigma eps (EDM, Karras et al. 2022, eq. 4)."""

from __future__ import annotations

from typing import Union

import torch

Tensor = torch.Tensor
TensorLike = Union[Tensor, float]
F64 = torch.float64


PREDICTION_KINDS = ("x0", "eps", "v", "velocity", "score")


def prediction_to_denoised(kind: str, prediction: Tensor, x_hat: Tensor, sigma: Tensor) -> Tensor:
    """D from a prediction of kind x0 | eps | v | velocity | score, given x_hat and sigma (per example).

    eps:      D = x_hat - sigma eps
    v:        v = (eps - sigma x_0) / sqrt(1 + sigma^2)   (Salimans & Ho 2022, VP convention)
              => D = (x_hat - sigma sqrt(1 + sigma^2) v) / (1 + sigma^2)
    velocity: u = eps - x_0 (flow, t = 1 is noise) => D = (x_hat - sigma u) / (1 + sigma)
    score:    grad log p(x_hat; sigma) = (D - x_hat) / sigma^2 (Tweedie) => D = x_hat + sigma^2 score
    """
    sigma = expand_per_item(sigma, x_hat)
    if kind == "x0":
        return prediction
    if kind == "eps":
        return x_hat - sigma * prediction
    if kind == "v":
        return (x_hat - sigma * (1 + sigma**2).sqrt() * prediction) / (1 + sigma**2)
    if kind == "velocity":
        return (x_hat - sigma * prediction) / (1 + sigma)
    if kind == "score":
        return x_hat + sigma**2 * prediction
    raise _unknown_kind(kind)


def denoised_to_prediction(kind: str, denoised: Tensor, x_hat: Tensor, sigma: Tensor) -> Tensor:
    """The inverse of `prediction_to_denoised`: the prediction of the given kind that D stands for."""
    sigma = expand_per_item(sigma, x_hat)
    if kind == "x0":
        return denoised
    eps = (x_hat - denoised) / sigma
    if kind == "eps":
        return eps
    if kind == "v":
        return (eps - sigma * denoised) / (1 + sigma**2).sqrt()
    if kind == "velocity":
        return eps - denoised
    if kind == "score":
        return (denoised - x_hat) / sigma**2
    raise _unknown_kind(kind)


def _unknown_kind(kind: str) -> ValueError:
    from .errors import unknown

    return unknown("prediction kind", kind, PREDICTION_KINDS)


def expand_per_item(sigma: TensorLike, like: Tensor) -> Tensor:
    """sigma (scalar or per example [batch]) shaped to broadcast against `like` [batch, ...]."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype if like.is_floating_point() else F64)
    if sigma.ndim == 1:
        sigma = sigma.reshape(-1, *([1] * (like.ndim - 1)))
    return sigma
