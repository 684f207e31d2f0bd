"""`edm-space export RUN --format diffusers --out DIR`: a DiT run as diffusers' DiTTransformer2DModel plus its scheduler.

DIR gets transformer/ (config.json + diffusion_pytorch_model.safetensors), scheduler/ and a model_index.json,
so `DiTTransformer2DModel.from_pretrained(DIR, subfolder="transformer")` and the scheduler class load it with
diffusers alone (and `edm-space import diffusers DIR` reads it back).

The run's network must be what DiTTransformer2DModel computes: networks.dit.DiT with convention "dit",
pos "sincos", qk_norm false, mlp_ratio 4, noise_embedding "dit" (DiT's sinusoidal timestep embedding), a square
image of side < 128 (diffusers rescales positions above), and a formulation a diffusers scheduler has:

- sd3 / flow -> FlowMatchEulerDiscreteScheduler(shift), timestep 1000 t: noise_scale * c_noise must be 1000 t;
- ddpm / ddim -> DDPMScheduler / DDIMScheduler with the chain's betas and prediction type;
- edm -> EDMEulerScheduler(sigma_data).

Weights map one to one (the label embedding's table row k is W[:, k] + b, the null row b; every block gets a
copy of the shared noise and label embedding, as diffusers' DiT keeps one per block).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import ConfigError
from ..optional import require
from ..training import load_trained
from ..weights import check_new_directory, staged_directory

# The preconditioning of a ddpm/ddim preset -> diffusers' prediction_type.
PREDICTION_TYPES = {"EpsPrecond": "epsilon", "VPredictionPrecond": "v_prediction", "SamplePredictionPrecond": "sample"}


def _check_exportable(config, net) -> None:
    if config.net != "dit":
        raise ConfigError(f"--format diffusers exports DiT runs; this run's network is {config.net!r} (use --format safetensors)")
    needed = {"convention": "dit", "pos": "sincos", "qk_norm": False, "mlp_ratio": 4.0, "noise_embedding": "dit"}
    have = {"convention": net.convention, "pos": net.pos, "qk_norm": net.qk_norm, "mlp_ratio": float(net.mlp_ratio), "noise_embedding": net.noise_embedding}
    wrong = [f"{key}={have[key]!r}" for key in needed if have[key] != needed[key]]
    if wrong:
        raise ConfigError(f"this DiT has {', '.join(wrong)}; DiTTransformer2DModel needs the net options "
                          "convention=dit, pos=sincos, qk_norm=false, mlp_ratio=4, noise_embedding=dit")
    _, height, width = net.item_shape
    if height != width or height >= 128:
        raise ConfigError(f"DiTTransformer2DModel takes square images below 128 px; this run's items are {height}x{width}")
    if config.latent_space is not None:
        raise ConfigError("a latent run exports with its autoencoder, which --format diffusers does not write yet; use --format safetensors")


def scheduler_for(formulation, noise_scale: float) -> Tuple[str, Dict[str, Any]]:
    """(diffusers scheduler class, its config) whose formulas are the run's formulation and network time input."""
    name = formulation.name
    if name in ("sd3", "flow"):
        time_scale = getattr(formulation.preconditioning, "time_scale", 1.0)
        if noise_scale * time_scale != 1000:
            raise ConfigError(f"a flow DiT exports to FlowMatchEulerDiscreteScheduler, which feeds the timestep 1000 t; this one "
                              f"embeds {noise_scale * time_scale:g} t (train with --net-option noise_scale={1000 / time_scale:g})")
        return "FlowMatchEulerDiscreteScheduler", {"num_train_timesteps": 1000, "shift": float(formulation.time_shift)}
    if noise_scale != 1:
        raise ConfigError(f"noise_scale = {noise_scale:g}: the {name} preset's diffusers scheduler feeds c_noise itself (noise_scale 1)")
    if name in ("ddpm", "ddim"):
        chain = formulation.noise
        prediction = PREDICTION_TYPES[type(formulation.preconditioning).__name__]
        config = {"num_train_timesteps": chain.num_timesteps, "beta_start": chain.beta_start, "beta_end": chain.beta_end,
                  "beta_schedule": chain.beta_schedule, "prediction_type": prediction, "clip_sample": False}
        return ("DDPMScheduler" if name == "ddpm" else "DDIMScheduler"), config
    if name == "edm":
        return "EDMEulerScheduler", {"sigma_data": float(formulation.preconditioning.sigma_data)}
    raise ConfigError(f"the {name} preset has no diffusers scheduler with its formulas; export it with --format safetensors")


