"""The θ0 store: versioned weights on a filesystem, updated under an exclusive lock, with a ledger.

Layout of a store folder::

    server.json             the update rule and what θ0 is (model config, transforms): written once
    ledger.json             the commit point: current version, every version, every update
    versions/000003/        one folder per version: weights.pt (state dict), version.json
    updates/<id>.pt         the gradient of every applied update (the ledger can be replayed)
    lock                    the fcntl.flock target

Writers (`submit`, `apply_batch`, `commit_refresh`) hold an exclusive ``flock`` on ``lock`` for the
whole read-modify-write: they read the ledger, write the new version's files atomically, then
replace ``ledger.json`` atomically. A crash before the ledger is replaced leaves the old version
current (the half-made folder is overwritten by the next writer), so the ledger never names a
version whose weights are missing. Readers (`load`, `ledger`) take no lock: versions at or below
the current one are never rewritten, and the ledger is replaced, never edited in place.

Every submitted update id appears in the ledger's ``updates`` once, as ``applied`` (with the
version it was computed against, ``base_version``, the one it was applied to, ``applied_to``,
and the one it produced, ``produced``) or ``dropped`` (with the reason). A replayed id changes
nothing and is recorded under ``replays``. The update rule itself is `longtail.meta.update`.

``flock`` needs a filesystem where it works across all writers: a local disk (worker processes
on one machine) or one volume mounted by every pod that submits; on object storage run one
process that owns the store and let pods send it their updates.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from longtail.io import atomic_path, atomic_write_json
from longtail.meta.update import (
    APPLIED,
    DUPLICATE,
    MetaUpdate,
    StepPlan,
    UpdateRule,
    apply_steps,
    plan_step,
)

__all__ = ["Theta0Server"]

SERVER_JSON, LEDGER_JSON, LOCK = "server.json", "ledger.json", "lock"


def _now() -> float:
    return round(time.time(), 3)


class Theta0Server:
    """θ0 versions on the local filesystem; feedback applied once each, under a file lock.

    Args:
        root: the store folder (made by `create`).

    Example:
        >>> server = Theta0Server.create("runs/theta0", model.state_dict(), UpdateRule(eta=1e-2))
        >>> version, state = server.load()                 # the current θ0
        >>> record = server.submit(MetaUpdate("s07@v0", "s07", version, grads))
        >>> record["status"], record["produced"]           # ('applied', 1)
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / SERVER_JSON).exists() or not (self.root / LEDGER_JSON).exists():
            raise FileNotFoundError(f"{self.root}: no θ0 store here (server.json / ledger.json missing); "
                                    "make one with Theta0Server.create")
        info = json.loads((self.root / SERVER_JSON).read_text())
        self.rule = UpdateRule(**info["rule"])
        self.info: dict[str, Any] = info.get("info", {})

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, root: str | Path, state: Mapping[str, torch.Tensor], rule: UpdateRule, *,
               info: Mapping[str, Any] | None = None, scenarios: Sequence[str] = ()) -> Theta0Server:
        """Make a store whose version 0 is ``state``.

        Args:
            root: an empty or missing folder.
            state: θ0's state dict (saved on CPU).
            rule: the update rule every submission to this store follows.
            info: JSON-safe facts about θ0 (model config, transforms) saved in server.json.
            scenarios: the scenarios θ0 was initialised on (the start of "scenarios seen").

        Raises:
            FileExistsError: when ``root`` already holds a store.
        """
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        (root / LOCK).touch()
        with _flock(root / LOCK):
            if (root / LEDGER_JSON).exists():
                raise FileExistsError(f"{root}: a θ0 store already exists here")
            atomic_write_json(root / SERVER_JSON, {"rule": asdict(rule), "info": dict(info or {})})
            record = {"version": 0, "parent": None, "kind": "init", "updates": [],
                      "scenarios": list(scenarios), "time": _now()}
            _write_version(root, 0, state, record)
            atomic_write_json(root / LEDGER_JSON, {"current": 0, "versions": [record], "updates": [],
                                                   "replays": []})
        return cls(root)

    # ------------------------------------------------------------------ reading (no lock)
    def ledger(self) -> dict[str, Any]:
        """The committed ledger (current version, versions, updates, replays)."""
        return json.loads((self.root / LEDGER_JSON).read_text())

    @property
    def current_version(self) -> int:
        return int(self.ledger()["current"])

    def load(self, version: int | None = None) -> tuple[int, dict[str, torch.Tensor]]:
        """Return ``(version, state dict)`` of ``version`` (default: the current one)."""
        current = self.current_version
        version = current if version is None else int(version)
        if not 0 <= version <= current:
            raise ValueError(f"θ0 version {version} does not exist; versions are 0..{current}")
        return version, torch.load(self._version_dir(version) / "weights.pt", map_location="cpu",
                                   weights_only=True)

    def gradient(self, update_id: str) -> dict[str, torch.Tensor]:
        """The stored gradient of an applied update."""
        return torch.load(self.root / "updates" / f"{update_id}.pt", map_location="cpu", weights_only=True)

    def scenarios_seen(self) -> list[str]:
        """Scenarios θ0 has learnt from: its initial ones, refreshes and applied feedback, in order."""
        ledger = self.ledger()
        seen: dict[str, None] = {}
        for v in ledger["versions"]:
            for s in v.get("scenarios", []):
                seen[s] = None
        for u in ledger["updates"]:
            if u["status"] == APPLIED:
                seen[u["scenario"]] = None
        return list(seen)

    def _version_dir(self, version: int) -> Path:
        return self.root / "versions" / f"{version:06d}"

    # ------------------------------------------------------------------ writing (exclusive lock)
    def submit(self, update: MetaUpdate) -> dict[str, Any]:
        """Apply one scenario's feedback to the current θ0 (Eq. 2), once.

        Args:
            update: the gradient and the version it was computed against.

        Returns:
            The ledger record of the update: ``status`` ``applied`` (with ``produced``),
            ``dropped`` (with ``reason``), or ``duplicate`` when the id was seen before (then
            nothing changes, and ``original`` is the first record).
        """
        return self.apply_batch([update])[0]

    def apply_batch(self, updates: Sequence[MetaUpdate]) -> list[dict[str, Any]]:
        """Apply the feedback of U scenarios as one summed step (Eq. 3), producing one version.

        Each update follows the rule of `longtail.meta.update` against the current version (its
        own staleness, η_u and trust region); dropped and replayed ones are recorded and left out
        of the sum. Ids repeated within ``updates`` count once.

        Returns:
            One ledger record per update, in the order given.
        """
        with _flock(self.root / LOCK):
            ledger = self.ledger()
            current = int(ledger["current"])
            known = {u["id"]: u for u in ledger["updates"]}
            _, theta = self.load(current)
            records: list[dict[str, Any]] = []
            steps: list[tuple[float, dict[str, torch.Tensor]]] = []
            applied: list[MetaUpdate] = []
            now = _now()
            for upd in updates:
                if upd.update_id in known:
                    ledger["replays"].append({"id": upd.update_id, "time": now,
                                              "original_status": known[upd.update_id]["status"]})
                    records.append({"id": upd.update_id, "status": DUPLICATE,
                                    "original": known[upd.update_id]})
                    continue
                plan = plan_step(upd, current, theta, self.rule)
                rec = _record(upd, plan, current, now)
                known[upd.update_id] = rec
                ledger["updates"].append(rec)
                records.append(rec)
                if plan.status == APPLIED:
                    steps.append((plan.coef, upd.gradient))
                    applied.append(upd)
            if applied:
                new_version = current + 1
                for rec in records:
                    if rec["status"] == APPLIED:
                        rec["produced"] = new_version
                for upd in applied:
                    with atomic_path(self.root / "updates" / f"{upd.update_id}.pt") as tmp:
                        torch.save({k: v.detach().cpu() for k, v in upd.gradient.items()}, tmp)
                vrec = {"version": new_version, "parent": current,
                        "kind": "batch" if len(applied) > 1 else "update",
                        "updates": [u.update_id for u in applied], "time": now}
                _write_version(self.root, new_version, apply_steps(theta, steps), vrec)
                ledger["versions"].append(vrec)
                ledger["current"] = new_version
            atomic_write_json(self.root / LEDGER_JSON, ledger)  # the commit point
        return records

    def commit_refresh(self, state: Mapping[str, torch.Tensor], base_version: int, *,
                       scenarios: Sequence[str] = (), note: str = "meta_train") -> dict[str, Any]:
        """Commit θ0 weights refreshed by meta-training (trained from version ``base_version``).

        Feedback applied while the refresh ran is kept, not overwritten: the new version is
        ``θ_refreshed + (θ0^current − θ0^base)`` on floating tensors (the refresh's own change is
        rebased onto the current version, as the deltas of the updates since ``base`` are carried
        over); with no update in between this is ``θ_refreshed`` itself.

        Args:
            state: the refreshed weights.
            base_version: the version the refresh started from.
            scenarios: the scenarios whose stored rows it was trained on.
            note: the version's kind in the ledger.

        Returns:
            The new version's ledger record.
        """
        with _flock(self.root / LOCK):
            ledger = self.ledger()
            current = int(ledger["current"])
            if not 0 <= base_version <= current:
                raise ValueError(f"base_version {base_version} is not a version of this store (0..{current})")
            _, theta_c = self.load(current)
            new = {k: v.detach().cpu().clone() for k, v in state.items()}
            if base_version != current:
                _, theta_b = self.load(base_version)
                for k, v in new.items():
                    if v.is_floating_point():
                        new[k] = v + (theta_c[k] - theta_b[k])
            vrec = {"version": current + 1, "parent": current, "kind": note, "base_version": base_version,
                    "updates": [], "scenarios": list(scenarios), "time": _now()}
            _write_version(self.root, current + 1, new, vrec)
            ledger["versions"].append(vrec)
            ledger["current"] = current + 1
            atomic_write_json(self.root / LEDGER_JSON, ledger)
        return vrec


def _record(upd: MetaUpdate, plan: StepPlan, current: int, now: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": upd.update_id, "scenario": upd.scenario, "status": plan.status,
                           "base_version": upd.base_version, "applied_to": current, "produced": None,
                           **plan.to_dict(), "time": now}
    for k, v in rec.items():  # strict JSON: a non-finite norm is recorded as null (the reason says why)
        if isinstance(v, float) and not math.isfinite(v):
            rec[k] = None
    if upd.info:
        rec["info"] = upd.info
    return rec


def _write_version(root: Path, version: int, state: Mapping[str, torch.Tensor],
                   record: dict[str, Any]) -> None:
    folder = root / "versions" / f"{version:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "weights.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    atomic_write_json(folder / "version.json", record)


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    # a fresh open file description per call: excludes other processes and other threads alike
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
