"""Broker URL options: one typed, frozen dataclass per adapter, filled from the URL's query.

An adapter declares its options as a frozen dataclass whose fields are
``int``, ``float``, ``str`` or ``bool``, each with a default, and checks
their ranges in ``__post_init__`` by raising ``ValueError``.
:func:`parse_options` fills it from a broker URL.  Every query parameter must
name a field, appear once, and parse as the field's type (floats finite);
anything else is an :class:`UnknownBrokerURL` that names the option, so a
typo stops the node at start instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from .errors import UnknownBrokerURL

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_EXPECTED = {bool: "true or false", int: "a whole number", float: "a finite number", str: "text"}


def option_types(cls: type[Any]) -> dict[str, type]:
    """The URL options a dataclass declares, with their types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def parse_value(kind: type, raw: str) -> object:
    """One option's text as ``kind``; ValueError if it is not one."""
    if kind is bool:
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ValueError(raw)
        return word in _TRUE
    if kind is float:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(raw)
        return value
    if kind in (int, str):
        return kind(raw)
    raise TypeError(f"broker options cannot be of type {kind!r}")


def parse_options(url: str, cls: type[T]) -> T:
    """``cls`` filled from the query string of ``url``, the rest left at its defaults."""
    types = option_types(cls)
    values: dict[str, object] = {}
    for key, raw in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        kind = types.get(key)
        if kind is None:
            names = ", ".join(sorted(types)) or "none"
            raise UnknownBrokerURL(f"unknown broker URL option {key!r}; known options: {names}")
        if key in values:
            raise UnknownBrokerURL(f"broker URL option {key} is given twice")
        try:
            values[key] = parse_value(kind, raw)
        except ValueError:
            raise UnknownBrokerURL(f"broker URL option {key}={raw!r} is not {_EXPECTED[kind]}") from None
    try:
        return cls(**values)
    except ValueError as exc:
        raise UnknownBrokerURL(f"{urlsplit(url).scheme} broker URL: {exc}") from None