def dit_state_dict(net, classes: int) -> Dict[str, torch.Tensor]:
    """The DiTTransformer2DModel state dict of a networks.dit.DiT (see the module docstring)."""
    width = net.inp.out_features
    state: Dict[str, torch.Tensor] = {
        "pos_embed.proj.weight": net.inp.weight.reshape(width, net.item_shape[0], net.patch, net.patch),
        "pos_embed.proj.bias": net.inp.bias,
        "proj_out_1.weight": net.out_modulation.weight, "proj_out_1.bias": net.out_modulation.bias,
        "proj_out_2.weight": net.out.weight, "proj_out_2.bias": net.out.bias,
    }
    if net.label is not None:
        table = torch.cat([(net.label.weight + net.label.bias[:, None]).T, net.label.bias[None]])
    else:
        table = torch.zeros(classes + 1, width)
    for i, block in enumerate(net.blocks):
        prefix = f"transformer_blocks.{i}."
        pairs = {
            "norm1.emb.timestep_embedder.linear_1": net.embed.mlp[0], "norm1.emb.timestep_embedder.linear_2": net.embed.mlp[2],
            "norm1.linear": block.modulation, "attn1.to_out.0": block.attention.proj, "ff.net.0.proj": block.mlp[0], "ff.net.2": block.mlp[2],
        }
        for name, layer in pairs.items():
            state[prefix + name + ".weight"], state[prefix + name + ".bias"] = layer.weight, layer.bias
        weights, biases = block.attention.qkv.weight.chunk(3), block.attention.qkv.bias.chunk(3)
        for j, name in enumerate(("to_q", "to_k", "to_v")):
            state[prefix + f"attn1.{name}.weight"], state[prefix + f"attn1.{name}.bias"] = weights[j], biases[j]
        state[prefix + "norm1.emb.class_embedder.embedding_table.weight"] = table
    return {name: tensor.detach().to("cpu", torch.float32).contiguous().clone() for name, tensor in state.items()}


def export_diffusers(run: str, out_dir: str, ema: bool = True, step: Optional[int] = None) -> Dict[str, Any]:
    """Write DIR = transformer/ + scheduler/ + model_index.json of a DiT run (see the module docstring)."""
    diffusers = require("diffusers", "edm-space export --format diffusers")
    check_new_directory(out_dir)
    denoiser, config, item_shape, num_classes, found_step = load_trained(run, ema=ema, step=step)
    net = denoiser.network
    _check_exportable(config, net)
    scheduler_class, scheduler_config = scheduler_for(denoiser.formulation, float(net.embed.scale))
    width, heads = net.inp.out_features, net.blocks[0].attention.heads
    classes = max(num_classes, 1)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=width // heads, in_channels=item_shape[0], out_channels=item_shape[0],
        num_layers=len(net.blocks), sample_size=item_shape[1], patch_size=net.patch, num_embeds_ada_norm=classes, norm_eps=1e-6)
    model.load_state_dict(dit_state_dict(net, classes))
    scheduler = getattr(diffusers, scheduler_class)(**scheduler_config)
    with staged_directory(out_dir) as staging:
        model.save_pretrained(os.path.join(staging, "transformer"))
        scheduler.save_pretrained(os.path.join(staging, "scheduler"))
        index = {"_class_name": "DiffusionPipeline", "_diffusers_version": diffusers.__version__,
                 "transformer": ["diffusers", "DiTTransformer2DModel"], "scheduler": ["diffusers", scheduler_class]}
        with open(os.path.join(staging, "model_index.json"), "w") as file:
            json.dump(index, file, indent=2)
    return {"out": out_dir, "step": found_step, "model": "DiTTransformer2DModel", "scheduler": scheduler_class}
