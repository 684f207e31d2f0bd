"""The one registry helper (edm_space.registry): names, aliases with a note, and option bounds checked
before anything is built, for networks, autoencoders, families, presets, solvers and discretizations."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import presets
import samplers
from conftest import gaussian_denoiser
from edm_space import autoencoders, families, networks
from edm_space.errors import ConfigError
from edm_space.registry import Option, Registry, check_option_values


def test_unknown_names_are_refused_in_one_line_listing_the_valid_ones():
    for lookup, valid in ((presets.get, "edm, vp"), (samplers.get, "euler, heun"), (networks.build, "mlp, unet, dit")):
        with pytest.raises(ConfigError) as refused:
            lookup("nope", *(((2,),) if lookup is networks.build else ()))
        assert "\n" not in str(refused.value) and "'nope'" in str(refused.value) and valid in str(refused.value)


@pytest.mark.parametrize("name", [["edm"], None, 3, {"edm": 1}])
def test_presets_get_refuses_a_name_that_is_not_a_string(name):
    with pytest.raises(ConfigError, match="unknown preset"):
        presets.get(name)


def test_presets_get_returns_a_fresh_formulation_each_call():
    first, second = presets.get("iddpm"), presets.get("iddpm")
    assert first is not second and first.levels is not second.levels
    first.levels.mul_(2.0)  # a caller changing its own copy reaches no other caller
    assert torch.equal(second.levels, presets.get("iddpm").levels)


SOLVER_ALIASES = [("dpmpp_2m", "dpm++2m"), ("dpmpp_3m", "dpm++3m"), ("dpmpp_3m_sde", "dpm++3m"),
                  ("euler_ancestral", "ancestral"), ("DPMSolverMultistep", "dpm++2m"), ("UniPC", "unipc-2")]


@pytest.mark.parametrize("alias, target", SOLVER_ALIASES)
def test_solver_aliases_sample_exactly_as_their_targets_and_say_so(alias, target, caplog):
    denoiser = gaussian_denoiser(torch.zeros(2, dtype=torch.float64), 0.5)
    latents = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype)  # noqa: E731
    generator = torch.Generator().manual_seed(1)
    expected = samplers.sample(denoiser, latents, "edm", solver=target, num_steps=6, randn_like=noise)
    generator = torch.Generator().manual_seed(1)
    info = {}
    with caplog.at_level(logging.WARNING, logger="edm_space"):
        got = samplers.sample(denoiser, latents, "edm", solver=alias, num_steps=6, randn_like=noise, info=info)
    assert torch.equal(got, expected) and info["solver"] == target  # the record names what ran
    notes = [r.getMessage() for r in caplog.records if r.name == "edm_space"]
    assert len(notes) == 1 and alias in notes[0] and target in notes[0]
    assert alias not in samplers.names()


def test_the_sde_alias_says_it_is_deterministic_here(caplog):
    with caplog.at_level(logging.WARNING, logger="edm_space"):
        samplers.get("dpmpp_3m_sde")
    assert "deterministic" in caplog.records[-1].getMessage() and "no SDE" in caplog.records[-1].getMessage()


def test_diffusers_aliases_match_the_defaults_of_diffusers_schedulers():
    diffusers = pytest.importorskip("diffusers")
    dpm = diffusers.DPMSolverMultistepScheduler().config
    unipc = diffusers.UniPCMultistepScheduler().config
    assert (dpm.solver_order, dpm.algorithm_type) == (2, "dpmsolver++")
    assert samplers.get("DPMSolverMultistep").order == dpm.solver_order
    # UniPC's order p is the predictor's; the corrector adds one (Zhao et al. 2023): unipc-2 has order 3.
    assert (unipc.solver_order, unipc.predict_x0, unipc.solver_type) == (2, True, "bh2")
    assert samplers.get("UniPC").order == unipc.solver_order + 1


def test_karras_is_the_edm_discretization(caplog):
    f = presets.get("vp")
    with caplog.at_level(logging.WARNING, logger="edm_space"):
        karras = samplers.time_steps(f, 7, "karras", rho=5.0)
    assert torch.equal(karras, samplers.time_steps(f, 7, "edm", rho=5.0))
    assert any("'karras'" in r.getMessage() and "'edm'" in r.getMessage() for r in caplog.records)
    # k-diffusion's get_sigmas_karras, written out: (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho.
    lo, hi = 0.002, 80.0
    ramp = torch.linspace(0, 1, 7, dtype=torch.float64)
    expected = (hi ** 0.2 + ramp * (lo ** 0.2 - hi ** 0.2)) ** 5.0
    assert torch.allclose(presets.get("edm").sigma(samplers.time_steps(presets.get("edm"), 7, "karras", rho=5.0))[:-1], expected, rtol=1e-12)


# Each value the option sweep found passing (or crashing later); bounds are declared next to each plug-in.
BAD_OPTIONS = [
    (autoencoders.build, "kl", (1, 8, 8), {"channels": 0}),
    (autoencoders.build, "kl", (1, 8, 8), {"blocks": -1}),
    (autoencoders.build, "vq", (1, 8, 8), {"num_codes": 2.5}),
    (autoencoders.build, "kl", (1, 8, 8), {"beta": math.nan}),
    (autoencoders.build, "vq", (1, 8, 8), {"ema": "maybe"}),
    (families.build, "nice", (4,), {"width": 0}),
    (families.build, "gan", (1, 8, 8), {"channels": 0}),
    (families.build, "pixelcnn", (1, 8, 8), {"channels": 0}),
    (families.build, "gan", (1, 8, 8), {"latent_dim": 0}),
    (networks.build, "dit", (1, 8, 8), {"mlp_ratio": 0}),
    (networks.build, "mlp", (2,), {"width": 10**9}),
]


@pytest.mark.parametrize("build, name, shape, options", BAD_OPTIONS, ids=[f"{n} {o}" for _, n, _, o in BAD_OPTIONS])
def test_option_bounds_are_checked_before_anything_is_built(build, name, shape, options, monkeypatch):
    registry = {autoencoders.build: autoencoders.AUTOENCODERS, families.build: families.FAMILIES, networks.build: networks.NETWORKS}[build]
    monkeypatch.setitem(registry, name, _never_built(registry[name]))
    (key, value), = options.items()
    with pytest.raises(ConfigError) as refused:
        build(name, shape, **options)
    message = str(refused.value)
    assert "\n" not in message and f"{key} = {value!r}" in message and "must be" in message


def _never_built(cls):
    """A stand-in with the plug-in's signature and OPTIONS whose construction fails the test."""
    class Stand(cls):
        def __init__(self, *args, **kwargs):
            pytest.fail("the plug-in was constructed before its options were checked")
    Stand.__init__.__signature__ = __import__("inspect").signature(cls)
    return Stand


