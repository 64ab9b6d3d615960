"""Search spaces: data that says which hyperparameters to tune and over which values.

A space is written as in the paper's Fig. 3 (a list of hyperparameters with candidate values)
and may use typed ranges and conditions::

    hyperparameters:
      - {name: learning_rate, values: [0.001, 0.0001]}          # Fig. 3 form: categorical
      - {name: train.lr, type: logfloat, low: 1.0e-4, high: 1.0e-2}
      - {name: model.num_layers, type: int, low: 2, high: 6}
      - {name: model.dropout, type: float, low: 0.0, high: 0.3, step: 0.05}
      - {name: model.encoder, values: [lstm, bert]}
      - {name: model.num_heads, values: [1, 3], condition: {model.encoder: bert}}
    fixed: {train.epochs: 5}                                      # applied to every trial

Each parameter sets one config key of a trial (its ``target``, dotted as in ``--set``): the
name itself when it is dotted, the paper's names through `PAPER_TARGETS`, or an explicit
``target:``. A conditional parameter is active only when the parameters it names hold one of
the listed values; an inactive parameter is left out of the trial (its config key keeps its
default). A space never samples by itself from global state: callers pass a seeded generator.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

__all__ = [
    "PAPER_TARGETS",
    "PARAM_TYPES",
    "Param",
    "SearchSpace",
    "SpaceError",
    "builtin_spaces",
    "format_value",
    "load_space",
]

PARAM_TYPES = ("categorical", "int", "float", "logfloat")

# The hyperparameter names of the paper's Fig. 3 and the config keys they set.
PAPER_TARGETS: dict[str, str] = {
    "learning_rate": "train.lr",
    "deep_layers_dim": "model.profile_dims",
    "num_encoder_in_transformer": "model.num_layers",
    "prediction_module_dim": "model.head_dims",
}

_ENTRY_KEYS = {"name", "type", "values", "low", "high", "step", "target", "condition", "description"}
_TOP_KEYS = {"hyperparameters", "fixed", "name", "description"}
SPACES_DIR = Path(__file__).parent / "spaces"


class SpaceError(ValueError):
    """A search space is invalid; the message names the parameter and the fix."""


def format_value(value: Any) -> str:
    """The text of a parameter value on a command line (``--set key=TEXT``) and in Katib.

    It reads back to the same value through YAML (what ``parse_overrides`` does): strings stay
    as written (``64, 16``) unless YAML would read them as another type (``"true"`` is quoted),
    numbers use Python's shortest repr, lists become ``[64, 16]``.

    Args:
        value: a parameter value.

    Returns:
        Its text form.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        try:
            same = yaml.safe_load(value) == value
        except yaml.YAMLError:
            same = False
        return value if same else json.dumps(value)  # quote what YAML would read as another type
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exp = text.partition("e")
        return f"{mantissa}.0e{exp}" if e and "." not in mantissa else text  # YAML 1.1 floats need a dot
    if isinstance(value, int):
        return repr(value)
    return json.dumps(value)


