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
    """Build ``cls`` from a (possibly partial) dict, checking keys and coercing simple types.

    Missing keys take the defaults; a nested config given partially keeps the defaults of its
    parent for the keys it does not name. A config class with presets (a ``preset`` field and a
    ``from_preset(name)`` classmethod, like `longtail.onboarding.Recipe`) starts from the preset
    its ``preset`` key names, so ``{"preset": "paper", "light": {"train": {"epochs": 3}}}`` is the
    paper preset with three epochs.

    Raises:
        ConfigError: on an unknown key, a value of the wrong type or a negative seed (``seed``,
            ``*_seed``), naming the dotted key.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    if hasattr(cls, "from_preset"):
        name = d.get("preset", cls.__dataclass_fields__["preset"].default)
        try:
            base = cls.from_preset(name)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"{where}.preset: {e}") from None
        d = merge(config_to_dict(base), d)
    defaults = _default_instance(cls)
    kwargs = {}
    for k, v in d.items():
        tp = hints[k]
        if isinstance(v, dict) and dataclasses.is_dataclass(tp) and defaults is not None \
                and not (hasattr(tp, "from_preset") and "preset" in v):
            v = merge(config_to_dict(getattr(defaults, k)), v)
        kwargs[k] = _coerce(tp, v, f"{where}.{k}")
        if (k == "seed" or k.endswith("_seed")) and isinstance(kwargs[k], int) and kwargs[k] < 0:
            raise ConfigError(f"{where}.{k} is {kwargs[k]}; use a seed of 0 or more (numpy's random generators "
                              "take no negative seed)")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: {e}") from e


def _default_instance(cls: type[C]) -> C | None:
    """``cls()`` when every field has a default, else ``None``."""
    try:
        return cls()
    except TypeError:
        return None


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
        elif isinstance(v, int | float) and not isinstance(v, bool):  # `--set model.head_dims=8`: one item
            v = [v]
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


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, nested mappings merged key by key (neither is modified)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> C:
    """Defaults of ``cls`` (or of the preset a ``preset`` key names), then the YAML file at ``path``,
    then ``overrides``.

    Raises:
        ConfigError: the file is missing or not a mapping, or a key or value is invalid (named).
    """
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p}: not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p}: not valid YAML ({e}); fix the file or pass another --config") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level")
        d = merge(d, loaded)
    if overrides:
        d = merge(d, overrides)
    return config_from_dict(cls, d, cls.__name__)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the effective config as YAML (atomically)."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
