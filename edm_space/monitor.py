"""Watching a training run in TensorBoard: `edm-space train --tensorboard`.

Event files go to RUN/tensorboard/ (edm_space.event_files, no TensorBoard install needed): with
every log.jsonl entry the loss, the loss per sigma bucket, the learning rate, the gradient norm of
the entry's last step and images/s; every `sample_every_images` images (default: with every
checkpoint) a picture of the EMA network's samples from fixed seeds 0..15 (a scatter of 256 points
for 2-D data). Latent runs get no sample picture (it would need the decoder). With `eval_every_images`,
every so many images the EMA network's held-out loss per sigma bucket ("heldout_loss_by_sigma/LO-HI"),
computed by edm_space.metrics.loss_floor (the function of `edm-space eval`'s loss metric) on at most
EVAL_ITEMS items of the data set's test split (the training set when it has none, as `eval` does),
EVAL_DRAWS draws per bucket from seed 0. Watch with `tensorboard --logdir RUN/tensorboard`.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from PIL import Image

import samplers

from .denoiser import Denoiser
from .errors import ConfigError
from .event_files import EventWriter
from .files import StagedOutputs
from .metrics import loss_floor
from .outputs import write_samples
from .posthoc_ema import snapshot_due
from .seeding import SeededNoise

FOLDER = "tensorboard"
EVAL_ITEMS = 256
EVAL_DRAWS = 256


def _check_cadence(value: Optional[int], name: str, option: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} = {value!r} is invalid; it must be an integer >= 1 ({option})")


def heldout_losses(ema: torch.nn.Module, formulation, items: torch.Tensor) -> Dict[str, float]:
    """{"heldout_loss_by_sigma/LO-HI": the network's loss} on `items` (loss_floor's "model" column)."""
    device = next(ema.parameters()).device
    denoiser = Denoiser(ema, formulation)

    def on_device(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoiser(x.to(device), sigma.to(device)).cpu()

    rows = loss_floor(on_device, formulation, items.double(), num_draws=EVAL_DRAWS, seed=0)
    return {f"heldout_loss_by_sigma/{row['sigma_lo']:g}-{row['sigma_hi']:g}": row["model"] for row in rows}


class TrainingMonitor:
    """The training loop's TensorBoard side; every method does nothing when `enabled` is False."""

    def __init__(self, run_dir: str, enabled: bool, sample_every_images: Optional[int], formulation, item_shape,
                 eval_every_images: Optional[int] = None, reference: Optional[Callable[[], Optional[torch.Tensor]]] = None):
        _check_cadence(sample_every_images, "sample_every_images", "--sample-every")
        _check_cadence(eval_every_images, "eval_every_images", "--eval-every")
        self.eval_every = eval_every_images
        # The held-out items, loaded only when they will be used (None: no held-out loss).
        self.reference = reference() if enabled and eval_every_images is not None and reference is not None else None
        self.writer = EventWriter(os.path.join(run_dir, FOLDER)) if enabled else None
        self.every, self.formulation, self.item_shape = sample_every_images, formulation, tuple(item_shape)
        self.count = 256 if len(self.item_shape) == 1 else 16
        # A picture exists for 2-D points and for images of 1 or 3 channels.
        self.pictures = self.item_shape == (2,) or (len(self.item_shape) == 3 and self.item_shape[0] in (1, 3))

    def log(self, entry: Dict[str, Any], grad_norm: float) -> None:
        """Scalars of one log.jsonl entry."""
        if self.writer is None:
            return
        values = {"loss": entry["loss"], "lr": entry["lr"], "grad_norm": grad_norm, "images_per_s": entry["images_per_s"]}
        values.update({f"loss_by_sigma/{bucket}": loss for bucket, loss in entry["loss_by_sigma"].items()})
        self.writer.scalars(values, entry["step"])

    def after_step(self, step: int, images: int, batch: int, checkpoint_due: bool, ema: torch.nn.Module, latent: bool) -> None:
        """The sample picture and the held-out loss when they are due."""
        if self.writer is not None and self.reference is not None and snapshot_due(images - batch, images, self.eval_every):
            self.writer.scalars(heldout_losses(ema, self.formulation, self.reference), step)
        if self.writer is None or latent or not self.pictures:
            return
        due = checkpoint_due if self.every is None else snapshot_due(images - batch, images, self.every)
        if due:
            png = self.sample_png(ema)
            with Image.open(io.BytesIO(png)) as picture:
                width, height = picture.size
                channels = len(picture.getbands())
            self.writer.image("samples", png, height, width, channels, step)

    @torch.no_grad()
    def sample_png(self, ema: torch.nn.Module) -> bytes:
        """PNG bytes of the EMA network's samples from seeds 0..count-1 (heun, 18 steps)."""
        device = next(ema.parameters()).device
        noise = SeededNoise(range(self.count))
        latents = noise.randn([self.count, *self.item_shape], dtype=torch.float64).to(device)
        x = samplers.sample(Denoiser(ema, self.formulation), latents, formulation=self.formulation, solver="heun", num_steps=18)
        samples = x.cpu().numpy().astype(np.float32)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "samples.png")
            with StagedOutputs() as stage:
                write_samples(stage, path, samples, list(range(self.count)))
            with open(path, "rb") as file:
                return file.read()
