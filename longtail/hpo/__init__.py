"""Hyperparameter optimisation of the pre-designed heavy model (paper III.B, IV.C).

Four separate objects: a search space (`space`, data), a strategy (`algorithms`, ask/tell,
registered by name), an evaluator (a trial process) and a budget, put together by the
`TrialRunner` (`runner`: parallel trials, time limits, median stopping, a resumable journal).
`katib` writes the same search as a Katib Experiment. The heavy model's trial and job
(``longtail hpo trial`` / ``longtail hpo run``) live in `longtail.hpo.trial`, which imports
torch and so is not imported here.
"""

from longtail.hpo.algorithms import (
    Algorithm,
    Suggestion,
    UnknownAlgorithm,
    create_algorithm,
    list_algorithms,
    register_algorithm,
)
from longtail.hpo.runner import (
    Budget,
    CommandEvaluator,
    EarlyStopping,
    FunctionEvaluator,
    HPOResult,
    JournalMismatch,
    MedianStopping,
    TrialRunner,
    parse_metrics,
)
from longtail.hpo.space import Param, SearchSpace, SpaceError, builtin_spaces, load_space

__all__ = [
    "Algorithm",
    "Budget",
    "CommandEvaluator",
    "FunctionEvaluator",
    "HPOResult",
    "JournalMismatch",
    "EarlyStopping",
    "MedianStopping",
    "Param",
    "SearchSpace",
    "SpaceError",
    "Suggestion",
    "TrialRunner",
    "UnknownAlgorithm",
    "builtin_spaces",
    "create_algorithm",
    "list_algorithms",
    "load_space",
    "parse_metrics",
    "register_algorithm",
]
