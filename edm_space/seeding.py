"""Per-sample random streams, so that a sample depends on its own seed and not on its batch."""

from __future__ import annotations

import re
from typing import List, Sequence

import torch

from .errors import ConfigError

Tensor = torch.Tensor


class SeededNoise:
    """Row i of every draw comes from its own torch.Generator seeded with seeds[i].

    Pass `noise.randn_like` as a sampler's `randn_like`; draw latents with
    `noise.randn(shape)`. Sample i then depends only on seed i (EDM's
    StackedRandomGenerator idea).
    """

    def __init__(self, seeds: Sequence[int], device: "torch.device | str" = "cpu"):
        self.seeds = [int(seed) for seed in seeds]
        self.generators = [torch.Generator(device).manual_seed(seed % (1 << 63)) for seed in self.seeds]
        self.device = torch.device(device)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """A [len(seeds), *shape[1:]] standard normal draw; shape[0] must equal the number of seeds."""
        if shape[0] != len(self.generators):
            raise ConfigError(f"a draw of batch {shape[0]} needs {shape[0]} seeds; got {len(self.generators)}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype, device=self.device) for g in self.generators])

    def randn_like(self, x: Tensor) -> Tensor:
        """Like torch.randn_like, one generator per row."""
        return self.randn(x.shape, dtype=x.dtype).to(x.device)


def parse_seeds(text: str, most: int = 10**7) -> List[int]:
    """Parse '0-99', '1,5,7-9' or '3' into a list of non-negative integers (at most `most` of them)."""
    seeds: List[int] = []
    for part in str(text).split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError(f"seeds {text!r} are invalid; write a list like 0-99 or 1,5,7-9")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise ConfigError(f"seed range {part!r} is empty; write low-high with low <= high")
        if len(seeds) + hi - lo + 1 > most:
            raise ConfigError(f"seeds {text!r} name more than {most:,} samples; sample fewer per command")
        seeds.extend(range(lo, hi + 1))
    return seeds


def step_generator(seed: int, step: int, part: int = 0, parts: int = 1) -> torch.Generator:
    """The generator of one training step's draws, a function of (seed, step) alone, so that resuming needs
    no random state beyond the step counter and K processes draw the same global batch. With `parts` > 1
    it is a BatchPartGenerator for process `part` of `parts` (torchrun), seeded the same."""
    generator = torch.Generator() if parts == 1 else BatchPartGenerator.of(part, parts)
    return generator.manual_seed((seed * 1_000_003 + step) % (1 << 63))


class BatchPartGenerator(torch.Generator):
    """The step generator of process `part` of `parts`, each of which takes the equal, consecutive part `part` of
    every global batch (torchrun). A draw through `batch_draw` (its first dimension the batch) is made for the whole
    batch, exactly as one process makes it, and this process's rows are kept; every other draw is a plain
    torch.Generator's and the same on every process. So the step's randomness does not depend on the process count."""

    part, parts = 0, 1

    @classmethod
    def of(cls, part: int, parts: int, device: "torch.device | str" = "cpu") -> "BatchPartGenerator":
        generator = cls(device)
        generator.part, generator.parts = part, parts
        return generator


def batch_draw(draw, shape: Sequence[int], generator: "torch.Generator | None", **options) -> Tensor:
    """draw(shape, generator=generator, **options) (torch.randn, torch.rand) whose first dimension is the batch: under
    a BatchPartGenerator, the whole batch's draw made as one process makes it, of which this process's rows are kept."""
    parts = getattr(generator, "parts", 1)
    if parts == 1:
        return draw(tuple(shape), generator=generator, **options)
    rows = shape[0]
    start = generator.part * rows
    return draw((rows * parts, *shape[1:]), generator=generator, **options)[start:start + rows]


def generator_like(generator: torch.Generator, device: "torch.device | str", seed: int) -> torch.Generator:
    """A generator on `device` seeded with `seed` that takes the same part of each batch as `generator`."""
    if isinstance(generator, BatchPartGenerator):
        return BatchPartGenerator.of(generator.part, generator.parts, device).manual_seed(seed)
    return torch.Generator(device).manual_seed(seed)
