"""Registry of behavior encoders, timm style.

An encoder is an ``nn.Module`` class that maps embedded steps ``(B, T, D_in)`` and a mask
``(B, T)`` to one vector per row ``(B, H)``. Registering it by name makes it buildable from a
config (``create_encoder("bert", input_size=8, ...)``) and puts it under every test that
parametrises over ``list_encoders()``. A registered class must implement ``flops(T)``: the
serving budget of a light model is a FLOPs bound, so an encoder without an analytical count
cannot be used.

Example:
    >>> from longtail.models.registry import register_encoder
    >>> @register_encoder("my_encoder")
    ... class MyEncoder(BehaviorEncoder):  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = [
    "UnknownEncoderError",
    "create_encoder",
    "encoder_class",
    "encoder_parameters",
    "list_encoders",
    "register_encoder",
]

_REGISTRY: dict[str, type[nn.Module]] = {}

E = TypeVar("E", bound=type[nn.Module])


class UnknownEncoderError(KeyError, ValueError):
    """Raised for an encoder name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def register_encoder(name: str) -> Callable[[E], E]:
    """Class decorator that registers a behavior encoder under ``name``.

    Args:
        name: registry name (as used in configs, e.g. ``"lstm"``).

    Returns:
        The decorator; it returns the class unchanged apart from a ``registry_name`` attribute.

    Raises:
        ValueError: the name is taken by another class.
        TypeError: the class is not an ``nn.Module`` or has no concrete ``flops(T)`` method.
    """

    def decorator(cls: E) -> E:
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
            raise TypeError(f"encoder {name!r} must be an nn.Module class, got {cls!r}")
        if not callable(getattr(cls, "flops", None)) or inspect.isabstract(cls):
            raise TypeError(f"encoder {name!r} ({cls.__name__}) must implement flops(T) -> int")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"encoder name {name!r} is already registered by {existing.__qualname__}")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_encoders() -> list[str]:
    """Names of all registered encoders, sorted."""
    return sorted(_REGISTRY)


def encoder_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``.

    Raises:
        UnknownEncoderError: ``name`` is not registered (a ``KeyError`` and a ``ValueError``).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEncoderError(
            f"unknown encoder {name!r}; registered encoders: {', '.join(sorted(_REGISTRY)) or '(none)'}"
        ) from None


def encoder_parameters(name: str) -> frozenset[str]:
    """Keyword arguments the constructor of encoder ``name`` accepts.

    The heavy model uses this to pass only the shared settings an encoder takes (an LSTM has no
    attention heads). An encoder that takes ``**kwargs`` is reported with the name ``"**"``.
    """
    params = inspect.signature(encoder_class(name)).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        names.add("**")
    return frozenset(names)


def create_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build the encoder registered under ``name``.

    Args:
        name: registry name.
        **kwargs: constructor arguments (every encoder takes ``input_size``).

    Returns:
        The encoder module.

    Raises:
        UnknownEncoderError: ``name`` is not registered.
    """
    return encoder_class(name)(**kwargs)
