"""Typed, range-checked config values, checked before anything is built or written.

A schema is a dataclass whose field types say what a key holds (``int``, ``float``,
``bool``, ``str``, ``X | None``, ``Literal[...]``, ``tuple[int, ...]``, a nested schema)
and whose metadata bounds numbers (:func:`num`). :func:`check` walks a composed config
against it and raises ``ValueError`` with one line naming the key::

    train.total_steps must be an integer, got 'abc'
    train.total_steps must be >= 0, got -5
    resume must be true or false, got 'maybe'

Keys the schema does not list are not checked here (Hydra already refuses unknown
override keys); the learners' own config dataclasses double as their schemas.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Mapping

_BOUNDS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
           "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def num(default: Any = None, **bounds: float) -> Any:
    """A schema field with numeric bounds, e.g. ``num(ge=0)``, ``num(gt=0, le=1)``."""
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"unknown bound {sorted(unknown)}")
    return dataclasses.field(default=default, metadata=bounds)


def check(cfg: Mapping[str, Any], schema: type, prefix: str = "") -> None:
    """Check every key of ``schema`` present in ``cfg`` (a mapping or a DictConfig)."""
    cfg = _plain(cfg)
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in cfg:
            continue
        key, value, tp = f"{prefix}{f.name}", cfg[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ValueError(f"{key} must be a section of settings, got {value!r}")
            check(value, tp, key + ".")
            continue
        check_value(value, tp, key)
        _check_bounds(value, f.metadata, key)


def check_value(value: Any, tp: Any, key: str) -> None:
    """``value`` has type ``tp`` (a type hint), else one-line ``ValueError`` naming ``key``."""
    if not _matches(value, tp):
        raise ValueError(f"{key} must be {_describe(tp)}, got {value!r}")


def _matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        inner = args[0] if args else Any
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed-length tuple
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, inner) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, Mapping)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # a hint this checker does not read (a Protocol, a forward reference)


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        names = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        inner = args[0] if args else None
        return "a list of " + {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}.get(
            inner, "values")
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _check_bounds(value: Any, bounds: Mapping[str, float], key: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    for name, bound in bounds.items():
        ok, symbol = _BOUNDS[name]
        if not ok(value, bound):
            raise ValueError(f"{key} must be {symbol} {bound}, got {value!r}")


def _plain(cfg: Any) -> Mapping[str, Any]:
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    if not isinstance(cfg, DictConfig):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except MissingMandatoryValue as e:
        raise ValueError(f"{e.full_key} is required: set {e.full_key}=<value>") from None
    except InterpolationResolutionError as e:
        raise ValueError(f"{e.full_key}: {str(e).splitlines()[0]}") from None