def _plain(value: Any) -> Any:
    # numpy scalars and tuples become plain Python values (JSON and YAML safe)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Param:
    """One hyperparameter.

    Args:
        name: the name in the space (and in trial tables).
        type: ``categorical``, ``int``, ``float`` or ``logfloat`` (log-uniform float).
        target: the dotted config key it sets (e.g. ``train.lr``).
        values: candidate values of a categorical parameter.
        low / high: inclusive bounds of a numeric parameter.
        step: quantisation of an ``int`` or ``float`` range (``int`` defaults to 1).
        condition: ``((param name, allowed values), ...)``: active only when all hold.
        description: free text.
    """

    name: str
    type: str
    target: str
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    condition: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    description: str = ""

    @property
    def is_numeric(self) -> bool:
        return self.type != "categorical"

    def is_active(self, assignment: Mapping[str, Any]) -> bool:
        """Whether the parameter applies under ``assignment`` (the values of earlier parameters)."""
        return all(name in assignment and assignment[name] in allowed for name, allowed in self.condition)

    def n_steps(self) -> int | None:
        """Number of points of a quantised range (``int``, or ``float`` with a step); else None."""
        if self.type == "int":
            return int((int(self.high) - int(self.low)) // int(self.step or 1)) + 1
        if self.type == "float" and self.step:
            return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return None

    def from_index(self, i: int) -> Any:
        """The ``i``-th candidate of a categorical parameter or of a quantised range."""
        if self.type == "categorical":
            return self.values[i]
        if self.type == "int":
            return int(self.low) + int(i) * int(self.step or 1)
        return self.clip(self.low + int(i) * self.step)

    def clip(self, x: float) -> Any:
        """``x`` clipped to the bounds and snapped to the type (and step) of the parameter."""
        x = min(max(float(x), float(self.low)), float(self.high))
        if self.type == "int":
            step = int(self.step or 1)
            return int(self.low) + int(round((x - self.low) / step)) * step
        if self.type == "float" and self.step:
            k = round((x - self.low) / self.step)
            decimals = max(0, -int(math.floor(math.log10(self.step))) + 6)
            return round(min(self.low + k * self.step, self.high), decimals)
        return float(x)

    def sample(self, rng: np.random.Generator) -> Any:
        """A uniform draw (log-uniform for ``logfloat``)."""
        n = self.n_steps()
        if self.type == "categorical":
            return self.values[int(rng.integers(len(self.values)))]
        if n is not None:
            return self.from_index(int(rng.integers(n)))
        if self.type == "logfloat":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def grid(self, points: int = 5) -> list[Any]:
        """Candidates for grid search: all values of a categorical or quantised parameter
        (``points`` evenly spaced ones when a range has more), else ``points`` evenly spaced
        (log-spaced for ``logfloat``) values.
        """
        if self.type == "categorical":
            return list(self.values)
        n = self.n_steps()
        if n is not None:
            idx = range(n) if n <= points else sorted({round(i * (n - 1) / (points - 1)) for i in range(points)})
            return [self.from_index(i) for i in idx]
        if self.type == "logfloat":
            return [float(v) for v in np.geomspace(self.low, self.high, points)]
        return [float(v) for v in np.linspace(self.low, self.high, points)]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the parameter's values (within its bounds for ranges)."""
        if self.type == "categorical":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.type == "int" and (not float(value).is_integer()):
            return False
        return float(self.low) - 1e-12 <= float(value) <= float(self.high) + 1e-12

    def to_dict(self) -> dict[str, Any]:
        """The YAML form of the parameter (round-trips through `SearchSpace.from_dict`)."""
        d: dict[str, Any] = {"name": self.name, "type": self.type, "target": self.target}
        if self.type == "categorical":
            d["values"] = _plain(list(self.values))
        else:
            d.update(low=self.low, high=self.high)
            if self.step is not None:
                d["step"] = self.step
        if self.condition:
            d["condition"] = {k: _plain(list(v)) for k, v in self.condition}
        if self.description:
            d["description"] = self.description
        return d


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of hyperparameters plus settings fixed for every trial.

    Args:
        params: the parameters, in order (a condition may only name an earlier parameter).
        fixed: dotted config key -> value, applied to every trial before its parameters.
        name: a label (the file stem for packaged spaces).

    Example:
        >>> space = SearchSpace.from_yaml("hyperparameters: [{name: learning_rate, values: [0.001, 0.0001]}]")
        >>> space["learning_rate"].target
        'train.lr'
        >>> space.overrides({"learning_rate": 0.001})
        {'train.lr': 0.001}
    """

    params: tuple[Param, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_yaml(cls, source: str | Path) -> SearchSpace:
        """Parse a space from YAML text or a ``.yaml`` file path.

        Args:
            source: YAML text, or the path of a YAML file.

        Returns:
            The validated space.

        Raises:
            SpaceError: naming the parameter at fault and the fix.
        """
        name = ""
        text = source
        if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                        and source.strip().endswith((".yaml", ".yml"))):
            path = Path(source)
            if not path.exists():
                raise SpaceError(f"search space file {path}: not found")
            text, name = path.read_text(), path.stem
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpaceError(f"search space{' ' + name if name else ''}: not valid YAML: {e}") from None
        return cls.from_dict(data, name=name)

    @classmethod
    def from_dict(cls, data: Any, name: str = "") -> SearchSpace:
        """Build a space from its parsed YAML (a mapping with ``hyperparameters``, or the bare list).

        Raises:
            SpaceError: naming the parameter at fault and the fix.
        """
        if isinstance(data, list):
            data = {"hyperparameters": data}
        if not isinstance(data, dict):
            raise SpaceError("search space: expected a mapping with a 'hyperparameters' list "
                             "(or the list itself), as in the paper's Fig. 3")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise SpaceError(f"search space: unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
        entries = data.get("hyperparameters")
        if not isinstance(entries, list) or not entries:
            raise SpaceError("search space: 'hyperparameters' must be a non-empty list of "
                             "{name: ..., values: [...]} or typed entries {name, type, low, high}")
        fixed = data.get("fixed") or {}
        if not isinstance(fixed, dict) or not all(isinstance(k, str) and "." in k for k in fixed):
            raise SpaceError("search space: 'fixed' must map dotted config keys to values, "
                             "e.g. {model.encoder: bert, train.epochs: 5}")
        params: list[Param] = []
        for i, entry in enumerate(entries):
            params.append(_parse_param(entry, i, params))
        targets: dict[str, str] = {}
        for p in params:
            if p.target in targets:
                raise SpaceError(f"parameter {p.name!r}: target {p.target!r} is already set by parameter "
                                 f"{targets[p.target]!r}; give each parameter its own config key")
            if p.target in fixed:
                raise SpaceError(f"parameter {p.name!r}: target {p.target!r} is also in 'fixed'; "
                                 "remove it from one of them")
            targets[p.target] = p.name
        return cls(tuple(params), dict(fixed), str(data.get("name") or name))

    # ------------------------------------------------------------------ access
    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"no parameter {name!r}; parameters: {self.names}")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    @property
    def has_conditions(self) -> bool:
        return any(p.condition for p in self.params)

    def active(self, assignment: Mapping[str, Any]) -> dict[str, Any]:
        """The active parameters of a (possibly complete) assignment, in space order.

        Args:
            assignment: name -> value; may hold values for inactive parameters (vector
                algorithms draw every dimension), which are dropped here.

        Returns:
            name -> value of the parameters active under the assignment.
        """
        out: dict[str, Any] = {}
        for p in self.params:
            if p.is_active(out) and p.name in assignment:
                out[p.name] = _plain(assignment[p.name])
        return out

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """A random assignment of the active parameters (each drawn as `Param.sample`)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.is_active(out):
                out[p.name] = _plain(p.sample(rng))
        return out

    def validate(self, assignment: Mapping[str, Any]) -> None:
        """Check an assignment: every active parameter present and in range, nothing else.

        Raises:
            SpaceError: naming the parameter.
        """
        seen: dict[str, Any] = {}
        for p in self.params:
            if not p.is_active(seen):
                if p.name in assignment:
                    raise SpaceError(f"parameter {p.name!r} is set but inactive (condition {dict(p.condition)})")
                continue
            if p.name not in assignment:
                raise SpaceError(f"parameter {p.name!r} is missing from the assignment")
            if not p.contains(assignment[p.name]):
                raise SpaceError(f"parameter {p.name!r}: value {assignment[p.name]!r} is outside its domain")
            seen[p.name] = assignment[p.name]
        extra = sorted(set(assignment) - set(self.names))
        if extra:
            raise SpaceError(f"unknown parameter(s) {extra}; the space has {self.names}")

    def overrides(self, assignment: Mapping[str, Any]) -> dict[str, Any]:
        """Dotted config key -> value for one trial: the fixed settings, then the active parameters."""
        out = dict(self.fixed)
        for name, value in self.active(assignment).items():
            out[self[name].target] = value
        return out

    def size(self) -> int | None:
        """Number of distinct assignments when every parameter is finite (categorical or quantised)."""
        if any(p.is_numeric and p.n_steps() is None for p in self.params):
            return None
        return len(self.grid())

    def grid(self, points: int = 5) -> list[dict[str, Any]]:
        """Every combination of the parameters' `Param.grid` candidates, inactive ones left out
        (duplicates that differ only in inactive parameters are removed), in a fixed order.
        """
        combos: list[dict[str, Any]] = [{}]
        for p in self.params:
            nxt = []
            for c in combos:
                if p.is_active(c):
                    nxt.extend({**c, p.name: _plain(v)} for v in p.grid(points))
                else:
                    nxt.append(c)
            combos = nxt
        return combos

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (typed entries with explicit targets)."""
        d: dict[str, Any] = {"hyperparameters": [p.to_dict() for p in self.params]}
        if self.fixed:
            d["fixed"] = _plain(dict(self.fixed))
        if self.name:
            d["name"] = self.name
        return d

    def fingerprint(self) -> str:
        """A short hash of the space's content (a journal records it to refuse a changed space)."""
        d = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- parsing helpers
def _number(v: Any, where: str, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise SpaceError(f"{where}: '{what}' must be a number, got {v!r}")
    try:
        return float(v)  # YAML reads 1e-4 (no dot) as a string; accept it
    except ValueError:
        raise SpaceError(f"{where}: '{what}' must be a number, got {v!r}") from None


def _parse_param(entry: Any, index: int, earlier: list[Param]) -> Param:
    if not isinstance(entry, dict):
        raise SpaceError(f"hyperparameters[{index}]: expected a mapping like {{name: lr, values: [0.1, 0.01]}}, "
                         f"got {entry!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SpaceError(f"hyperparameters[{index}]: every entry needs a 'name'")
    where = f"parameter {name!r}"
    if any(p.name == name for p in earlier):
        raise SpaceError(f"{where}: defined twice; give each parameter a unique name")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise SpaceError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_ENTRY_KEYS)}")
    has_values = "values" in entry
    has_range = "low" in entry or "high" in entry
    ptype = entry.get("type", "categorical" if has_values else None)
    if ptype is None:
        raise SpaceError(f"{where}: give candidate 'values: [...]' or 'type: int|float|logfloat' with low/high")
    if ptype not in PARAM_TYPES:
        raise SpaceError(f"{where}: unknown type {ptype!r}; use one of {list(PARAM_TYPES)}")

    target = entry.get("target") or ("" if "." not in name else name) or PAPER_TARGETS.get(name, "")
    if not isinstance(target, str) or not target or "." not in target:
        raise SpaceError(f"{where}: no config key to set; add 'target: section.key' (e.g. target: train.lr) "
                         f"or use a dotted name such as model.num_layers")

    values: tuple[Any, ...] = ()
    low = high = step = None
    if ptype == "categorical":
        if has_range or "step" in entry:
            raise SpaceError(f"{where}: a categorical parameter takes 'values', not low/high/step; "
                             "or set type: int|float|logfloat")
        raw = entry.get("values")
        if not isinstance(raw, list) or not raw:
            raise SpaceError(f"{where}: 'values' must be a non-empty list of candidates")
        if any(isinstance(v, dict) or v is None for v in raw):
            raise SpaceError(f"{where}: candidate values must be scalars or lists, not mappings or nulls")
        if len(set(map(repr, raw))) != len(raw):
            raise SpaceError(f"{where}: duplicate candidate values in {raw}")
        values = tuple(raw)
    else:
        if has_values:
            raise SpaceError(f"{where}: give either 'values' (categorical) or low/high (type {ptype}), not both")
        if "low" not in entry or "high" not in entry:
            raise SpaceError(f"{where}: type {ptype} needs both 'low' and 'high'")
        low, high = _number(entry["low"], where, "low"), _number(entry["high"], where, "high")
        if not low < high:
            raise SpaceError(f"{where}: low ({low:g}) must be below high ({high:g})")
        if entry.get("step") is not None:
            step = _number(entry["step"], where, "step")
            if step <= 0:
                raise SpaceError(f"{where}: step must be > 0, got {step:g}")
        if ptype == "int":
            for what, v in (("low", low), ("high", high), ("step", step)):
                if v is not None and not float(v).is_integer():
                    raise SpaceError(f"{where}: type int needs whole numbers; {what} is {v!r}")
            low, high = int(low), int(high)
            step = int(step) if step is not None else None
        if ptype == "logfloat":
            if low <= 0:
                raise SpaceError(f"{where}: type logfloat needs low > 0 (got {low:g}); use type float for ranges "
                                 "that include 0")
            if step is not None:
                raise SpaceError(f"{where}: type logfloat takes no step; use type float with a step, or list "
                                 "the values")

    condition = _parse_condition(entry.get("condition"), where, earlier)
    return Param(name=name, type=ptype, target=target, values=values, low=low, high=high, step=step,
                 condition=condition, description=str(entry.get("description") or ""))


def _parse_condition(raw: Any, where: str, earlier: list[Param]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{where}: 'condition' must map an earlier parameter to a value or a list of values, "
                         "e.g. condition: {model.encoder: bert}")
    out = []
    for key, allowed in raw.items():
        ref = next((p for p in earlier if key in (p.name, p.target)), None)
        if ref is None:
            raise SpaceError(f"{where}: condition names {key!r}, which is not an earlier parameter; "
                             f"earlier parameters: {[p.name for p in earlier]} (move it after the one it depends on)")
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        bad = [v for v in allowed if not ref.contains(v)]
        if bad:
            raise SpaceError(f"{where}: condition value(s) {bad} are not values of parameter {ref.name!r}")
        out.append((ref.name, allowed))
    return tuple(out)


# ---------------------------------------------------------------------- packaged spaces
def builtin_spaces() -> list[str]:
    """Names of the spaces shipped with the package (``fig3``, ``heavy``, ...)."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load a packaged space by name (``fig3``, ``heavy``) or a space file by path.

    Raises:
        SpaceError: for an unknown name or an invalid space.
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return SearchSpace.from_yaml(p)
    packaged = SPACES_DIR / f"{name_or_path}.yaml"
    if not packaged.exists():
        raise SpaceError(f"search space {name_or_path!r}: not a file and not a packaged space; "
                         f"packaged: {builtin_spaces()}")
    return SearchSpace.from_yaml(packaged)
