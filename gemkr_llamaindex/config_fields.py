"""Config dataclasses checked against their own annotations: one rule for every settings file we read.

``DecodingConfig``, ``GeMKRConfig`` and ``TrainConfig`` come from JSON and YAML files (a checkpoint's
``decoding.json`` and ``gemkr_config.json``, a training YAML) and from ``key=value`` text. A wrong type
there used to surface late as a raw error far from its cause (a string ``lora_target_modules`` split into
characters, ``num_beams: 4.0`` failing in ``range``, a NaN ``length_penalty`` turning every score NaN).
:func:`check_fields` refuses such values at construction, naming the key; :func:`parse_text` turns
command-line text into the annotated type. Imports nothing of ours.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if typing.get_origin(hint) is list:
        plural = {str: "strings", int: "integers", float: "finite numbers"}
        return f"a list of {plural.get(args[0], _describe(args[0]))}" if args else "a list"
    if typing.get_origin(hint) is dict:
        return "a mapping"
    if hint is float:
        return "a finite number"
    return {int: "an integer", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict) and (not args or all(_matches(k, args[0]) and _matches(v, args[1])
                                                            for k, v in value.items()))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, hint) if isinstance(hint, type) else True


def check_fields(obj: Any) -> None:
    """Raise ``ValueError`` naming the first field of the dataclass ``obj`` whose value does not match its
    annotation (``int`` takes no bool or float, ``float`` only finite numbers, ``list[str]`` only a list of
    strings, ``X | None`` also null)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise ValueError(f"{f.name} must be {_describe(hints[f.name])}, got {value!r}")


def parse_text(text: str, hint: Any) -> Any:
    """``text`` (a command-line value) as the annotated type: ``"4"`` -> 4, ``"yes"`` -> True, ``"none"`` ->
    None where null is allowed. Raises ``ValueError`` for text that is not one (``"abc"`` as a bool)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    word = text.strip().lower()
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and word in ("none", "null"):
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError(f"expected true or false, got {text!r}")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise ValueError(f"expected {_describe(hint)}, got {text!r}") from None
    return text
