"""Object stores under the model registry: the local filesystem (embedded default) and S3 (MinIO in a cluster).

A store maps keys (``models/agnostic/versions/3/manifest.json``) to immutable byte strings and offers
two conditional writes, which are all the registry needs to stay correct under concurrent writers:

* ``put_bytes(key, data, if_absent=True)`` creates a key only if it does not exist yet;
* ``cas(key, expected_etag, data)`` replaces a small object only if its current etag is the expected
  one (``None``: only if the key is absent).

Both raise :class:`ConflictError` when they lose. Both treat "the key already holds exactly these
bytes" as success, so a request that is retried after its first attempt landed (a lost response) is
not reported as a conflict; writers that must never be confused with one another therefore put a
unique id in what they write (the registry does).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from longtail.registry.errors import ConflictError, NotFoundError, RegistryError


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid store key, else raise :class:`RegistryError`.

    A key is a ``/``-separated relative path whose parts are non-empty and do not start with ``.``
    (names starting with a dot are reserved for the local store's temporary and lock files).
    """
    if not isinstance(key, str) or not key:
        raise RegistryError(f"invalid store key {key!r}: empty")
    if "\\" in key or "\0" in key:
        raise RegistryError(f"invalid store key {key!r}: no backslashes or NUL characters")
    for part in key.split("/"):
        if not part or part.startswith("."):
            raise RegistryError(f"invalid store key {key!r}: parts must be non-empty and not start with '.'")
    return key


