"""Model registry: atomic publishing, immutable versions, CAS serving pointers, safe loading.

Every registry behaviour runs on both backends: the local filesystem and S3 against a real
S3-protocol server (moto, see s3server.py) started on loopback in a separate process. The
concurrency tests fail if create-if-absent or compare-and-swap is made unconditional.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from s3server import S3Server

from longtail.registry import (
    ConflictError,
    IntegrityError,
    LocalStore,
    ModelRegistry,
    NotFoundError,
    RegistryError,
    S3Store,
    UnsafeModelError,
    lineage,
    open_registry,
)
from longtail.registry.store import make_s3_client

pytestmark = pytest.mark.unit

BUCKET = "longtail-test"
N_WORKERS = 6
PER_WORKER = 2
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class Backend:
    """What a worker thread or process needs to open its own registry on the shared storage."""

    kind: str
    uri: str
    endpoint: str | None = None

    def open(self, client: Any = None) -> ModelRegistry:
        return open_registry(self.uri, endpoint_url=self.endpoint, client=client)

    def shared_client(self) -> Any:
        """One boto3 client for several threads (clients are thread-safe; creating one is slow)."""
        return make_s3_client(self.endpoint) if self.kind == "s3" else None


@pytest.fixture(scope="session")
def s3_endpoint():
    with pytest.MonkeyPatch.context() as mpatch:
        for k, v in AWS_ENV.items():
            mpatch.setenv(k, v)
        with S3Server() as endpoint:
            make_s3_client(endpoint).create_bucket(Bucket=BUCKET)
            yield endpoint


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path, monkeypatch) -> Backend:
    if request.param == "local":
        return Backend("local", (tmp_path / "registry").as_uri())
    endpoint = request.getfixturevalue("s3_endpoint")
    for k, v in AWS_ENV.items():  # inherited by spawned workers, too
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    return Backend("s3", f"s3://{BUCKET}/{uuid.uuid4().hex}", endpoint)


@pytest.fixture
def reg(backend) -> ModelRegistry:
    return backend.open()


def _folder(root: Path, tag: str) -> Path:
    """A small model folder whose every file depends on ``tag``."""
    root.mkdir(parents=True)
    (root / "weights.bin").write_bytes(f"weights of {tag}".encode() * 50)
    (root / "model.json").write_text(json.dumps({"tag": tag}))
    (root / "extra").mkdir()
    (root / "extra" / "metrics.json").write_text(json.dumps({"auc": 0.5, "tag": tag}))
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "checkpoint.bin").write_bytes(b"resumable state, not part of the model")
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).as_posix().startswith("checkpoints/")}


def _publish(reg: ModelRegistry, src: Path, name: str = "m", **kw: Any):
    return reg.publish(name, src, **{"kind": "agnostic", "metrics": {}, "lineage": {}, **kw})


# ---------------------------------------------------------------------- the store contract
def test_store_conditional_writes(backend):
    store = backend.open().store
    etag = store.put_bytes("a/b.json", b"one", if_absent=True)
    assert store.get_with_etag("a/b.json") == (b"one", etag)
    assert store.put_bytes("a/b.json", b"one", if_absent=True) == etag  # same bytes: a landed retry
    with pytest.raises(ConflictError):
        store.put_bytes("a/b.json", b"two", if_absent=True)
    new = store.cas("a/b.json", etag, b"two")
    with pytest.raises(ConflictError):
        store.cas("a/b.json", etag, b"three")  # stale etag
    with pytest.raises(ConflictError):
        store.cas("a/b.json", None, b"three")  # create, but it exists
    with pytest.raises(ConflictError):
        store.cas("a/missing.json", new, b"three")  # update, but it does not exist
    assert store.cas("a/c.json", None, b"c") == store.get_with_etag("a/c.json")[1]
    store.put_bytes("ab/d", b"d")
    assert store.list("a/") == ["a/b.json", "a/c.json"]
    assert store.list("a") == ["a/b.json", "a/c.json", "ab/d"]
    assert store.exists("ab/d") and not store.exists("ab/e")
    store.delete("ab/d")
    store.delete("ab/d")
    assert not store.exists("ab/d")
    with pytest.raises(NotFoundError):
        store.get_bytes("ab/d")
    for bad in ("", "/abs", "a//b", "a/../b", ".hidden", "a/.tmp/x"):
        with pytest.raises(RegistryError, match="invalid store key"):
            store.put_bytes(bad, b"x")


# ---------------------------------------------------------------------- publishing and reading
def test_publish_get_list_download(reg, tmp_path):
    src1, src2 = _folder(tmp_path / "m1", "one"), _folder(tmp_path / "m2", "two")
    lin = lineage(theta0=("agnostic", 3), data_split={"seed": 0, "path": "runs/r/splits.parquet"}, run="r")
    mv1 = reg.publish("specific-AA", src1, kind="specific", scenario="AA", metrics={"auc": 0.7}, lineage=lin)
    mv2 = reg.publish("specific-AA", src2, kind="specific", scenario="AA", metrics={"auc": 0.8}, lineage=lin)
    assert (mv1.version, mv2.version) == (1, 2)
    assert reg.list_versions("specific-AA") == [1, 2]
    assert reg.list_versions("nothing") == []
    assert reg.list_models() == ["specific-AA"]
    got = reg.get("specific-AA", 2)
    assert got == mv2
    assert got.kind == "specific" and got.scenario == "AA" and got.metrics == {"auc": 0.8}
    assert got.lineage["theta0"] == {"name": "agnostic", "version": 3}
    assert got.lineage["data_split"]["seed"] == 0 and got.lineage["run"] == "r"
    assert got.code_version["package"] and got.created_at
    assert sorted(f.path for f in got.files) == ["extra/metrics.json", "model.json", "weights.bin"]
    out = reg.download("specific-AA", 1, tmp_path / "dl" / "m")
    assert _files(out) == _files(src1)
    with pytest.raises(RegistryError, match="not an empty folder"):
        reg.download("specific-AA", 2, out)
    with pytest.raises(NotFoundError, match="no version 3"):
        reg.get("specific-AA", 3)


def test_publish_validates_its_arguments(tmp_path):
    reg = open_registry(tmp_path / "registry")
    src = _folder(tmp_path / "m", "x")
    with pytest.raises(RegistryError, match="belongs to one scenario"):
        reg.publish("s", src, kind="specific", metrics={}, lineage={})
    with pytest.raises(RegistryError, match="serves every scenario"):
        reg.publish("a", src, kind="agnostic", scenario="AA", metrics={}, lineage={})
    with pytest.raises(RegistryError, match="invalid model name"):
        _publish(reg, src, name="../x")
    with pytest.raises(RegistryError, match="JSON-serialisable"):
        _publish(reg, src, metrics={"f": object()})
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="no files"):
        _publish(reg, tmp_path / "empty")
    assert reg.list_models() == []


# ---------------------------------------------------------------------- atomicity and immutability
def test_interrupted_publish_leaves_no_version(backend, tmp_path, monkeypatch):
    reg = backend.open()
    src = _folder(tmp_path / "m", "x")
    real_put = reg.store.put_bytes
    uploaded: list[str] = []

    def dies_after_two_files(key, data, *, if_absent=False):
        if "/files/" in key:
            if len(uploaded) == 2:
                raise RuntimeError("publisher killed mid-upload")
            uploaded.append(key)
        return real_put(key, data, if_absent=if_absent)

    with monkeypatch.context() as m:
        m.setattr(reg.store, "put_bytes", dies_after_two_files)
        with pytest.raises(RuntimeError, match="killed"):
            _publish(reg, src)
    assert len(uploaded) == 2 and all(reg.store.exists(k) for k in uploaded)  # the half-written files are there
    reader = backend.open()
    assert reader.list_versions("m") == [] and reader.list_models() == []
    with pytest.raises(NotFoundError, match="incomplete"):
        reader.get("m", 1)
    with pytest.raises(NotFoundError, match="incomplete"):
        reader.download("m", 1, tmp_path / "dl")
    assert not (tmp_path / "dl").exists()
    mv = _publish(reg, src)  # the burnt number is skipped
    assert mv.version == 2 and reader.list_versions("m") == [2]
    assert _files(reader.download("m", 2, tmp_path / "dl")) == _files(src)


def test_versions_are_immutable(reg, tmp_path):
    src, other = _folder(tmp_path / "m", "x"), _folder(tmp_path / "o", "other")
    mv = _publish(reg, src)
    manifest = "models/m/versions/1/manifest.json"
    with pytest.raises(ConflictError):
        reg.store.put_bytes(manifest, b"{}", if_absent=True)
    with pytest.raises(ConflictError):
        reg.store.put_bytes("models/m/versions/1/files/weights.bin", b"evil", if_absent=True)
    with pytest.raises(ConflictError, match="already exists"):
        _publish(reg, other, version=1)
    assert reg.get("m", 1) == mv
    assert _files(reg.download("m", 1, tmp_path / "dl")) == _files(src)
    assert _publish(reg, other, version=5).version == 5
    assert _publish(reg, other).version == 6
    assert reg.list_versions("m") == [1, 5, 6]


def test_download_detects_corruption(reg, tmp_path):
    _publish(reg, _folder(tmp_path / "m", "x"))
    reg.store.put_bytes("models/m/versions/1/files/weights.bin", b"bit rot")  # bypasses the registry
    with pytest.raises(IntegrityError, match="weights.bin is corrupt"):
        reg.download("m", 1, tmp_path / "dl")
    assert not (tmp_path / "dl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dl")]  # no temporary left behind


# ---------------------------------------------------------------------- serving pointers
def test_promote_rollback_serving(reg, tmp_path):
    src = _folder(tmp_path / "m", "x")
    theta0 = _publish(reg, src, name="agnostic")
    aa = reg.publish("specific-AA", src, kind="specific", scenario="AA", metrics={}, lineage={})
    bb = reg.publish("specific-BB", src, kind="specific", scenario="BB", metrics={}, lineage={})
    assert reg.serving("AA") is None and reg.pointer("AA").revision == 0
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback("AA")
    reg.promote("AA", *theta0.ref)
    assert reg.promote("AA", *theta0.ref).revision == 1  # already serving: unchanged
    with pytest.raises(ConflictError, match="not the expected"):
        reg.promote("AA", *aa.ref, expected=("agnostic", 9))
    state = reg.promote("AA", *aa.ref, expected=theta0.ref, note="beats theta0")
    assert state.current == ("specific-AA", 1) and reg.serving("AA") == ("specific-AA", 1)
    with pytest.raises(RegistryError, match="published for scenario 'BB'"):
        reg.promote("AA", *bb.ref)
    with pytest.raises(NotFoundError):
        reg.promote("AA", "agnostic", 7)
    assert reg.serving("BB") is None  # pointers are per scenario
    reg.promote("weird/scenario name", *theta0.ref)
    assert reg.serving("weird/scenario name") == theta0.ref
    assert reg.rollback("AA").current == theta0.ref
    assert reg.serving("AA") == theta0.ref
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback("AA")
    history = reg.history("AA")
    assert [(e["action"], e["name"], e["version"], e["revision"]) for e in history] == [
        ("promote", "agnostic", 1, 1), ("promote", "specific-AA", 1, 2), ("rollback", "agnostic", 1, 3)]
    assert history[1]["note"] == "beats theta0" and history[2]["previous"] == {"name": "specific-AA", "version": 1}


# ---------------------------------------------------------------------- the serving index
class _CountingStore:
    """Wraps a store and counts its reads (what a poll of many scenarios costs)."""

    def __init__(self, store):
        self._store, self.reads = store, 0

    def get_with_etag(self, key):
        self.reads += 1
        return self._store.get_with_etag(key)

    def get_bytes(self, key):
        self.reads += 1
        return self._store.get_bytes(key)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_serving_index_is_one_read_and_follows_promotes(reg, tmp_path):
    src = _folder(tmp_path / "m", "x")
    theta0 = _publish(reg, src, name="agnostic")
    light = {s: reg.publish(f"light-{s}", src, kind="light", scenario=s, metrics={}, lineage={}) for s in "ABC"}
    for s in "ABC":
        reg.promote(s, *theta0.ref)
        reg.promote(s, *light[s].ref)
    reg.rollback("B")
    reg.promote("_default", *theta0.ref)
    want = {s: reg.serving(s) for s in reg.pointer_scenarios()}
    assert want == {"A": light["A"].ref, "B": theta0.ref, "C": light["C"].ref, "_default": theta0.ref}
    counting = _CountingStore(reg.store)
    index = ModelRegistry(counting).serving_index()
    assert counting.reads == 1, "a poll of every scenario is one read of the index"
    assert (index.source, dict(index.pointers)) == ("index", want)
    assert index.revisions == {s: reg.pointer(s).revision for s in want}
    assert index.revision == 8  # one index write per pointer change


def test_serving_index_of_a_registry_without_one(reg, tmp_path):
    """A registry from before the index: readers read every pointer; the first promote writes the index
    with every scenario in it, not only its own."""
    src = _folder(tmp_path / "m", "x")
    theta0 = _publish(reg, src, name="agnostic")
    for s in ("A", "B"):
        reg.promote(s, *theta0.ref)
    reg.store.delete("index/serving.json")
    old = reg.serving_index()
    assert (old.source, dict(old.pointers)) == ("pointers", {"A": theta0.ref, "B": theta0.ref})
    reg.promote("C", *theta0.ref)
    new = reg.serving_index()
    assert (new.source, dict(new.pointers)) == ("index", {"A": theta0.ref, "B": theta0.ref, "C": theta0.ref})


def test_a_stale_index_entry_is_repaired(reg, tmp_path, monkeypatch):
    """A promoter that dies between its pointer write and its index write leaves the entry behind; retrying
    the promote or rebuilding the index repairs it."""
    src = _folder(tmp_path / "m", "x")
    v1, v2 = _publish(reg, src), _publish(reg, src)
    reg.promote("S", *v1.ref)
    with monkeypatch.context() as m:
        m.setattr(ModelRegistry, "_index_entry", lambda self, scenario, state: None)  # "crashed" before it
        reg.promote("S", *v2.ref)
    assert reg.serving("S") == v2.ref and reg.serving_index().pointers["S"] == v1.ref
    reg.promote("S", *v2.ref)  # the retry finds the pointer already there and repairs the index
    assert reg.serving_index().pointers["S"] == v2.ref
    with monkeypatch.context() as m:
        m.setattr(ModelRegistry, "_index_entry", lambda self, scenario, state: None)
        reg.rollback("S")
    rebuilt = reg.rebuild_serving_index()
    assert dict(rebuilt.pointers) == {"S": v1.ref} == dict(reg.serving_index().pointers)


def test_concurrent_promotes_of_many_scenarios_keep_the_index_exact(backend, tmp_path):
    reg = backend.open()
    src = _folder(tmp_path / "m", "x")
    versions = [_publish(reg, src).version for _ in range(3)]
    barrier, client = threading.Barrier(N_WORKERS), backend.shared_client()
    errors: list[str] = []

    def run(i: int) -> None:
        mine = backend.open(client)
        barrier.wait(60)
        try:
            for v in versions:
                mine.promote(f"s{i}", "m", v)
                mine.promote("shared", "m", v)
            mine.rollback(f"s{i}")
        except BaseException as e:
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N_WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    index = reg.serving_index()
    assert index.source == "index"
    assert dict(index.pointers) == {s: reg.serving(s) for s in reg.pointer_scenarios()}
    assert index.revisions == {s: reg.pointer(s).revision for s in reg.pointer_scenarios()}
    assert all(index.pointers[f"s{i}"] == ("m", versions[-2]) for i in range(N_WORKERS))


# ---------------------------------------------------------------------- concurrency
def _publish_then_promote(backend: Backend, worker: int, src: str, barrier: Any, client: Any = None) -> list[int]:
    """One concurrent client: its own registry; publishes PER_WORKER versions, then promotes each."""
    reg = backend.open(client)
    barrier.wait(60)
    versions = [_publish(reg, Path(src), metrics={"worker": worker, "j": j}).version for j in range(PER_WORKER)]
    for v in versions:
        reg.promote("S", "m", v)
    return versions


def _process_main(backend, worker, src, barrier, results) -> None:
    try:
        results.put((worker, _publish_then_promote(backend, worker, src, barrier)))
    except BaseException as e:  # report, do not hang the parent
        results.put((worker, f"{type(e).__name__}: {e}"))


def _check_concurrent_outcome(reg: ModelRegistry, results: dict[int, Any], sources: list[Path], tmp: Path):
    assert all(isinstance(v, list) for v in results.values()), results
    versions = [v for vs in results.values() for v in vs]
    n = N_WORKERS * PER_WORKER
    assert len(set(versions)) == n, f"publishers overwrote each other: {sorted(versions)}"
    assert reg.list_versions("m") == sorted(versions)
    for v in versions:  # every version holds exactly its own publisher's files
        mv = reg.get("m", v)
        assert v in results[mv.metrics["worker"]]
        assert _files(reg.download("m", v, tmp / f"dl{v}")) == _files(sources[mv.metrics["worker"]])
    state = reg.pointer("S")
    assert state.revision == n, f"lost pointer updates: revision {state.revision}, expected {n}"
    assert [e["revision"] for e in state.history] == list(range(1, n + 1))
    assert sorted(e["version"] for e in state.history) == sorted(versions)
    assert state.stack == tuple(("m", e["version"]) for e in state.history)
    assert reg.serving("S") == state.stack[-1]
    index = reg.serving_index()  # the index ends where the pointer ends, whatever the interleaving
    assert (index.source, index.pointers, index.revisions) == ("index", {"S": state.current}, {"S": n})


def test_concurrent_publishers_and_promoters_threads(backend, tmp_path):
    sources = [_folder(tmp_path / f"src{i}", f"thread {i}") for i in range(N_WORKERS)]
    barrier, client = threading.Barrier(N_WORKERS), backend.shared_client()
    results: dict[int, Any] = {}

    def run(i: int) -> None:
        try:
            results[i] = _publish_then_promote(backend, i, str(sources[i]), barrier, client)
        except BaseException as e:
            results[i] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N_WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    _check_concurrent_outcome(backend.open(), results, sources, tmp_path)


def test_concurrent_publishers_and_promoters_processes(backend, tmp_path):
    ctx = mp.get_context("spawn")
    sources = [_folder(tmp_path / f"src{i}", f"process {i}") for i in range(N_WORKERS)]
    barrier, queue = ctx.Barrier(N_WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(backend, i, str(sources[i]), barrier, queue))
             for i in range(N_WORKERS)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    _check_concurrent_outcome(backend.open(), results, sources, tmp_path)


def test_concurrent_conditional_promotes_exactly_one_wins(backend, tmp_path):
    reg = backend.open()
    src = _folder(tmp_path / "m", "x")
    for _ in range(N_WORKERS + 1):
        _publish(reg, src)
    reg.promote("S", "m", 1)
    barrier, client = threading.Barrier(N_WORKERS), backend.shared_client()
    outcomes: dict[int, str] = {}

    def run(i: int) -> None:
        mine = backend.open(client)
        barrier.wait(60)
        try:
            mine.promote("S", "m", i + 2, expected=("m", 1))
            outcomes[i] = "won"
        except ConflictError:
            outcomes[i] = "lost"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(N_WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [i for i, o in outcomes.items() if o == "won"]
    assert len(outcomes) == N_WORKERS and len(winners) == 1, outcomes
    state = reg.pointer("S")
    assert state.revision == 2 and state.stack == (("m", 1), ("m", winners[0] + 2))


# ---------------------------------------------------------------------- loading real models
_EXECUTED: list[str] = []


def _side_effect() -> str:
    _EXECUTED.append("unpickling ran code")
    return "pwned"


class _Payload:
    """Pickles to a call of ``_side_effect``: what a malicious "weights" file would do."""

    def __reduce__(self):
        return (_side_effect, ())


@pytest.fixture(scope="module")
def model_dir(synthetic_tables, synthetic_frame, tmp_path_factory):
    import torch

    from longtail.data.transforms import FittedTransforms
    from longtail.model_folder import save_model_dir
    from longtail.models.heavy import HeavyConfig, build_model

    transforms = FittedTransforms.fit(synthetic_tables.spec, synthetic_frame)
    config = HeavyConfig(encoder="lstm", num_layers=1, hidden_size=8)
    torch.manual_seed(0)
    model = build_model(transforms.schema, config)
    path = save_model_dir(tmp_path_factory.mktemp("model") / "m", model, transforms, config, {"note": "tiny"})
    return path, model, transforms


def test_load_gives_the_same_predictions(reg, model_dir, synthetic_frame):
    import numpy as np

    from longtail.metrics import predict_proba

    path, model, transforms = model_dir
    mv = reg.publish("agnostic", path, kind="agnostic", metrics={"auc": np.float64(0.5)},
                     lineage=lineage(data_split={"seed": 0}))
    assert mv.metrics == {"auc": 0.5}
    loaded, loaded_tf, info = reg.load("agnostic", 1)
    batch = transforms.transform(synthetic_frame.head(300))
    np.testing.assert_array_equal(predict_proba(loaded, loaded_tf.transform(synthetic_frame.head(300))),
                                  predict_proba(model, batch))
    assert info["note"] == "tiny"


def test_pickled_objects_are_never_loaded(reg, model_dir, tmp_path, monkeypatch):
    import shutil

    import torch

    from longtail.registry import registry as registry_module

    src = tmp_path / "evil"
    shutil.copytree(model_dir[0], src)
    torch.save({"weight": torch.zeros(1), "payload": _Payload()}, src / "weights.pt")
    with pytest.raises(UnsafeModelError, match="weights_only"):
        _publish(reg, src)
    assert reg.list_versions("m") == []
    with monkeypatch.context() as m:  # a writer that skipped the check (or an older registry)
        m.setattr(registry_module, "check_weights_only", lambda path: None)
        _publish(reg, src)
    with pytest.raises(UnsafeModelError, match="never a pickled module"):
        reg.load("m", 1)
    assert _EXECUTED == []


# ---------------------------------------------------------------------- URIs and lineage
def test_open_registry_uris(tmp_path, s3_endpoint, monkeypatch):
    assert isinstance(open_registry(tmp_path / "a").store, LocalStore)
    assert open_registry((tmp_path / "b").as_uri()).store.root == tmp_path / "b"
    with pytest.raises(RegistryError, match="unsupported"):
        open_registry("gs://bucket/x")
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # how a mounted MinIO Secret configures it
    reg = open_registry(f"s3://{BUCKET}/uri-test/{uuid.uuid4().hex}")
    assert isinstance(reg.store, S3Store) and reg.store.bucket == BUCKET
    reg.store.put_bytes("k", b"v")
    assert reg.store.get_bytes("k") == b"v"


def test_lineage_records_code_version():
    lin = lineage(theta0=("agnostic", 3), data_split={"seed": 1, "path": "s.parquet"})
    assert lin["theta0"] == {"name": "agnostic", "version": 3}
    assert lin["data_split"] == {"seed": 1, "path": "s.parquet"}
    from longtail import __version__

    assert lin["code_version"]["package"] == __version__
    assert lineage(code_version={"package": "x"})["code_version"] == {"package": "x"}
