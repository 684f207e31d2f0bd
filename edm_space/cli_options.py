"""Command-line options and helpers shared by every `edm-space` command (no command imports another's module)."""

from __future__ import annotations

import sys
from typing import Dict

import click

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