class ObjectStore(ABC):
    """Keys to bytes, with create-if-absent and compare-and-swap (see the module docstring)."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> str:
        """Write ``data`` under ``key`` atomically (a reader sees the old value or the new, never a part).

        Args:
            key: the store key.
            data: the new content.
            if_absent: only create; raise :class:`ConflictError` if ``key`` exists with other content.

        Returns:
            The new etag.
        """

    @abstractmethod
    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        """Return ``(content, etag)`` of ``key``; raise :class:`NotFoundError` if it does not exist."""

    def get_bytes(self, key: str) -> bytes:
        """Return the content of ``key``; raise :class:`NotFoundError` if it does not exist."""
        return self.get_with_etag(key)[0]

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys that start with ``prefix`` (a plain string prefix, as in S3), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (no error if it is absent)."""

    @abstractmethod
    def cas(self, key: str, expected: str | None, data: bytes) -> str:
        """Compare-and-swap: replace ``key`` by ``data`` only if its current etag is ``expected``.

        Args:
            key: the store key of a small object (a pointer).
            expected: the etag read before (from :meth:`get_with_etag`), or ``None`` to require that
                the key does not exist yet.
            data: the new content.

        Returns:
            The new etag.

        Raises:
            ConflictError: the current value is not the expected one (another writer won).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


# ---------------------------------------------------------------------- local filesystem
class LocalStore(ObjectStore):
    """Files under ``root``; the etag is the sha256 of the content, so it is exact under concurrency.

    Every write goes to a temporary file in ``root/.tmp`` first (same filesystem), then:

    * a plain write is ``os.replace``-d onto the key (atomic for readers);
    * a create-if-absent is ``os.link``-ed onto the key, which fails atomically if the key exists,
      between threads and processes alike, with no lock;
    * a compare-and-swap holds an exclusive ``fcntl.flock`` on ``root/.locks/<hash of key>.lock``
      while it reads, compares and replaces; the kernel releases the lock if the process dies.

    ``root`` must be a local POSIX filesystem (flock and hard links); use :class:`S3Store` for shared
    storage.

    Args:
        root: the folder that holds the store (created if missing).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = self.root.as_uri()
        self._tmp = self.root / ".tmp"
        self._locks = self.root / ".locks"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_temp(self, data: bytes) -> Path:
        self._tmp.mkdir(exist_ok=True)
        # the writer's pid and host in the name: `longtail.registry.gc` removes the temp files of dead writers
        fd, tmp = tempfile.mkstemp(prefix=f".{temp_owner()}.", suffix=".tmp", dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return Path(tmp)

    def _create(self, path: Path, key: str, data: bytes) -> str:
        """Create ``path`` with ``data`` unless it exists (atomic: ``os.link`` fails on an existing name)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_temp(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            current = _read(path)
            if current != data:
                raise ConflictError(f"{self.uri}: {key} already exists") from None
        finally:
            tmp.unlink()
        return _etag(data)

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> str:
        path = self._path(key)
        if if_absent:
            return self._create(path, key, data)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._replace(path, data)
        return _etag(data)

    def _replace(self, path: Path, data: bytes) -> None:
        """Write ``data`` to a temporary file and rename it onto ``path`` (atomic for readers)."""
        tmp = self._write_temp(data)
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            data = _read(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{self.uri}: no key {key}") from None
        return data, _etag(data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        self._locks.mkdir(exist_ok=True)
        lock = self._locks / f"{hashlib.sha256(key.encode()).hexdigest()}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def cas(self, key: str, expected: str | None, data: bytes) -> str:
        path = self._path(key)
        if expected is None:
            return self._create(path, key, data)
        with self._lock(key):
            try:
                current = _read(path)
            except FileNotFoundError:
                raise ConflictError(f"{self.uri}: {key} does not exist (expected etag {expected})") from None
            if _etag(current) != expected:
                if current == data:
                    return _etag(data)  # our own earlier write: not a conflict
                raise ConflictError(f"{self.uri}: {key} changed (expected etag {expected})")
            self._replace(path, data)
        return _etag(data)


def temp_owner(pid: int | None = None) -> str:
    """``<pid>-<host hash>``: who writes a temporary file of a `LocalStore` (see ``_write_temp``)."""
    host = hashlib.sha256(os.uname().nodename.encode()).hexdigest()[:8]
    return f"{os.getpid() if pid is None else pid}-{host}"


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- S3
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "OperationAborted"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


class S3Store(ObjectStore):
    """Objects in an S3 bucket (AWS S3, MinIO, any S3-protocol server) through boto3.

    Conditional writes are S3's own: ``PutObject`` with ``IfNoneMatch="*"`` for create-if-absent and
    with ``IfMatch=<etag>`` for compare-and-swap; the server checks and writes atomically and answers
    412 PreconditionFailed (or 409 ConditionalRequestConflict during a concurrent conditional write)
    to the loser. Credentials, region and endpoint come from the standard AWS environment
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` or
    ``AWS_ENDPOINT_URL_S3``), so MinIO in a cluster works with a Secret mounted as environment
    variables. With a custom endpoint, path-style addressing is used (what MinIO expects).

    Args:
        bucket: the bucket (must exist).
        prefix: a key prefix inside the bucket ("" for the bucket root).
        client: a boto3 S3 client to use instead of building one.
        endpoint_url: the S3 endpoint (default: from the environment, else AWS).
    """

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None, endpoint_url: str | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        if client is None:
            client = make_s3_client(endpoint_url)
        self.client = client
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _put(self, key: str, data: bytes, **conditions: str) -> str:
        from botocore.exceptions import ClientError

        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **conditions)
        except ClientError as e:
            if not (_is_conflict(e) or ("IfMatch" in conditions and _is_missing(e))):
                raise
            try:  # a retried request whose first attempt landed finds its own bytes: not a conflict
                current, etag = self.get_with_etag(key)
            except NotFoundError:
                current, etag = None, ""
            if current == data:
                return etag
            raise ConflictError(f"{self.uri}: conditional write of {key} lost ({_code(e)}: "
                                f"{', '.join(f'{k}={v}' for k, v in conditions.items())})") from None
        return response["ETag"]

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> str:
        return self._put(key, data, **({"IfNoneMatch": "*"} if if_absent else {}))

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if _is_missing(e):
                raise NotFoundError(f"{self.uri}: no key {key}") from None
            raise
        with contextlib.closing(response["Body"]) as body:
            return body.read(), response["ETag"]

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if _is_missing(e):
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def cas(self, key: str, expected: str | None, data: bytes) -> str:
        if expected is None:
            return self._put(key, data, IfNoneMatch="*")
        return self._put(key, data, IfMatch=expected)


def make_s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client configured from the standard AWS environment variables.

    Args:
        endpoint_url: overrides ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``.
    """
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(retries={"mode": "standard"}, s3={"addressing_style": "path"} if endpoint else {})
    # one session per client: boto3's default session is not safe to share between threads
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def _code(e: Any) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: Any) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_conflict(e: Any) -> bool:
    return _code(e) in _CONFLICT_CODES or _status(e) in (409, 412)


def _is_missing(e: Any) -> bool:
    return _code(e) in _MISSING_CODES or _status(e) == 404


# ---------------------------------------------------------------------- URIs
def open_store(uri: str | Path, *, endpoint_url: str | None = None, client: Any = None) -> ObjectStore:
    """Open the store a URI names.

    Args:
        uri: ``file:///abs/path``, ``s3://bucket/prefix``, or a plain filesystem path.
        endpoint_url: S3 only: the endpoint (default: from the environment).
        client: S3 only: a boto3 client to use.

    Returns:
        A :class:`LocalStore` or an :class:`S3Store`.
    """
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise RegistryError(f"{text}: an S3 URI needs a bucket (s3://bucket/prefix)")
        return S3Store(parsed.netloc, parsed.path.strip("/"), client=client, endpoint_url=endpoint_url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise RegistryError(f"{text}: a file URI names a local path (file:///abs/path)")
        return LocalStore(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive, i.e. a path
        raise RegistryError(f"{text}: unsupported registry URI scheme {parsed.scheme!r} (file:// or s3://)")
    return LocalStore(text)


__all__ = ["LocalStore", "ObjectStore", "S3Store", "check_key", "make_s3_client", "open_store"]
