"""Sampled outputs on disk: an .npz of samples and seeds with a picture beside it, written together."""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .files import StagedOutputs, make_folders, remove_stale_temporaries, save_npz_atomic
from .plotting import image_grid_png, scatter_panels_png
from .rundir import disk_error


def write_samples(stage: StagedOutputs, out_path: str, samples: np.ndarray, seeds: Sequence[int], reference: Optional[torch.Tensor] = None,
                  caption: Optional[str] = None) -> List[str]:
    """FILE.npz (arrays samples, seeds) with a PNG beside it, or FILE.png alone: a scatter of 2-D points
    (beside `reference` points when given), a grid of images captioned `caption` (default: "N samples");
    staged in `stage`. Returns the paths."""
    extension = os.path.splitext(out_path)[1].lower()
    png_path = out_path if extension == ".png" else os.path.splitext(out_path)[0] + ".png"
    written = []
    if extension == ".npz":
        save_npz_atomic(stage.path(out_path), {"samples": samples, "seeds": np.asarray(seeds, dtype=np.int64)})
        written.append(out_path)
    if samples.ndim == 2 and samples.shape[1] == 2:
        panels, labels = ([np.asarray(reference), samples], ["data", "samples"]) if reference is not None else ([samples], ["samples"])
        scatter_panels_png(stage.path(png_path), panels, labels=labels)
        written.append(png_path)
    elif samples.ndim == 4 and samples.shape[1] in (1, 3):
        image_grid_png(stage.path(png_path), np.clip(samples, -1, 1), caption=caption or f"{len(samples)} samples")
        written.append(png_path)
    elif extension == ".png":
        raise ConfigError(f"samples of shape {list(samples.shape[1:])} have no picture; write --out FILE.npz")
    return written


def write_sample_files(out_path: str, samples: np.ndarray, seeds: Sequence[int], reference: Optional[torch.Tensor] = None,
                       caption: Optional[str] = None, more: Optional[Callable[[StagedOutputs], List[str]]] = None) -> List[str]:
    """`write_samples` (and whatever `more(stage)` stages beside it), replacing the targets together.

    Missing folders of `out_path` are created (as EDM's and diffusers' sampling scripts do), temporaries that a
    killed writer left in its folder are removed first, and a full disk is one line naming --out. Returns the paths.
    """
    try:
        make_folders(out_path)
        remove_stale_temporaries(os.path.dirname(os.path.abspath(out_path)))
        with StagedOutputs() as stage:
            written = write_samples(stage, out_path, samples, seeds, reference, caption)
            if more is not None:
                written += more(stage)
    except OSError as error:
        raise disk_error(error, f"--out {out_path!r}") from None
    return written
