"""Search strategies behind one ask/tell interface, registered by name.

A strategy sees only the search space: `Algorithm.ask` proposes the next trial's parameters,
`Algorithm.tell` reports its value (higher is better: a validation AUC) or its failure. The
runner owns the budget and the evaluation, so adding a strategy is one small class::

    @register_algorithm("mine")
    class Mine(Algorithm):
        def _ask(self, trial_id):              # -> params dict, or None when exhausted
            ...
        def _tell(self, trial_id, params, value, failed):
            ...

Determinism: a strategy draws only from its own seeded generators, so the same space, seed
and sequence of ask/tell calls gives the same trials (the runner replays its journal through
this to resume). Model-based strategies receive a penalty value for a failed trial (the worst
value seen so far, or ``failure_value`` before any), so they learn to avoid its region.

* ``racos``: sequential RACOS (SRACOS, Yu et al. 2016; the paper's default) on the reference
  components of the ``zoopt`` package (``Dimension2`` sampling, ``RacosClassification`` and
  SRACOS's replace-the-worst update), driven by our ask/tell loop (`RACOS`).
* ``tpe``, ``cmaes``: Optuna's samplers through its ask/tell interface.
* ``random``, ``grid``: uniform draws, and the cartesian grid of the space.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from longtail.hpo.space import Param, SearchSpace

__all__ = [
    "CMAES",
    "RACOS",
    "TPE",
    "Algorithm",
    "GridSearch",
    "RandomSearch",
    "Suggestion",
    "UnknownAlgorithm",
    "create_algorithm",
    "list_algorithms",
    "register_algorithm",
]

A = TypeVar("A", bound=type["Algorithm"])
_REGISTRY: dict[str, type[Algorithm]] = {}


class UnknownAlgorithm(KeyError):
    """An algorithm name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Suggestion:
    """One proposed trial: its id (0, 1, 2, ... in ask order) and its active parameters."""

    trial_id: int
    params: dict[str, Any]


class Algorithm(abc.ABC):
    """Base class of search strategies (maximising the reported value).

    Args:
        space: the search space.
        seed: seed of every random choice the strategy makes.
        max_trials: the trial budget, when known (some strategies size their warm-up by it).
        failure_value: the penalty told to model-based strategies for a failed trial before
            any trial has succeeded (afterwards: the worst value seen).

    Example:
        >>> from longtail.hpo.space import SearchSpace
        >>> space = SearchSpace.from_yaml("hyperparameters: [{name: train.lr, type: logfloat, low: 1.0e-4, high: 0.1}]")
        >>> alg = create_algorithm("random", space, seed=0)
        >>> s = alg.ask()
        >>> alg.tell(s.trial_id, 0.71)
        >>> alg.best()[1]
        0.71
    """

    name: ClassVar[str] = ""
    model_based: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, seed: int = 0, max_trials: int | None = None,
                 failure_value: float = 0.0) -> None:
        self.space = space
        self.seed = int(seed)
        self.max_trials = max_trials
        self.failure_value = float(failure_value)
        self._next_id = 0
        self._pending: dict[int, dict[str, Any]] = {}
        self.history: list[tuple[int, dict[str, Any], float | None]] = []

    # ------------------------------------------------------------------ public interface
    def ask(self) -> Suggestion | None:
        """Propose the next trial.

        Returns:
            A `Suggestion`, or None when the strategy has nothing (more) to propose.
        """
        params = self._ask(self._next_id)
        if params is None:
            return None
        params = self.space.active(params)
        s = Suggestion(self._next_id, params)
        self._pending[s.trial_id] = params
        self._next_id += 1
        return s

    def tell(self, trial_id: int, value: float | None) -> None:
        """Report a trial's result.

        Args:
            trial_id: the id of an asked, not yet told trial.
            value: its value (higher is better), or None (or NaN/inf) for a failed trial.

        Raises:
            KeyError: for a trial that was not asked or was told already.
        """
        if trial_id not in self._pending:
            raise KeyError(f"trial {trial_id} was not asked, or was told already")
        params = self._pending.pop(trial_id)
        failed = value is None or not math.isfinite(float(value))
        used = self.penalty() if failed else float(value)
        self.history.append((trial_id, params, None if failed else float(value)))
        self._tell(trial_id, params, used, failed)

    def penalty(self) -> float:
        """The value told to the model for a failed trial: the worst value seen, else ``failure_value``."""
        values = [v for _, _, v in self.history if v is not None]
        return min(values) if values else self.failure_value

    def best(self) -> tuple[dict[str, Any], float] | None:
        """The best told trial as ``(params, value)``, or None before any success."""
        ok = [(p, v) for _, p, v in self.history if v is not None]
        return max(ok, key=lambda pv: pv[1]) if ok else None

    @property
    def pending(self) -> list[int]:
        """Ids of asked trials that have not been told yet."""
        return sorted(self._pending)

    # ------------------------------------------------------------------ to implement
    @abc.abstractmethod
    def _ask(self, trial_id: int) -> dict[str, Any] | None:
        """Params of trial ``trial_id`` (inactive ones are dropped by `ask`), or None."""

    @abc.abstractmethod
    def _tell(self, trial_id: int, params: dict[str, Any], value: float, failed: bool) -> None:
        """Learn from a result (``value`` is the penalty when ``failed``)."""


