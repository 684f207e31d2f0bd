"""Your own network under edm-space's training and sampling: one class with the network contract.

    python examples/own_network.py                        # trains 300 steps on moons, samples, prints NFE
    edm-space train --net examples.own_network:SmallResidualMLP --net-option hidden=64 --data moons --out runs/own
    edm-space sample --ckpt runs/own --out own.png         # rebuilds the class from the run's config

The contract: forward(x, c_noise, labels=None) returns F with x's shape. x is c_in * x_hat, c_noise the
preset's noise conditioning [batch]; labels a one-hot [batch, classes] or None. The constructor may take
item_shape (the shape of one item) and label_dim (classes, when trained --conditional); the run stores
the other constructor arguments (--net-option) so that `sample --ckpt` can build the class again.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch
from torch import nn


class SmallResidualMLP(nn.Module):
    """A two-layer residual MLP on flattened items, conditioned on c_noise by a learned scale and shift."""

    def __init__(self, item_shape: Sequence[int], hidden: int = 64, label_dim: int = 0):
        super().__init__()
        self.item_shape = tuple(item_shape)
        dim = 1
        for size in self.item_shape:
            dim *= size
        self.inp = nn.Linear(dim, hidden)
        self.noise = nn.Linear(1, 2 * hidden)
        self.label = nn.Linear(label_dim, 2 * hidden) if label_dim else None
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = torch.nn.functional.silu(self.inp(x.flatten(1)))
        scale, shift = self.noise(c_noise.reshape(-1, 1).to(h.dtype)).chunk(2, dim=1)
        if self.label is not None and labels is not None:
            label_scale, label_shift = self.label(labels.to(h.dtype)).chunk(2, dim=1)
            scale, shift = scale + label_scale, shift + label_shift
        h = h + torch.nn.functional.silu(self.mid(h * (1 + scale) + shift))
        return self.out(h).reshape(x.shape)


def main(out: str = "runs/own-network", steps: int = 300) -> None:
    import samplers
    from edm_space.training import TrainConfig, load_trained, train

    config = TrainConfig(preset="edm", data="moons", out=out, steps=steps, batch=128, warmup_images=2000,
                         net_options={"hidden": 64}, checkpoint_every=steps, log_every=50)
    train(config, network=SmallResidualMLP((2,), hidden=64), progress=False)
    denoiser, config, _, _, _ = load_trained(out)  # rebuilt from "examples.own_network:SmallResidualMLP"
    info: dict = {}
    with torch.no_grad():
        x = samplers.sample(denoiser, torch.randn(500, 2, dtype=torch.float64), formulation="edm", solver="heun", num_steps=18, info=info)
    print(f"trained {config.net} for {steps} steps in {out}; sampled {len(x)} points with {info['nfe']} evaluations")


if __name__ == "__main__":
    main(*sys.argv[1:2], *(int(a) for a in sys.argv[2:3]))
