"""Atomic file output: no half-written artifact is ever visible under its final name."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` keeps its old content (or stays
    absent), so a crash never leaves a partial file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


_KEPT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
ESCAPE = "_"


def safe_name(name: str) -> str:
    """A scenario (or dataset) name as one folder name and registry-name part, collision-free.

    Letters, digits and ``-`` are kept; ``_`` becomes ``__``; every other character (``/``, ``.``,
    a space, a non-ASCII letter, ...) becomes ``_`` and the two upper-case hex digits of each of its
    UTF-8 bytes (``a/b`` -> ``a_2Fb``, ``a_b`` -> ``a__b``, ``a.b`` -> ``a_2Eb``), and a leading ``-``
    is escaped too. The mapping is one-to-one (`scenario_of` maps a name back), so two scenarios
    never share a folder or a registry name, and the result holds only letters, digits, ``_`` and
    ``-``: a valid file name and model-name part, never hidden, never ``.`` or ``..``.

    Raises:
        ValueError: ``name`` is empty, or too long for a file name once escaped.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name {name!r}: a scenario or dataset name must be a non-empty string")
    out = []
    for i, ch in enumerate(name):
        if ch in _KEPT and not (i == 0 and ch == "-"):
            out.append(ch)
        elif ch == ESCAPE:
            out.append(ESCAPE * 2)
        else:
            out.append("".join(f"{ESCAPE}{b:02X}" for b in ch.encode("utf-8")))
    safe = "".join(out)
    if len(safe) > 200:
        raise ValueError(f"name {name[:40]!r}...: {len(safe)} characters once made safe for a file name (at most "
                         "200); shorten the scenario names in the data")
    return safe


def scenario_of(safe: str) -> str:
    """The name `safe_name` made ``safe`` from (its inverse).

    Raises:
        ValueError: ``safe`` is not something `safe_name` returns.
    """
    raw = bytearray()
    i = 0
    while i < len(safe):
        ch = safe[i]
        if ch != ESCAPE:
            if ch not in _KEPT:
                raise ValueError(f"{safe!r}: not a name made by safe_name (character {ch!r})")
            raw += ch.encode()
            i += 1
        elif safe[i + 1:i + 2] == ESCAPE:
            raw += ESCAPE.encode()
            i += 2
        else:
            code = safe[i + 1:i + 3]
            if len(code) != 2 or any(c not in "0123456789ABCDEF" for c in code):
                raise ValueError(f"{safe!r}: not a name made by safe_name (bad escape at {i})")
            raw.append(int(code, 16))
            i += 3
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{safe!r}: not a name made by safe_name (bytes are not UTF-8)") from None
