"""Run folders bound to what determines their result: one fingerprint for every job that resumes.

A run folder (``longtail train --out``, ``longtail meta run --out``, ``longtail nas light --out``)
holds ``run.json``, the fingerprint of what its result depends on:

* the command (``train``, ``meta run``, ``nas light``);
* the table set's content: a sha256 of its spec and of every table file (not its path: a moved set
  is the same set, a rebuilt one with other rows is not);
* the effective config (split settings, model, training, recipe, ...) less the keys that only say
  where things are read from or go to (the table set's path, the output folder, the registry);
* for a job that starts from another run's models (``nas light`` from a MeH run), the digests of
  those model folders.

`bind_run_folder` is called after the input was validated and before anything is written: a new
or empty folder gets its ``run.json``; a folder with the same fingerprint is resumed (the per-epoch
checkpoints of `longtail.train.fit`); a folder with another fingerprint is refused with a
`RunMismatch` that names what differs (``data.split_seed 0 -> 1``, ``the table set's events
changed``) and how to start afresh, and nothing in it is touched. `run_folder` adds the failure
mark: ``failed.json`` (the error and its traceback) is written when the run stops on an error and
removed when it is resumed; ``metrics.json``, which every job writes last, marks a complete run.

Example:
    >>> fp = fingerprint("train", cfg, tables, ignore=("data.tables",))        # doctest: +SKIP
    >>> with run_folder("runs/x", fp) as resumed:                             # doctest: +SKIP
    ...     ...  # train; a rerun with other settings raises RunMismatch before this line
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from longtail.config import ConfigError, config_from_dict, config_to_dict
from longtail.io import atomic_write_json

__all__ = ["FAILED_FILE", "RUN_FILE", "RunMismatch", "bind_run_folder", "check_devices", "dict_differences",
           "differences",
           "file_digest", "fingerprint", "model_dir_digest", "run_folder", "tables_digest"]

RUN_FILE = "run.json"
FAILED_FILE = "failed.json"
FORMAT = 1
_COMPARED = ("command", "tables", "config", "inputs")


class RunMismatch(RuntimeError):
    """A run folder was made from other inputs (data, spec, split or config) than the rerun's."""


# ---------------------------------------------------------------------- digests
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """The sha256 of a file's bytes (remembered per path, size, inode and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def tables_digest(tables: Any) -> dict[str, str]:
    """What a table set holds: ``spec`` (its canonical spec) and each table (``events`` and every view).

    Args:
        tables: a `longtail.data.tables.TableSet`.

    Returns:
        table name -> sha256 (of the spec's canonical JSON; of each table file's bytes).
    """
    spec = json.dumps(tables.spec.to_dict(), sort_keys=True, default=str)
    out = {"spec": hashlib.sha256(spec.encode()).hexdigest()}
    for path in tables.table_paths:
        out[path.stem] = file_digest(path)
    return out


def model_dir_digest(path: str | Path) -> str:
    """One sha256 over a model folder's ``model.json``, ``transforms.json`` and ``weights.pt``."""
    h = hashlib.sha256()
    for name in ("model.json", "transforms.json", "weights.pt"):
        h.update(f"{name}:{file_digest(Path(path) / name)};".encode())
    return h.hexdigest()


