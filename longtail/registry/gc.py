"""What dead publishes leave behind, and opening a registry that must exist (``longtail registry gc``).

A publish that is killed part-way leaves two kinds of leftovers, neither visible to readers:

* a temporary file in a local store's ``.tmp/`` (every write goes through one: a model's weights
  can be tens of MB). Its name carries the writer's pid and host (`longtail.registry.store.temp_owner`);
* an incomplete version: ``models/<name>/versions/<v>/claim.json`` and some files, but no
  ``manifest.json`` (the number is burned; no reader lists or loads it).

`clean_temp_files` removes the temporary files of writers that are dead (same host, no such
process) or, whoever wrote them, older than a limit; every publish calls it with the safe default
(dead writers on this host only). `collect_garbage` (``longtail registry gc``) also removes
incomplete versions whose publisher is dead, or whose claim is older than the limit.

A registry a command only reads is opened by `open_existing_registry`, which refuses a local path that
does not exist (a typo in ``--registry`` would otherwise create an empty registry and list nothing).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from longtail.registry.errors import NotFoundError, RegistryError
from longtail.registry.registry import ModelRegistry, open_registry
from longtail.registry.store import LocalStore, ObjectStore, temp_owner

__all__ = ["GarbageReport", "clean_temp_files", "collect_garbage", "open_existing_registry"]

DEFAULT_AGE_S = 24 * 3600.0


@dataclass
class GarbageReport:
    """What `collect_garbage` removed (or, with ``dry_run``, would remove)."""

    temp_files: list[str] = field(default_factory=list)
    temp_bytes: int = 0
    incomplete_versions: list[str] = field(default_factory=list)
    kept_incomplete: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"temp_files": self.temp_files, "temp_bytes": self.temp_bytes,
                "incomplete_versions": self.incomplete_versions, "kept_incomplete": self.kept_incomplete}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _dead_here(owner: str) -> bool:
    """Whether ``<pid>-<host hash>`` names a process of this host that no longer runs."""
    pid, _, host = owner.partition("-")
    if not pid.isdigit() or host != temp_owner(0).partition("-")[2]:
        return False  # another host (or an unnamed writer): only its age can tell
    return int(pid) != os.getpid() and not _alive(int(pid))


def clean_temp_files(store: ObjectStore, *, max_age_s: float | None = None, dry_run: bool = False,
                     report: GarbageReport | None = None) -> GarbageReport:
    """Remove a local store's temporary files whose writer is dead, or (with ``max_age_s``) that are older.

    Args:
        store: the store (only a `LocalStore` has temporary files).
        max_age_s: also remove files not modified for this long, whoever wrote them (None: only dead writers).
        dry_run: only report.
        report: add to this report.

    Returns:
        The report (files and bytes).
    """
    report = report if report is not None else GarbageReport()
    if not isinstance(store, LocalStore) or not store._tmp.is_dir():
        return report
    now = time.time()
    for path in sorted(store._tmp.iterdir()):
        if not path.is_file():
            continue
        try:
            st = path.stat()
        except FileNotFoundError:  # its writer just renamed or removed it
            continue
        owner = path.name[1:].split(".", 1)[0]
        old = max_age_s is not None and now - st.st_mtime > max_age_s
        if _dead_here(owner) or old:
            report.temp_files.append(str(path))
            report.temp_bytes += st.st_size
            if not dry_run:
                path.unlink(missing_ok=True)
    return report


def collect_garbage(registry: ModelRegistry, *, max_age_s: float = DEFAULT_AGE_S,
                    dry_run: bool = False) -> GarbageReport:
    """Remove what dead publishes left: temporary files and incomplete versions (see the module docstring).

    An incomplete version is removed when its claim names a process of this host that no longer runs,
    or when the claim is older than ``max_age_s`` (a publisher on another host cannot be asked, so
    only time tells there); otherwise it is kept and reported (a publish may still be running).

    Args:
        registry: the registry.
        max_age_s: age after which leftovers are removed whoever wrote them (default one day).
        dry_run: only report.

    Returns:
        The `GarbageReport`.
    """
    store = registry.store
    report = clean_temp_files(store, max_age_s=max_age_s, dry_run=dry_run)
    host = os.uname().nodename
    now = time.time()
    for name in sorted({k.split("/")[1] for k in store.list("models/") if k.count("/") >= 4}):
        prefix = f"models/{name}/versions/"
        by_version: dict[str, list[str]] = {}
        for key in store.list(prefix):
            head = key[len(prefix):].split("/", 1)[0]
            if head.isdigit():
                by_version.setdefault(head, []).append(key)
        for version, keys in sorted(by_version.items(), key=lambda kv: int(kv[0])):
            if f"{prefix}{version}/manifest.json" in keys:
                continue
            label = f"{name} v{version}"
            try:
                claim = json.loads(store.get_bytes(f"{prefix}{version}/claim.json"))
            except (NotFoundError, ValueError):
                claim = {}
            try:
                age = now - datetime.fromisoformat(claim["created_at"]).timestamp()
            except (KeyError, TypeError, ValueError):
                age = float("inf")  # files without a readable claim: nobody owns them
            dead = claim.get("host") == host and isinstance(claim.get("pid"), int) and \
                claim["pid"] != os.getpid() and not _alive(claim["pid"])
            if not (dead or age > max_age_s):
                report.kept_incomplete.append(label)
                continue
            report.incomplete_versions.append(label)
            if not dry_run:
                for key in sorted(keys, key=lambda k: k.endswith("claim.json")):  # the claim last
                    store.delete(key)
                if isinstance(store, LocalStore):  # and the folders they leave empty
                    folder = store.root / prefix / version
                    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
                        _rmdir(d)
                    _rmdir(folder)
    return report


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:  # not empty (a publisher wrote meanwhile) or gone: leave it
        pass


def open_existing_registry(uri: str | Path) -> ModelRegistry:
    """Open a registry that must exist already (for commands that read it or change its pointers).

    Raises:
        RegistryError: a local path that does not exist, is not a folder, or holds files but no
            registry (no ``models/`` or ``serving/``); names the path and the fix.
    """
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and text[1:2] == ":"):
        path = Path(parsed.path if parsed.scheme == "file" else text)
        fix = ("check --registry (or $LONGTAIL_REGISTRY); a registry is made by the first publish (`longtail meta "
               "run --set registry=DIR`, `longtail nas light --registry DIR`, the pipelines)")
        if not path.exists():
            raise RegistryError(f"registry {text}: no such folder; {fix}")
        if not path.is_dir():
            raise RegistryError(f"registry {text}: not a folder; {fix}")
        names = {p.name for p in path.iterdir()}
        if names and not names & {"models", "serving"}:
            raise RegistryError(f"registry {text}: the folder holds files but no registry (no models/ or serving/); "
                                f"{fix}")
    return open_registry(uri)
