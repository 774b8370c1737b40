"""Type checks for the fields of a frozen config dataclass, from its annotations.

Job configs arrive from YAML and the command line, both untrusted: YAML's `'no'` is a
non-empty (truthy) string, `seed: abc` is a string, `.nan` is a float. Each field is checked
against its annotation so a wrong value is refused up front with its name, instead of
silently changing a result (a truthy `degraded: 'no'`) or crashing deep inside a job.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any, Union


def _flag(name: str) -> str:
    return name.replace("_", "-")


# A value shown in an error is cut to this many characters: a hostile config's value may be a
# structure of millions of shared items (a YAML alias bomb) whose full repr would never finish.
MAX_SHOWN = 80
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, MAX_SHOWN, MAX_SHOWN
_SHORT.maxtuple = _SHORT.maxlist = _SHORT.maxdict = _SHORT.maxset = 4


def short_repr(value: Any, limit: int = MAX_SHOWN) -> str:
    """repr(value) of at most about `limit` characters, walking only a few items; a container notes its size."""
    text = _SHORT.repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > 4:
        text += f" ({len(value)} items)"
    return text


def _describe(value: Any) -> str:
    return f"{short_repr(value)} ({type(value).__name__})"


def check_value(name: str, value: Any, annotation: Any) -> None:
    """Raise ValueError if `value` does not fit `annotation` (bool, int, float, str, Optional, tuple[str, ...], Mapping)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                check_value(name, value, option)
                return
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"--{_flag(name)} has an invalid value {_describe(value)}")
    if annotation is Any:
        return
    if dataclasses.is_dataclass(annotation):  # a nested config checks its own fields
        if not isinstance(value, annotation):
            raise ValueError(
                f"--{_flag(name)} must be a mapping of {annotation.__name__} fields; got {_describe(value)}"
            )
        return
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"--{_flag(name)} must be true or false; got {_describe(value)}")
    elif annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"--{_flag(name)} must be an integer; got {_describe(value)}")
    elif annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"--{_flag(name)} must be a number; got {_describe(value)}")
        if not math.isfinite(value):
            raise ValueError(f"--{_flag(name)} must be a finite number; got {value!r}")
    elif annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"--{_flag(name)} must be a string; got {_describe(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"--{_flag(name)} {value.encode('utf-8', 'backslashreplace').decode()} is not valid UTF-8 text; "
                "rename the path to UTF-8"
            ) from None
    elif origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"--{_flag(name)} must be a list; got {_describe(value)}")
        item = typing.get_args(annotation)[0]
        for element in value:
            check_value(name, element, item)
    elif origin in (Mapping, dict) or annotation in (Mapping, dict):
        if not isinstance(value, Mapping):
            raise ValueError(f"--{_flag(name)} must be a mapping of options; got {_describe(value)}")
        if not all(isinstance(k, str) for k in value):
            bad = [k for k in value if not isinstance(k, str)]
            raise ValueError(f"--{_flag(name)} keys must be strings; got {short_repr(bad)}")


def check_fields(instance: Any) -> None:
    """check_value for every field of a dataclass instance (annotations resolved from its module)."""
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        check_value(f.name, getattr(instance, f.name), hints[f.name])


def config_from_dict(cls, values: Mapping[str, Any], what: str, required: tuple[str, ...] = ()):
    """cls(**values) for a job config read from YAML or flags: unknown keys refused by name; `required` ones
    left missing become None, so the config's own check names the option instead of a TypeError."""
    values = dict(values)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, values)) - known)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {short_repr(unknown, 200)}; known options: {sorted(known)}")
    for name in required:
        values.setdefault(name, None)
    return cls(**values)
