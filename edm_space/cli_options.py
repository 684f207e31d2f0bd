"""Command-line options and helpers shared by every `edm-space` command (no command imports another's module)."""

from __future__ import annotations

import sys
import json
from typing import Any, Callable, Dict, Iterable, Sequence

import click
import torch

from . import devices
from .errors import ConfigError

device_option = click.option(
    "--device", default="auto", show_default=True,
    help="auto (CUDA if available; under torchrun the GPU of LOCAL_RANK), cpu, cuda, cuda:N or mps.",
)
precision_option = click.option(
    "--precision", type=click.Choice(list(devices.PRECISIONS)), default="fp32", show_default=True,
    help="Autocast precision of the network (weights, EMA and sampler state keep theirs); fp16 needs a GPU.",
)
compile_option = click.option("--compile", "compile_network", is_flag=True, help="Run the network through torch.compile.")
threads_option = click.option(
    "--threads", type=int, default=1, show_default=True,
    help="CPU threads for torch. One is fastest for small networks on a shared machine; raise it on an idle many-core CPU.",
)
# How often a training run logs and checkpoints (edm_space.engine.Cadence), for every kind of run.
_CADENCE = (
    click.option("--checkpoint-every", type=int, default=500, show_default=True, help="Steps between checkpoints."),
    click.option("--keep-checkpoints", type=int, default=2, show_default=True, help="Checkpoints kept (older ones are deleted)."),
    click.option("--log-every", type=int, default=50, show_default=True, help="Steps between log.jsonl entries."),
)


def cadence_options(command: Callable) -> Callable:
    """--checkpoint-every, --keep-checkpoints and --log-every, in this order in --help."""
    for option in reversed(_CADENCE):
        command = option(command)
    return command


quiet_option = click.option(
    "--quiet", "-q", is_flag=True,
    help="No progress bars (they are off anyway when stderr is not a terminal); results and errors are still printed.",
)


def show_progress(quiet: bool) -> bool:
    """Whether to draw progress bars: not with --quiet, and only on a terminal (a log file gets no bar updates)."""
    stream = sys.stderr
    return not quiet and stream is not None and hasattr(stream, "isatty") and stream.isatty()


def given_options(context: click.Context) -> Dict[str, str]:
    """The options given on the command line: parameter name -> its flag (e.g. num_steps -> --steps)."""
    given = {}
    for parameter in context.command.params:
        if parameter.name and context.get_parameter_source(parameter.name) == click.core.ParameterSource.COMMANDLINE:
            given[parameter.name] = parameter.opts[0]
    return given


def parse_options(pairs: Sequence[str], what: str) -> Dict[str, Any]:
    """key=value pairs (values parsed as JSON when possible: 64, 0.1, [1,2], true) into a dict."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{what} {pair!r} must look like key=value")
        key, value = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise ConfigError(f"{what} {pair!r} has no key; write key=value")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def set_threads(threads: int) -> None:
    """torch's CPU threads for this command (one is fastest for small networks on a busy machine)."""
    if threads < 1:
        raise ConfigError(f"--threads {threads} is invalid; it must be >= 1")
    torch.set_num_threads(threads)


def explicit_settings(context: click.Context, settings: Iterable[str], parameters: Dict[str, str]) -> set:
    """The settings the user gave on the command line; `parameters` maps a setting to its click parameter where the names differ."""
    return {key for key in settings if context.get_parameter_source(parameters.get(key, key)).name == "COMMANDLINE"}
