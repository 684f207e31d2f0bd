"""The error type for bad user input.

Everything a user can get wrong (an unknown preset or solver, an impossible sigma
range, data of the wrong shape, a foreign checkpoint) raises `ConfigError` with a
one-line message that names the bad value and what is allowed. The command line
prints that line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

from typing import Iterable


class ConfigError(ValueError):
    """Bad user input; the message is one line naming the value and the valid choices."""


def unknown(kind: str, value: object, valid: Iterable[str]) -> ConfigError:
    """A ConfigError for an unknown name, listing the valid names."""
    return ConfigError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")
