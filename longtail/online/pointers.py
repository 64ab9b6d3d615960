"""Registry reading the serving layer needs and `ModelRegistry` has no method for.

The registry keeps one serving pointer per scenario at ``serving/<quoted scenario>.json`` (see
:mod:`longtail.registry.registry`); listing them tells the service which scenarios to load. This
wraps that documented layout here rather than changing the registry.
"""

from __future__ import annotations

from urllib.parse import unquote

from longtail.registry import ModelRegistry

_PREFIX = "serving/"


def list_pointer_scenarios(registry: ModelRegistry) -> list[str]:
    """The scenarios that have a serving pointer (promoted at least once), sorted."""
    out = []
    for key in registry.store.list(_PREFIX):
        leaf = key[len(_PREFIX):]
        if "/" in leaf or not leaf.endswith(".json"):
            continue
        out.append(unquote(leaf[: -len(".json")]))
    return sorted(out)
