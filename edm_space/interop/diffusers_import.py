"""`edm-space import diffusers DIR --out RUN`: a local diffusers model or pipeline folder as an ordinary run directory.

DIR is a pipeline folder (model_index.json with a unet/ or transformer/ and a scheduler/ subfolder) or a
model folder (config.json) with the scheduler's scheduler_config.json beside it or in scheduler/. The
model is loaded with diffusers' own `from_pretrained(DIR, local_files_only=True)` (nothing is downloaded),
wrapped as a raw network of edm_space.networks.diffusers_models, and written as a weights run
(edm_space.weights): weights.safetensors plus a config.json naming the adapter and the preset that the
scheduler's formulas are (edm_space.interop.schedulers). Every command then works on RUN.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any, Dict, Optional, Tuple

import torch

from ..autoencoders import build
from ..errors import ConfigError
from ..files import read_json
from ..model_training import ModelConfig
from ..optional import require
from ..run_record import RunRecord, write_record
from ..rundir import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, checkpoint_path, write_json
from ..training import TrainConfig, load_trained
from ..weights import check_new_directory, write_weights_run
from .schedulers import SCHEDULERS, formulation_of

# diffusers model class -> (network adapter, extra network options)
MODELS = {
    "UNet2DModel": ("diffusers-unet", {"model_class": "UNet2DModel"}),
    "UNet2DConditionModel": ("diffusers-unet", {"model_class": "UNet2DConditionModel"}),
    "DiTTransformer2DModel": ("diffusers-dit", {}),
}
MODEL_FOLDERS = ("unet", "transformer")
# diffusers autoencoder class -> the edm_space.autoencoders kind that wraps it
AUTOENCODERS = {"AutoencoderKL": "diffusers-kl", "VQModel": "diffusers-vq"}
AUTOENCODER_FOLDER = "autoencoder"  # the imported vae's run directory, inside the latent run
# The data set an imported run names: none (what needs the training data, e.g. --analytic-first-step, says so).
IMPORTED_DATA = "none (imported from diffusers)"


def locate(folder: str) -> Tuple[Optional[str], Optional[str], str, str]:
    """(model subfolder or None, scheduler subfolder or None, model class, scheduler class) of a diffusers folder."""
    if not os.path.isdir(folder):
        raise ConfigError(f"diffusers folder {folder!r} does not exist or is not a directory")
    index_path = os.path.join(folder, "model_index.json")
    if os.path.isfile(index_path):
        index = read_json(index_path, "pipeline index")
        found = [name for name in MODEL_FOLDERS if name in index]
        if not found:
            raise ConfigError(f"pipeline {folder!r} has no unet or transformer component; it has {', '.join(k for k in index if not k.startswith('_'))}")
        model_sub = found[0]
    else:
        model_sub = None
    model_dir = os.path.join(folder, model_sub) if model_sub else folder
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{folder!r} is neither a diffusers pipeline (model_index.json) nor a model folder (config.json)")
    model_class = read_json(config_path, "model config").get("_class_name")
    scheduler_sub = None
    for candidate in ("scheduler", None):
        path = os.path.join(folder, candidate, "scheduler_config.json") if candidate else os.path.join(folder, "scheduler_config.json")
        if os.path.isfile(path):
            scheduler_sub = candidate
            scheduler_class = read_json(path, "scheduler config").get("_class_name")
            break
    else:
        raise ConfigError(f"{folder!r} has no scheduler (scheduler/scheduler_config.json or scheduler_config.json); "
                          "without it the model's formulation is unknown")
    if model_class not in MODELS:
        raise ConfigError(f"unknown model class {model_class!r} in {config_path!r}; supported: {', '.join(MODELS)}")
    return model_sub, scheduler_sub, model_class, scheduler_class


def _load(cls, folder: str, subfolder: Optional[str], what: str):
    """cls.from_pretrained from local files only, errors (a config disagreeing with its weights, ...) in one line.

    diffusers' own log messages (e.g. that `accelerate` is missing) are held back during the call.
    """
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return cls.from_pretrained(folder, subfolder=subfolder, local_files_only=True)
    except Exception as error:  # diffusers raises ValueError, OSError, RuntimeError, EnvironmentError
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"cannot load the {what} of {folder!r} with diffusers ({type(error).__name__}: {reason})") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _vae_class(folder: str) -> Optional[str]:
    """The class of a pipeline's vae/ component, None without one; an unknown class is refused."""
    path = os.path.join(folder, "vae", "config.json")
    if not os.path.isfile(os.path.join(folder, "model_index.json")) or not os.path.isfile(path):
        return None
    name = read_json(path, "vae config").get("_class_name")
    if name not in AUTOENCODERS:
        raise ConfigError(f"unknown autoencoder class {name!r} in {path!r}; supported: {', '.join(AUTOENCODERS)}")
    return name


