"""One registry for every kind of plug-in: networks, autoencoders, families, presets, solvers, discretizations.

    NETWORKS = Registry("network", {"mlp": MLP, "unet": UNet})
    NETWORKS.alias("fc", "mlp", "the fully connected MLP")
    cls = NETWORKS.get("fc")                        # a note on stderr says what "fc" maps to
    options = NETWORKS.check_options("mlp", {"width": 64}, MLP, skip=("item_shape",))

A registry is a dict of canonical name -> plug-in (so `name in NETWORKS`, `NETWORKS[name]` and
`list(NETWORKS)` work as before). `get`/`resolve` also take the aliases users type and refuse
anything else with one line listing the valid names.

Options. A plug-in's keyword arguments are its options; `check_options` refuses an unknown key
(listing the valid ones) and a value that is not of the option's kind or outside its bounds, BEFORE
anything is built. Bounds are declared next to each plug-in as a class attribute (or function
attribute) OPTIONS = {"channels": Option.integer(1, 4096), ...}; an option without a declaration is
checked against its default's kind (a flag, an integer >= 0, a finite number, a name, a list of
positive integers).
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError, unknown

LOG = logging.getLogger("edm_space")
# The largest integer option any plug-in accepts unless it declares its own bound: far above any
# sensible width or count, low enough that nothing is allocated for an absurd value.
MAX_INTEGER = 1 << 20


@dataclass(frozen=True)
class Option:
    """What one option may be: kind ("integer", "number", "flag", "name", "integers"), inclusive bounds
    (`low` exclusive when `open_low`), the names allowed (`choices`), and whether None is allowed."""

    kind: str
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    choices: Tuple[str, ...] = ()
    optional: bool = False
    finite: bool = True
    label: str = ""

    @classmethod
    def integer(cls, low: int = 1, high: int = MAX_INTEGER, optional: bool = False) -> "Option":
        """An integer in [low, high]."""
        return cls("integer", low, high, optional=optional)

    @classmethod
    def number(cls, low: float = -math.inf, high: float = math.inf, open_low: bool = False, open_high: bool = False,
               optional: bool = False, finite: bool = True) -> "Option":
        """A finite number in [low, high] (open at an end with open_low / open_high); finite=False also allows +-inf, never NaN."""
        return cls("number", low, high, open_low, open_high, optional=optional, finite=finite)

    @classmethod
    def flag(cls) -> "Option":
        """true or false."""
        return cls("flag")

    @classmethod
    def name(cls, *choices: str, label: str = "") -> "Option":
        """One of `choices` (any string if none are given); `label` names the choice in "unknown LABEL 'x'; valid: ..."."""
        return cls("name", choices=tuple(choices), label=label)

    @classmethod
    def integers(cls, low: int = 1, high: int = MAX_INTEGER) -> "Option":
        """A non-empty list of integers in [low, high]."""
        return cls("integers", low, high)

    def allowed(self) -> str:
        """What the option may be, in words."""
        if self.kind == "flag":
            text = "true or false"
        elif self.kind == "name":
            text = f"one of {', '.join(self.choices)}" if self.choices else "a name"
        else:
            bound = f"{'>' if self.open_low else '>='} {self.low:g}" if math.isfinite(self.low) else ""
            if math.isfinite(self.high):
                bound += (" and " if bound else "") + f"{'<' if self.open_high else '<='} {self.high:g}"
            number = "a finite number" if self.finite else "a number"
            text = {"integer": "an integer", "number": number, "integers": "a list of integers"}[self.kind]
            text += f" {bound}" if bound else ""
        return text + (" (or null)" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        """Whether `value` is of this option's kind and inside its bounds."""
        if value is None:
            return self.optional
        if self.kind == "flag":
            return isinstance(value, bool)
        if self.kind == "name":
            return isinstance(value, str) and (not self.choices or value in self.choices)
        if self.kind == "integers":
            return isinstance(value, (list, tuple)) and bool(value) and all(Option("integer", self.low, self.high).accepts(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "integer" and not isinstance(value, int):
            return False
        if value != value or (self.finite and not math.isfinite(value)):
            return False
        inside = self.low <= value <= self.high
        return inside and not (self.open_low and value == self.low) and not (self.open_high and value == self.high)


def inferred(default: Any) -> Optional[Option]:
    """The option an undeclared keyword argument is checked as, from its default (None: not checked)."""
    if isinstance(default, bool):
        return Option.flag()
    if isinstance(default, int):
        return Option.integer(1 if default > 0 else 0)
    if isinstance(default, float):
        return Option.number(0.0 if default >= 0 else -math.inf)
    if isinstance(default, str):
        return Option.name()
    if isinstance(default, (tuple, list)):
        return Option.integers()
    return None


def declared_options(target: Callable) -> Dict[str, Option]:
    """The OPTIONS a plug-in declares (a class attribute, or an attribute of a function or of the function
    a functools.partial wraps), else {}."""
    found = getattr(target, "OPTIONS", None) or getattr(getattr(target, "func", None), "OPTIONS", None)
    return dict(found or {})


def option_signature(target: Callable, skip: Iterable[str] = ()) -> Dict[str, inspect.Parameter]:
    """The keyword arguments of `target` a user may set (every named parameter, less `skip`)."""
    skip = set(skip)
    parameters = inspect.signature(target).parameters
    return {name: p for name, p in parameters.items()
            if name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_option_values(what: str, options: Mapping[str, Any], target: Callable, skip: Iterable[str] = (),
                        declared: Optional[Mapping[str, Option]] = None) -> Dict[str, Any]:
    """`options` if every key is a keyword argument of `target` and every value fits its declaration
    (OPTIONS, or the default's kind); else a one-line ConfigError naming `what`, the key and what is allowed."""
    parameters = option_signature(target, skip)
    declared = declared_options(target) if declared is None else dict(declared)
    for key, value in options.items():
        if key not in parameters:
            raise ConfigError(f"{what} has no option {key!r}; valid: {', '.join(parameters) or 'none'}")
        option = declared.get(key) or inferred(parameters[key].default)
        if option is not None and not option.accepts(value):
            if option.label and isinstance(value, str):
                raise unknown(option.label, value, option.choices)
            raise ConfigError(f"{what}: {key} = {value!r} is invalid; it must be {option.allowed()}")
    return dict(options)


def forwards_options(*sources: Callable) -> Callable[[type], type]:
    """Class decorator for a plug-in whose __init__ passes `**options` on to `sources` (e.g. the VAE family
    to its KL autoencoder): the class's signature, which `check_options` and the option listings read,
    becomes its own arguments with `**options` replaced by the sources' options, as keyword-only arguments
    (own arguments win a name clash). The sources' OPTIONS bounds are not merged: declare them in OPTIONS."""

    def decorate(cls: type) -> type:
        init = cls.__init__
        own = list(inspect.signature(init).parameters.values())
        names = {p.name for p in own}
        forwarded: Dict[str, inspect.Parameter] = {}
        for source in sources:
            for name, p in option_signature(source).items():
                if name not in names and name not in forwarded and p.default is not p.empty:
                    forwarded[name] = p.replace(kind=p.KEYWORD_ONLY)
        if not own or own[-1].kind != own[-1].VAR_KEYWORD:
            raise TypeError(f"{cls.__name__}.__init__ must end in **options to forward them")
        first_keyword = next((i for i, p in enumerate(own) if p.kind == p.KEYWORD_ONLY), len(own) - 1)
        merged = own[:first_keyword] + list(forwarded.values()) + own[first_keyword:-1]
        init.__signature__ = inspect.signature(init).replace(parameters=merged)
        return cls

    return decorate


class Registry(dict):
    """Canonical name -> plug-in, with aliases; `kind` names the plug-ins in messages ("solver", "preset")."""

    def __init__(self, kind: str, entries: Optional[Mapping[str, Any]] = None):
        super().__init__(entries or {})
        self.kind = kind
        self.aliases: Dict[str, Tuple[str, str]] = {}

    def add(self, name: str, plugin: Any) -> Any:
        """Register `plugin` under `name` (replacing one of that name); returns the plug-in."""
        self[name] = plugin
        return plugin

    def alias(self, alias: str, target: str, note: str = "") -> None:
        """Let `alias` stand for `target`; `note` says in a few words what the alias means here."""
        self.aliases[alias] = (target, note)

    def names(self) -> List[str]:
        """The canonical names, in registration order."""
        return list(self)

    def resolve(self, name: Any) -> str:
        """The canonical name of `name` (an alias gives a note on the "edm_space" logger); else a one-line ConfigError."""
        if isinstance(name, str):
            if name in self:
                return name
            if name in self.aliases:
                target, note = self.aliases[name]
                LOG.warning("note: %s %r is %r here%s", self.kind, name, target, f" ({note})" if note else "")
                return target
        valid = self.names() + [a for a in self.aliases if a not in self]
        raise unknown(self.kind, name, valid)

    def get(self, name: Any, *default: Any) -> Any:  # type: ignore[override]
        """The plug-in registered as `name` or as an alias of it; an unknown name is refused in one line
        (or, as dict.get does, gives `default` when one is passed)."""
        if default and not (isinstance(name, str) and (name in self or name in self.aliases)):
            return default[0]
        return self[self.resolve(name)]

    def check_options(self, name: str, options: Mapping[str, Any], target: Optional[Callable] = None,
                      skip: Sequence[str] = ()) -> Dict[str, Any]:
        """`options` of plug-in `name` checked against `target`'s signature (default: the plug-in) and its OPTIONS."""
        target = self.get(name) if target is None else target
        return check_option_values(f"{self.kind} {name!r}", options, target, skip)

    def recorded_defaults(self, name: Any, new_run: bool) -> Dict[str, Any]:
        """The options of plug-in `name` whose default changed after runs were trained with the old one, declared
        as a class attribute RECORDED_DEFAULTS = {option: (value for a new run, value of a run that does not
        record it)}. A new run records the first value; a stored run without the option is read with the second,
        so every run trained before the change rebuilds (and resumes) as it was trained. {} for an unknown name."""
        plugin = self.get(name, None)
        return {key: values[0 if new_run else 1] for key, values in getattr(plugin, "RECORDED_DEFAULTS", {}).items()}

    def with_recorded(self, name: Any, options: Mapping[str, Any], values: Mapping[str, Any]) -> Dict[str, Any]:
        """`options` of plug-in `name` with each option of recorded_defaults that they lack taken from `values` (a new
        run's defaults, a stored run's old ones, or the options a stored run recorded); the options given are kept."""
        missing = {key: values[key] for key in self.recorded_defaults(name, True) if key not in options and key in values}
        return {**options, **missing}


__all__ = ["Option", "Registry", "check_option_values", "declared_options", "forwards_options", "inferred", "option_signature", "MAX_INTEGER"]