def register_algorithm(name: str) -> Callable[[A], A]:
    """Class decorator registering an `Algorithm` subclass under ``name``.

    Raises:
        ValueError: when the name is taken by another class.
    """

    def deco(cls: A) -> A:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"algorithm name {name!r} is already registered by {existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_algorithms() -> list[str]:
    """Names of the registered algorithms, sorted."""
    return sorted(_REGISTRY)


def create_algorithm(name: str, space: SearchSpace, seed: int = 0, max_trials: int | None = None,
                     **settings: Any) -> Algorithm:
    """Build a registered algorithm.

    Args:
        name: registered name (see `list_algorithms`).
        space: the search space.
        seed: its seed.
        max_trials: the trial budget, when known.
        settings: algorithm-specific keyword arguments.

    Returns:
        The algorithm.

    Raises:
        UnknownAlgorithm: for an unregistered name.
    """
    cls = _REGISTRY.get(name.lower())
    if cls is None:
        raise UnknownAlgorithm(f"unknown algorithm {name!r}; registered: {list_algorithms()}")
    return cls(space, seed=seed, max_trials=max_trials, **settings)


def _key(params: dict[str, Any]) -> str:
    return repr(sorted(params.items()))


# ---------------------------------------------------------------------- random and grid
@register_algorithm("random")
class RandomSearch(Algorithm):
    """Uniform draws (log-uniform for ``logfloat``); without replacement in a finite space."""

    def __init__(self, space: SearchSpace, seed: int = 0, max_trials: int | None = None, **kw: Any) -> None:
        super().__init__(space, seed, max_trials, **kw)
        self._rng = np.random.default_rng(self.seed)
        self._size = space.size()
        self._seen: set[str] = set()

    def _ask(self, trial_id: int) -> dict[str, Any] | None:
        if self._size is not None and len(self._seen) >= self._size:
            return None
        for _ in range(1000):
            params = self.space.sample(self._rng)
            key = _key(params)
            if self._size is None or key not in self._seen:
                self._seen.add(key)
                return params
        return None

    def _tell(self, trial_id: int, params: dict[str, Any], value: float, failed: bool) -> None:
        pass


@register_algorithm("grid")
class GridSearch(Algorithm):
    """Every combination of the candidates, in a fixed order; ranges without a step are cut into
    ``points`` evenly spaced (log-spaced for ``logfloat``) values. The seed is not used."""

    def __init__(self, space: SearchSpace, seed: int = 0, max_trials: int | None = None, points: int = 5,
                 **kw: Any) -> None:
        super().__init__(space, seed, max_trials, **kw)
        self._grid = space.grid(points)

    def _ask(self, trial_id: int) -> dict[str, Any] | None:
        return self._grid[trial_id] if trial_id < len(self._grid) else None

    def _tell(self, trial_id: int, params: dict[str, Any], value: float, failed: bool) -> None:
        pass