def test_valid_options_still_build():
    assert autoencoders.build("vq", (1, 8, 8), num_codes=4, ema=True, blocks=0).num_codes == 4
    assert families.build("gan", (1, 8, 8), channels=4, latent_dim=2).item_shape == (1, 8, 8)
    assert isinstance(networks.build("dit", (1, 8, 8), width=16, heads=2, patch=2, depth=1, mlp_ratio=0.5), torch.nn.Module)


def test_option_declarations_and_inference():
    def plug(item_shape, width: int = 4, rate: float = 0.5, flag: bool = False, name: str = "a", sizes=(1, 2), other=None):
        """A plug-in."""
    plug.OPTIONS = {"rate": Option.number(0.0, 1.0, open_high=True)}
    ok = dict(width=3, rate=0.0, flag=True, name="b", sizes=[4], other=object())
    assert check_option_values("thing", ok, plug, skip=("item_shape",)) == ok
    for key, value, allowed in (("width", 0, ">= 1"), ("width", True, "integer"), ("rate", 1.0, "< 1"), ("rate", math.inf, "finite"),
                                ("flag", 1, "true or false"), ("name", 3, "a name"), ("sizes", [0], "list of integers"),
                                ("item_shape", (1,), "valid: width")):
        with pytest.raises(ConfigError, match=allowed):
            check_option_values("thing", {key: value}, plug, skip=("item_shape",))


def test_registry_is_a_dict_of_canonical_names():
    r = Registry("widget", {"a": 1})
    r.alias("b", "a", "another name")
    assert r.get("b") == 1 and list(r) == ["a"] and r.names() == ["a"] and "b" not in r
    with pytest.raises(ConfigError, match="unknown widget 'c'; valid: a, b"):
        r.get("c")


def test_forwarded_options_reach_the_model_they_are_forwarded_to():
    # The VAE family and the KL / VQ autoencoders take the convolutional options through one **options each;
    # the registry still lists and checks them, and each reaches the module it configures.
    for build, name in ((families.build, "vae"), (autoencoders.build, "kl"), (autoencoders.build, "vq")):
        model = build(name, (1, 8, 8), latent_channels=3, downsample=4, channels=8, blocks=0)
        autoencoder = getattr(model, "autoencoder", model)
        assert autoencoder.latent_shape == (3, 2, 2)
        assert autoencoder.decoder.layers[0].out_channels == 8
        assert not any(type(layer).__name__ == "ResidualBlock" for layer in autoencoder.encoder.layers)
    with pytest.raises(ConfigError, match="family 'vae' has no option 'latnt_channels'; valid: latent_channels, downsample"):
        families.check_options("vae", {"latnt_channels": 2})
    with pytest.raises(ConfigError, match="blocks = -1 is invalid"):
        families.check_options("vae", {"blocks": -1})
    assert families.build("vae", (1, 8, 8), channels=8, beta=0.5).autoencoder.beta == 0.5


def test_recorded_defaults_fill_only_the_options_a_run_lacks():
    class Plugin:
        RECORDED_DEFAULTS = {"groups": (4, 1), "mode": ("new", "legacy")}

        def __init__(self, groups: int = 4, mode: str = "new", width: int = 8):
            pass

    registry = Registry("thing", {"plug": Plugin, "plain": dict})
    assert registry.recorded_defaults("plug", True) == {"groups": 4, "mode": "new"}
    assert registry.recorded_defaults("plug", False) == {"groups": 1, "mode": "legacy"}
    assert registry.recorded_defaults("plain", True) == {} and registry.recorded_defaults("pkg.mod:Class", False) == {}
    stored = {"width": 16, "mode": "new"}  # a run that recorded mode but not groups
    assert registry.with_recorded("plug", stored, registry.recorded_defaults("plug", False)) == {"width": 16, "mode": "new", "groups": 1}
    assert registry.with_recorded("plug", {}, {"groups": 2}) == {"groups": 2}  # only the values given are filled in
    assert registry.with_recorded("plain", {"width": 3}, {"groups": 2}) == {"width": 3}
