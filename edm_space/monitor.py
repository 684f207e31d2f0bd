"""Watching a training run in TensorBoard: `edm-space train --tensorboard`.

Event files go to RUN/tensorboard/ (edm_space.event_files, no TensorBoard install needed): with
every log.jsonl entry the loss, the loss per sigma bucket, the learning rate, the gradient norm of
the entry's last step and images/s; every `sample_every_images` images (default: with every
checkpoint) a picture of the EMA network's samples from fixed seeds 0..15 (a scatter of 256 points
for 2-D data). Latent runs get no sample picture (it would need the decoder). Watch with
`tensorboard --logdir RUN/tensorboard`.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import torch
from PIL import Image

import samplers

from .denoiser import Denoiser
from .errors import ConfigError
from .event_files import EventWriter
from .files import StagedOutputs
from .outputs import write_samples
from .posthoc_ema import snapshot_due
from .seeding import SeededNoise

FOLDER = "tensorboard"


class TrainingMonitor:
    """The training loop's TensorBoard side; every method does nothing when `enabled` is False."""

    def __init__(self, run_dir: str, enabled: bool, sample_every_images: Optional[int], formulation, item_shape):
        if sample_every_images is not None and (isinstance(sample_every_images, bool) or not isinstance(sample_every_images, int) or sample_every_images < 1):
            raise ConfigError(f"sample_every_images = {sample_every_images!r} is invalid; it must be an integer >= 1 (--sample-every)")
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
        """The sample picture when one is due."""
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