# ---------------------------------------------------------------------- Optuna
class _OptunaAlgorithm(Algorithm):
    """Optuna's ask/tell with a seeded sampler (an in-memory study, maximising)."""

    model_based = True
    vector = False  # True: suggest every parameter (a fixed-dimensional space), categorical as ordinal

    def __init__(self, space: SearchSpace, seed: int = 0, max_trials: int | None = None,
                 failure_value: float = 0.0, **sampler_settings: Any) -> None:
        super().__init__(space, seed, max_trials, failure_value)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-feature warnings of some Optuna versions
            sampler = self._sampler(optuna, **sampler_settings)
        self._study = optuna.create_study(direction="maximize", sampler=sampler)
        self._trials: dict[int, Any] = {}

    @abc.abstractmethod
    def _sampler(self, optuna: Any, **settings: Any) -> Any:
        """The seeded Optuna sampler."""

    def _ask(self, trial_id: int) -> dict[str, Any] | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = self._study.ask()
            out: dict[str, Any] = {}
            for p in self.space:
                if self.vector or p.is_active(out):
                    out[p.name] = self._suggest(trial, p)
        self._trials[trial_id] = trial
        return out

    def _suggest(self, trial: Any, p: Param) -> Any:
        if p.type == "categorical":
            if self.vector:  # CMA-ES has no categorical distribution: candidates as an ordered index
                return p.values[trial.suggest_int(p.name, 0, len(p.values) - 1)]
            return p.values[trial.suggest_categorical(p.name, list(range(len(p.values))))]
        if p.type == "int":
            return int(trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1)))
        n = p.n_steps()
        if n is not None:  # a float with a step: its index, so every point is reachable exactly
            return p.from_index(trial.suggest_int(p.name, 0, n - 1))
        return float(trial.suggest_float(p.name, float(p.low), float(p.high), log=p.type == "logfloat"))

    def _tell(self, trial_id: int, params: dict[str, Any], value: float, failed: bool) -> None:
        trial = self._trials.pop(trial_id)
        if failed:
            trial.set_user_attr("failed", True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._study.tell(trial, value)

    def _startup(self, default: int) -> int:
        # warm-up draws: the sampler's default, but at most a third of a small budget
        if self.max_trials is None:
            return default
        return max(2, min(default, self.max_trials // 3))


@register_algorithm("tpe")
class TPE(_OptunaAlgorithm):
    """Tree-structured Parzen estimator (Optuna's `TPESampler`), conditional parameters asked
    define-by-run; ``constant_liar`` keeps parallel trials apart."""

    def _sampler(self, optuna: Any, n_startup_trials: int | None = None, **settings: Any) -> Any:
        return optuna.samplers.TPESampler(seed=self.seed, constant_liar=True,
                                          n_startup_trials=n_startup_trials or self._startup(10), **settings)


@register_algorithm("cmaes")
class CMAES(_OptunaAlgorithm):
    """CMA-ES (Optuna's `CmaEsSampler`). Every parameter is drawn (inactive ones are dropped
    afterwards) so the search space keeps one dimension per parameter, and categorical
    candidates are drawn as an ordered index (CMA-ES has no categorical distribution)."""

    vector = True

    def _sampler(self, optuna: Any, n_startup_trials: int | None = None, **settings: Any) -> Any:
        return optuna.samplers.CmaEsSampler(seed=self.seed, warn_independent_sampling=False,
                                            n_startup_trials=n_startup_trials or self._startup(1), **settings)


# ---------------------------------------------------------------------- RACOS
@register_algorithm("racos")
class RACOS(Algorithm):
    """Sequential RACOS (SRACOS) with an ask/tell interface, on zoopt's reference components.

    ``zoopt``'s `Opt.min` owns its evaluation loop (an objective that raises ends it, its
    parallel mode hangs on a dead evaluator), so we drive SRACOS ourselves: the first
    ``train_size`` asks are uniform draws of zoopt's `Dimension2`; afterwards each ask samples,
    with probability ``1 - exploration_rate``, from the positive region that zoopt's
    `RacosClassification` learns from the current positive (best ``positive_size``) and negative
    solutions, else uniformly. Each tell updates the sets with SRACOS's replace-the-worst rule
    (zoopt's `SRacos.replace`). Unlike zoopt, a proposal is never one already asked (a finite
    space ends with None), and asks do not wait for tells, so parallel trials never block
    (the asynchronous variant, as ASRACOS).

    zoopt keeps its random state in NumPy's global generator and float precisions in a module
    global; both are swapped in and out around every call, so each instance is deterministic
    under its seed and leaves global state as it found it.

    Args:
        train_size / positive_size: SRACOS's sample-set sizes (default: zoopt's rule by budget:
            4/1 up to 50 trials, 6/1 up to 100, 12/2 up to 1000, else 22/2).
        exploration_rate: chance of a uniform draw instead of a classifier draw (zoopt: 0.01).
        uncertain_bits: dimensions left free by the classifier (default: zoopt's rule).
    """

    model_based = True

    def __init__(self, space: SearchSpace, seed: int = 0, max_trials: int | None = None,
                 failure_value: float = 0.0, train_size: int | None = None, positive_size: int | None = None,
                 exploration_rate: float = 0.01, uncertain_bits: int | None = None) -> None:
        super().__init__(space, seed, max_trials, failure_value)
        from zoopt import Dimension2, Objective, Parameter, ValueType
        from zoopt.algos.opt_algorithms.racos.racos_optimization import RacosOptimization
        from zoopt.algos.opt_algorithms.racos.sracos import SRacos
        from zoopt.utils.zoo_global import gl

        self._gl = gl
        self._np_state = np.random.RandomState(self.seed).get_state()
        saved_precisions = list(gl.float_precisions)
        dims = []
        for p in space:
            n = p.n_steps()
            if p.type == "categorical":
                dims.append((ValueType.DISCRETE, [0, len(p.values) - 1], False))
            elif n is not None:
                dims.append((ValueType.DISCRETE, [0, n - 1], True))
            else:
                lo, hi = (math.log(p.low), math.log(p.high)) if p.type == "logfloat" else (p.low, p.high)
                dims.append((ValueType.CONTINUOUS, [float(lo), float(hi)], 1e-6))
        self._dim = Dimension2(dims)
        self._precisions = list(gl.float_precisions)  # what Dimension2 just set, globally
        gl.float_precisions = saved_precisions
        self._objective = Objective(None, self._dim)
        # zoopt's auto-set rule sizes the sample sets from the budget
        parameter = Parameter(budget=max(4, max_trials or 50), exploration_rate=exploration_rate)
        if train_size is not None or positive_size is not None:
            t = train_size or parameter.get_train_size()
            pos = positive_size or max(1, parameter.get_positive_size())
            if not 0 < pos < t:
                raise ValueError(f"racos: need 0 < positive_size < train_size, got {pos} and {t}")
            parameter.set_train_size(t)
            parameter.set_positive_size(pos)
        parameter.set_negative_size(parameter.get_train_size() - parameter.get_positive_size())
        self._parameter = parameter
        self._core = SRacos()
        self._core.set_objective(self._objective)
        self._core.set_parameters(parameter)
        self._ub = uncertain_bits or RacosOptimization.choose_ub(self._objective)
        self._solutions: dict[int, Any] = {}
        self._seen: set[str] = set()  # active parameters of every asked trial
        self._data: list[Any] = []  # told solutions while the initial set fills
        self._ready = False  # positive/negative sets formed
        self._n_points = space.size()

    @property
    def train_size(self) -> int:
        return self._parameter.get_train_size()

    @property
    def positive_size(self) -> int:
        return self._parameter.get_positive_size()

    @contextmanager
    def _zoopt_state(self) -> Iterator[None]:
        saved_np, saved_prec = np.random.get_state(), self._gl.float_precisions
        np.random.set_state(self._np_state)
        self._gl.float_precisions = self._precisions
        try:
            yield
        finally:
            self._np_state = np.random.get_state()
            np.random.set_state(saved_np)
            self._gl.float_precisions = saved_prec

    def _ask(self, trial_id: int) -> dict[str, Any] | None:
        if self._n_points is not None and len(self._seen) >= self._n_points:
            return None
        from zoopt.algos.opt_algorithms.racos.racos_classification import RacosClassification

        with self._zoopt_state():
            x = None
            classifier = None
            if self._ready and np.random.random() < self._parameter.get_probability():
                classifier = RacosClassification(self._dim, self._core._positive_data,
                                                 self._core._negative_data, self._ub)
                classifier.mixed_classification()
            for attempt in range(200):
                # after 100 failed classifier draws the positive region is used up: draw uniformly
                sampler = classifier if classifier is not None and attempt < 100 else self._dim
                cand = sampler.rand_sample()
                key = _key(self.space.active(self._decode(cand)))
                if key not in self._seen:
                    x = cand
                    break
            if x is None and self._n_points is not None:  # a few points left: pick one of them
                left = [g for g in self.space.grid() if _key(g) not in self._seen]
                if left:
                    g = left[np.random.randint(len(left))]
                    x, key = self._encode(g), _key(g)
        if x is None:
            return None
        self._seen.add(key)
        self._solutions[trial_id] = self._objective.construct_solution(x)
        return self._decode(x)

    def _encode(self, params: dict[str, Any]) -> list[Any]:
        # a grid point as zoopt's vector (inactive parameters at their first value)
        x: list[Any] = []
        for p in self.space:
            v = params.get(p.name)
            if p.type == "categorical":
                x.append(p.values.index(v) if p.name in params else 0)
            elif p.n_steps() is not None:
                x.append(int(round((v - p.low) / (p.step or 1))) if p.name in params else 0)
            elif p.type == "logfloat":
                x.append(math.log(v if v is not None else p.low))
            else:
                x.append(float(v if v is not None else p.low))
        return x

    def _decode(self, x: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p, v in zip(self.space, x, strict=True):
            if p.type == "categorical":
                out[p.name] = p.values[int(v)]
            elif p.n_steps() is not None:
                out[p.name] = p.from_index(int(v))
            elif p.type == "logfloat":
                out[p.name] = p.clip(math.exp(float(v)))
            else:
                out[p.name] = p.clip(float(v))
        return out

    def _tell(self, trial_id: int, params: dict[str, Any], value: float, failed: bool) -> None:
        sol = self._solutions.pop(trial_id)
        sol.set_value(-float(value))  # zoopt minimises
        with self._zoopt_state():
            if not self._ready:
                self._data.append(sol)
                if len(self._data) >= self.train_size:
                    self._core._data = self._data
                    self._core.selection()  # sort; split into positive and negative sets
                    self._ready = True
                return
            worst_positive = self._core.replace(self._core._positive_data, sol, "pos")
            self._core.replace(self._core._negative_data, worst_positive, "neg", "WR")
            self._core._best_solution = self._core._positive_data[0]
