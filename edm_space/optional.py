"""Optional dependencies: import one, or say in one line which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError

# The pip name of packages whose import name differs.
PIP_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow", "matplotlib": "matplotlib", "mlxtend": "mlxtend"}
# The extra of setup.cfg that installs each optional package.
EXTRAS = {"sklearn": "data", "mlxtend": "data", "matplotlib": "plot", "diffusers": "diffusers"}


def require(module: str, needed_for: str) -> ModuleType:
    """Import `module`, or raise a one-line ConfigError naming what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        pip_name = PIP_NAMES.get(package, package)
        extra = EXTRAS.get(package)
        how = f'pip install -e ".[{extra}]" (or pip install {pip_name})' if extra else f"pip install {pip_name}"
        raise ConfigError(f"{needed_for} needs the optional package {pip_name}: {how}") from None
