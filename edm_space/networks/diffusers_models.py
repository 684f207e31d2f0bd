"""diffusers models as raw networks F(c_in x_hat, c_noise, labels): the adapters of `edm-space import diffusers`.

    net = networks.build("diffusers-unet", item_shape=(3, 32, 32), config=unet.config)   # UNet2DModel
    net = networks.build("diffusers-dit", item_shape=(4, 32, 32), config=dit.config)     # DiTTransformer2DModel

The adapter holds the diffusers model as `model` (so its state dict is the model's, prefixed
"model.") and passes c_noise as diffusers' `timestep`: with a formulation whose c_in and c_noise are
the scheduler's (presets ddpm/ddim/sd3/edm with the options `edm_space.interop.schedulers` picks),
the network sees exactly what the scheduler would feed it. A model that also predicts its variance
(out_channels = 2 in_channels: DDPM's learned variance, DiT's learn_sigma) contributes its first
in_channels channels, the mean's prediction.

Labels follow the network contract: float one-hot rows [batch, classes]. A DiT maps an all-zero row
(or labels=None) to its null class index num_classes, the class diffusers' DiT pipeline uses for
classifier-free guidance; a UNet2DModel has no null class, so it refuses one.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..optional import require

Tensor = torch.Tensor


def build_diffusers_model(class_name: str, config: Optional[Dict[str, Any]], what: str = "network") -> nn.Module:
    """diffusers' `class_name` built from its config (keys starting with "_" dropped), errors in one line."""
    if not isinstance(config, dict):
        raise ConfigError(f"{what} {class_name}: config must be the model's diffusers config (a dict); got {config!r}")
    cls = getattr(require("diffusers", f"the {class_name} {what}"), class_name)
    try:
        return cls.from_config({key: value for key, value in config.items() if not key.startswith("_")})
    except (TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise ConfigError(f"{what} {class_name}: its config does not build a model ({' '.join(str(error).split())[:160]})") from None


def _class_indices(labels: Optional[Tensor], batch: int, num_classes: int, null: Optional[int], device) -> Optional[Tensor]:
    """Class indices of one-hot rows; an all-zero row (or labels=None) is `null` (refused when the model has none)."""
    if num_classes == 0:
        return None
    if labels is None:
        labels = torch.zeros(batch, num_classes, device=device)
    empty = labels.abs().sum(dim=1) == 0
    if bool(empty.any()) and null is None:
        raise ConfigError("this imported model has no null class (no classifier-free guidance); give every sample a class or use --guide")
    index = labels.argmax(dim=1)
    return torch.where(empty, torch.full_like(index, null if null is not None else 0), index)


def _mean_channels(output: Tensor, channels: int) -> Tensor:
    """The first `channels` channels: the prediction, without a learned variance."""
    return output if output.shape[1] == channels else output[:, :channels]


class DiffusersUNet(nn.Module):
    """diffusers' UNet2DModel (or a UNet2DConditionModel without cross-attention, with class embeddings) as F."""

    def __init__(self, item_shape: Sequence[int], config: Optional[Dict[str, Any]] = None, label_dim: int = 0,
                 model_class: str = "UNet2DModel"):
        super().__init__()
        if model_class not in ("UNet2DModel", "UNet2DConditionModel"):
            raise ConfigError(f"network diffusers-unet: model_class {model_class!r} is invalid; valid: UNet2DModel, UNet2DConditionModel")
        self.model = build_diffusers_model(model_class, config)
        self.model_class = model_class
        self.channels = int(item_shape[0])
        self.num_classes = int(label_dim)
        embeds = self.model.config.get("num_class_embeds") or 0
        if self.num_classes and self.num_classes != embeds:
            raise ConfigError(f"network diffusers-unet: label_dim = {label_dim} but the model has num_class_embeds = {embeds}")

    def forward(self, x: Tensor, c_noise: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        classes = _class_indices(labels, x.shape[0], self.num_classes, None, x.device)
        if self.model_class == "UNet2DConditionModel":
            output = self.model(x, c_noise, encoder_hidden_states=None, class_labels=classes).sample
        else:
            output = self.model(x, c_noise, class_labels=classes).sample
        return _mean_channels(output, self.channels)


class DiffusersDiT(nn.Module):
    """diffusers' DiTTransformer2DModel as F: class-conditional, its null class (index num_classes) the CFG null label."""

    def __init__(self, item_shape: Sequence[int], config: Optional[Dict[str, Any]] = None, label_dim: int = 0):
        super().__init__()
        self.model = build_diffusers_model("DiTTransformer2DModel", config)
        self.channels = int(item_shape[0])
        self.num_classes = int(label_dim) or int(self.model.config.num_embeds_ada_norm)

    def forward(self, x: Tensor, c_noise: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        classes = _class_indices(labels, x.shape[0], self.num_classes, self.num_classes, x.device)
        timestep = c_noise.expand(x.shape[0]) if c_noise.ndim == 0 else c_noise
        output = self.model(x, timestep=timestep, class_labels=classes).sample
        return _mean_channels(output, self.channels)
