"""Frozen config dataclasses that round-trip through YAML: defaults -> file -> command line.

Each stage has one frozen dataclass. `load_config` applies a YAML file and then command-line
overrides (``key=value`` with dotted keys for nested configs) on top of the defaults, and
`save_config` writes the effective config beside a run's outputs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from longtail.io import atomic_write_text

C = TypeVar("C")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A YAML-safe dict (tuples become lists) of a config dataclass."""

    def clean(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: clean(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return clean(cfg)


def config_from_dict(cls: type[C], d: dict[str, Any], where: str = "config") -> C:
    """Build ``cls`` from a dict, checking keys and coercing simple types.

    Raises:
        ConfigError: on an unknown key or a value of the wrong type, naming the dotted key.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in d.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: {e}") from e


def _coerce(tp: Any, v: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return v if dataclasses.is_dataclass(v) else config_from_dict(tp, v, where)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, v, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {v!r}")
    if origin is typing.Literal:
        if v not in args:
            raise ConfigError(f"{where}: {v!r} is not one of {list(args)}")
        return v
    if origin is tuple:
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if not isinstance(v, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {v!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, x, where) for x in v)
    if origin is dict:
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: expected a mapping, got {v!r}")
        return dict(v)
    if tp is bool:
        if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
            return v.lower() in ("true", "1", "yes")
        if isinstance(v, bool):
            return v
        raise ConfigError(f"{where}: expected true/false, got {v!r}")
    if tp in (int, float):
        if isinstance(v, bool):
            raise ConfigError(f"{where}: expected a number, got {v!r}")
        try:
            out = tp(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {v!r}") from None
        if tp is int and isinstance(v, float) and not v.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {v!r}")
        return out
    if tp is str:
        if not isinstance(v, str | int | float):
            raise ConfigError(f"{where}: expected a string, got {v!r}")
        return str(v)
    return v


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.encoder=bert"]`` -> nested dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"override {p!r}: expected key=value, e.g. train.epochs=3")
        key, raw = p.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults of ``cls``, then the YAML file at ``path``, then ``overrides``."""
    d = config_to_dict(cls())
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p}: not found")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
        d = _merge(d, loaded)
    if overrides:
        d = _merge(d, overrides)
    return config_from_dict(cls, d, cls.__name__)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the effective config as YAML (atomically)."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
