"""The model registry: immutable, numbered model versions and explicit serving pointers per scenario.

Layout in the store::

    models/<name>/versions/<v>/claim.json         who reserved version v (written first, create-if-absent)
    models/<name>/versions/<v>/files/<path>       the model folder's files (create-if-absent)
    models/<name>/versions/<v>/manifest.json      written LAST (create-if-absent): the version is complete
    serving/<scenario>.json                       the serving pointer: current version, stack, history
    index/serving.json                            the serving index: every scenario's current version, one object

Why a claim before the files: two publishers that both see version 3 as the next number would
otherwise upload into the same folder and mix their files; the claim (a create-if-absent write)
gives version 3 to exactly one of them, the other takes 4. A publish that dies after its claim burns
that number: the version never gets a manifest, so no reader lists or loads it, and the next publish
takes the following number (numbers increase but may have gaps).

A version is visible only through its manifest, which names every file with its sha256 and size, so
a reader never sees a half-written model, and a download verifies every byte. Publishing is not
deduplicated: publishing the same folder twice makes two versions (each with its own lineage).

Serving pointers change only by compare-and-swap on ``serving/<scenario>.json``; the pointer object
holds its revision, the stack of promoted versions (what a rollback returns to) and the full history
of promotes and rollbacks, so two concurrent promotes cannot both believe they won and none is lost.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote

from longtail.registry.errors import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    RegistryError,
    UnsafeModelError,
)
from longtail.registry.store import ObjectStore, open_store

FORMAT = 1
KINDS_WITH_SCENARIO = ("specific", "light")  # kinds that belong to one scenario
KIND_WITHOUT_SCENARIO = "agnostic"  # theta0 serves every scenario
DEFAULT_EXCLUDE = ("checkpoints/*",)  # resumable training state is not part of a model
WEIGHT_SUFFIXES = (".pt", ".pth")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KIND = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_MAX_ATTEMPTS = 64
INDEX_KEY = "index/serving.json"


@dataclass(frozen=True)
class FileEntry:
    """One file of a model version: its path inside the model folder, sha256 and size in bytes."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelVersion:
    """A complete, immutable model version, as its manifest records it.

    Attributes:
        name: the model name (``agnostic``, ``specific-AA``, ...).
        version: the version number (1, 2, 3, ... per name).
        kind: ``agnostic``, ``specific``, ``light`` (or another lower-case word).
        scenario: the scenario a specific or light model belongs to; ``None`` for the agnostic model.
        files: every file of the model folder.
        metrics: what the publisher measured (JSON).
        lineage: where the model comes from (see :func:`lineage`).
        created_at: ISO 8601 UTC time of publishing.
        code_version: the publishing code's package version and git commit.
        publish_id: a unique id of the publish call.
    """

    name: str
    version: int
    kind: str
    scenario: str | None
    files: tuple[FileEntry, ...]
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    code_version: dict[str, Any] = field(default_factory=dict)
    publish_id: str = ""

    @property
    def ref(self) -> tuple[str, int]:
        """``(name, version)``: how the registry addresses a model (never "latest")."""
        return (self.name, self.version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "name": self.name, "version": self.version, "kind": self.kind,
            "scenario": self.scenario,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
            "metrics": self.metrics, "lineage": self.lineage, "created_at": self.created_at,
            "code_version": self.code_version, "publish_id": self.publish_id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelVersion:
        if d.get("format") != FORMAT:
            raise RegistryError(f"manifest format {d.get('format')!r} is not supported (expected {FORMAT})")
        return cls(
            name=d["name"], version=int(d["version"]), kind=d["kind"], scenario=d.get("scenario"),
            files=tuple(FileEntry(f["path"], f["sha256"], int(f["size"])) for f in d["files"]),
            metrics=dict(d.get("metrics") or {}), lineage=dict(d.get("lineage") or {}),
            created_at=d.get("created_at", ""), code_version=dict(d.get("code_version") or {}),
            publish_id=d.get("publish_id", ""),
        )


@dataclass(frozen=True)
class ServingState:
    """The serving pointer of one scenario.

    Attributes:
        scenario: the scenario.
        revision: how many times the pointer changed (0: never promoted).
        stack: the promoted versions, oldest first; the last one serves; a rollback pops it.
        history: every promote and rollback, oldest first (an audit log; never shortened).
    """

    scenario: str
    revision: int = 0
    stack: tuple[tuple[str, int], ...] = ()
    history: tuple[dict[str, Any], ...] = ()

    @property
    def current(self) -> tuple[str, int] | None:
        """The ``(name, version)`` that serves the scenario, or ``None``."""
        return self.stack[-1] if self.stack else None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "scenario": self.scenario, "revision": self.revision,
                "stack": [{"name": n, "version": v} for n, v in self.stack], "history": list(self.history)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServingState:
        return cls(scenario=d["scenario"], revision=int(d["revision"]),
                   stack=tuple((e["name"], int(e["version"])) for e in d["stack"]),
                   history=tuple(d["history"]))


@dataclass(frozen=True)
class ServingIndex:
    """Every scenario's current serving version, as one read gives it.

    Attributes:
        pointers: scenario -> ``(name, version)`` that serves it.
        revisions: scenario -> the pointer revision the entry was taken from.
        revision: how many times the index object was written (0: no index object, built by reading
            every pointer).
        source: ``index`` (one read of the index object) or ``pointers`` (no index yet: every pointer
            was read).
    """

    pointers: Mapping[str, tuple[str, int]]
    revisions: Mapping[str, int]
    revision: int = 0
    source: str = "index"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "revision": self.revision,
                "pointers": {s: {"name": n, "version": v, "revision": self.revisions.get(s, 0)}
                             for s, (n, v) in sorted(self.pointers.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServingIndex:
        if d.get("format") != FORMAT:
            raise RegistryError(f"serving index format {d.get('format')!r} is not supported (expected {FORMAT})")
        entries = d.get("pointers") or {}
        return cls(pointers={s: (e["name"], int(e["version"])) for s, e in entries.items()},
                   revisions={s: int(e.get("revision", 0)) for s, e in entries.items()},
                   revision=int(d.get("revision", 0)))


class ModelRegistry:
    """Versioned models and per-scenario serving pointers on an :class:`ObjectStore`.

    Every method is safe with concurrent publishers and promoters in other threads, processes or
    machines that use the same store (see the module docstring for how).

    Args:
        store: where everything lives (:class:`LocalStore` or :class:`S3Store`).

    Example::

        reg = open_registry("file:///tmp/longtail-registry")        # or "s3://bucket/prefix"
        mv = reg.publish("agnostic", "runs/r1/models/global", kind="agnostic",
                         metrics={"mean_auc": 0.71},
                         lineage=lineage(data_split={"seed": 0, "path": "runs/r1/splits.parquet"}))
        reg.promote("AA", *mv.ref)                                  # scenario AA is served by agnostic v1
        sp = reg.publish("specific-AA", "runs/r2/models/AA", kind="specific", scenario="AA",
                         metrics={"auc": 0.74}, lineage=lineage(theta0=mv.ref))
        reg.promote("AA", *sp.ref, expected=mv.ref)                 # only if agnostic v1 still serves
        reg.serving("AA")                                           # ('specific-AA', 1)
        model, transforms, info = reg.load(*reg.serving("AA"))      # verified, weights only
        reg.rollback("AA")                                          # agnostic v1 serves again
        reg.serving_index().pointers                                # {'AA': ('agnostic', 1)}: one read
    """

    def __init__(self, store: ObjectStore):
        self.store = store

    def __repr__(self) -> str:
        return f"ModelRegistry({self.store.uri!r})"

    # ------------------------------------------------------------------ keys
    @staticmethod
    def _versions_prefix(name: str) -> str:
        return f"models/{_check_name(name)}/versions/"

    def _version_key(self, name: str, version: int, leaf: str) -> str:
        return f"{self._versions_prefix(name)}{_check_version(version)}/{leaf}"

    @staticmethod
    def _pointer_key(scenario: str) -> str:
        if not isinstance(scenario, str) or not scenario:
            raise RegistryError(f"invalid scenario {scenario!r}: a non-empty string")
        encoded = quote(scenario, safe="")
        if encoded.startswith("."):
            encoded = "%2E" + encoded[1:]
        return f"serving/{encoded}.json"

    # ------------------------------------------------------------------ publishing
    def publish(self, name: str, model_dir: str | Path, *, kind: str, scenario: str | None = None,
                metrics: Mapping[str, Any], lineage: Mapping[str, Any], version: int | None = None,
                exclude: Sequence[str] = DEFAULT_EXCLUDE) -> ModelVersion:
        """Publish a model folder as a new immutable version.

        The version number is reserved first (create-if-absent, retried with the next number when
        another publisher took it), then every file is uploaded, then the manifest is written last;
        only a version with a manifest exists for readers.

        Args:
            name: the model name (letters, digits, ``.``, ``_``, ``-``).
            model_dir: the folder (as written by ``save_model_dir``; extra files such as metrics or an
                architecture picture are published too). Hidden files and ``exclude`` are skipped.
            kind: ``agnostic`` (no scenario), ``specific`` or ``light`` (a scenario), or another word.
            scenario: the scenario a specific or light model belongs to.
            metrics: JSON-serialisable metrics.
            lineage: JSON-serialisable lineage, usually from :func:`lineage`.
            version: publish exactly this number (fails with :class:`ConflictError` if it is taken)
                instead of the next free one.
            exclude: glob patterns of relative paths not to publish (default: training checkpoints).

        Returns:
            The published version.

        Raises:
            UnsafeModelError: a ``.pt``/``.pth`` file is not loadable with ``weights_only=True``.
            ConflictError: ``version`` was given and is taken.
        """
        _check_name(name)
        if not isinstance(kind, str) or not _KIND.match(kind):
            raise RegistryError(f"invalid kind {kind!r}: a lower-case word such as 'agnostic', 'specific', 'light'")
        if kind in KINDS_WITH_SCENARIO and not scenario:
            raise RegistryError(f"a {kind} model belongs to one scenario: pass scenario=")
        if kind == KIND_WITHOUT_SCENARIO and scenario is not None:
            raise RegistryError("the agnostic model serves every scenario: do not pass scenario=")
        if scenario is not None:
            self._pointer_key(scenario)  # validates it
        paths = _model_files(Path(model_dir), exclude)
        for rel in paths:
            if rel.endswith(WEIGHT_SUFFIXES):
                check_weights_only(Path(model_dir) / rel)
        metrics, lineage = _jsonable(metrics, "metrics"), _jsonable(lineage, "lineage")
        publish_id = uuid.uuid4().hex
        version = self._claim(name, version, publish_id)

        entries = []
        for rel in paths:
            data = (Path(model_dir) / rel).read_bytes()
            self.store.put_bytes(self._version_key(name, version, f"files/{rel}"), data, if_absent=True)
            entries.append(FileEntry(rel, hashlib.sha256(data).hexdigest(), len(data)))
        mv = ModelVersion(name=name, version=version, kind=kind, scenario=scenario, files=tuple(entries),
                          metrics=metrics, lineage=lineage, created_at=_now(), code_version=current_code_version(),
                          publish_id=publish_id)
        self.store.put_bytes(self._version_key(name, version, "manifest.json"), _dumps(mv.to_dict()),
                             if_absent=True)
        return mv

    def _claim(self, name: str, version: int | None, publish_id: str) -> int:
        """Reserve a version number for one publish (create-if-absent on its claim)."""
        claim = _dumps({"publish_id": publish_id, "created_at": _now(), "host": os.uname().nodename,
                        "pid": os.getpid()})
        if version is not None:
            try:
                self.store.put_bytes(self._version_key(name, version, "claim.json"), claim, if_absent=True)
            except ConflictError:
                raise ConflictError(f"{self.store.uri}: model {name!r} version {version} already exists "
                                    "(versions are immutable; publish without version= to get the next one)"
                                    ) from None
            return version
        version = max(self._numbers(name), default=0) + 1
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                self.store.put_bytes(self._version_key(name, version, "claim.json"), claim, if_absent=True)
                return version
            except ConflictError:
                # another publisher took it: try the next number at once (one request, no listing);
                # now and then list again in case many were taken meanwhile
                version = version + 1 if attempt % 8 else max(self._numbers(name), default=0) + 1
        raise ConflictError(f"{self.store.uri}: could not reserve a version of {name!r} "
                            f"after {_MAX_ATTEMPTS} attempts (too many concurrent publishers)")

    def _numbers(self, name: str, *, complete: bool = False) -> list[int]:
        """Version numbers that have a folder (any file) or, with ``complete``, a manifest."""
        prefix = self._versions_prefix(name)
        numbers = set()
        for key in self.store.list(prefix):
            head, _, rest = key[len(prefix):].partition("/")
            if head.isdigit() and (not complete or rest == "manifest.json"):
                numbers.add(int(head))
        return sorted(numbers)

    # ------------------------------------------------------------------ reading
    def list_models(self) -> list[str]:
        """Names of the models that have at least one complete version."""
        names = set()
        for key in self.store.list("models/"):
            parts = key.split("/")
            if len(parts) == 5 and parts[2] == "versions" and parts[4] == "manifest.json":
                names.add(parts[1])
        return sorted(names)

    def list_versions(self, name: str) -> list[int]:
        """The complete versions of a model (those with a manifest), ascending; [] if there are none."""
        return self._numbers(name, complete=True)

    def get(self, name: str, version: int) -> ModelVersion:
        """Read a version's manifest.

        Raises:
            NotFoundError: no such version, or its publish did not finish (no manifest).
        """
        try:
            raw = self.store.get_bytes(self._version_key(name, version, "manifest.json"))
        except NotFoundError:
            if self.store.exists(self._version_key(name, version, "claim.json")):
                raise NotFoundError(f"{self.store.uri}: model {name!r} version {version} is incomplete: its "
                                    "publish did not finish (no manifest), so it cannot be read") from None
            raise NotFoundError(f"{self.store.uri}: model {name!r} has no version {version}; "
                                f"complete versions: {self.list_versions(name)}") from None
        mv = ModelVersion.from_dict(json.loads(raw))
        if mv.ref != (name, version):
            raise IntegrityError(f"{self.store.uri}: the manifest of {name!r} v{version} names {mv.ref}")
        return mv

    def download(self, name: str, version: int, dest_dir: str | Path) -> Path:
        """Download a version's files into ``dest_dir``, verifying each file's sha256 and size.

        The files are written into a temporary sibling folder which is renamed onto ``dest_dir`` only
        when every file checked out, so ``dest_dir`` never holds a partial or corrupt model.

        Args:
            name: the model name.
            version: the version number.
            dest_dir: a folder that does not exist yet or is empty.

        Returns:
            ``dest_dir``.

        Raises:
            NotFoundError: no complete version (see :meth:`get`).
            IntegrityError: a stored file does not match its manifest.
        """
        mv = self.get(name, version)
        dest = Path(dest_dir)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise RegistryError(f"{dest}: download target exists and is not an empty folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            for f in mv.files:
                rel = _safe_relpath(f.path)
                data = self.store.get_bytes(self._version_key(name, version, f"files/{rel}"))
                digest = hashlib.sha256(data).hexdigest()
                if len(data) != f.size or digest != f.sha256:
                    raise IntegrityError(f"{self.store.uri}: {name!r} v{version} file {rel} is corrupt: "
                                         f"sha256 {digest[:12]}…, {len(data)} bytes; the manifest records "
                                         f"{f.sha256[:12]}…, {f.size} bytes")
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
            if dest.exists():
                dest.rmdir()
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def load(self, name: str, version: int) -> tuple[Any, Any, dict[str, Any]]:
        """Download (verified) and load a model version; weights are never unpickled as objects.

        The files pass through a temporary folder, in memory (``/dev/shm``) where the system has one:
        a model folder is small and deleted as soon as it is loaded, and a service that loads a
        thousand models spends less time on disk metadata.

        Returns:
            ``(model, transforms, info)`` as :func:`longtail.model_folder.load_model_dir` returns them,
            the model in eval mode on the CPU.

        Raises:
            UnsafeModelError: a weights file is not a plain state dict of tensors.
        """
        import pickle

        from longtail.model_folder import load_model_dir

        with tempfile.TemporaryDirectory(prefix="longtail-model-", dir=_scratch_dir()) as tmp:
            path = self.download(name, version, Path(tmp) / "model")
            weights = path / "weights.pt"
            for f in sorted(path.rglob("*")):
                if f.suffix in WEIGHT_SUFFIXES and f != weights:  # weights.pt: load_model_dir reads it weights-only
                    check_weights_only(f)
            try:
                return load_model_dir(path)
            except pickle.UnpicklingError as e:  # torch.load(weights_only=True) refused an object
                raise _unsafe(weights, e) from None

    # ------------------------------------------------------------------ serving pointers
    def pointer(self, scenario: str) -> ServingState:
        """The serving pointer of a scenario (revision 0 and no stack if it was never promoted)."""
        return self._read_pointer(scenario)[0]

    def serving(self, scenario: str) -> tuple[str, int] | None:
        """The ``(name, version)`` that serves ``scenario``, or ``None``."""
        return self.pointer(scenario).current

    def history(self, scenario: str) -> list[dict[str, Any]]:
        """Every promote and rollback of ``scenario``, oldest first."""
        return list(self.pointer(scenario).history)

    def promote(self, scenario: str, name: str, version: int, *, expected: tuple[str, int] | None = None,
                note: str = "") -> ServingState:
        """Make ``(name, version)`` serve ``scenario`` (pushed on the scenario's stack).

        Args:
            scenario: the scenario.
            name: the model name.
            version: a complete version of it (an agnostic model, or one published for this scenario).
            expected: when given, promote only if this ``(name, version)`` serves now.
            note: a free text recorded in the history.

        Returns:
            The new serving state (unchanged if ``(name, version)`` already serves).

        Raises:
            ConflictError: ``expected`` was given and another version serves now.
            NotFoundError: the version does not exist or is incomplete.
        """
        mv = self.get(name, version)
        if mv.scenario is not None and mv.scenario != scenario:
            raise RegistryError(f"{name!r} v{version} was published for scenario {mv.scenario!r}, "
                                f"not {scenario!r}")

        def change(state: ServingState) -> ServingState | None:
            if state.current == mv.ref:
                return None
            return _with_event(state, "promote", mv.ref, note, stack=(*state.stack, mv.ref))

        return self._update_pointer(scenario, change, expected)

    def rollback(self, scenario: str, *, expected: tuple[str, int] | None = None,
                 note: str = "") -> ServingState:
        """Serve the previously promoted version of ``scenario`` again (pops the current one).

        Args:
            scenario: the scenario.
            expected: when given, roll back only if this ``(name, version)`` serves now.
            note: a free text recorded in the history.

        Returns:
            The new serving state.

        Raises:
            RegistryError: fewer than two versions were promoted (nothing to roll back to).
            ConflictError: ``expected`` was given and another version serves now.
        """

        def change(state: ServingState) -> ServingState:
            if len(state.stack) < 2:
                raise RegistryError(f"scenario {scenario!r}: nothing to roll back to "
                                    f"(promoted: {list(state.stack)})")
            return _with_event(state, "rollback", state.stack[-2], note, stack=state.stack[:-1])

        return self._update_pointer(scenario, change, expected)

    def _read_pointer(self, scenario: str) -> tuple[ServingState, str | None]:
        try:
            raw, etag = self.store.get_with_etag(self._pointer_key(scenario))
        except NotFoundError:
            return ServingState(scenario), None
        return ServingState.from_dict(json.loads(raw)), etag

    def _update_pointer(self, scenario: str, change: Callable[[ServingState], ServingState | None],
                        expected: tuple[str, int] | None) -> ServingState:
        """Read-modify-write of a pointer by compare-and-swap, retried when another writer got in first."""
        key = self._pointer_key(scenario)
        for attempt in range(_MAX_ATTEMPTS):
            state, etag = self._read_pointer(scenario)
            if expected is not None and state.current != tuple(expected):
                raise ConflictError(f"scenario {scenario!r}: {state.current} serves, not the expected "
                                    f"{tuple(expected)}")
            new = change(state)
            if new is None:
                self._index_entry(scenario, state)  # a retried promote repairs an index its first try missed
                return state
            try:
                self.store.cas(key, etag, _dumps(new.to_dict()))
            except ConflictError:
                _backoff(attempt)
                continue
            self._index_entry(scenario, new)
            return new
        raise ConflictError(f"scenario {scenario!r}: the serving pointer kept changing; gave up after "
                            f"{_MAX_ATTEMPTS} attempts")

    # ------------------------------------------------------------------ the serving index
    def pointer_scenarios(self) -> list[str]:
        """The scenarios that have a serving pointer (promoted at least once), sorted (one listing)."""
        out = []
        for key in self.store.list("serving/"):
            leaf = key[len("serving/"):]
            if "/" not in leaf and leaf.endswith(".json"):
                out.append(unquote(leaf[: -len(".json")]))
        return sorted(out)

    def serving_index(self) -> ServingIndex:
        """Every scenario's current serving version: one read of the index object.

        A registry without an index object yet is answered by reading every pointer (``source`` is
        then ``pointers``); the index is written by the next promote or rollback, or by
        :meth:`rebuild_serving_index`.
        """
        try:
            raw = self.store.get_bytes(INDEX_KEY)
        except NotFoundError:
            return self._scan_pointers()
        return ServingIndex.from_dict(json.loads(raw))

    def rebuild_serving_index(self) -> ServingIndex:
        """Rewrite the serving index from every pointer (repairs an index a crashed writer left behind).

        Returns:
            The index as written.
        """
        for attempt in range(_MAX_ATTEMPTS):
            scanned = self._scan_pointers()
            try:
                raw, etag = self.store.get_with_etag(INDEX_KEY)
                revision = ServingIndex.from_dict(json.loads(raw)).revision
            except NotFoundError:
                etag, revision = None, 0
            index = ServingIndex(scanned.pointers, scanned.revisions, revision + 1)
            try:
                self.store.cas(INDEX_KEY, etag, _index_bytes(index))
                return index
            except ConflictError:
                _backoff(attempt)
        raise ConflictError(f"{self.store.uri}: the serving index kept changing; gave up after {_MAX_ATTEMPTS} attempts")

    def _scan_pointers(self) -> ServingIndex:
        pointers, revisions = {}, {}
        for scenario in self.pointer_scenarios():
            state = self.pointer(scenario)
            if state.current is not None:
                pointers[scenario], revisions[scenario] = state.current, state.revision
        return ServingIndex(pointers, revisions, 0, source="pointers")

    def _index_entry(self, scenario: str, state: ServingState) -> None:
        """Set ``scenario``'s entry of the index to ``state`` by compare-and-swap (a newer entry wins)."""
        for attempt in range(_MAX_ATTEMPTS):
            try:
                raw, etag = self.store.get_with_etag(INDEX_KEY)
                index = ServingIndex.from_dict(json.loads(raw))
            except NotFoundError:  # the first index of this registry: every pointer, this one included
                etag, index = None, self._scan_pointers()
            pointers, revisions = dict(index.pointers), dict(index.revisions)
            known = revisions.get(scenario, -1)
            if known > state.revision or (known == state.revision and pointers.get(scenario) == state.current):
                if etag is not None:
                    return  # the index holds this state already, or a newer one another writer put there
            elif state.current is None:
                pointers.pop(scenario, None)
                revisions.pop(scenario, None)
            else:
                pointers[scenario], revisions[scenario] = state.current, state.revision
            try:
                self.store.cas(INDEX_KEY, etag, _index_bytes(ServingIndex(pointers, revisions, index.revision + 1)))
                return
            except ConflictError:
                _backoff(attempt)
        raise ConflictError(f"{self.store.uri}: the serving index kept changing; gave up after {_MAX_ATTEMPTS} "
                            f"attempts (the pointer of {scenario!r} is written; run rebuild_serving_index)")


# ---------------------------------------------------------------------- helpers
def open_registry(uri: str | Path, *, endpoint_url: str | None = None, client: Any = None) -> ModelRegistry:
    """Open a registry by URI.

    Args:
        uri: ``file:///abs/path``, ``s3://bucket/prefix`` or a plain path.
        endpoint_url: S3 only: the endpoint (default: ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``).
        client: S3 only: a boto3 S3 client to use.

    Returns:
        A :class:`ModelRegistry` on the store the URI names.
    """
    return ModelRegistry(open_store(uri, endpoint_url=endpoint_url, client=client))


def lineage(theta0: tuple[str, int] | None = None, data_split: Mapping[str, Any] | None = None,
            code_version: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The lineage record of a model: where it comes from.

    Args:
        theta0: ``(name, version)`` of the agnostic model it was fine-tuned or distilled from, if any.
        data_split: what identifies its data split (e.g. ``{"seed": 0, "path": ".../splits.parquet"}``).
        code_version: the code version; default: this package's version and git commit
            (:func:`current_code_version`).
        **extra: any further JSON-serialisable facts (a teacher, a run id, a pipeline run, ...).

    Returns:
        A JSON-serialisable dict for :meth:`ModelRegistry.publish`.
    """
    record: dict[str, Any] = {
        "theta0": None if theta0 is None else {"name": theta0[0], "version": int(theta0[1])},
        "data_split": dict(data_split) if data_split is not None else None,
        "code_version": dict(code_version) if code_version is not None else current_code_version(),
    }
    record.update(extra)
    return _jsonable(record, "lineage")


@functools.cache
def current_code_version() -> dict[str, Any]:
    """This package's version and, when it runs from a git checkout, the commit and whether it is dirty.

    ``LONGTAIL_GIT_COMMIT`` (set when an image is built) is used when there is no checkout.
    """
    from longtail import __version__

    commit, dirty = _git_state()
    if commit is None:
        commit = os.environ.get("LONGTAIL_GIT_COMMIT") or None
    return {"package": __version__, "git_commit": commit, "git_dirty": dirty}


def _git_state() -> tuple[str | None, bool | None]:
    package = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if package.parent != top:  # an installed copy inside some other repository
            return None, None
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None


def check_weights_only(path: str | Path) -> None:
    """Raise :class:`UnsafeModelError` unless ``path`` loads with ``torch.load(weights_only=True)``.

    ``weights_only`` refuses any pickled object other than tensors and plain containers, without
    running it, which is how the registry guarantees that loading a model never executes code.
    """
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _unsafe(path, e) from None


def _unsafe(path: str | Path, e: Exception) -> UnsafeModelError:
    return UnsafeModelError(f"{path}: refused: not a weights-only file (torch.load with weights_only=True "
                            f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}). "
                            "The registry only stores state dicts of tensors; save "
                            "model.state_dict(), never a pickled module or object")


def _scratch_dir() -> str | None:
    """``/dev/shm`` when it is a writable folder (a memory file system on Linux), else the system default."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def _model_files(model_dir: Path, exclude: Iterable[str]) -> list[str]:
    if not model_dir.is_dir():
        raise RegistryError(f"{model_dir}: not a folder")
    exclude = tuple(exclude)
    paths = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if not path.is_file() or any(p.startswith(".") for p in rel.split("/")):
            continue
        if any(fnmatch(rel, pattern) for pattern in exclude):
            continue
        paths.append(rel)
    if not paths:
        raise RegistryError(f"{model_dir}: no files to publish")
    return paths


def _safe_relpath(rel: str) -> str:
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") or part.startswith(".") for part in p.parts):
        raise IntegrityError(f"unsafe file path {rel!r} in a manifest")
    return p.as_posix()


def _with_event(state: ServingState, action: str, ref: tuple[str, int], note: str,
                stack: tuple[tuple[str, int], ...]) -> ServingState:
    revision = state.revision + 1
    event = {"revision": revision, "action": action, "name": ref[0], "version": ref[1],
             "previous": None if state.current is None else {"name": state.current[0], "version": state.current[1]},
             "at": _now(), "host": os.uname().nodename, "pid": os.getpid(), "note": note,
             # unique per write: makes every pointer value distinct, so an etag never repeats (no ABA)
             "id": uuid.uuid4().hex}
    return ServingState(state.scenario, revision, stack, (*state.history, event))


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(f"invalid model name {name!r}: letters, digits, '.', '_', '-' (not first)")
    return name


def _check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"invalid version {version!r}: a positive integer")
    return version


def _jsonable(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj, default=_json_default, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise RegistryError(f"{what} must be JSON-serialisable: {e}") from None


def _json_default(o: Any) -> Any:
    if callable(getattr(o, "tolist", None)):  # numpy / torch scalars and arrays
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (tuple, set, frozenset)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _index_bytes(index: ServingIndex) -> bytes:
    # a unique id per write: an etag never repeats (no ABA between two writers of equal content)
    return _dumps({**index.to_dict(), "updated_at": _now(), "id": uuid.uuid4().hex})


def _dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(0.2, 0.005 * 2 ** min(attempt, 6))))
