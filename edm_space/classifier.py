"""A small image classifier trained once per data set, whose features score samples.

For images, `image_quality` reports the Frechet distance between real and generated
images in the classifier's penultimate features (an FID in a feature space made
for the data set at hand), the classifier's mean top-class probability on the
samples (confidence), and how evenly the samples cover the classes.
The classifier is seeded, so the numbers are reproducible; it is cached as a
state dict (loaded with weights_only=True).
"""

from __future__ import annotations

import io
import os
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .data import load
from .errors import ConfigError
from .files import write_atomic
from .metrics import frechet_distance

Tensor = torch.Tensor


class SmallConvNet(nn.Module):
    """conv(32) -> pool -> conv(64) -> global pool -> 128 features -> logits."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(256, 128), nn.SiLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_classifier(images: Tensor, labels: Tensor, epochs: int = 15, seed: int = 0, batch: int = 128) -> SmallConvNet:
    """Fit SmallConvNet to (images in [-1, 1], labels) with Adam; deterministic for a seed on CPU.

    The seeding happens in a fork of the global RNG, so the caller's random stream is left as it was."""
    with torch.random.fork_rng(devices=[]):
        return _fit(images, labels, epochs, seed, batch)


def _fit(images: Tensor, labels: Tensor, epochs: int, seed: int, batch: int) -> SmallConvNet:
    if images.ndim != 4 or labels is None:
        raise ConfigError("the feature classifier needs labelled images [n, C, H, W]")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallConvNet(images.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch):
            index = order[start : start + batch]
            # A little noise makes the features robust to the small errors of generated samples.
            x = images[index] + 0.05 * torch.randn(images[index].shape, generator=generator)
            loss = nn.functional.cross_entropy(model(x), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


#: A larger set trains the classifier on this many of its items (a seeded subset): full MNIST's 60,000
#: would take most of an hour on one CPU thread for features that 10,000 digits already give.
MAX_TRAINING_ITEMS = 10_000


def cached_classifier(data_name: str, cache_dir: str, seed: int = 0) -> Tuple[SmallConvNet, Tensor, Tensor]:
    """(classifier, images, labels) for a labelled built-in image set (at most MAX_TRAINING_ITEMS of it, chosen
    by `seed`); trained once and kept in cache_dir."""
    images, labels = load(data_name, with_labels=True)
    if labels is None or images.ndim != 4:
        raise ConfigError(f"data set {data_name!r} has no labelled images for the feature classifier")
    suffix = ""
    if len(images) > MAX_TRAINING_ITEMS:
        images, labels = load(data_name, n=MAX_TRAINING_ITEMS, seed=seed, with_labels=True)
        suffix = f"-{MAX_TRAINING_ITEMS}"
    path = os.path.join(cache_dir, f"classifier-{data_name}{suffix}-seed{seed}.pt")
    model = SmallConvNet(images.shape[1], int(labels.max()) + 1)
    if os.path.exists(path):
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval().requires_grad_(False), images, labels
        except Exception:  # a stale or foreign file: train afresh and overwrite it
            pass
    model = train_classifier(images, labels, seed=seed)
    os.makedirs(cache_dir, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_atomic(path, buffer.getvalue())
    return model, images, labels


def image_quality(
    samples: Tensor,
    real: Optional[Tensor],
    classifier: SmallConvNet,
    num_classes: Optional[int] = None,
    real_features: Optional[Tensor] = None,
) -> Dict[str, float]:
    """Frechet distance in the classifier's features, mean top-class probability, and class coverage.

    `real_features` (classifier.features of the real images) may be given instead of `real`, so that
    a caller scoring many sample sets against the same real images computes them once.
    """
    if real_features is None and real is None:
        raise ConfigError("image_quality needs the real images or their features (real_features)")
    samples = torch.as_tensor(samples, dtype=torch.float32).clamp(-1, 1)
    with torch.no_grad():
        fake_features = classifier.features(samples)
        if real_features is None:
            real_features = classifier.features(torch.as_tensor(real, dtype=torch.float32))
        probs = classifier.head(fake_features).softmax(dim=1)
    num_classes = num_classes or probs.shape[1]
    counts = torch.bincount(probs.argmax(dim=1), minlength=num_classes).double()
    return {
        "frechet_distance": frechet_distance(real_features, fake_features),
        "confidence": float(probs.max(dim=1).values.mean()),
        "min_class_fraction": float(counts.min() / counts.sum()),
        "max_class_fraction": float(counts.max() / counts.sum()),
    }