def _drop(d: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = d
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def fingerprint(command: str, config: Any, tables: Any | None = None, *, ignore: Iterable[str] = (),
                inputs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The fingerprint of a run: what its result depends on (see the module docstring).

    Args:
        command: the job (``train``, ``meta run``, ``nas light``).
        config: the effective config (a frozen config dataclass).
        tables: the table set the run reads (`longtail.data.tables.TableSet`), or None.
        ignore: dotted config keys that do not determine the result (where things are read or go).
        inputs: other things the result depends on, by name (e.g. model folders' digests).

    Returns:
        A JSON-safe dict; `bind_run_folder` compares its ``command``, ``tables``, ``config`` and
        ``inputs`` (``about`` only informs: the table set's path, the config class, the time).
    """
    cfg = config_to_dict(config)
    ignore = tuple(ignore)
    for key in ignore:
        _drop(cfg, key)
    kind = type(config)
    return {"format": FORMAT, "command": command,
            "tables": tables_digest(tables) if tables is not None else {},
            "config": cfg, "inputs": dict(inputs or {}),
            "about": {"config_class": f"{kind.__module__}.{kind.__qualname__}", "ignored": list(ignore),
                      "tables_path": str(tables.root) if tables is not None else None,
                      "created_at": datetime.now(UTC).isoformat(timespec="seconds")},
            "_class": kind}


# ---------------------------------------------------------------------- comparing
def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _shown(v: Any) -> str:
    if v is _ABSENT:
        return "(not set)"
    if isinstance(v, str):
        return v if v else "''"
    return json.dumps(v) if isinstance(v, list | dict | bool) or v is None else str(v)


_ABSENT = object()


def _normalized(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The old config read with today's defaults (a field added since it was written takes its default)."""
    kind = new.get("_class")
    if kind is None or not dataclasses.is_dataclass(kind):
        return old["config"]
    try:
        cfg = config_to_dict(config_from_dict(kind, dict(old["config"]), "run.json config"))
    except ConfigError:
        return old["config"]  # written by another version: compared as it is
    for key in new["about"].get("ignored", []):
        _drop(cfg, key)
    return cfg


def dict_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts, as ``key old -> new`` phrases."""
    old_c, new_c = _flat(dict(old), prefix), _flat(dict(new), prefix)
    out = []
    for key in sorted(set(old_c) | set(new_c)):
        a, b = old_c.get(key, _ABSENT), new_c.get(key, _ABSENT)
        if a != b:
            out.append(f"{key} {_shown(a)} -> {_shown(b)}")
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, one phrase each (empty: the same run).

    Example: ``["data.split_seed 0 -> 1", "the table set's events changed (events.parquet)"]``.
    """
    out: list[str] = []
    if old.get("command") != new.get("command"):
        out.append(f"the folder holds a `longtail {old.get('command')}` run, not a `longtail {new.get('command')}` one")
        return out
    old_t, new_t = old.get("tables") or {}, new.get("tables") or {}
    changed = []
    for name in sorted(set(old_t) | set(new_t), key=lambda n: (n != "spec", n != "events", n)):
        what = "spec (spec.yaml)" if name == "spec" else f"{name} ({name}.parquet)"
        if name not in old_t:
            out.append(f"the table set has a table {what} it did not have")
        elif name not in new_t:
            out.append(f"the table set no longer has {what}")
        elif old_t[name] != new_t[name]:
            changed.append(what)
    if changed:
        out.insert(0, f"the table set's {' and '.join(changed) if len(changed) < 3 else ', '.join(changed)} changed")
    out += dict_differences(_normalized(dict(old), dict(new)), new.get("config") or {})
    old_i, new_i = old.get("inputs") or {}, new.get("inputs") or {}
    for key in sorted(set(old_i) | set(new_i)):
        if old_i.get(key) != new_i.get(key):
            out.append(f"{key} changed" if key in old_i and key in new_i else
                       f"{key} {'added' if key in new_i else 'removed'}")
    return out


# ---------------------------------------------------------------------- binding a folder
def _stored(fp: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fp.items() if not k.startswith("_")}


def bind_run_folder(out: str | Path, fp: Mapping[str, Any]) -> bool:
    """Bind ``out`` to the fingerprint ``fp``: a new run, or the resumption of the same run.

    Args:
        out: the run folder.
        fp: the run's `fingerprint`.

    Returns:
        True when ``out`` already held this run (resume), False for a new run.

    Raises:
        RunMismatch: ``out`` holds a run of other inputs, or files that are not a fingerprinted run;
            nothing in it is changed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunMismatch(f"{out} is a file, not a run folder; pass another --out")
    path = out / RUN_FILE
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise RunMismatch(
                f"{out} already holds files but no {RUN_FILE} (a run made before run folders recorded what they "
                "were made from, or another folder): it cannot be told whether they come from this data and these "
                f"settings, so nothing in it is reused or overwritten. Pass another --out, or remove {out} to start "
                "afresh")
        out.mkdir(parents=True, exist_ok=True)
        if _create(path, _stored(fp)):
            return False
    try:
        old = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise RunMismatch(f"{path} is not valid JSON, so {out} cannot be resumed safely; pass another --out, or "
                          f"remove {out} to start afresh") from None
    diffs = differences(old, fp)
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise RunMismatch(
            f"{out} holds a run made from other inputs than this one: {shown}. A run folder is never reused for "
            f"other data or settings (its models would not be this run's): pass another --out, or remove {out} to "
            "start afresh; rerun with the folder's own data and settings to resume it")
    return True


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Write ``record`` to ``path`` only if it does not exist (atomic across processes); True if written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


@contextmanager
def run_folder(out: str | Path, fp: Mapping[str, Any]) -> Iterator[bool]:
    """`bind_run_folder`, then mark the run failed (``failed.json``) if the block raises.

    Yields:
        True when the run resumes an earlier attempt in ``out``.
    """
    out = Path(out)
    resumed = bind_run_folder(out, fp)
    (out / FAILED_FILE).unlink(missing_ok=True)
    try:
        yield resumed
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        atomic_write_json(out / FAILED_FILE, {
            "status": status, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "resume": "rerun the same command (same data and settings) to resume from the last checkpoint"})
        raise


# ---------------------------------------------------------------------- settings only a machine can check
def check_devices(config: Any, prefix: str = "") -> None:
    """Refuse a ``device: cuda`` anywhere in ``config`` on a machine without CUDA, naming the key.

    Called by a job before it reads data or writes anything (a config that only describes a run on
    another machine, such as a compiled pipeline, is not checked).

    Raises:
        ConfigError: naming the dotted key and the fix.
    """
    if not dataclasses.is_dataclass(config):
        return
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if f.name == "device" and value == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"{key} is cuda but this machine has no CUDA device; use {key}=auto (CUDA when "
                                  "present, else the CPU) or cpu")
        elif dataclasses.is_dataclass(value):
            check_devices(value, f"{key}.")