def _autoencoder_writer(vae, name: str, run_dir: str):
    """(write(folder), latent_space record): the vae as an autoencoder run (edm_space.model_training) at
    run_dir/autoencoder, and the record a latent run keeps of it (diffusers' scaling_factor and shift_factor
    as the normalization (z - shift) * scale)."""
    config = json.loads(json.dumps({k: v for k, v in dict(vae.config).items() if not k.startswith("_")}))
    size = config.get("sample_size")
    size = [size, size] if isinstance(size, int) else list(size)
    ae_dir = os.path.join(os.path.abspath(run_dir), AUTOENCODER_FOLDER)
    model_config = ModelConfig(kind="autoencoder", name=AUTOENCODERS[name], options={"config": config}, data=IMPORTED_DATA, out=ae_dir,
                               held_out=0, steps=0)
    model_record = RunRecord(item_shape=[int(config["in_channels"]), *size], held_out=0, step=0, checkpoint=os.path.relpath(checkpoint_path(ae_dir, 0), ae_dir))
    adapter = build(model_config.name, model_record.item_shape, config=config)
    adapter.model.load_state_dict(vae.state_dict())
    model_record = dataclasses.replace(model_record, parameters=sum(p.numel() for p in adapter.parameters()))
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": 0, "model": adapter.state_dict(),
             "optimizers": {}, "config": json.dumps(model_config.to_json()), "record": json.dumps(model_record.to_json())}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    channels = int(config["latent_channels"])
    shift, scale = float(config.get("shift_factor") or 0.0), float(config.get("scaling_factor") or 1.0)
    record = {"run": ae_dir, "step": 0, "checksum": hashlib.sha256(payload).hexdigest(), "mode": "mean" if name == "AutoencoderKL" else "continuous",
              "shift": [shift] * channels, "scale": [scale] * channels, "sigma_data": 1.0}

    def write(folder: str) -> None:
        target = os.path.join(folder, AUTOENCODER_FOLDER)
        path = checkpoint_path(target, 0)
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as file:
            file.write(payload)
        write_record(target, model_record)
        write_json(os.path.join(target, "config.json"), dict(model_config.to_json(), out=ae_dir))

    return write, record


def _conditioning(model_class: str, config: Dict[str, Any]) -> Tuple[int, float]:
    """(num_classes, label_dropout): the classes a model is conditioned on, and whether it has a null class."""
    if model_class == "DiTTransformer2DModel":
        return int(config["num_embeds_ada_norm"]), 0.1  # DiT's label table has the null class (diffusers' class_dropout_prob = 0.1)
    if model_class == "UNet2DConditionModel" and any("CrossAttn" in block for block in config.get("down_block_types", ())):
        raise ConfigError("UNet2DConditionModel with cross-attention blocks needs text (encoder_hidden_states), which edm-space has no input for")
    if config.get("class_embed_type") is not None:
        raise ConfigError(f"{model_class} with class_embed_type = {config['class_embed_type']!r} is not supported; only num_class_embeds (an embedding table)")
    return int(config.get("num_class_embeds") or 0), 0.0


def import_diffusers(folder: str, out_dir: str) -> Dict[str, Any]:
    """Write the run directory `out_dir` of the diffusers model in `folder`; returns what was imported and notes."""
    diffusers = require("diffusers", "edm-space import diffusers")
    check_new_directory(out_dir)
    model_sub, scheduler_sub, model_class, scheduler_class = locate(folder)
    if scheduler_class not in SCHEDULERS:
        raise ConfigError(f"scheduler {scheduler_class!r} is not supported; supported: {', '.join(SCHEDULERS)}")
    scheduler = _load(getattr(diffusers, scheduler_class), folder, scheduler_sub, "scheduler")
    preset, preset_options, notes = formulation_of(scheduler_class, dict(scheduler.config))
    model = _load(getattr(diffusers, model_class), folder, model_sub, model_class)
    config = json.loads(json.dumps({k: v for k, v in dict(model.config).items() if not k.startswith("_")}))
    num_classes, label_dropout = _conditioning(model_class, config)
    size = config.get("sample_size")
    size = [size, size] if isinstance(size, int) else list(size or [])
    if len(size) != 2:
        raise ConfigError(f"{model_class} in {folder!r} has sample_size = {config.get('sample_size')!r}; an image size is needed")
    net, extra = MODELS[model_class]
    run = TrainConfig(preset=preset, preset_options=preset_options, data=IMPORTED_DATA, out=out_dir, net=net,
                      net_options={"config": config, **extra}, steps=0, conditional=bool(num_classes),
                      label_dropout=label_dropout)
    run_record = RunRecord(item_shape=[int(config["in_channels"]), *size], num_classes=num_classes)
    vae_class = _vae_class(folder)
    write_extra = None
    if vae_class is not None:
        write_extra, record = _autoencoder_writer(_load(getattr(diffusers, vae_class), folder, "vae", vae_class), vae_class, out_dir)
        run.latent, run_record = record["run"], dataclasses.replace(run_record, latent_space=record)
        notes.append(f"the {vae_class} is the autoencoder run {record['run']}, which the run refers to by that path")
    tensors = {f"model.{name}": tensor for name, tensor in model.state_dict().items()}
    if model.config.get("out_channels", config["in_channels"]) not in (None, config["in_channels"]):
        notes.append("the model's variance output channels are dropped; its mean prediction is used")
    metadata = {"step": "0", "weights": "imported", "source": os.path.abspath(folder), "model": model_class, "scheduler": scheduler_class}

    def finish(staging: str) -> None:
        if write_extra is not None:
            write_extra(staging)
        load_trained(staging)  # before the run appears: the adapter rebuilt from the config takes exactly these weights

    write_weights_run(out_dir, run.to_json(), tensors, metadata, extra=finish, record=run_record.to_json())
    return {"model": model_class + (f" + {vae_class}" if vae_class else ""), "scheduler": scheduler_class, "net": net, "preset": preset, "preset_options": preset_options,
            "notes": notes, "out": out_dir}
