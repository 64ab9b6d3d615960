"""Champion/challenger promotion on validation rows, and publishing an onboarding's models.

A new light model (the challenger) replaces the model serving its scenario (the champion) only if
it scores better on the scenario's VALID rows, both scored with their own saved transforms on the
same raw rows. A scenario that nothing serves yet gets the challenger only if it beats the floor,
the agnostic θ0 at the fallback pointer, on those rows. TEST rows are never read here.

The score is the VALID AUC when the rows hold both classes, else the negated mean log loss (a
scenario whose few VALID rows hold one class can still tell a better model); the same score is
used for every model of one decision.

Example:
    >>> decision = promote_if_better(registry, "OO", ("flights.OO.light", 3), valid_rows, label="late",
    ...                              floor=registry.serving("_default"))
    >>> decision.promoted, decision.reason
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from longtail.io import safe_name
from longtail.metrics import auc, predict_proba
from longtail.onboarding.core import Onboarding
from longtail.registry import ModelRegistry, RegistryError, lineage

__all__ = ["Decision", "promote_if_better", "publish_onboarding", "score_on"]


@dataclass
class Decision:
    """What promotion decided for one scenario.

    Attributes:
        scenario: the scenario.
        promoted: the challenger serves now (or served already).
        reason: why, in words (what it was compared with and the scores).
        metric: ``valid_auc`` or ``valid_neg_log_loss`` (higher is better for both).
        scores: ``challenger``, ``champion`` and ``floor`` scores (those that were computed).
        challenger / champion / floor: the ``(name, version)`` references involved.
    """

    scenario: str
    promoted: bool
    reason: str
    metric: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    challenger: tuple[str, int] | None = None
    champion: tuple[str, int] | None = None
    floor: tuple[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "promoted": self.promoted, "reason": self.reason, "metric": self.metric,
                "scores": self.scores, "challenger": _ref(self.challenger), "champion": _ref(self.champion),
                "floor": _ref(self.floor)}


def _ref(ref: tuple[str, int] | None) -> list | None:
    return None if ref is None else [ref[0], int(ref[1])]


def score_on(registry: ModelRegistry, ref: tuple[str, int], rows: pd.DataFrame, label: str) -> tuple[str, float]:
    """Score a registry model on raw prepared rows with its own saved transforms.

    Returns:
        ``(metric, score)``: ``valid_auc`` when ``rows`` hold both classes, else ``valid_neg_log_loss``.
    """
    model, transforms, _ = registry.load(*ref)
    p = predict_proba(model, transforms.transform(rows))
    y = rows[label].to_numpy().astype(float)
    a = auc(y, p)
    if a is not None:
        return "valid_auc", float(a)
    eps = 1e-7
    p = np.clip(p, eps, 1 - eps)
    return "valid_neg_log_loss", float(np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def promote_if_better(registry: ModelRegistry, scenario: str, challenger: tuple[str, int], valid_rows: pd.DataFrame,
                      *, label: str, floor: tuple[str, int] | None = None, min_gain: float = 0.0,
                      note: str = "") -> Decision:
    """Promote ``challenger`` at ``scenario``'s serving pointer if it beats what serves there.

    Args:
        registry: the model registry.
        scenario: the scenario (its serving pointer).
        challenger: the new light model's ``(name, version)``.
        valid_rows: the scenario's VALID rows, raw (prepared, not transformed).
        label: the label column.
        floor: what a scenario with no model must beat (the agnostic θ0 at the fallback pointer);
            ``None``: no floor.
        min_gain: the challenger must score more than the other model plus this.
        note: recorded in the pointer's history.

    Returns:
        The `Decision`; the pointer changes (compare-and-swap) only when ``promoted`` and it did not
        already name the challenger.
    """
    challenger = (challenger[0], int(challenger[1]))
    champion = registry.serving(scenario)
    if champion == challenger:
        return Decision(scenario, True, "already serving", challenger=challenger, champion=champion)
    if not len(valid_rows):
        return Decision(scenario, False, "no validation rows to compare on; the scenario keeps "
                        + ("its model" if champion else "the fallback model"), challenger=challenger,
                        champion=champion)
    metric, mine = score_on(registry, challenger, valid_rows, label)
    other_ref, other_name = (champion, "champion") if champion is not None else (floor, "floor")
    scores: dict[str, float | None] = {"challenger": mine}
    what = "no floor"
    if other_ref is not None:
        what = f"the {other_name} {other_ref[0]} v{other_ref[1]}"
        try:
            _, other = score_on(registry, other_ref, valid_rows, label)  # the rows decide the metric: the same
            what += f" ({other:.4f})"
        except (RegistryError, FileNotFoundError, ValueError, RuntimeError) as e:
            other = -math.inf  # a model that cannot be loaded cannot be kept serving
            what += f" (failed to load: {e})"
        scores[other_name] = other if math.isfinite(other) else None
        if not mine > other + min_gain:
            return Decision(scenario, False, f"challenger {metric} {mine:.4f} does not beat {what} by more than "
                            f"{min_gain}", metric, scores, challenger, champion, floor)
    registry.promote(scenario, *challenger, expected=champion, note=f"{note}: {metric} {mine:.4f} beats {what}")
    return Decision(scenario, True, f"challenger {metric} {mine:.4f} beats {what}", metric, scores, challenger,
                    champion, floor)


def publish_onboarding(registry: ModelRegistry, onboarding: Onboarding, *, dataset: str,
                       data_split: Mapping[str, Any], extra_lineage: Mapping[str, Any] | None = None
                       ) -> dict[str, tuple[str, int]]:
    """Publish an onboarding's θu (kind ``specific``) and Ours (kind ``light``) model folders.

    The names are ``<dataset>.<scenario>.heavy`` and ``<dataset>.<scenario>.light``; each version
    carries its VALID and TEST AUC, FLOPs and latency in its metrics, and θ0's version, the data
    split and (for the light model) its teacher in its lineage. Publishing is not promoting.

    Returns:
        ``{"heavy": (name, version), "light": (name, version)}`` (``heavy`` only when θu was fine-tuned
        by the onboarding, ``light`` only when Ours ran).

    Raises:
        ValueError: the onboarding wrote no artifacts (``onboard(..., out=...)`` is needed).
    """
    paths = onboarding.paths
    if "theta_u" not in paths and "ours" not in paths:
        raise ValueError(f"scenario {onboarding.scenario!r}: nothing to publish; run onboard(..., out=DIR) so that "
                         "its model folders are written")
    s = onboarding.summary()
    scen, extra = onboarding.scenario, dict(extra_lineage or {})
    base = f"{dataset}.{safe_name(scen)}"
    refs: dict[str, tuple[str, int]] = {}
    teacher = None
    if "theta_u" in paths:  # a θu fine-tuned here (not one given by the caller)
        heavy = registry.publish(f"{base}.heavy", paths["theta_u"], kind="specific", scenario=scen,
                                 metrics={"valid_auc": s["valid_auc"].get("MeH"), "test_auc": s["auc"].get("MeH"),
                                          "flops": s["flops"]["heavy"], "latency_ms": s["latency_ms"]["heavy"]},
                                 lineage=lineage(data_split=data_split, strategy="MeH",
                                                 theta0_store_version=onboarding.theta0_version, **extra))
        refs["heavy"] = heavy.ref
        teacher = {"name": heavy.name, "version": heavy.version}
    if "ours" in paths:
        light = registry.publish(f"{base}.light", paths["ours"], kind="light", scenario=scen,
                                 metrics={"valid_auc": s["valid_auc"].get("Ours"), "test_auc": s["auc"].get("Ours"),
                                          "flops": s["flops"]["Ours"], "budget": s["flops"]["budget"],
                                          "latency_ms": s["latency_ms"]["Ours"]},
                                 lineage=lineage(data_split=data_split, strategy="Ours",
                                                 theta0_store_version=onboarding.theta0_version,
                                                 teacher=teacher, **extra))
        refs["light"] = light.ref
    return refs

