"""Latent diffusion: train and sample any preset in an autoencoder's latent space (Rombach et al. 2022; SD3).

    edm-space autoencoder train --kind kl --data mnist --out runs/ae
    edm-space train --latent runs/ae --preset sd3 --net dit --data mnist --out runs/latent
    edm-space sample --ckpt runs/latent --out samples.png         # decoded to images

The data set is encoded once (posterior means, or samples, of a KL autoencoder;
encoder outputs of a VQ one) and cached in the run as latents.npz together with
the autoencoder's checksum. Latents are normalized per channel to a standard
deviation of sigma_data = 0.5 (as EDM2 does for its latents): z_norm = (z - shift) * scale,
with shift and scale stored in the run's record (record.json, edm_space.run_record). The run records the autoencoder's
run directory, checkpoint step and checksum rather than a copy of its weights: a
latent run stays small, and a later change to the autoencoder (retrained, resumed,
replaced) is detected by the checksum with a one-line error instead of decoding
silently with other weights.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from .errors import ConfigError
from .files import save_npz_atomic
from .rundir import find_checkpoint, pin_checkpoint
from .model_training import autoencoder_checksum, is_model_run, load_model, read_model_run, training_items

LATENT_SIGMA_DATA = 0.5
LATENT_MODES = ("mean", "sample")
CACHE_NAME = "latents.npz"
# The latent record's "data" when the run trains on its autoencoder's own training items (no --data given).
AUTOENCODER_DATA = "autoencoder"


@dataclass
class LatentSpace:
    """A trained autoencoder and the normalization of its latents, as a latent run records them."""

    autoencoder: torch.nn.Module
    run: str
    step: int
    checksum: str
    mode: str
    shift: torch.Tensor  # [C]
    scale: torch.Tensor  # [C]

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Latents as the diffusion model sees them: per channel (z - shift) * scale."""
        return (z - _per_channel(self.shift, z)) * _per_channel(self.scale, z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of normalize."""
        return z / _per_channel(self.scale, z) + _per_channel(self.shift, z)

    def decode(self, z_normalized: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Images from normalized latents (the autoencoder's decoder, in chunks, without gradients)."""
        parameter = next(self.autoencoder.parameters())
        out = []
        with torch.no_grad():
            for chunk in torch.split(z_normalized, batch):
                z = self.denormalize(chunk.to(device=parameter.device, dtype=parameter.dtype))
                out.append(self.autoencoder.decode(z).to("cpu", torch.float64))
        return torch.cat(out)

    def record(self) -> Dict[str, Any]:
        """What the run's record stores to find and check this latent space again."""
        return {"run": self.run, "step": self.step, "checksum": self.checksum, "mode": self.mode,
                "shift": self.shift.tolist(), "scale": self.scale.tolist(), "sigma_data": LATENT_SIGMA_DATA}


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(device=like.device, dtype=like.dtype).reshape(1, -1, *([1] * (like.ndim - 2)))


def _load_autoencoder(run: str, step: Optional[int]) -> Tuple[torch.nn.Module, int, str]:
    _autoencoder_config(run)
    model, config, step = load_model(run, step=step)
    if config.kind != "autoencoder":
        raise ConfigError(f"--latent {run!r} is not an autoencoder run (train one with `edm-space autoencoder train`)")
    return model.eval(), step, autoencoder_checksum(run, step)


def _encode(autoencoder: torch.nn.Module, x: torch.Tensor, mode: str, seed: int, batch: int = 256) -> torch.Tensor:
    """Raw float64 latents of images x [n, C, H, W]: posterior means or seeded samples (KL), encoder outputs (VQ)."""
    if mode not in LATENT_MODES:
        raise ConfigError(f"latent mode {mode!r} is invalid; valid: {', '.join(LATENT_MODES)}")
    if tuple(x.shape[1:]) != tuple(autoencoder.item_shape):
        raise ConfigError(f"the autoencoder encodes items {list(autoencoder.item_shape)}; this data has {list(x.shape[1:])}")
    if mode == "sample" and "sample" not in getattr(autoencoder, "latent_modes", ("mean", "sample")):
        raise ConfigError(f"--latent-mode sample draws from a KL autoencoder's posterior; this {type(autoencoder).__name__} "
                          f"encodes deterministically (use --latent-mode mean)")
    generator = torch.Generator().manual_seed(seed)
    parts = []
    with torch.no_grad():
        for chunk in torch.split(x, batch):
            if mode == "sample":
                parts.append(autoencoder.latents(chunk, mode="sample", generator=generator))
            else:
                parts.append(autoencoder.latents(chunk))
    return torch.cat(parts).to(torch.float64)


def takes_autoencoder_data(config) -> bool:
    """Whether a latent run trains on its autoencoder's training items: a new run without a data set of its own,
    or one that recorded so."""
    if config.latent_space is not None:
        return config.latent_space.get("data") == AUTOENCODER_DATA
    return config.latent is not None and config.data is None


def _autoencoder_config(run: str):
    if not os.path.isdir(run) or not is_model_run(run):
        raise ConfigError(f"--latent {run!r} is not an autoencoder run (train one with `edm-space autoencoder train`)")
    return read_model_run(run)  # its options and record (the held-out count it used)


def autoencoder_data_name(run: str) -> str:
    """The data set the autoencoder run trained on."""
    return _autoencoder_config(run).data


def autoencoder_data(run: str, seed: int, n: Optional[int] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor], str]:
    """(items, labels, data set name) the autoencoder run trained on (its held-out items left out); with `n`, a
    seeded subset of n of them in their order."""
    config = _autoencoder_config(run)
    x, labels = training_items(config)
    if n is not None:
        if n > len(x):
            raise ConfigError(f"data_size = {n} is too many: the autoencoder {run!r} trained on {len(x)} items")
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        x, labels = x[keep], None if labels is None else labels[keep]
    return x, labels, config.data


