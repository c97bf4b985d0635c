"""Options declared once: a dataclass field carries its default, its help and its bounds, and both the Python
check (`validate`) and the command line's flags (`add_arguments`) are generated from it.

    epochs: int | None = option(None, "epochs per phase", kind=int, minimum=1, unset="the recipe's default")

kinds: int (with `minimum`), float (finite, with `minimum` and, with `exclusive=True`, strictly above it), bool,
str (with `choices`). A default of None means "decided elsewhere" and `unset` says by what (shown in the help).
The command line's flags default to None ("not given"), so only what the user typed reaches the dataclass, and
the help shows the dataclass's default instead of repeating it.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers


def option(default, help: str, *, kind: type, minimum=None, exclusive: bool = False, choices=None,
           unset: str | None = None, flag: bool = True, switch: bool = False, label: str | None = None):
    """A dataclass field with its help and bounds (`flag=False`: not a command-line flag; `switch=True`: a bool
    given as a bare `--flag`, meaning True; `label`: the option's name in an unknown-choice message)."""
    meta = {"help": help, "kind": kind, "minimum": minimum, "exclusive": exclusive,
            "choices": tuple(choices) if choices is not None else None, "unset": unset, "flag": flag,
            "switch": switch, "label": label}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"fastvae": meta})
    return dataclasses.field(default=default, metadata={"fastvae": meta})


def _declared(cls):
    return [(f, f.metadata["fastvae"]) for f in dataclasses.fields(cls) if "fastvae" in f.metadata]


def check_int(name: str, value, minimum: int | None = None) -> int:
    """`value` as an int (not a bool) >= `minimum`, else a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be an int{bound}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_number(name: str, value, minimum: float | None = None, exclusive: bool = False) -> float:
    """`value` as a finite float (>= `minimum`, or > with `exclusive`), else a ValueError naming `name`."""
    bound = "" if minimum is None else f" {'>' if exclusive else '>='} {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (minimum is not None and (value <= minimum if exclusive else value < minimum)):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def validate(obj) -> None:
    """Check every declared field of the dataclass instance `obj` against its declaration."""
    for f, meta in _declared(type(obj)):
        value = getattr(obj, f.name)
        if value is None and f.default is None:
            continue  # decided elsewhere (meta["unset"])
        kind = meta["kind"]
        if kind is int:
            check_int(f.name, value, meta["minimum"])
        elif kind is float:
            check_number(f.name, value, meta["minimum"], meta["exclusive"])
        elif kind is bool:
            if not isinstance(value, bool):
                allowed = "True, False or None" if f.default is None else "True or False"
                raise ValueError(f"{f.name} must be {allowed}, got {value!r}")
        elif meta["choices"] is not None and value not in meta["choices"]:
            raise ValueError(f"unknown {meta['label'] or f.name.replace('_', ' ')} {value!r}: expected one of "
                             f"{', '.join(meta['choices'])}")


def int_type(minimum=None):
    """An argparse `type` for ints >= `minimum` (the one bounded-int parser of the command line)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text}")
        return value
    return parse


def _default_text(f, meta) -> str:
    if f.default is None:
        return meta["unset"] or "unset"
    if meta["kind"] is bool:
        return "on" if f.default else "off"
    return f"{f.default}"


def add_arguments(group, cls, names, extra_help: dict | None = None) -> list:
    """Add `--name-with-dashes` flags for the declared fields `names` of dataclass `cls` to an argparse group;
    returns the field names. ints are parsed and bounded as declared, floats are bounded by `validate()`
    (one message for the Python API and the command line); bools are `on|off`."""
    declared = {f.name: (f, meta) for f, meta in _declared(cls)}
    extra_help = extra_help or {}
    for name in names:
        f, meta = declared[name]
        if not meta["flag"]:
            raise ValueError(f"{cls.__name__}.{name} is not a command-line option")
        help_text = f"{meta['help']} (default: {_default_text(f, meta)}{extra_help.get(name, '')})"
        flag = "--" + name.replace("_", "-")
        kind = meta["kind"]
        if kind is bool and meta["switch"]:
            group.add_argument(flag, action="store_const", const=True, help=meta["help"])
        elif kind is bool:
            group.add_argument(flag, choices=["on", "off"], type=str.lower, help=help_text)
        elif meta["choices"] is not None:
            group.add_argument(flag, choices=list(meta["choices"]), help=help_text)
        elif kind is int:
            group.add_argument(flag, type=int_type(meta["minimum"]), help=help_text)
        elif kind is float:  # bounds: validate(), whose message names the option as the others do
            group.add_argument(flag, type=float, help=help_text)
        else:
            group.add_argument(flag, help=help_text)
    return list(names)


def from_arguments(args, cls, names) -> dict:
    """The options among `names` that were given on the command line, converted to the fields' types."""
    declared = {f.name: meta for f, meta in _declared(cls)}
    given = {}
    for name in names:
        value = getattr(args, name)
        if value is None:
            continue
        given[name] = (value == "on") if declared[name]["kind"] is bool and isinstance(value, str) else value
    return given
