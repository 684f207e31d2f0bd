"""Import the parts of reference packages that tests/test_references.py compares against.

k-diffusion's ``k_diffusion/__init__.py`` imports every submodule (models,
evaluation, ...), which need torchvision, clean-fid, CLIP and more. The tests only
call functions of ``k_diffusion.sampling``, which needs scipy, torchdiffeq,
torchsde, tqdm and ``k_diffusion.utils``; that last module imports torchvision
and safetensors at the top but uses them only in image and checkpoint helpers
that the samplers never call. So ``k_diffusion`` is registered as a bare package
(its real directory as ``__path__``, its ``__init__`` not run), torchvision and
safetensors are stood in for by empty modules while ``k_diffusion.sampling`` is
imported (only where they are not installed), and the stand-ins are taken out of
``sys.modules`` again afterwards, so no other import can see them.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

import pytest

# Modules k_diffusion.utils imports at its top but the sampling functions never use.
_UNUSED_BY_SAMPLING = (
    ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"),
    ("safetensors",),
)


def k_diffusion_sampling() -> types.ModuleType:
    """``k_diffusion.sampling`` without running ``k_diffusion/__init__.py``; skips the test when not installed."""
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (pip install --no-deps -r tests/requirements-reference.txt)")
    for needed in ("scipy", "torchdiffeq", "torchsde", "tqdm"):  # imported by k_diffusion.sampling itself
        pytest.importorskip(needed)

    if "k_diffusion" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = importlib.machinery.ModuleSpec("k_diffusion", None, is_package=True)
        package.__spec__.submodule_search_locations = package.__path__
        sys.modules["k_diffusion"] = package

    stand_ins = {}
    for group in _UNUSED_BY_SAMPLING:
        if importlib.util.find_spec(group[0]) is None:
            for name in group:
                stand_ins[name] = types.ModuleType(name)
                parent, _, child = name.rpartition(".")
                if parent:
                    setattr(stand_ins[parent], child, stand_ins[name])
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("k_diffusion.sampling")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


def diffusers_schedulers():
    """(DDIMScheduler, DDPMScheduler, the scheduling_ddpm module); skips the test when diffusers is not installed."""
    pytest.importorskip("diffusers")
    ddim = pytest.importorskip("diffusers.schedulers.scheduling_ddim")
    ddpm = pytest.importorskip("diffusers.schedulers.scheduling_ddpm")
    return ddim.DDIMScheduler, ddpm.DDPMScheduler, ddpm