def encode_data(x: torch.Tensor, run: str, mode: str, seed: int, owner: Optional[str] = None) -> Tuple[LatentSpace, torch.Tensor]:
    """Encode images with the newest checkpoint of the autoencoder run; (latent space, normalized float32 latents).

    With `owner` (the latent run), that checkpoint is first pinned (rundir.pin_checkpoint), so that an autoencoder
    still training never prunes the checkpoint the latent run records.
    """
    step = None
    if owner is not None:
        _autoencoder_config(run)
        step = find_checkpoint(run)[1]
        try:
            pin_checkpoint(run, step, owner)
        except OSError:
            pass  # a read-only autoencoder run: nothing trains in it; the recorded checksum still guards its weights
    autoencoder, step, checksum = _load_autoencoder(run, step)
    z = _encode(autoencoder, x, mode, seed)
    shift = z.mean(dim=(0, *range(2, z.ndim)))
    std = z.transpose(0, 1).reshape(z.shape[1], -1).std(dim=1, correction=0)
    if not bool((std > 0).all()):
        raise ConfigError(f"a latent channel of the autoencoder in {run!r} is constant; it cannot be normalized")
    space = LatentSpace(autoencoder, run, step, checksum, mode, shift, LATENT_SIGMA_DATA / std)
    return space, space.normalize(z).to(torch.float32)


def record_path(autoencoder_run: str, run_dir: str) -> str:
    """The autoencoder's run directory as a latent run records it: relative to the latent run's directory, so that
    the pair may be used from any working directory (and moved together)."""
    return os.path.relpath(os.path.abspath(autoencoder_run), os.path.abspath(run_dir))


def autoencoder_path(record: Dict[str, Any], owner: str) -> str:
    """The recorded autoencoder's run directory, seen from here: relative to the latent run `owner` (records that say
    so), else as recorded (older runs recorded it relative to the directory training ran in)."""
    if record.get("run_base") == "run directory" and not os.path.isabs(record["run"]):
        return os.path.normpath(os.path.join(owner, record["run"]))
    return record["run"]


def open_latent_space(record: Dict[str, Any], owner: str) -> LatentSpace:
    """The latent space a run recorded; refused with one line if the autoencoder changed since."""
    run, step = autoencoder_path(record, owner), int(record["step"])
    try:
        autoencoder, step, checksum = _load_autoencoder(run, step)
    except ConfigError as error:
        raise ConfigError(f"the latent run {owner!r} needs its autoencoder {run!r} step {step}: {error}") from None
    if checksum != record["checksum"]:
        raise ConfigError(
            f"the autoencoder {run!r} (step {step}) changed after {owner!r} was trained on its latents "
            f"(checksum {checksum[:12]} != {record['checksum'][:12]}); retrain the latent model or restore the autoencoder"
        )
    return LatentSpace(autoencoder, run, step, checksum, record["mode"], torch.tensor(record["shift"], dtype=torch.float64),
                       torch.tensor(record["scale"], dtype=torch.float64))


def cached_latents(run_dir: str, record: Dict[str, Any]) -> Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """The run's cached (latents, labels) if they were encoded by the recorded autoencoder, else None."""
    path = os.path.join(run_dir, CACHE_NAME)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as cache:
            if str(cache["checksum"]) != record["checksum"]:
                return None
            labels = torch.from_numpy(cache["labels"]) if "labels" in cache.files else None
            return torch.from_numpy(cache["latents"]), labels
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None  # a damaged cache (truncated, a flipped bit: bad CRC) is encoded again


def write_cache(run_dir: str, record: Dict[str, Any], latents: torch.Tensor, labels: Optional[torch.Tensor]) -> None:
    """latents.npz in the run: the normalized latents, their labels and the autoencoder's checksum."""
    arrays = {"latents": latents.numpy(), "checksum": np.asarray(record["checksum"])}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    save_npz_atomic(os.path.join(run_dir, CACHE_NAME), arrays)


def training_latents(run_dir: str, config, x: torch.Tensor, labels: Optional[torch.Tensor], write_cache_file: bool = True):
    """(normalized latents, labels, record) for a latent run (`config` a Run: its options and record): from the run's
    cache, or encoded now.

    A new run encodes with the newest checkpoint of config.latent; a resumed one checks that its
    recorded autoencoder is unchanged and reuses the cache (or encodes again with the recorded
    normalization if the cache is gone).
    """
    record = config.latent_space
    if record is None:
        space, z = encode_data(x, config.latent, config.latent_mode, config.seed, owner=run_dir if write_cache_file else None)
        record = dict(space.record(), run=record_path(config.latent, run_dir), run_base="run directory")
        if config.data is None:
            record["data"] = AUTOENCODER_DATA
    else:
        space = open_latent_space(record, run_dir)  # refuses a changed autoencoder
        cached = cached_latents(run_dir, record)
        if cached is not None:
            return cached[0], cached[1], record
        z = space.normalize(_encode(space.autoencoder, x, space.mode, config.seed)).to(torch.float32)
    if write_cache_file:
        write_cache(run_dir, record, z, labels)
    return z, labels, record
