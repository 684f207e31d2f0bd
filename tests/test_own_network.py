"""A user's own network: the README's example runs, the CLI trains a package.module:Class and samples it again,
and a network that breaks the contract is refused before training."""

import os
import re
import shutil
import sys

import pytest
import torch

from edm_space.cli import main
from edm_space.errors import ConfigError
from edm_space.training import TrainConfig, read_run_config, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread", "no_debug_env")


def readme_section_code(title: str) -> str:
    with open(os.path.join(REPO, "README.md")) as file:
        text = file.read()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_trains_records_the_class_and_samples(tmp_path, monkeypatch):
    code = readme_section_code("Your own network").replace("steps=200", "steps=20").replace("checkpoint_every=200", "checkpoint_every=20")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(REPO)  # the example package lives in the checkout
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert read_run_config("runs/own").net == "examples.own_network:SmallResidualMLP"
    assert scope["x"].shape == (100, 2) and torch.isfinite(scope["x"]).all()
    # The rebuilt network holds the trained weights: it differs from a fresh instance of the same class.
    from examples.own_network import SmallResidualMLP

    torch.manual_seed(123)
    fresh = SmallResidualMLP((2,), hidden=64)
    trained = scope["denoiser"].network
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), fresh.state_dict().values()))


def test_cli_trains_and_samples_a_package_module_class(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(os.path.join(REPO, "examples"), tmp_path / "examples")  # importable from the working directory
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != REPO])
    sys.modules.pop("examples", None), sys.modules.pop("examples.own_network", None)
    search_path = list(sys.path)
    main(["train", "--net", "examples.own_network:SmallResidualMLP", "--net-option", "hidden=16", "--data", "moons",
          "--data-size", "256", "--steps", "4", "--batch", "16", "--out", "runs/own"])
    assert sys.path == search_path  # found in the working directory without adding it to sys.path
    assert read_run_config("runs/own").net_options == {"hidden": 16}
    main(["sample", "--ckpt", "runs/own", "--n", "8", "--steps", "4", "--out", "own.npz"])
    assert (tmp_path / "own.npz").exists()


class TwoArgumentNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x, c_noise):
        return self.linear(x)


def test_a_network_breaking_the_contract_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"forward must take \(x, c_noise, labels=None\)"):
        train(TrainConfig(data="moons", data_size=64, steps=2, batch=16, out=str(tmp_path / "run")), network=TwoArgumentNet(), progress=False)
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_an_unimportable_class_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--net", "no_such_package.mod:Net", "--data", "moons", "--steps", "2", "--out", str(tmp_path / "run")])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: network 'no_such_package.mod:Net' cannot be imported") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
