"""`edm-space train --config run.toml`: every option of a command from a TOML file.

Keys are the command's option names, with dashes or underscores (`lr = 1e-3`, `net-option = ["width=64"]`
or a table `net-option = {width = 64}`, `conditional = true`, a list for a comma-separated option:
`ema-stds = [0.05, 0.1]`). Options given on the command line override the file. The values become
the command's defaults (click's default_map), so they are checked exactly as typed options are.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict

import click

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11 installs tomli (setup.cfg)
    import tomli as tomllib


def read_toml(path: str) -> Dict[str, Any]:
    """The TOML file's table, or a one-line ConfigError saying why not."""
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"--config {path!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path!r} is a directory; give a .toml file") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"--config {path!r} is not readable TOML: {' '.join(str(error).split())}") from None


def option_defaults(command: click.Command, table: Dict[str, Any], path: str) -> Dict[str, Any]:
    """The file's settings as {parameter name: value} of `command`; an unknown key is refused in one line."""
    names = {}
    for param in command.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--"):
                names[opt[2:]] = param
    defaults = {}
    for key, value in table.items():
        param = names.get(key.replace("_", "-"))
        if param is None or key.replace("_", "-") in ("config", "help"):
            raise ConfigError(f"--config {path!r}: unknown option {key!r}; valid: {', '.join(sorted(k for k in names if k != 'config'))}")
        if isinstance(value, dict):  # a table of key=value options (--net-option, --preset-option, ...)
            value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
        if getattr(param, "multiple", False) and not isinstance(value, list):
            value = [value]
        elif not getattr(param, "multiple", False) and isinstance(value, list):  # a list for a comma-separated option
            value = ",".join(str(v) for v in value)
        defaults[param.name] = value
    return defaults


def config_callback(context: click.Context, _param: click.Parameter, path: str):
    """click callback of --config: the file's settings become the command's defaults."""
    if path is not None:
        context.default_map = {**(context.default_map or {}), **option_defaults(context.command, read_toml(path), path)}
    return path


config_option = click.option(
    "--config", "config_file", default=None, is_eager=True, expose_value=False, callback=config_callback,
    help="A TOML file of this command's options (their names as keys); options on the command line override it.",
)


def given(context: click.Context, name: str) -> bool:
    """Whether the user set parameter `name`, on the command line or in --config."""
    return context.get_parameter_source(name).name in ("COMMANDLINE", "DEFAULT_MAP")
